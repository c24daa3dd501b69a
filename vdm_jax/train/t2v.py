"""`t2v`: text-to-video latent diffusion: a DiT denoises VAE latents conditioned on text.

Data: each clip's VAE posterior moments come from a latent cache written once with the frozen VAE (a VAE workdir
or a CogVideoX folder), joined to the examples by index; captions are tokenized in the input pipeline. The step:

  z = (mean + std eps - shift) * scale           the posterior sample (or its mean), normalised (`vae.latent_norm`):
                                                 per channel to zero mean and unit variance (a VAE trained here),
                                                 or times the VAE's scaling factor (CogVideoX's folders)
  text: byte/T5 encoder (trained with the DiT, or frozen), captions dropped to "" with `diffusion.text_dropout`;
        a frozen encoder's embeddings can be cached once per split (`text.cached`, vdm_jax/text/cache.py): the
        batch then carries `text_embeds` and the step never runs (or holds) the encoder
  t ~ timestep sampler; x_t = noised z; loss = weighted MSE(DiT(x_t, t, text), target)   (v / eps / x0 / flow)

A share `diffusion.image_fraction` of each batch trains as images (the first latent frame, which the causal VAE
encodes from the first frame alone). Evals: the validation loss on a fixed grid of timesteps, and the probe's
accuracy on videos sampled for prompts of held-out seeds; samples: mp4s and a contact sheet for fixed prompts.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vdm_jax import xla_cpu
from vdm_jax.data import latent_cache, pipeline
from vdm_jax.data import shapes as shapes_lib
from vdm_jax.diffusion import objectives, schedules, timesteps
from vdm_jax.models.dit import DiT
from vdm_jax.parallel import sharding
from vdm_jax.text import cache as text_cache_lib
from vdm_jax.text import encoders
from vdm_jax.train import config as config_lib
from vdm_jax.train import registry

OBJECTIVES = ("v_prediction", "epsilon", "sample", "flow")
LATENT_NORMS = ("auto", "channel", "scaling_factor")


def dit_config(**overrides) -> ml_collections.ConfigDict:
  """The `model` section: DiT fields (see vdm_jax/models/dit.py), small and trained from scratch by default."""
  c = ml_collections.ConfigDict({
      "conditioning": "joint", "activation": "gelu_tanh", "num_layers": 4, "num_heads": 4, "head_dim": 32,
      "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1, "time_embed_dim": 128, "pos_embed": "none",
      "use_rope": True, "rope_grid": "slice", "qk_norm": True, "attention_backend": "auto", "remat_policy": "none",
      "pooled_text": False, "scan_unroll": 1,
  })
  c.update(overrides)
  return c


def probe_prompts(n: int) -> list[str]:
  """n prompts cycling over all 120 (color, shape, motion) combinations in a fixed shuffled order, each with a
  caption template drawn from a fixed seed."""
  combos = list(itertools.product(shapes_lib.COLORS, shapes_lib.SHAPES, shapes_lib.MOTIONS))
  rng = np.random.default_rng(0)
  order = rng.permutation(len(combos))
  return [shapes_lib.caption_for(*combos[order[i % len(combos)]], template=int(rng.integers(0, 6)))
          for i in range(n)]


def _write_once(meta_file: str, name: str, write: Callable[[], Any],
                prepare: Callable[[], Any] | None = None) -> None:
  """Calls `write` on process 0 if `meta_file` (a cache's last-written file) is missing, as process 0 sees it, and
  `prepare` first on every process; the others wait until it is written. A collective in multi-process runs:
  every process calls it for the same caches in the same order.

  `write` runs on process 0's first device under a mesh of its own: called from inside the run's mesh (an eval's
  validation cache), the encoders' sharding constraints would otherwise spread it over every process's devices.
  """
  multi = jax.process_count() > 1
  missing = not os.path.isfile(meta_file)
  if multi:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    missing = bool(multihost_utils.broadcast_one_to_all(np.asarray(missing)))
  if not missing:
    return
  if prepare is not None:
    prepare()
  if jax.process_index() == 0:
    from vdm_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    with jax.set_mesh(mesh_lib.create_mesh({"data": 1}, jax.local_devices()[:1])):
      write()
  if multi:
    multihost_utils.sync_global_devices(name)


@registry.register("t2v")
class TextToVideo(registry.Experiment):
  """DiT on cached VAE latents of Captioned Shapes (or any captioned video dataset)."""

  @classmethod
  def default_config(cls):
    c = ml_collections.ConfigDict()
    c.vae = ml_collections.ConfigDict({
        "workdir": "",  # a `vae` experiment's workdir (its EMA params), or
        "path": "",  # a diffusers AutoencoderKLCogVideoX folder
        # How latents are normalised for the DiT: 'channel' = (z - mean_c) / std_c with the per-channel statistics
        # of the training latent cache; 'scaling_factor' = z * scaling_factor (CogVideoX: no shift); 'auto' =
        # 'scaling_factor' for a CogVideoX folder (`path`) or an explicit scaling_factor, else 'channel'.
        # A VAE trained with a tiny KL weight has per-channel offsets far larger than its variations (the tiny
        # VAE: means -1.2 ... 2.4, stds 0.15 ... 0.5), which one global scale leaves in place.
        "latent_norm": "auto",
        "scaling_factor": 0.0,  # 0: the folder's own value with `path`, else 1 / std of the cached training latents
        "cache_dir": "",  # '' -> <vae workdir or this workdir>/latent_cache/<builder_config>
        "sample_posterior": True,
        "encode_batch_size": 16,
        # [T', h, w, C] of one clip's latents when there is no latent cache yet (planning a run with no data or
        # weights on disk, e.g. (13, 60, 90, 16) for CogVideoX at 480x720x49); () reads it from the cache.
        "latent_shape": (),
    })
    c.text = encoders.default_config()
    # max_length 40: the longest Captioned Shapes caption is 36 bytes (+ EOS); 32 cut the motion word off 6% of them.
    c.text.update({"type": "byte", "trainable": True, "max_length": 40, "d_model": 128, "d_kv": 32,
                   "num_heads": 4, "d_ff": 256, "num_layers": 2})
    # A frozen encoder (trainable=False) run once per split into an embedding cache instead of in every step
    # (CogVideoX trains on cached T5-XXL embeddings); input.pp must then keep 'text_embeds'.
    c.text.cached = False
    c.text.cache_dir = ""  # '' -> <vae workdir or this workdir>/text_cache/<builder_config>
    c.model = dit_config()
    c.diffusion = ml_collections.ConfigDict({
        "prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "beta_end": 0.012, "num_train_timesteps": 1000, "snr_shift_scale": 1.0, "rescale_betas_zero_snr": True,
        "timestep_sampling": "uniform", "flow_shift": 1.0, "loss_weighting": "none", "text_dropout": 0.1,
        "image_fraction": 0.0,
    })
    c.sample = ml_collections.ConfigDict({
        "prompts": ("a red circle moving left", "a blue square moves up", "green triangle sliding down",
                    "a white circle standing still"),
        "sampler": "ddim", "num_steps": 25, "guidance_scale": 4.0, "use_dynamic_cfg": False, "seed": 0,
        "batch_size": 16,
        "guidance_rescale": 0.0,  # Lin et al.'s rescale of the guided output, in [0, 1] (0: off)
    })
    c.eval = ml_collections.ConfigDict({
        "split": "validation", "num_examples": 64, "batch_size": 16, "loss_timesteps": (100, 300, 500, 700, 900),
        "probe_prompts": 64, "probe_seed": 1000,  # probe videos use seeds the samples never used
    })
    return c

  @classmethod
  def validate_config(cls, config):
    d, v = config.diffusion, config.vae
    config_lib.check(bool(v.workdir) != bool(v.path), "vae.workdir",
                     "and vae.path: give exactly one (a VAE workdir or a CogVideoX VAE folder).")
    config_lib.check_choice(config, "vae.latent_norm", LATENT_NORMS)
    config_lib.check_choice(config, "diffusion.prediction_type", OBJECTIVES)
    config_lib.check_choice(config, "diffusion.beta_schedule", schedules.BETA_SCHEDULES)
    config_lib.check_choice(config, "diffusion.timestep_sampling", timesteps.SAMPLERS)
    config_lib.check_choice(config, "diffusion.loss_weighting", objectives.WEIGHTINGS)
    config_lib.check(0.0 <= d.text_dropout < 1.0, "diffusion.text_dropout", "must be in [0, 1).")
    config_lib.check(0.0 <= d.image_fraction < 1.0, "diffusion.image_fraction", "must be in [0, 1).")
    config_lib.check(d.prediction_type != "flow" or d.timestep_sampling == "logit_normal" or
                     d.timestep_sampling == "uniform", "diffusion.timestep_sampling",
                     "must be 'uniform' or 'logit_normal' for flow.")
    from vdm_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top
    config_lib.check_choice(config, "sample.sampler", samplers.SAMPLERS)
    config_lib.check(0.0 <= config.sample.guidance_rescale <= 1.0, "sample.guidance_rescale",
                     f"is {config.sample.guidance_rescale}; must be in [0, 1] (0: off).")
    encoders.validate_config(config.text)
    if "tokenize(" in config.input.pp:
      config_lib.check(f"tokenize({config.text.max_length}" in config.input.pp.replace(" ", ""), "input.pp",
                       f"tokenizes to another length than text.max_length={config.text.max_length}; use "
                       f"tokenize({config.text.max_length}).")
    config_lib.check(config.model.conditioning in ("joint", "cross"), "model.conditioning",
                     f"is {config.model.conditioning!r}; allowed values: ['joint', 'cross'].")
    if config.text.cached:
      config_lib.check(not config.text.trainable, "text.cached",
                       "needs text.trainable=False: a trained encoder's embeddings change every step.")
      config_lib.check("'text_embeds'" in config.input.pp or '"text_embeds"' in config.input.pp, "input.pp",
                       "must keep 'text_embeds' when text.cached=True, e.g. "
                       "\"decode_text('caption')|keep('latent_moments', 'text_embeds', 'caption')\".")

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    self.text = encoders.build(config.text)
    self.schedule = schedules.make_schedule(
        config.diffusion.beta_schedule, config.diffusion.num_train_timesteps, config.diffusion.beta_start,
        config.diffusion.beta_end, config.diffusion.snr_shift_scale, config.diffusion.rescale_betas_zero_snr)
    self._alphas_cumprod = jnp.asarray(self.schedule.alphas_cumprod, jnp.float32)
    self._vae = None  # (module, params), loaded on first use
    self._caches: dict[str, latent_cache.LatentCache] = {}
    self._text_caches: dict[str, text_cache_lib.EmbeddingCache] = {}
    self._frozen_text = None

  # --- Frozen VAE and the latent cache.

  def vae(self):
    """(module, params) of the frozen VAE."""
    if self._vae is None:
      from vdm_jax.pipelines import t2v as t2v_pipeline  # pylint: disable=g-import-not-at-top
      self._vae = t2v_pipeline.load_vae(self.config.vae)
    return self._vae

  def _split_dir(self, override: str, name: str, split: str) -> str:
    """`<override or <vae workdir, else this workdir>/<name>>/<builder_config or dataset>/<split>`."""
    root = override or os.path.join(self.config.vae.workdir or self.workdir or ".", name)
    return os.path.join(root, self.config.input.builder_config or self.config.input.dataset, split)

  def cache_dir(self, split: str) -> str:
    return self._split_dir(self.config.vae.cache_dir, "latent_cache", split)

  def latents(self, split: str) -> latent_cache.LatentCache:
    """The split's latent cache, written first (by process 0) if missing."""
    if split not in self._caches:
      directory = self.cache_dir(split)

      def write():
        module, params = self.vae()
        encode = xla_cpu.jit(lambda p, video: jnp.concatenate(
            [(posterior := module.apply({"params": p}, video, method="encode")).mean, posterior.logvar], -1))
        logging.info("Writing the %s latent cache to %s.", split, directory)
        latent_cache.write(directory, pipeline.data_source(self.config.input, split),
                           lambda video: np.asarray(encode(params, video)),
                           batch_size=self.config.vae.encode_batch_size,
                           fingerprint={"workdir": self.config.vae.workdir, "path": self.config.vae.path})

      # Every process loads the VAE: restoring a VAE workdir's checkpoint is itself a step all processes take.
      _write_once(os.path.join(directory, latent_cache.META_FILE), f"latent_cache_{split}", write,
                  prepare=self.vae)
      self._caches[split] = latent_cache.LatentCache(directory)
    return self._caches[split]

  def text_cache_dir(self, split: str) -> str:
    return self._split_dir(self.config.text.cache_dir, "text_cache", split)

  def text_cache(self, split: str) -> text_cache_lib.EmbeddingCache:
    """The split's text-embedding cache (`text.cached`), written first (by process 0, with the frozen encoder) if
    missing; one written by another encoder fails instead of training on the wrong embeddings."""
    if split not in self._text_caches:
      directory = self.text_cache_dir(split)

      def write():
        logging.info("Writing the %s text-embedding cache to %s.", split, directory)
        text_cache_lib.cache_split(directory, self.config.input, split, self.text, self._encoder_params())

      _write_once(os.path.join(directory, text_cache_lib.META_FILE), f"text_cache_{split}", write)
      cache = text_cache_lib.EmbeddingCache(directory)
      expected = json.loads(json.dumps(self.text.fingerprint()))
      if cache.meta["encoder"] != expected:
        raise text_cache_lib.CacheMismatchError(
            f"The text-embedding cache {directory!r} was written by the encoder {cache.meta['encoder']}, not the "
            f"configured {expected}; remove it or point text.cache_dir elsewhere.")
      self._text_caches[split] = cache
    return self._text_caches[split]

  def data_source(self, split):
    source = latent_cache.CachedLatentSource(pipeline.data_source(self.config.input, split), self.latents(split))
    if self.config.text.cached:
      source = text_cache_lib.CachedTextSource(source, self.text_cache(split))
    return source

  @property
  def latent_norm(self) -> str:
    """'channel' or 'scaling_factor' (`vae.latent_norm` with 'auto' resolved)."""
    v = self.config.vae
    if v.latent_norm != "auto":
      return v.latent_norm
    return "scaling_factor" if v.path or v.scaling_factor > 0 else "channel"

  @property
  def latent_shift(self) -> np.ndarray | float:
    """Subtracted from VAE latents before scaling: float32 [C] (latent_norm='channel': the channel means) or 0."""
    if self.latent_norm == "channel":
      return np.asarray(self.latents(self.config.input.split).meta["latent_mean"], np.float32)
    return 0.0

  @property
  def scaling_factor(self) -> np.ndarray | float:
    """The latent scale: float32 [C] (latent_norm='channel': 1 / the channel stds) or one float."""
    v = self.config.vae
    if self.latent_norm == "channel":
      std = np.asarray(self.latents(self.config.input.split).meta["latent_std"], np.float64)
      return (1.0 / np.maximum(std, 1e-6)).astype(np.float32)
    if v.scaling_factor > 0:
      return float(v.scaling_factor)
    if v.path:
      return float(self.vae()[0].scaling_factor)
    return 1.0 / float(self.latents(self.config.input.split).meta["latent_std_overall"])

  def normalize_latents(self, z: jax.Array) -> jax.Array:
    """VAE latents [..., C] -> the DiT's latents: (z - latent_shift) * scaling_factor."""
    return (z - jnp.asarray(self.latent_shift, jnp.float32)) * jnp.asarray(self.scaling_factor, jnp.float32)

  def latent_shape(self) -> tuple[int, ...]:
    """[T', h, w, C] of one clip's latents: from the latent cache, or from `vae.latent_shape` while there is none
    (so a run can be planned without data or VAE weights); both given must agree."""
    configured = tuple(int(x) for x in self.config.vae.latent_shape)
    split = self.config.input.split
    if configured and split not in self._caches and not os.path.isfile(
        os.path.join(self.cache_dir(split), latent_cache.META_FILE)):
      return configured
    t, h, w, c2 = self.latents(split).meta["shape"]
    if configured and configured != (t, h, w, c2 // 2):
      raise config_lib.ConfigError(f"vae.latent_shape={configured} but the latent cache {self.cache_dir(split)} "
                                   f"holds latents of shape {(t, h, w, c2 // 2)}; fix or remove vae.latent_shape.")
    return (t, h, w, c2 // 2)

  # --- Model.

  def dit(self) -> DiT:
    t, h, w, c = self.latent_shape()
    fields = {f.name for f in dataclasses.fields(DiT)}
    kwargs = {k: v for k, v in self.config.model.to_dict().items() if k in fields}
    unknown = sorted(set(self.config.model.to_dict()) - fields)
    if unknown:
      raise config_lib.ConfigError(f"Config keys {['model.' + k for k in unknown]} are not DiT fields; "
                                   f"allowed: {sorted(fields)}.")
    kwargs = {**kwargs, "in_channels": c, "text_dim": self.text.d_model, "max_text_length": self.text.max_length,
              "sample_frames": t, "sample_height": h, "sample_width": w,
              "dtype": jnp.dtype(self.config.train.compute_dtype)}
    return DiT(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})

  def init(self, rng, batch):
    dit_rng, text_rng = jax.random.split(rng)
    t, h, w, c = self.latent_shape()
    b = 1
    params = {"dit": self.dit().init(dit_rng, jnp.zeros((b, t, h, w, c)), jnp.zeros((b,), jnp.int32),
                                     jnp.zeros((b, self.text.max_length, self.text.d_model)))["params"]}
    if self.text.trainable:
      ids = jnp.zeros((1, self.text.max_length), jnp.int32)
      params["text"] = self.text.module.init(text_rng, ids)["params"]
    return params

  def frozen_params(self, abstract=False):
    """{'text': the frozen encoder's params}, or with `text.cached` only {'empty_text': [L, D]}, the cached
    embedding of "" that dropped captions get; {} for a trained encoder."""
    if self.text.trainable:
      return {}
    if self.config.text.cached:
      if abstract:
        return {"empty_text": jax.ShapeDtypeStruct((self.text.max_length, self.text.d_model), self.text.module.dtype)}
      return {"empty_text": self.text_cache(self.config.input.split).empty_prompt()["text_embeds"]}
    if abstract:
      ids = jnp.zeros((1, self.text.max_length), jnp.int32)
      return {"text": jax.eval_shape(lambda: self.text.module.init(jax.random.PRNGKey(0), ids)["params"])}
    return {"text": self._encoder_params()}

  def _encoder_params(self):
    """The frozen encoder's params (its weights, or a fixed random init), loaded once."""
    if self._frozen_text is None:
      self._frozen_text = self.text.init(jax.random.PRNGKey(self.config.seed + 1))
    return self._frozen_text

  def _empty_tokens(self) -> np.ndarray:
    return self.text.tokenize([""])[0][0]

  def text_embeds(self, text_params, tokens: jax.Array) -> jax.Array:
    mask = (tokens != 0).astype(jnp.int32)
    return self.text.apply(text_params, tokens, mask).astype(jnp.float32)

  # --- Loss.

  def _latents(self, moments: jax.Array, rng: jax.Array) -> jax.Array:
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    z = mean
    if self.config.vae.sample_posterior:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.normalize_latents(z)

  def _noised(self, z: jax.Array, rng: jax.Array, num_groups: int = 1):
    """(x_t, model timesteps, target, per-example weight) for clean latents z [B, ...]."""
    d = self.config.diffusion
    t_rng, n_rng = jax.random.split(rng)
    noise = jax.random.normal(n_rng, z.shape)
    b = z.shape[0]
    if d.prediction_type == "flow":
      t = (timesteps.logit_normal(t_rng, b, shift=d.flow_shift) if d.timestep_sampling == "logit_normal"
           else jax.random.uniform(t_rng, (b,)))
      return (objectives.flow_interpolate(z, noise, t), t * 1000.0, objectives.target("flow", z, noise, t),
              jnp.ones((b,)))
    if d.timestep_sampling == "explicit_uniform" and b % num_groups == 0:
      t = timesteps.explicit_uniform(t_rng, b, d.num_train_timesteps, num_groups)
    else:
      t = timesteps.uniform(t_rng, b, d.num_train_timesteps)
    abar = self._alphas_cumprod[t]
    weight = objectives.loss_weight(d.loss_weighting, d.prediction_type, abar)
    return (objectives.add_noise(z, noise, abar), t, objectives.target(d.prediction_type, z, noise, abar), weight)

  def denoise_loss(self, dit_params, z, embeds, rng) -> jax.Array:
    """Per-example weighted MSE [B] of the DiT on latents z [B, T', h, w, C] with text embeddings [B, L, D]."""
    groups = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    x_t, t, target, weight = self._noised(z, rng, groups)
    out = self.dit().apply({"params": dit_params}, x_t, t, embeds)
    return weight * objectives.mse_per_example(out, target)

  def loss(self, params, batch, rng, frozen=None):
    d = self.config.diffusion
    z_rng, drop_rng, video_rng, image_rng = jax.random.split(rng, 4)
    z = self._latents(batch["latent_moments"], z_rng)
    drop = jax.random.bernoulli(drop_rng, d.text_dropout, (z.shape[0], 1)) if d.text_dropout > 0 else None
    if self.config.text.cached:
      embeds = batch["text_embeds"].astype(jnp.float32)
      if drop is not None:
        embeds = jnp.where(drop[:, :, None], frozen["empty_text"].astype(jnp.float32)[None], embeds)
    else:
      tokens = batch["tokens"]
      if drop is not None:
        tokens = jnp.where(drop, jnp.asarray(self._empty_tokens())[None], tokens)
      embeds = self.text_embeds(params["text"] if self.text.trainable else frozen["text"], tokens)
    if not self.text.trainable:
      embeds = jax.lax.stop_gradient(embeds)
    num_images = int(round(d.image_fraction * z.shape[0]))
    losses = []
    if num_images:
      losses.append(self.denoise_loss(params["dit"], z[:num_images, :1], embeds[:num_images], image_rng))
    if num_images < z.shape[0]:
      losses.append(self.denoise_loss(params["dit"], z[num_images:], embeds[num_images:], video_rng))
    per_example = jnp.concatenate(losses)
    loss = jnp.mean(per_example)
    metrics = {"diffusion_loss": loss}
    if num_images:
      metrics["image_loss"] = jnp.mean(losses[0])
    return loss, metrics

  def batch_shapes(self, batch_size: int):
    t, h, w, c = self.latent_shape()
    shapes = {"latent_moments": jax.ShapeDtypeStruct((batch_size, t, h, w, 2 * c), jnp.float32)}
    if self.config.text.cached:
      shapes["text_embeds"] = jax.ShapeDtypeStruct((batch_size, self.text.max_length, self.text.d_model),
                                                   self.text.module.dtype)
    else:
      shapes["tokens"] = jax.ShapeDtypeStruct((batch_size, self.text.max_length), jnp.int32)
    return shapes

  def flops_per_step(self, batch_shapes) -> float:
    """Model FLOPs of one training step over the global batch (forward + backward = 3x forward; recomputation
    from remat is not model work and is not counted): the DiT on its joint (or video + cross) sequence, plus the
    text encoder (3x when trained, 1x frozen, 0 when its embeddings are cached)."""
    from vdm_jax.train import flops as flops_lib  # pylint: disable=g-import-not-at-top
    dit = self.dit()
    b = batch_shapes["latent_moments"].shape[0]
    t, h, w, _ = batch_shapes["latent_moments"].shape[1:]
    video = (t // dit.patch_size_t) * (h // dit.patch_size) * (w // dit.patch_size)
    text = self.text.max_length
    width, hidden = dit.num_heads * dit.head_dim, int(dit.num_heads * dit.head_dim * dit.mlp_ratio)
    if dit.conditioning == "joint":
      forward = flops_lib.transformer_flops(video + text, width, hidden, dit.num_layers)
    else:
      forward = flops_lib.transformer_flops(video, width, hidden, dit.num_layers, context=text)
    m = self.text.module
    text_forward = flops_lib.transformer_flops(text, m.d_model, int(1.5 * m.d_ff), m.num_layers)
    text_passes = 3 if self.text.trainable else (0 if self.config.text.cached else 1)
    return b * (3 * forward + text_passes * text_forward)

  # --- Evals and samples.

  def _text_params(self, params):
    return params["text"] if self.text.trainable else self._encoder_params()

  def validation_losses(self, params) -> dict[str, float]:
    """Mean loss on the validation split at each timestep of `eval.loss_timesteps`, with fixed noise."""
    e = self.config.eval
    ds = pipeline.make_dataset(self.config.input, split=e.split, batch_size=e.batch_size, shuffle=False,
                               repeat=False, source=self.data_source(e.split))

    cached = self.config.text.cached
    text_key = "text_embeds" if cached else "tokens"

    @jax.jit
    def grid_loss(params, moments, text, t, rng):
      mean = self.normalize_latents(jnp.split(moments, 2, axis=-1)[0])
      noise = jax.random.normal(rng, mean.shape)
      embeds = text.astype(jnp.float32) if cached else self.text_embeds(params["text"], text)
      d = self.config.diffusion
      if d.prediction_type == "flow":
        tt = jnp.full((mean.shape[0],), t / d.num_train_timesteps)
        x_t, target, model_t = objectives.flow_interpolate(mean, noise, tt), noise - mean, tt * 1000.0
      else:
        abar = jnp.full((mean.shape[0],), self._alphas_cumprod[t])
        x_t = objectives.add_noise(mean, noise, abar)
        target = objectives.target(d.prediction_type, mean, noise, abar)
        model_t = jnp.full((mean.shape[0],), t, jnp.int32)
      out = self.dit().apply({"params": params["dit"]}, x_t, model_t, embeds)
      return objectives.mse_per_example(out, target)

    eval_params = params if self.text.trainable or cached else {**params, "text": self._encoder_params()}
    per_t = {int(t): [] for t in e.loss_timesteps}
    seen = 0
    for i, batch in enumerate(ds):
      if seen >= e.num_examples:
        break
      seen += len(batch[text_key])
      dev = sharding.shard_batch(pipeline.numeric(batch), self.mesh)
      for t in per_t:
        rng = jax.random.fold_in(jax.random.PRNGKey(1234 + i), t)
        per_t[t].append(sharding.to_host(grid_loss(eval_params, dev["latent_moments"], dev[text_key], t, rng)))
    return {f"val_loss_t{t}": float(np.mean(np.concatenate(v))) for t, v in per_t.items() if v}

  def pipeline(self, params):
    """A TextToVideoPipeline over these params (host-side generation)."""
    from vdm_jax.pipelines import t2v as t2v_pipeline  # pylint: disable=g-import-not-at-top
    vae_module, vae_params = self.vae()
    return t2v_pipeline.TextToVideoPipeline(
        dit=self.dit(), dit_params=params["dit"], text=self.text, text_params=self._text_params(params),
        vae=vae_module, vae_params=vae_params, scaling_factor=self.scaling_factor, latent_shift=self.latent_shift, latent_shape=self.latent_shape(),
        schedule=self.schedule, prediction_type=self.config.diffusion.prediction_type,
        flow_shift=self.config.diffusion.flow_shift)

  def evaluate(self, params, step):
    metrics = self.validation_losses(params)
    e, s = self.config.eval, self.config.sample
    if e.probe_prompts > 0 and self.config.input.dataset == "captioned_shapes":
      from vdm_jax.eval import probe  # pylint: disable=g-import-not-at-top
      prompts = probe_prompts(e.probe_prompts)
      videos = self.pipeline(params).generate(
          prompts, seeds=[e.probe_seed + i for i in range(len(prompts))], sampler=s.sampler,
          num_steps=s.num_steps, guidance_scale=s.guidance_scale, use_dynamic_cfg=s.use_dynamic_cfg,
          guidance_rescale=s.guidance_rescale, batch_size=s.batch_size)
      scores = probe.score(videos, prompts)
      metrics.update({f"probe_{k}": v for k, v in scores.items() if k != "num_videos"})
    return metrics

  def write_samples(self, params, step, out_dir):
    s = self.config.sample
    prompts = list(s.prompts)
    videos = self.pipeline(params).generate(prompts, seeds=[s.seed + i for i in range(len(prompts))],
                                            sampler=s.sampler, num_steps=s.num_steps,
                                            guidance_scale=s.guidance_scale, use_dynamic_cfg=s.use_dynamic_cfg,
                                            guidance_rescale=s.guidance_rescale, batch_size=s.batch_size)
    if jax.process_index() != 0:
      return
    from vdm_jax import io  # pylint: disable=g-import-not-at-top
    os.makedirs(out_dir, exist_ok=True)
    for i, video in enumerate(videos):
      io.write_video(os.path.join(out_dir, f"sample_{i:02d}.mp4"), video)
    io.write_image(os.path.join(out_dir, "samples.png"), io.contact_sheet(videos, captions=prompts))
