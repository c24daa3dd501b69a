"""`vae`: trains the KL-regularised causal 3D VAE (`vdm_jax.models.vae.AutoencoderKL`) on videos and images.

Loss per step, for a batch of clips `[B, T, H, W, 3]` in [-1, 1]:

  rec   = l1_weight * |x - x'| + l2_weight * (x - x')^2, averaged over pixels; x' decodes a posterior sample, plus
          (with `decoder_noise` > 0) Gaussian noise of std sigma * (the batch's per-channel std of the posterior
          means, no gradient), sigma ~ U(0, decoder_noise) per clip: the decoder learns to give clean videos from
          latents a little off the encoder's, as a diffusion model's samples are (a latent diffusion model's errors
          are measured in those per-channel stds, the units it is trained in)
  kl    = KL(q(z|x) || N(0, I)) per clip / pixels per clip (so `kl_weight` means what it means in LDM/CogVideoX,
          where the per-clip sums are compared: 1e-6 is the usual value)
  gan   = -mean D(x')  (hinge generator loss), weighted by `disc_weight` * the adaptive weight
          ||grad_W rec|| / (||grad_W gan|| + 1e-4) (W: the decoder's last conv kernel), once step >= disc_start_step
  disc  = mean relu(1 - D(x)) + mean relu(1 + D(sg(x')))  (hinge), from disc_start_step

Joint image and video training: the first `round(B * image_fraction)` clips of each batch are replaced by one random
frame each (T = 1 images, which the causal VAE encodes to one latent frame); the rest stay videos (optionally a
random `train_frames`-long window). Both groups go through the model in the same step; their losses are averaged
with weights proportional to their number of clips. With `train_size`, every clip is first cut to a random square
crop on the latent grid (the VAE is convolutional, so it trains on crops and runs on whole frames, as LDM's did).

Discriminator: its params live next to the VAE's in one tree (`{'vae': ..., 'disc': ...}`) and one optimizer
updates both. The two objectives are separated by stop_gradient: the generator loss sees `stop_gradient(disc
params)` and the discriminator loss sees `stop_gradient(reconstruction)`, so the gradient of their sum w.r.t. the
VAE params is exactly the generator's and w.r.t. the discriminator params exactly the discriminator's (tested).
The discriminator's terms switch on at `loss.disc_start_step` (the loop passes the step to the loss).

Evals: PSNR and SSIM (vdm_jax.eval.metrics) of reconstructions (posterior mode) of the validation split; samples:
side-by-side (input | reconstruction) mp4s and a contact sheet.
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm_jax import io, xla_cpu
from vdm_jax.data import pipeline
from vdm_jax.eval.metrics import psnr_from_mse  # the loss's own `metrics` dict hides the module
from vdm_jax.models import vae as vae_model
from vdm_jax.models.vae import PatchDiscriminator3D
from vdm_jax.parallel import sharding
from vdm_jax.train import config as config_lib
from vdm_jax.train import registry

LAST_LAYER = ("decoder", "conv_out", "conv", "kernel")  # the kernel the adaptive GAN weight is measured on


def add_decoder_noise(z: jax.Array, means: jax.Array, max_sigma: float, sigma_rng: jax.Array,
                      eps_rng: jax.Array) -> jax.Array:
  """z [B, T', h, w, C] + sigma_b * std_c * eps: sigma_b ~ U(0, max_sigma) per example, std_c the per-channel std of
  `means` over all other axes (without gradient, so the encoder cannot outgrow the noise by scaling up)."""
  std = jax.lax.stop_gradient(jnp.std(means.reshape(-1, means.shape[-1]), axis=0))
  sigma = jax.random.uniform(sigma_rng, (z.shape[0],) + (1,) * (z.ndim - 1), maxval=max_sigma)
  return z + sigma * std * jax.random.normal(eps_rng, z.shape, z.dtype)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Discriminator hinge loss: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
  return jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))


@registry.register("vae")
class VAEExperiment(registry.Experiment):
  """The 3D causal VAE with L1/L2 + KL (+ optional 3D patch GAN); evals report validation PSNR and SSIM."""

  @classmethod
  def default_config(cls):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({
        "block_out_channels": (128, 256, 256, 512), "layers_per_block": 3, "latent_channels": 16,
        "norm_num_groups": 32, "temporal_compression_ratio": 4, "scaling_factor": 1.0,
        "group_norm_over_time": True,  # CogVideoX: GroupNorm statistics over (C/G, T, H, W) of each chunk
        "chunked": True,  # diffusers' frame batching in training and eval (False: whole clips)
        "remat": False,
        "patch_size": 1,  # p x p pixel patches folded into channels around the network (spatial: p 2^(n-1))
    })
    c.loss = ml_collections.ConfigDict({
        "l1_weight": 1.0, "l2_weight": 0.0, "kl_weight": 1e-6, "sample_posterior": True,
        "decoder_noise": 0.0,  # max std of the noise added to decoded latents, in per-channel stds (0: none)
        "image_fraction": 0.25,  # share of each batch trained as single frames
        "train_frames": 0,  # 0: whole clips; else a random window of this many frames (1 + ratio * k)
        "train_size": 0,  # 0: whole frames; else a random train_size x train_size crop per clip, on the latent grid
        "disc_weight": 0.0,  # 0 disables the discriminator
        "disc_start_step": 0, "disc_adaptive_weight": True, "disc_channels": (32, 64, 128),
    })
    c.eval = ml_collections.ConfigDict({"split": "validation", "num_examples": 64, "batch_size": 8,
                                        "num_samples": 4})
    # PSNR/SSIM, and on Captioned Shapes the probe on the same reconstructions: the t2v model's ceiling
    c.evals = ml_collections.ConfigDict({"recon": {"type": "psnr_ssim"}, "probe": {"type": "probe"}})
    return c

  @classmethod
  def validate_config(cls, config):
    m, l, e = config.model, config.loss, config.eval
    config_lib.check(len(m.block_out_channels) >= 1, "model.block_out_channels", "needs at least one block.")
    for f in m.block_out_channels:
      config_lib.check(f % m.norm_num_groups == 0, "model.block_out_channels",
                       f"{tuple(m.block_out_channels)} must all be divisible by model.norm_num_groups="
                       f"{m.norm_num_groups}.")
    config_lib.check(m.patch_size >= 1, "model.patch_size", f"is {m.patch_size}; must be >= 1 (1: no patching).")
    levels = 2 ** (len(m.block_out_channels) - 1)  # the resolution levels' compression
    ratio, factor = m.temporal_compression_ratio, m.patch_size * levels  # factor: spatial compression
    config_lib.check(ratio >= 1 and ratio & (ratio - 1) == 0 and ratio <= levels,
                     "model.temporal_compression_ratio",
                     f"is {ratio}; must be a power of 2 up to 2 ** (len(block_out_channels) - 1).")
    config_lib.check(l.l1_weight >= 0 and l.l2_weight >= 0 and l.l1_weight + l.l2_weight > 0, "loss.l1_weight",
                     "and loss.l2_weight must be >= 0 and not both 0.")
    config_lib.check(l.kl_weight >= 0, "loss.kl_weight", "must be >= 0.")
    config_lib.check(l.decoder_noise >= 0, "loss.decoder_noise", f"is {l.decoder_noise}; must be >= 0 (0: none).")
    config_lib.check(0.0 <= l.image_fraction <= 1.0, "loss.image_fraction", "must be in [0, 1].")
    # An odd number of latent frames decodes back to 1 + ratio (T' - 1) frames; an even one to ratio T' (as in
    # diffusers), so training windows have 1 + 2 ratio k frames.
    config_lib.check(l.train_frames == 0 or (l.train_frames > 0 and (l.train_frames - 1) % (2 * ratio) == 0),
                     "loss.train_frames", f"is {l.train_frames}; must be 0 (whole clips) or 1 + {2 * ratio} k.")
    config_lib.check(l.train_size == 0 or (l.train_size > 0 and l.train_size % factor == 0), "loss.train_size",
                     f"is {l.train_size}; must be 0 (whole frames) or a positive multiple of the spatial "
                     f"compression {factor}.")
    config_lib.check(l.disc_weight >= 0, "loss.disc_weight", "must be >= 0 (0 disables the discriminator).")
    config_lib.check(l.disc_start_step >= 0, "loss.disc_start_step", "must be >= 0.")
    config_lib.check(e.num_examples > 0 and e.batch_size > 0, "eval.num_examples", "and eval.batch_size must be > 0.")

  def __init__(self, config, mesh, workdir=None):
    super().__init__(config, mesh, workdir)
    dtype = jnp.dtype(config.train.compute_dtype)
    self.model = vae_model.build(config.model, dtype, config.train.param_dtype)
    self.discriminator = None
    if config.loss.disc_weight > 0:
      self.discriminator = PatchDiscriminator3D(tuple(config.loss.disc_channels), dtype=dtype)
    self._reconstruct = xla_cpu.jit(self.reconstruct)

  # --- Model.

  def init(self, rng, batch):
    shape = batch["video"].shape
    video = jnp.zeros((1, 1) + tuple(shape[2:]), jnp.float32)  # params do not depend on batch or frames
    vae_rng, disc_rng = jax.random.split(rng)
    params = {"vae": self.model.init(vae_rng, video, chunked=False)["params"]}
    if self.discriminator is not None:
      params["disc"] = self.discriminator.init(disc_rng, video)["params"]
    return params

  def reconstruct(self, params, video):
    """Posterior-mode reconstruction [B, T, H, W, 3] of video [B, T, H, W, 3]."""
    return self.model.apply({"params": params["vae"]}, video, chunked=self.config.model.chunked)[0]

  # --- Loss.

  def _split(self, video, rng):
    """(images [n, 1, H, W, 3] or None, videos [B - n, T', H, W, 3] or None) from a batch of clips."""
    l = self.config.loss
    b, t = video.shape[:2]
    n_img = int(round(b * l.image_fraction))
    frame_rng, crop_rng = jax.random.split(rng)
    video = self._crop(video, jax.random.fold_in(rng, 2))  # fold_in: without crops, the other draws are as before
    images = videos = None
    if n_img:
      frames = jax.random.randint(frame_rng, (n_img,), 0, t)
      images = video[jnp.arange(n_img), frames][:, None]
    if n_img < b:
      videos = video[n_img:]
      if l.train_frames and l.train_frames < t:
        start = jax.random.randint(crop_rng, (), 0, t - l.train_frames + 1)
        videos = jax.lax.dynamic_slice_in_dim(videos, start, l.train_frames, axis=1)
    return images, videos

  def _crop(self, video, rng):
    """A random `loss.train_size` square crop of each clip of video [B, T, H, W, 3] (all frames), at offsets that are
    multiples of the spatial compression, so a crop's latents lie on the grid of the whole frame's."""
    size = self.config.loss.train_size
    b, _, h, w, _ = video.shape
    if not size or (size == h and size == w):
      return video
    if size > h or size > w:
      raise ValueError(f"loss.train_size={size} is larger than the frames ({h}x{w}); use 0 or at most {min(h, w)}.")
    factor = self.model.spatial_compression
    rows_rng, cols_rng = jax.random.split(rng)
    rows = jax.random.randint(rows_rng, (b,), 0, (h - size) // factor + 1) * factor
    cols = jax.random.randint(cols_rng, (b,), 0, (w - size) // factor + 1) * factor
    crop = lambda clip, r, c: jax.lax.dynamic_slice(clip, (0, r, c, 0), (clip.shape[0], size, size, clip.shape[3]))
    return jax.vmap(crop)(video, rows, cols)

  def forward(self, vae_params, x, rng):
    """(reconstruction, posterior) of x [B, T, H, W, 3] in training: decodes a posterior sample (its mode unless
    `loss.sample_posterior`), plus the `decoder_noise` augmentation when configured."""
    l, chunked = self.config.loss, self.config.model.chunked
    if l.decoder_noise <= 0:
      return self.model.apply({"params": vae_params}, x, rng if l.sample_posterior else None, chunked)
    sample_rng, sigma_rng, eps_rng = jax.random.split(rng, 3)
    posterior = self.model.apply({"params": vae_params}, x, chunked, method="encode")
    z = posterior.sample(sample_rng) if l.sample_posterior else posterior.mode()
    z = add_decoder_noise(z, posterior.mean, l.decoder_noise, sigma_rng, eps_rng)
    return self.model.apply({"params": vae_params}, z, chunked, method="decode"), posterior

  def loss(self, params, batch, rng, frozen, step):
    l = self.config.loss
    video = nn.with_logical_constraint(batch["video"], ("batch", None, None, None, None))
    split_rng, sample_rng = jax.random.split(rng)
    groups = [g for g in self._split(video, split_rng) if g is not None]
    weights = [g.shape[0] / video.shape[0] for g in groups]
    use_disc = self.discriminator is not None
    if use_disc:
      disc_on = (step >= l.disc_start_step).astype(jnp.float32)
      disc_params = params["disc"]
      d_frozen = lambda x: self.discriminator.apply({"params": jax.lax.stop_gradient(disc_params)}, x)
      d_train = lambda x: self.discriminator.apply({"params": disc_params}, x)

    totals = {k: 0.0 for k in ("rec", "l1", "mse", "kl", "g_loss", "d_loss", "logits_real", "logits_fake")}
    last_rec, last_gan = 0.0, 0.0
    for i, (x, w) in enumerate(zip(groups, weights)):
      forward = lambda p, x=x, rng_i=jax.random.fold_in(sample_rng, i): self.forward(p, x, rng_i)
      if use_disc and l.disc_adaptive_weight:
        recon, vjp_fn, posterior = jax.vjp(forward, params["vae"], has_aux=True)
      else:
        recon, posterior = forward(params["vae"])
      diff = recon - x
      l1, mse = jnp.mean(jnp.abs(diff)), jnp.mean(jnp.square(diff))
      kl = jnp.mean(posterior.kl()) / (x[0].size)
      totals["rec"] += w * (l.l1_weight * l1 + l.l2_weight * mse)
      totals["l1"] += w * l1
      totals["mse"] += w * mse
      totals["kl"] += w * kl
      if use_disc:
        g_loss = -jnp.mean(d_frozen(recon))
        logits_real, logits_fake = d_train(x), d_train(jax.lax.stop_gradient(recon))
        totals["g_loss"] += w * g_loss
        totals["d_loss"] += w * hinge_d_loss(logits_real, logits_fake)
        totals["logits_real"] += w * jnp.mean(logits_real)
        totals["logits_fake"] += w * jnp.mean(logits_fake)
        if l.disc_adaptive_weight:
          # d(loss)/d(last kernel) = vjp of the forward with d(loss)/d(recon); XLA keeps only the last layer's part.
          g_rec = jax.grad(lambda r: w * (l.l1_weight * jnp.mean(jnp.abs(r - x))
                                          + l.l2_weight * jnp.mean(jnp.square(r - x))))(recon)
          g_gan = jax.grad(lambda r: -w * jnp.mean(d_frozen(r)))(recon)
          last = lambda g: _get(vjp_fn(g)[0], LAST_LAYER)
          last_rec, last_gan = last_rec + last(g_rec), last_gan + last(g_gan)

    loss = totals["rec"] + l.kl_weight * totals["kl"]
    metrics = {k: totals[k] for k in ("rec", "l1", "mse", "kl")}
    metrics["psnr"] = psnr_from_mse(totals["mse"], data_range=2.0)  # [-1, 1] pixels
    if use_disc:
      d_weight = jnp.float32(1.0)
      if l.disc_adaptive_weight:
        d_weight = jnp.linalg.norm(last_rec) / (jnp.linalg.norm(last_gan) + 1e-4)
        d_weight = jax.lax.stop_gradient(jnp.clip(d_weight, 0.0, 1e4))
      loss = loss + disc_on * (l.disc_weight * d_weight * totals["g_loss"] + totals["d_loss"])
      metrics.update({k: totals[k] for k in ("g_loss", "d_loss", "logits_real", "logits_fake")})
      metrics["d_weight"] = d_weight
      metrics["disc_on"] = disc_on
    return loss, metrics

  # --- Evals and samples.

  def _eval_batches(self):
    e = self.config.eval
    return pipeline.eval_batches(self.config.input, split=e.split, batch_size=e.batch_size,
                                 num_examples=e.num_examples)

  def reconstruct_videos(self, params, video) -> np.ndarray:
    """Host float clips [B, T, H, W, 3] in [-1, 1] -> their reconstructions (host float32, clipped to [-1, 1])."""
    video = sharding.shard_batch({"video": video}, self.mesh)["video"]
    return np.clip(np.asarray(jax.device_get(self._reconstruct(params, video))), -1.0, 1.0)

  def write_samples(self, params, step, out_dir):
    batch = next(self._eval_batches())
    recon = self.reconstruct_videos(params, pipeline.numeric(batch)["video"])
    n = self.config.eval.num_samples
    pairs = np.concatenate([io.to_uint8(batch["video"]), io.to_uint8(recon)], axis=3)[:n]  # side by side (width)
    os.makedirs(out_dir, exist_ok=True)
    for i, clip in enumerate(pairs):
      io.write_video(os.path.join(out_dir, f"recon_{i}.mp4"), clip)
    captions = [str(c) for c in batch.get("caption", [""] * len(pairs))][:n]
    io.write_image(os.path.join(out_dir, "recon.png"), io.contact_sheet(pairs, captions=captions))


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree
