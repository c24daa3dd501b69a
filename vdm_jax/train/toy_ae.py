"""`toy_ae`: a denoising per-frame autoencoder on Captioned Shapes.

The smallest real experiment: it exercises every part of the loop (input, sharding, EMA, checkpoints, evals,
samples) in seconds on a CPU, which is what the loop's tests and the training-stack check (`configs/toy_ae.py`) use. Loss: MSE between
the clean clip and the reconstruction of the clip plus Gaussian noise (`model.noise_std`), so the step's rng matters.
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm_jax import io, xla_cpu
from vdm_jax.data import buckets, pipeline
from vdm_jax.eval import metrics
from vdm_jax.models.frame_ae import FrameAutoencoder
from vdm_jax.parallel import sharding
from vdm_jax.train import config as config_lib
from vdm_jax.train import registry


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-clip PSNR in dB of videos in [-1, 1], [B, T, H, W, C] -> [B], on device (float32)."""
  mse = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3, 4))
  return metrics.psnr_from_mse(mse, data_range=2.0)


@registry.register("toy_ae")
class ToyAutoencoder(registry.Experiment):
  """Denoising frame autoencoder; evals report validation PSNR."""

  @classmethod
  def default_config(cls):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"features": (16, 32), "latent_channels": 4, "noise_std": 0.1})
    c.eval = ml_collections.ConfigDict({"split": "validation", "num_examples": 32, "batch_size": 8})
    c.evals = ml_collections.ConfigDict({"recon": {"type": "psnr_ssim", "ssim": False}})
    return c

  @classmethod
  def validate_config(cls, config):
    config_lib.check(len(config.model.features) >= 1, "model.features", "needs at least one level.")
    config_lib.check(config.model.noise_std >= 0, "model.noise_std", "must be >= 0.")
    config_lib.check(config.eval.num_examples > 0, "eval.num_examples", "must be > 0.")

  def __init__(self, config, mesh, workdir=None):
    super().__init__(config, mesh, workdir)
    self.model = FrameAutoencoder(features=tuple(config.model.features),
                                  latent_channels=config.model.latent_channels,
                                  dtype=jnp.dtype(config.train.compute_dtype))
    self._reconstruct = xla_cpu.jit(lambda params, video: self.model.apply({"params": params}, video))

  def init(self, rng, batch):
    video = jnp.zeros(batch["video"].shape, jnp.float32)
    return self.model.init(rng, video)["params"]

  def loss(self, params, batch, rng, frozen, step):
    video = nn.with_logical_constraint(batch["video"], ("batch", "length", None, None, None))
    noisy = video + self.config.model.noise_std * jax.random.normal(rng, video.shape, video.dtype)
    recon = self.model.apply({"params": params}, noisy)
    loss = jnp.mean(jnp.square(recon - video))
    return loss, {"mse": loss}

  def _eval_batches(self):
    e = self.config.eval
    return pipeline.eval_batches(buckets.first_input(self.config.input), split=e.split, batch_size=e.batch_size,
                                 num_examples=e.num_examples)

  def reconstruct_videos(self, params, video):
    """Host float clips [B, T, H, W, 3] in [-1, 1] -> their reconstructions (host, float32)."""
    return np.asarray(jax.device_get(self._reconstruct(params, sharding.shard_batch({"video": video},
                                                                                    self.mesh)["video"])))

  def write_samples(self, params, step, out_dir):
    batch = next(self._eval_batches())
    video = sharding.shard_batch(pipeline.numeric(batch), self.mesh)["video"]
    originals, recon = sharding.to_host((video, self._reconstruct(params, video)))  # collective: all processes
    if jax.process_index() != 0:
      return
    pairs = np.concatenate([io.to_uint8(originals), io.to_uint8(recon)], axis=3)  # side by side along width
    os.makedirs(out_dir, exist_ok=True)
    for i, clip in enumerate(pairs[:4]):
      io.write_video(os.path.join(out_dir, f"recon_{i}.mp4"), clip)
    io.write_image(os.path.join(out_dir, "recon.png"), io.contact_sheet(pairs[:4]))
