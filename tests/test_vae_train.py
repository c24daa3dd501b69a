"""The `vae` experiment: configs, joint image/video batches, the GAN's separated gradients and adaptive weight,
the warm-up, a short training run with evals and samples, and experiments.evaluate on its checkpoint."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.train import config as config_lib
from vdm_jax.train import loop
from vdm_jax.train import registry
from vdm_jax.train import vae as vae_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import vae as vae_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import evaluate as evaluate_lib  # noqa: E402  pylint: disable=g-import-not-at-top


def _config(data_dir, **loss):
  c = vae_config.get_config("runlocal")
  c.input.data_dir = data_dir
  c.loss.update(loss)
  return c


def test_configs_validate_and_reject_bad_values():
  for arg in ("size=tiny", "size=cogvideox", "runlocal", "size=cogvideox,runlocal"):
    config_lib.validate(vae_config.get_config(arg))
  tiny = vae_config.get_config("size=tiny")  # the quickstart's recipe: 2x2 pixel patches, then three 2x levels
  assert tiny.input.builder_config == "64x64x17" and tuple(tiny.model.block_out_channels) == (16, 32, 64)
  assert tiny.model.patch_size == 2 and tiny.loss.decoder_noise == 0.5
  assert tiny.loss.disc_weight == 0.0  # the discriminator is off in the CPU config
  assert tuple(vae_config.get_config("size=cogvideox").model.block_out_channels) == (128, 256, 256, 512)
  with pytest.raises(config_lib.ConfigError, match="allowed"):
    vae_config.get_config("size=huge")
  c = vae_config.get_config("size=tiny")
  c.loss.train_frames = 5
  with pytest.raises(config_lib.ConfigError, match="loss.train_frames"):
    config_lib.validate(c)
  c = vae_config.get_config("size=tiny")
  c.model.norm_num_groups = 3
  with pytest.raises(config_lib.ConfigError, match="model.block_out_channels"):
    config_lib.validate(c)
  c = vae_config.get_config("size=tiny")
  c.model.patch_size = 0
  with pytest.raises(config_lib.ConfigError, match="model.patch_size.*must be >= 1"):
    config_lib.validate(c)


def _experiment(config):
  mesh = mesh_lib.create_mesh({"data": 1}, jax.devices()[:1])
  return registry.get("vae")(config, mesh)


def _batch(b=8, t=9, size=32):
  return {"video": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (b, t, size, size, 3)).astype(np.float32))}


def test_patch_size_reaches_the_model_and_the_crop_grid():
  c = vae_config.get_config("runlocal")  # one 2x level
  c.model.patch_size = 2
  assert _experiment(c).model.spatial_compression == 4
  c.loss.train_size = 2
  with pytest.raises(config_lib.ConfigError, match="loss.train_size.*multiple of the spatial compression 4"):
    config_lib.validate(c)


def test_joint_image_and_video_batches():
  c = vae_config.get_config("runlocal")
  c.loss.image_fraction = 0.25
  exp = _experiment(c)
  video = _batch()["video"]
  images, videos = exp._split(video, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  assert images.shape == (2, 1, 32, 32, 3) and videos.shape == (6, 9, 32, 32, 3)
  for i in range(2):  # each image is one frame of its clip
    assert any(np.array_equal(images[i, 0], video[i, t]) for t in range(9))
  np.testing.assert_array_equal(videos, video[2:])


def test_train_size_crops_each_clip_on_the_latent_grid():
  c = vae_config.get_config("runlocal")  # 2 blocks: spatial compression 2
  c.loss.update(image_fraction=0.25, train_size=8)
  exp = _experiment(c)
  video = _batch()["video"]
  images, videos = exp._split(video, jax.random.PRNGKey(3))  # pylint: disable=protected-access
  assert images.shape == (2, 1, 8, 8, 3) and videos.shape == (6, 9, 8, 8, 3)
  offsets = set()
  for i, clip in enumerate(videos):  # each crop is a window of its own clip, at even offsets
    found = [(r, q) for r in range(0, 25, 2) for q in range(0, 25, 2)
             if np.array_equal(clip, video[2 + i, :, r:r + 8, q:q + 8])]
    assert len(found) == 1, i
    offsets.add(found[0])
  assert len(offsets) > 1  # offsets are drawn per clip
  c.loss.train_size = 7
  with pytest.raises(config_lib.ConfigError, match="loss.train_size.*multiple of the spatial compression 2"):
    config_lib.validate(c)
  c.loss.train_size = 64
  with pytest.raises(ValueError, match="larger than the frames"):
    _experiment(c)._split(_batch(size=48)["video"], jax.random.PRNGKey(0))  # pylint: disable=protected-access


def _init(exp, batch):
  """The experiment's params, unboxed, initialised under jit."""
  return jax.jit(lambda rng: jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, exp.init(rng, batch),
                                          is_leaf=lambda x: hasattr(x, "unbox")))(jax.random.PRNGKey(0))


def test_decoder_noise_scales_with_the_channel_stds():
  rng = np.random.default_rng(1)
  means = jnp.asarray(rng.normal(size=(4, 3, 4, 4, 6)) * np.array([0.1, 0.5, 1, 2, 4, 8]) + 3.0, jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  noisy = vae_train.add_decoder_noise(means, means, 0.5, *keys)
  delta = np.asarray(noisy - means).reshape(4, -1, 6)
  # per example, the noise in channel c is sigma_b * std_c * N(0, 1): its per-channel std / std_c is one sigma_b
  ratios = delta.std(axis=1) / np.asarray(means).reshape(-1, 6).std(axis=0)
  assert ratios.max() <= 0.5 * 1.4 and np.ptp(ratios, axis=1).max() < 0.5 * ratios.max(axis=1).max()
  np.testing.assert_array_equal(vae_train.add_decoder_noise(means, means, 0.0, *keys), means)
  # no gradient flows through the std: d(sum z')/d(means) is the identity's
  grad = jax.grad(lambda m: jnp.sum(vae_train.add_decoder_noise(m, m, 0.5, *keys)))(means)
  np.testing.assert_allclose(np.asarray(grad), 1.0, rtol=1e-6)


@pytest.mark.slow(40)
def test_decoder_noise_in_the_loss():
  """With decoder_noise the decoded latents are perturbed (a different loss), and the forward pass equals the model's
  own encode -> sample -> decode when the noise is 0; a negative value fails at start-up."""
  batch = _batch(b=2, t=5)
  base = _experiment(_config("", image_fraction=0.0))
  params = _init(base, batch)
  rng = jax.random.PRNGKey(3)
  loss0, _ = base.loss(params, batch, rng, {}, jnp.int32(0))
  noisy = _experiment(_config("", image_fraction=0.0, decoder_noise=0.5))
  loss1, _ = noisy.loss(params, batch, rng, {}, jnp.int32(0))
  assert abs(float(loss1) - float(loss0)) > 1e-6
  recon, _ = base.forward(params["vae"], batch["video"], rng)
  want, _ = base.model.apply({"params": params["vae"]}, batch["video"], rng, base.config.model.chunked)
  np.testing.assert_array_equal(np.asarray(recon), np.asarray(want))
  c = _config("", decoder_noise=-0.1)
  with pytest.raises(config_lib.ConfigError, match="loss.decoder_noise"):
    config_lib.validate(c)


def _rec(l, recon, video):
  return l.l1_weight * jnp.mean(jnp.abs(recon - video)) + l.l2_weight * jnp.mean(jnp.square(recon - video))


@pytest.fixture(scope="module")
def gan():
  """runlocal with the discriminator on from step 0, deterministic (no images, posterior mode)."""
  c = vae_config.get_config("runlocal")
  c.loss.update(disc_weight=0.5, disc_start_step=0, image_fraction=0.0, sample_posterior=False, kl_weight=1e-3,
                l1_weight=1.0, l2_weight=0.5)
  exp = _experiment(c)
  batch = _batch(b=2)
  return c, exp, _init(exp, batch), batch


@pytest.mark.slow(75)
def test_gan_gradients_are_separated(gan):
  """grad(total) w.r.t. the VAE params == grad of the generator objective alone (discriminator frozen), and w.r.t.
  the discriminator params == grad of the hinge discriminator loss alone (reconstruction frozen)."""
  c, exp, params, batch = gan
  rng = jax.random.PRNGKey(1)
  (_, metrics), grads = jax.jit(jax.value_and_grad(lambda p, b, r: exp.loss(p, b, r, {}, jnp.int32(0)), has_aux=True))(
      params, batch, rng)
  video = batch["video"]
  model, disc, l = exp.model, exp.discriminator, c.loss
  d_weight = metrics["d_weight"]

  def generator(vae_params):
    recon, posterior = model.apply({"params": vae_params}, video)
    kl = jnp.mean(posterior.kl()) / video[0].size
    g = -jnp.mean(disc.apply({"params": params["disc"]}, recon))
    return _rec(l, recon, video) + l.kl_weight * kl + l.disc_weight * d_weight * g

  def discriminator(disc_params):
    recon = model.apply({"params": params["vae"]}, video)[0]
    return vae_train.hinge_d_loss(disc.apply({"params": disc_params}, video), disc.apply({"params": disc_params},
                                                                                        recon))

  expected = {"vae": jax.jit(jax.grad(generator))(params["vae"]),
              "disc": jax.jit(jax.grad(discriminator))(params["disc"])}
  for path, got in jax.tree_util.tree_flatten_with_path(grads)[0]:
    want = expected
    for key in path:
      want = want[key.key]
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(grads["disc"]["conv_out"]["kernel"]).max()) > 0


def test_adaptive_weight_matches_last_layer_gradients(gan):
  c, exp, params, batch = gan
  _, metrics = jax.jit(lambda p, b, r: exp.loss(p, b, r, {}, jnp.int32(0)))(params, batch, jax.random.PRNGKey(1))
  video = batch["video"]

  def last_layer_grad(term):
    def f(kernel):
      vae_params = jax.tree.map(lambda x: x, params["vae"])
      vae_params["decoder"]["conv_out"]["conv"]["kernel"] = kernel
      recon = exp.model.apply({"params": vae_params}, video)[0]
      if term == "rec":
        return _rec(c.loss, recon, video)
      return -jnp.mean(exp.discriminator.apply({"params": params["disc"]}, recon))
    return jax.jit(jax.grad(f))(params["vae"]["decoder"]["conv_out"]["conv"]["kernel"])

  expected = jnp.linalg.norm(last_layer_grad("rec")) / (jnp.linalg.norm(last_layer_grad("gan")) + 1e-4)
  np.testing.assert_allclose(metrics["d_weight"], expected, rtol=1e-4)
  assert float(metrics["d_weight"]) > 0


def test_discriminator_warm_up():
  c = vae_config.get_config("runlocal")
  c.loss.update(disc_weight=0.5, disc_start_step=5, image_fraction=0.0, sample_posterior=False)
  exp = _experiment(c)
  batch = _batch(b=2)
  params = _init(exp, batch)
  rng = jax.random.PRNGKey(1)
  loss = jax.jit(lambda p, b, r, s: exp.loss(p, b, r, {}, s))
  before, m_before = loss(params, batch, rng, jnp.int32(4))
  after, m_after = loss(params, batch, rng, jnp.int32(5))
  assert float(m_before["disc_on"]) == 0.0 and float(m_after["disc_on"]) == 1.0
  np.testing.assert_allclose(before, m_before["rec"] + c.loss.kl_weight * m_before["kl"], rtol=1e-6)
  assert abs(float(after) - float(before)) > 1e-4


@pytest.mark.slow(270)
def test_train_evaluate_and_samples(shapes_data_dir, tmp_path):
  """A short GAN run on the 8-device mesh with evals, FVD and samples, then experiments.evaluate on its checkpoint.
  The loop passes its step to the loss (the count of updates already taken): with disc_start_step=3 the
  discriminator joins at the 4th update, which the metrics log as step 4."""
  workdir = str(tmp_path / "vae")
  c = vae_config.get_config("runlocal,fvd=8")  # FVD of 8 reconstructions against 8 clips, and its floor, at the end
  c.input.data_dir = shapes_data_dir
  c.loss.update(disc_weight=0.5, disc_start_step=3)
  c.train.log_every = 1
  c.evals.recon.every_steps = 2
  c.evals.fvd.i3d_batch_size = 8  # split over the mesh's 8 data shards
  loop.train(c, workdir)
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [m["step"] for m in lines if "loss" in m] == [1, 2, 3, 4]
  assert {m["step"]: m["disc_on"] for m in lines if "disc_on" in m} == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0}
  assert all(np.isfinite(m["loss"]) and "psnr" in m and "kl" in m for m in lines if "loss" in m)
  assert [m["step"] for m in lines if "eval/psnr" in m] == [2, 4]  # the registry's schedule
  assert [m["step"] for m in lines if "eval/probe_all" in m] == [4] == [m["step"] for m in lines if "eval/fvd" in m]
  final = [m for m in lines if "eval/psnr" in m][-1]
  assert final["step"] == 4 and 0 < final["eval/ssim"] <= 1 and np.isfinite(final["eval/psnr"])
  assert all(0 <= final[f"eval/probe_{k}"] <= 1 for k in ("color", "shape", "motion", "all"))  # the t2v ceiling
  assert 0 < final["eval/fvd_floor"] < final["eval/fvd"]  # 4 steps reconstruct far worse than other real clips
  samples = os.path.join(workdir, "samples", "step_00000004")
  assert sorted(os.listdir(samples)) == ["recon.png", "recon_0.mp4", "recon_1.mp4"]
  from vdm_jax import io  # pylint: disable=g-import-not-at-top
  assert io.read_video(os.path.join(samples, "recon_0.mp4")).shape == (9, 32, 64, 3)  # input | reconstruction

  path, out = evaluate_lib.evaluate(c, workdir, evals=["recon"])
  assert path == os.path.join(workdir, "eval", "vae_step4.json")
  with open(path) as f:
    written = json.load(f)
  assert written["step"] == 4 and written["experiment"] == "vae"
  # The EMA params restored from the checkpoint give back the trainer's own final eval.
  np.testing.assert_allclose(written["metrics"]["psnr"], final["eval/psnr"], rtol=1e-6)
  np.testing.assert_allclose(written["metrics"]["ssim"], final["eval/ssim"], rtol=1e-6)
  assert "probe_all" not in written["metrics"]  # only the evaluators asked for
