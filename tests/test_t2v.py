"""The text-to-video experiment end to end on tiny configs: latent cache, training, exact resume, evals, sampling."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vdm_jax import runs
from vdm_jax.config import ConfigError
from vdm_jax.data import cache as cache_lib
from vdm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import t2v as t2v_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _t2v(data_dir, vae_dir, **train):
  c = t2v_config.get_config("runlocal")
  c.input.data_dir = data_dir
  c.vae.workdir = vae_dir
  c.schedule.name = "constant"
  c.train.update(train)
  return c


@pytest.mark.slow(140)
def test_train_evaluate_sample_and_resume_exactly(shapes_data_dir, vae_workdir, tmp_path):
  straight = str(tmp_path / "straight")
  c = _t2v(shapes_data_dir, vae_workdir, steps=4, checkpoint_every=2)
  c.evals.temporal = {"type": "temporal"}  # on the probe's samples (generated once for both)
  c.evals.val_loss.every_steps = 2
  loop.train(c, straight)
  lines = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
  assert [m["step"] for m in lines if "eval/val_loss_t100" in m] == [2, 4]
  evals = [m for m in lines if "eval/val_loss_t100" in m][-1]
  assert {"eval/val_loss_t900", "eval/probe_color", "eval/probe_shape", "eval/probe_motion", "eval/probe_all",
          "eval/flicker", "eval/warping_error", "eval/probe_consistency"} <= set(evals)
  assert 0 <= evals["eval/probe_consistency"] <= 1 and evals["eval/flicker"] >= 0
  assert os.path.exists(os.path.join(straight, "samples", "step_00000004", "samples.png"))

  # the latent cache sits next to the VAE, holds every training clip, and is checked against the captions
  cache = cache_lib.Cache(os.path.join(vae_workdir, "latent_cache", "32x32x9_tiny", "train"))
  # runlocal VAE: 2 blocks (2x spatial, 2x temporal), 4 latent channels -> moments [1 + 8/2, 16, 16, 2 * 4]
  assert len(cache) == 512 and cache.meta["shape"] == [5, 16, 16, 8]

  split = str(tmp_path / "split")
  loop.train(_t2v(shapes_data_dir, vae_workdir, steps=2, checkpoint_every=2, eval_every=0), split)
  loop.train(_t2v(shapes_data_dir, vae_workdir, steps=4, checkpoint_every=2), split)
  a, _ = runs.load_params(straight, "params")
  b, _ = runs.load_params(split, "params")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


@pytest.mark.slow(50)
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

  # the same prompts and seeds give the same videos in-process (the seed fixes the initial noise); the same batch
  # as the command's, so the same program: a batch of one rounds differently (1 level on a pixel, measured)
  from vdm_jax.pipelines.t2v import TextToVideoPipeline  # pylint: disable=g-import-not-at-top
  pipe = TextToVideoPipeline.from_workdir(workdir)
  again = pipe.generate([r["prompt"] for r in rows], seeds=[r["seed"] for r in rows], num_steps=2, sampler="ddim",
                        guidance_scale=4.0)
  for row, generated in zip(rows, again):
    np.testing.assert_array_equal(generated, np.load(row["npy"], allow_pickle=False))


def _one_step(config, mesh_sizes, devices, batch):
  """Loss, updated params (numpy and as placed) and the compiled HLO of one t2v training step over `devices`."""
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
    frozen, frozen_shardings = loop.place_frozen(experiment, mesh, rules)
    step = loop.compile_train_step(experiment, tx, schedule, config, mesh, abstract, shardings, shapes, frozen,
                                   frozen_shardings)
    state, metrics, _ = step(state, sharding.shard_batch(batch, mesh), frozen)
  return float(metrics["loss"]), jax.tree.map(np.asarray, state.params), state.params, step.as_text()


def _first_batch(config):
  """The first training batch of `config` (numeric leaves), through the experiment's data source."""
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import registry  # pylint: disable=g-import-not-at-top
  experiment = registry.get("t2v")(config, None)
  return pipeline.numeric(next(iter(pipeline.make_dataset(config.input, source=experiment.data_source("train")))))


@pytest.mark.slow(115)
def test_one_step_is_the_same_on_every_mesh(shapes_data_dir, vae_workdir):
  """(8 data), (2 data x 4 fsdp), (2 fsdp x 2 tensor x 2 context) vs 1 device: loss and params to 1e-5 relative."""
  c = _t2v(shapes_data_dir, vae_workdir)
  c.model.update({"num_heads": 2, "head_dim": 16})  # heads and widths divisible by the tensor axis
  batch = _first_batch(c)
  ref_loss, ref_params, _, _ = _one_step(c, {"data": 1}, jax.devices()[:1], batch)
  for sizes in ({"data": 8}, {"data": 2, "fsdp": 4}, {"fsdp": 2, "tensor": 2, "context": 2}):
    loss, params, placed, _ = _one_step(c, sizes, jax.devices(), batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), params, ref_params)
    if sizes.get("fsdp", 1) > 1:  # parameters really are sharded, not replicated
      specs = {str(x.sharding.spec) for x in jax.tree.leaves(placed)}
      assert any("fsdp" in s for s in specs), specs


@pytest.mark.slow(80)
def test_fractional_per_device_batch_with_context_parallelism(shapes_data_dir, vae_workdir):
  """2 clips on 8 devices, mesh fsdp 2 x context 4 (0.25 clips per device): the batch splits over fsdp only, each
  clip's tokens over context (Ulysses all-to-all); loss and params equal the 1-device step (fp32, 1e-5)."""
  from vdm_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  c = _t2v(shapes_data_dir, vae_workdir)
  c.model.update({"num_heads": 4, "head_dim": 16, "attention_backend": "ulysses_xla"})  # 4 heads, context 4
  c.input.batch_size = 2
  sizes = {"fsdp": 2, "context": 4}
  config_lib.check_batch_size(2, {"data": 1, "fsdp": 2, "tensor": 1, "context": 4})  # what the trainer checks
  batch = _first_batch(c)
  assert batch["latent_moments"].shape[0] == 2
  ref_loss, ref_params, _, _ = _one_step(c, {"data": 1}, jax.devices()[:1], batch)
  loss, params, placed, hlo = _one_step(c, sizes, jax.devices(), batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), params, ref_params)
  assert "all-to-all" in hlo  # the sequence really is split over context
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(placed))


@pytest.mark.slow(55)
def test_cached_text_embeddings_train_like_the_encoder_in_the_step(shapes_data_dir, vae_workdir, tmp_path):
  """`text.cached`: the frozen encoder's embeddings of every caption (and of "") written once and served with the
  batch give the same step as running that encoder inside it; a cache of another encoder is refused."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import config as config_lib, registry  # pylint: disable=g-import-not-at-top
  c = _t2v(shapes_data_dir, vae_workdir)
  c.text.trainable = False
  c.diffusion.text_dropout = 0.5  # about half the captions become the empty prompt
  cached = ml_collections.ConfigDict(c.to_dict())
  cached.text.update({"cached": True, "cache_dir": str(tmp_path / "text_cache")})
  cached.input.pp = "decode_text('caption')|keep('latent_moments', 'text_embeds', 'caption')"
  config_lib.validate(cached)
  batch, cached_batch = _first_batch(c), _first_batch(cached)
  np.testing.assert_array_equal(cached_batch["latent_moments"], batch["latent_moments"])  # the same clips
  assert "tokens" not in cached_batch and cached_batch["text_embeds"].shape == (8, 16, 32)
  assert os.path.isfile(os.path.join(str(tmp_path), "text_cache", "32x32x9_tiny", "train", "cache.json"))

  ref_loss, ref_params, _, _ = _one_step(c, {"data": 1}, jax.devices()[:1], batch)
  loss, params, _, hlo = _one_step(cached, {"data": 1}, jax.devices()[:1], cached_batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), params, ref_params)
  assert set(params) == {"dit"}

  other = ml_collections.ConfigDict(cached.to_dict())
  other.text.num_layers = 2
  with pytest.raises(cache_lib.CacheMismatchError, match="was written by the encoder"):
    registry.get("t2v")(other, None).text_cache("train")
  trained = ml_collections.ConfigDict(cached.to_dict())
  trained.text.trainable = True
  with pytest.raises(config_lib.ConfigError, match="'text.cached' needs text.trainable=False"):
    config_lib.validate(trained)


def test_latents_are_normalised_per_channel_and_the_pipeline_inverts_it(shapes_data_dir, vae_workdir):
  """latent_norm='channel' (the default for a VAE workdir): the DiT trains on (z - mean_c) / std_c with the training
  cache's channel statistics; the pipeline maps its samples back to VAE latents exactly."""
  from vdm_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import registry  # pylint: disable=g-import-not-at-top
  config = _t2v(shapes_data_dir, vae_workdir)
  experiment = registry.get("t2v")(config, mesh_lib.create_mesh({"data": 1}, jax.devices()[:1]))
  space = experiment.space
  assert space.latent_norm == "channel"
  cache = space.cache("train")
  means = np.stack([np.split(cache[i]["latent_moments"], 2, axis=-1)[0] for i in range(len(cache))])
  z = np.asarray(space.normalize(means)).reshape(-1, means.shape[-1])
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)
  np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-3)
  assert np.shape(space.scaling_factor) == np.shape(space.latent_shift) == (means.shape[-1],)
  from vdm_jax.pipelines.t2v import TextToVideoPipeline  # pylint: disable=g-import-not-at-top
  pipe = TextToVideoPipeline(dit=None, dit_params=None, text=None, text_params=None, vae=None, vae_params=None,
                             scaling_factor=space.scaling_factor, latent_shape=(), schedule=None,
                             latent_shift=space.latent_shift)
  np.testing.assert_allclose(np.asarray(pipe.denormalize(space.normalize(means))), means,
                             rtol=1e-5, atol=1e-5)

  config.vae.latent_norm = "scaling_factor"  # CogVideoX's convention: one global scale, no shift
  legacy = registry.get("t2v")(config, mesh_lib.create_mesh({"data": 1}, jax.devices()[:1]))
  assert legacy.space.latent_shift == 0.0
  np.testing.assert_allclose(np.asarray(legacy.space.normalize(means)), means / cache.meta["latent_std_overall"],
                             rtol=1e-5)
  config.vae.latent_norm = "per_pixel"
  with pytest.raises(ConfigError, match="'vae.latent_norm' is 'per_pixel'"):
    registry.get("t2v").validate_config(config)
