"""The generic training loop: input determinism, checkpoints, exact resume after a kill, NaN fail-fast (SIGTERM,
Ctrl-C and damaged checkpoints: tests/test_faults_train.py)."""
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vdm_jax.data import pipeline
from vdm_jax.train import checkpoint as checkpoint_lib
from vdm_jax.train import loop
from vdm_jax.train import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import toy_ae  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _config(data_dir, **train):
  c = toy_ae.get_config("runlocal")
  c.input.data_dir = data_dir
  c.schedule.name = "constant"  # so that runs of different lengths share their first steps exactly
  c.schedule.warmup_steps = 0
  c.train.async_checkpoints = True
  c.train.update(train)
  return c


def _final_state(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
  step = mngr.latest_step()
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return step, state


def assert_same_final_state(straight, split, step):
  """Both workdirs' newest checkpoints are at `step` and bit-identical."""
  (s1, a), (s2, b) = _final_state(straight), _final_state(split)
  assert s1 == s2 == step
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _batches(it, n):
  return [next(it) for _ in range(n)]


def test_pipeline_is_deterministic_by_seed_and_resumes_exactly(shapes_data_dir, tmp_path):
  c = _config(shapes_data_dir)
  first = _batches(iter(pipeline.make_dataset(c.input, seed=3)), 3)
  again = _batches(iter(pipeline.make_dataset(c.input, seed=3)), 3)
  other = _batches(iter(pipeline.make_dataset(c.input, seed=4)), 1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["video"], b["video"])
    assert list(a["caption"]) == list(b["caption"])
  assert not np.array_equal(first[0]["video"], other[0]["video"])
  assert first[0]["video"].shape == (8, 9, 32, 32, 3) and first[0]["video"].dtype == np.float32

  # Save the iterator (and an rng) after 2 batches with orbax; a fresh iterator restored from it yields batch 3.
  it = iter(pipeline.make_dataset(c.input, seed=3))
  _batches(it, 2)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), async_save=True)
  state = {"rng": jax.random.PRNGKey(7), "w": jnp.arange(4.0)}
  ckpt.save(2, state, it, c)
  ckpt.wait()
  fresh = iter(pipeline.make_dataset(c.input, seed=3))
  restored = ckpt.restore(2, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                          state), fresh)
  ckpt.close()
  np.testing.assert_array_equal(next(fresh)["video"], first[2]["video"])
  np.testing.assert_array_equal(np.asarray(restored["rng"]), np.asarray(state["rng"]))


def test_train_writes_outputs_and_resume_equals_uninterrupted(shapes_data_dir, tmp_path):
  straight = str(tmp_path / "straight")
  loop.train(_config(shapes_data_dir, steps=6), straight)
  assert sorted(os.listdir(os.path.join(straight, "checkpoints"))) == ["3", "6"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(straight, "tensorboard")))
  lines = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
  assert [m["step"] for m in lines if "loss" in m] == [2, 4, 6]
  assert {"l2_grads", "l2_params", "l2_updates", "lr", "steps_per_sec"} <= set(lines[0])
  assert any("eval/psnr" in m for m in lines)
  assert os.path.exists(os.path.join(straight, "samples", "step_00000006", "recon.png"))
  assert json.load(open(os.path.join(straight, "config.json")))["experiment"] == "toy_ae"

  # The same run split in two invocations (3 steps, then the same workdir to 6) ends identically.
  split = str(tmp_path / "split")
  loop.train(_config(shapes_data_dir, steps=3), split)
  loop.train(_config(shapes_data_dir, steps=6), split)
  assert_same_final_state(straight, split, 6)
  resumed_lines = [json.loads(line) for line in open(os.path.join(split, "metrics.jsonl"))]
  # the 3-step run logged its last step; nothing past the checkpoint is duplicated
  assert [m["step"] for m in resumed_lines if "loss" in m] == [2, 3, 4, 6]


def _cli(workdir, data_dir, *overrides):
  return [sys.executable, "-m", "experiments.train", "--config", "configs/toy_ae.py:runlocal",
          f"--config.input.data_dir={data_dir}", "--config.schedule.name=constant",
          "--config.schedule.warmup_steps=0", "--config.train.log_every=1", f"--workdir={workdir}", *overrides]


def _wait_for_checkpoint(workdir, proc, minimum=1, timeout=240):
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early:\n{proc.stderr.read()[-3000:]}")
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if steps and max(steps) >= minimum:
      return max(steps)
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


@pytest.mark.slow(30)
def test_cli_kill_then_same_command_resumes_exactly(shapes_data_dir, tmp_path):
  """SIGKILL mid-run; the next invocation resumes from the last checkpoint and matches an uninterrupted run."""
  workdir = str(tmp_path / "killed")
  long_run = _cli(workdir, shapes_data_dir, "--config.train.steps=100000", "--config.train.checkpoint_every=5")
  proc = subprocess.Popen(long_run, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint(workdir, proc, minimum=5)
  finally:
    proc.kill()
    proc.wait()
  killed_at = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  total = killed_at + 2
  result = subprocess.run(_cli(workdir, shapes_data_dir, f"--config.train.steps={total}",
                               "--config.train.checkpoint_every=5"),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resuming from checkpoint {killed_at}" in result.stderr

  straight = str(tmp_path / "straight")
  loop.train(_config(shapes_data_dir, steps=total, checkpoint_every=5, log_every=1), straight)
  (s1, a), (s2, b) = _final_state(workdir), _final_state(straight)
  assert s1 == s2 == total
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7), a, b)


@registry.register("nan_probe")
class _NanProbe(registry.Experiment):
  """A tiny experiment whose gradient for `b` is NaN: the loop must stop at step 1 naming `b`."""

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({"model": {"width": 4}})

  def init(self, rng, batch):
    return {"a": jnp.ones((self.config.model.width,)), "b": jnp.ones((self.config.model.width,))}

  def loss(self, params, batch, rng, frozen, step):
    loss = jnp.sum(params["a"] ** 2) + jnp.sum(jnp.sqrt(params["b"] - 2.0))
    return loss, {}


def test_nonfinite_gradient_fails_fast_naming_step_and_path(shapes_data_dir, tmp_path):
  from vdm_jax.train.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config("nan_probe")
  c.input.builder_config = "32x32x9_tiny"
  c.input.data_dir = shapes_data_dir
  c.train.steps = 5
  c.train.log_every = 100
  with pytest.raises(loop.NonFiniteError, match=r"step 1: loss=nan; non-finite gradients at \[\"\['b'\]\"\]"):
    loop.train(c, str(tmp_path))


def test_distributed_initialize_from_config(shapes_data_dir, tmp_path):
  """`config.distributed.enabled` calls jax.distributed.initialize (here: a 1-process coordinator on localhost)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  cmd = _cli(str(tmp_path), shapes_data_dir, "--config.train.steps=2", "--config.distributed.enabled=True",
             f"--config.distributed.coordinator_address=localhost:{port}", "--config.distributed.num_processes=1",
             "--config.distributed.process_id=0")
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "jax.distributed: process 0 of 1, 8 local / 8 global devices" in result.stderr
  assert _final_state(str(tmp_path))[0] == 2


def test_pipeline_shards_records_by_process(shapes_data_dir, monkeypatch):
  """With 2 processes, each reads its own half of the records (disjoint, together all of them)."""
  c = _config(shapes_data_dir)
  source = pipeline.data_source(c.input, "validation")  # 64 records
  seeds = []
  for index in range(2):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    ds = pipeline.make_dataset(c.input, split="validation", pp="keep('seed')", batch_size=8, repeat=False,
                               source=source)
    seeds.append({int(s) for batch in ds for s in batch["seed"]})
  assert len(seeds[0]) == len(seeds[1]) == 32
  assert not seeds[0] & seeds[1]
  assert seeds[0] | seeds[1] == {int(source[i]["seed"]) for i in range(len(source))}


@registry.register("frozen_probe")
class _FrozenProbe(registry.Experiment):
  """Fits `w` to a frozen target held in `frozen_params` (sharded over fsdp by its logical axes)."""

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({"model": {"width": 16}})

  def frozen_params(self, abstract=False):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    shape = (self.config.model.width,)
    value = jax.ShapeDtypeStruct(shape, jnp.float32) if abstract else np.arange(shape[0], dtype=np.float32)
    return {"target": nn.LogicallyPartitioned(value, ("embed",))}

  def init(self, rng, batch):
    return {"w": jnp.zeros((self.config.model.width,))}

  def loss(self, params, batch, rng, frozen, step):
    loss = jnp.mean(jnp.square(params["w"] - frozen["target"]))
    return loss, {}


def test_frozen_params_reach_the_loss_sharded_and_untrained(shapes_data_dir, tmp_path):
  from vdm_jax.train.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config("frozen_probe")
  c.input.builder_config = "32x32x9_tiny"
  c.input.data_dir = shapes_data_dir
  c.mesh.update({"data": 2, "fsdp": 4})
  c.train.steps = 2
  c.optimizer.update({"name": "sgd", "b1": 0.0, "grad_clip_norm": 0.0})
  c.schedule.update({"name": "constant", "base_lr": 8.0})  # w -= 8 * 2 (w - target) / 16: exact in one step
  state = loop.train(c, str(tmp_path))
  np.testing.assert_allclose(np.asarray(state.params["w"]), np.arange(16), atol=1e-5)
  assert "target" not in state.params

  from vdm_jax.parallel import mesh as mesh_lib, sharding  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.create_mesh(c.mesh)
  frozen, shardings = loop.place_frozen(_FrozenProbe(c, mesh), mesh, sharding.rules_tuple(c.sharding_rules))
  assert frozen["target"].sharding.spec == jax.sharding.PartitionSpec("fsdp") == shardings["target"].spec
  np.testing.assert_array_equal(np.asarray(frozen["target"]), np.arange(16))
