"""`experiments.sample` as a careful user meets it (issue [P] cases 4 and 8): bad --out and --num_samples fail before
any work, existing samples are never replaced silently, samples.jsonl always matches the files, sampling an unfinished
run says so, and the console carries no third-party noise."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vdm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import t2v as t2v_configs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

NOISE = ("could not be restored", "os.fork", "libtpu", "checkpoint_manager.py", "event_tracking.py")


def _sample(*args, env=None):
  cmd = [sys.executable, "-m", "experiments.sample", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def unfinished_run(shapes_data_dir, vae_workdir, tmp_path_factory):
  """A t2v run at step 2 whose config asks for 4: what a run launched for 4 steps and stopped after its step-2
  checkpoint leaves (the loop writes config.json before training)."""
  workdir = str(tmp_path_factory.mktemp("t2v_unfinished"))
  c = t2v_configs.get_config("runlocal")
  c.input.data_dir = shapes_data_dir
  c.vae.workdir = vae_workdir
  c.train.update(steps=2, checkpoint_every=2, eval_every=0, sample_every=0)
  loop.train(c, workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    config = json.load(f)
  config["train"]["steps"] = 4
  with open(path, "w") as f:
    json.dump(config, f)
  return workdir


def test_bad_out_and_num_samples_fail_before_any_work(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  missing = str(tmp_path / "no_such_run")  # never opened: the arguments fail first
  result = _sample(f"--workdir={missing}", "--prompt=a red circle", f"--out={a_file}")
  assert result.returncode != 0 and f"--out '{a_file}' is a file, not a folder" in result.stderr
  result = _sample(f"--workdir={missing}", "--prompt=a red circle", "--num_samples=0", f"--out={tmp_path}/s")
  assert result.returncode != 0 and "--num_samples=0" in result.stderr
  assert not os.path.exists(tmp_path / "s")


def _rows(out):
  with open(os.path.join(out, "samples.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _assert_jsonl_matches_files(out):
  rows = _rows(out)
  listed = [os.path.basename(r[k]) for r in rows for k in ("mp4", "npy")]
  assert len(listed) == len(set(listed))  # each file once
  assert sorted(listed) == sorted(n for n in os.listdir(out) if n.endswith((".mp4", ".npy")))


@pytest.mark.slow(100)
def test_existing_samples_are_kept_unless_overwrite(unfinished_run, tmp_path, one_device_env):
  out = str(tmp_path / "samples")
  args = [f"--workdir={unfinished_run}", "--num_samples=2", "--seed=5", f"--out={out}", "--num_steps=2"]
  first = _sample("--prompt=a red circle moving left", *args, env=one_device_env)
  assert first.returncode == 0, first.stderr[-3000:]
  # One line says the run is unfinished; the third-party lines a user cannot act on are gone.
  assert first.stderr.count("Sampling an unfinished run") == 1
  assert "is at step 2 of train.steps=4" in first.stderr
  assert not [line for line in first.stderr.splitlines() if any(n in line for n in NOISE)], first.stderr
  _assert_jsonl_matches_files(out)
  kept = {r["npy"]: np.load(r["npy"]) for r in _rows(out)}

  # The same names again: refused before sampling, nothing touched.
  again = _sample("--prompt=a blue square moves up", *args, env=one_device_env)
  assert again.returncode != 0 and "already holds 4 of the files to write" in again.stderr
  assert "--overwrite" in again.stderr
  assert [r["prompt"] for r in _rows(out)] == ["a red circle moving left"] * 2
  for path, video in kept.items():
    np.testing.assert_array_equal(np.load(path), video)

  # --overwrite: the files are replaced and samples.jsonl names the new prompt for them, each file once.
  replaced = _sample("--prompt=a blue square moves up", *args, "--overwrite", env=one_device_env)
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert [(r["prompt"], r["seed"]) for r in _rows(out)] == [("a blue square moves up", 5), ("a blue square moves up", 6)]
  _assert_jsonl_matches_files(out)


@pytest.mark.slow(95)
def test_lora_training_agrees_across_meshes_and_modes(unfinished_run, shapes_data_dir, vae_workdir, tmp_path):
  """[M]: two LoRA steps (SGD, so the update is linear in the gradient) data-parallel over 8 devices with merged
  adapters, and over data=2 x fsdp=2 x tensor=2 with inline adapters sharded like their kernels, give the same
  adapters to 1e-5 of their largest change (float32)."""
  from vdm_jax import runs  # pylint: disable=g-import-not-at-top
  results = {}
  for name, mesh, mode in (("data", {"data": 8}, "merge"), ("sharded", {"data": 2, "fsdp": 2, "tensor": 2},
                                                                          "inline")):
    c = t2v_configs.get_config("runlocal")
    c.input.data_dir, c.vae.workdir, c.init_from = shapes_data_dir, vae_workdir, unfinished_run
    c.train.update(steps=2, checkpoint_every=2, eval_every=0, sample_every=0, ema_decay=0.0)
    c.optimizer.update(name="sgd", grad_clip_norm=0.0)
    c.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, "context": 1, **mesh})
    c.lora.update(targets=(("dit/layers/(attn/to_(q|k|v|out)|mlp)", 4, 4.0),), mode=mode)
    loop.train(c, str(tmp_path / name))
    results[name] = runs.load_params(str(tmp_path / name), "params")[0]
  b = results["data"]["dit"]["layers"]["attn"]["to_q"]["lora_b"]
  assert np.abs(b).max() > 0  # B moved from zero
  scale = max(np.abs(x).max() for x in jax.tree.leaves(jax.tree.map(lambda x: x["lora_b"], results["data"],
                                                                      is_leaf=lambda x: "lora_b" in x)))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * scale), results["data"],
               results["sharded"])


@pytest.mark.slow(40)
def test_a_lora_run_trains_only_adapters_and_samples_over_its_base(unfinished_run, shapes_data_dir, vae_workdir,
                                                                   tmp_path):
  """[M]: a LoRA run over the run above (rank 4 on the attention projections) holds only adapters in its
  checkpoint and optimizer state; its merged model leaves every other base parameter bit-identical; its evals
  read the merged model; a plain run's sampler refuses a lora_scale."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from experiments import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax import runs  # pylint: disable=g-import-not-at-top
  from vdm_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  c = t2v_configs.get_config("runlocal")
  c.input.data_dir, c.vae.workdir = shapes_data_dir, vae_workdir
  c.train.update(steps=2, checkpoint_every=2, sample_every=0)
  c.evals = ml_collections.ConfigDict({"_free_form": True, "val_loss": {"type": "val_loss_grid"}})
  c.lora.targets = (("dit/layers/attn/to_(q|k|v|out)$", 4, 4.0),)
  with pytest.raises(ConfigError, match="'init_from' is empty: LoRA fine-tunes a base run"):
    loop.train(c, str(tmp_path / "no_base"))
  c.init_from = unfinished_run
  workdir = str(tmp_path / "lora")
  loop.train(c, workdir)

  adapters, _ = runs.load_params(workdir, "params")
  leaves = jax.tree_util.tree_leaves_with_path(adapters)
  names = {jax.tree_util.keystr(p) for p, _ in leaves}
  assert len(leaves) == 8 and all(n.endswith(("['lora_a']", "['lora_b']")) for n in names)
  assert np.abs(adapters["dit"]["layers"]["attn"]["to_q"]["lora_b"]).max() > 0  # trained from zero
  _, state, _, _, _ = evaluate_lib.restore_state(c, workdir)
  shapes = sorted(tuple(x.shape) for _, x in leaves)
  moments = [tuple(x.shape) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert sorted(moments) == sorted(shapes * 2)  # Adam's two moments of each adapter, nothing of the base

  base, _ = runs.load_params(unfinished_run)
  merged, _ = runs.load_model_params(workdir)
  changed = []
  for (path, b), m in zip(jax.tree_util.tree_leaves_with_path(base), jax.tree.leaves(merged)):
    if not np.array_equal(b, np.asarray(m)):
      changed.append(jax.tree_util.keystr(path))
  assert sorted(changed) == [f"['dit']['layers']['attn']['{k}']['kernel']" for k in ("to_k", "to_out", "to_q", "to_v")]
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert np.isfinite([m for m in lines if "eval/val_loss_t100" in m][-1]["eval/val_loss_t900"])
  with pytest.raises(ValueError, match="not a LoRA run"):
    runs.load_model_params(unfinished_run, lora_scale=0.5)
