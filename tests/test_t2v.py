"""The text-to-video experiment end to end on tiny configs: latent cache, training, exact resume, evals, sampling."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vdm_jax.data import latent_cache
from vdm_jax.train import checkpoint, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import t2v as t2v_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from configs import vae as vae_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def vae_workdir(shapes_data_dir, tmp_path_factory):
  """A `vae` run of one step: the frozen VAE the t2v runs read (its quality does not matter here)."""
  workdir = str(tmp_path_factory.mktemp("vae"))
  c = vae_config.get_config("runlocal")
  c.input.data_dir = shapes_data_dir
  c.train.steps = 1
  c.train.eval_every = 0
  loop.train(c, workdir)
  return workdir


def _t2v(data_dir, vae_dir, **train):
  c = t2v_config.get_config("runlocal")
  c.input.data_dir = data_dir
  c.vae.workdir = vae_dir
  c.schedule.name = "constant"
  c.train.update(train)
  return c


def test_train_evaluate_sample_and_resume_exactly(shapes_data_dir, vae_workdir, tmp_path):
  straight = str(tmp_path / "straight")
  loop.train(_t2v(shapes_data_dir, vae_workdir, steps=4, checkpoint_every=2), straight)
  lines = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
  evals = [m for m in lines if "eval/val_loss_t100" in m][-1]
  assert {"eval/val_loss_t900", "eval/probe_color", "eval/probe_shape", "eval/probe_motion", "eval/probe_all"} <= set(evals)
  assert os.path.exists(os.path.join(straight, "samples", "step_00000004", "samples.png"))

  # the latent cache sits next to the VAE, holds every training clip, and is checked against the captions
  cache = latent_cache.LatentCache(os.path.join(vae_workdir, "latent_cache", "32x32x9_tiny", "train"))
  # runlocal VAE: 2 blocks (2x spatial, 2x temporal), 4 latent channels -> moments [1 + 8/2, 16, 16, 2 * 4]
  assert len(cache) == 512 and cache.meta["shape"] == [5, 16, 16, 8]

  split = str(tmp_path / "split")
  loop.train(_t2v(shapes_data_dir, vae_workdir, steps=2, checkpoint_every=2, eval_every=0), split)
  loop.train(_t2v(shapes_data_dir, vae_workdir, steps=4, checkpoint_every=2), split)
  a, _ = checkpoint.load_params(straight, "params")
  b, _ = checkpoint.load_params(split, "params")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def test_sample_command_writes_videos_npy_and_jsonl(shapes_data_dir, vae_workdir, tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(_t2v(shapes_data_dir, vae_workdir, steps=2, checkpoint_every=2), workdir)
  out = str(tmp_path / "samples")
  cmd = [sys.executable, "-m", "experiments.sample", f"--workdir={workdir}", "--prompt", "a red circle moving left",
         "--prompt", "a blue square moves up", "--num_samples", "2", "--seed", "5", f"--out={out}", "--num_steps=2"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl"))]
  assert [(r["prompt"], r["seed"]) for r in rows] == [("a red circle moving left", 5), ("a red circle moving left", 6),
                                                      ("a blue square moves up", 5), ("a blue square moves up", 6)]
  video = np.load(rows[0]["npy"], allow_pickle=False)
  assert video.dtype == np.uint8 and video.shape == (9, 32, 32, 3)
  assert os.path.getsize(rows[0]["mp4"]) > 0

  # the same prompt and seed give the same video in-process (the seed fixes the initial noise)
  from vdm_jax.pipelines.t2v import TextToVideoPipeline  # pylint: disable=g-import-not-at-top
  pipe = TextToVideoPipeline.from_workdir(workdir)
  again = pipe.generate(["a red circle moving left"], seeds=[5], num_steps=2, sampler="ddim", guidance_scale=4.0)
  np.testing.assert_array_equal(again[0], video)


def _one_step(config, mesh_sizes, devices, batch):
  """Loss and updated params of one training step of the t2v model over a mesh of `devices`."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from vdm_jax.parallel import mesh as mesh_lib, sharding  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import registry  # pylint: disable=g-import-not-at-top
  from vdm_jax.train.state import make_optimizer, make_schedule  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.create_mesh(mesh_sizes, devices)
  rules = sharding.rules_tuple(config.sharding_rules)
  experiment = registry.get("t2v")(config, mesh)
  tx, schedule = make_optimizer(config), make_schedule(config)
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init_fn, abstract, shardings = loop.state_initializer(experiment, tx, shapes, mesh, rules)
    state = init_fn(jax.random.PRNGKey(0))
    step = loop.compile_train_step(experiment, tx, schedule, config, mesh, abstract, shardings, shapes)
    state, metrics, _ = step(state, sharding.shard_batch(batch, mesh), {})
  return float(metrics["loss"]), jax.tree.map(np.asarray, state.params), state.params


def test_one_step_is_the_same_on_every_mesh(shapes_data_dir, vae_workdir):
  """(8 data), (2 data x 4 fsdp), (2 fsdp x 2 tensor x 2 context) vs 1 device: loss and params to 1e-5 relative."""
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import registry  # pylint: disable=g-import-not-at-top
  c = _t2v(shapes_data_dir, vae_workdir)
  c.model.update({"num_heads": 2, "head_dim": 16})  # heads and widths divisible by the tensor axis
  experiment = registry.get("t2v")(c, None)
  experiment.workdir = None
  batch = pipeline.numeric(next(iter(pipeline.make_dataset(c.input, source=experiment.data_source("train")))))
  ref_loss, ref_params, _ = _one_step(c, {"data": 1}, jax.devices()[:1], batch)
  for sizes in ({"data": 8}, {"data": 2, "fsdp": 4}, {"fsdp": 2, "tensor": 2, "context": 2}):
    loss, params, placed = _one_step(c, sizes, jax.devices(), batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), params, ref_params)
    if sizes.get("fsdp", 1) > 1:  # parameters really are sharded, not replicated
      specs = {str(x.sharding.spec) for x in jax.tree.leaves(placed)}
      assert any("fsdp" in s for s in specs), specs
