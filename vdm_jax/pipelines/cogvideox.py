"""CogVideoX text -> video (and image -> video) from a diffusers folder, reproducing diffusers' `CogVideoXPipeline`
(and `CogVideoXImageToVideoPipeline`: `image=`, see `CogVideoXPipeline.image_latents`).

    from vdm_jax.pipelines import cogvideox
    pipe = cogvideox.load("/path/CogVideoX-2b", dtype=jnp.bfloat16,
                          transformer_kwargs={"attention_backend": "cudnn"})
    video = pipe(prompt="a red panda eating bamboo", num_frames=49, height=480, width=720,
                 num_inference_steps=50, guidance_scale=6.0, use_dynamic_cfg=True, seed=0)
    # video: float32 numpy [1, 49, 480, 720, 3] in [0, 1]

The folder is diffusers' layout (`transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), read without
torch. A call does what diffusers' pipeline does:
  1. prompts and negative prompts (default "") -> T5 ids padded to 226 (EOS, pad 0) -> T5 with NO attention mask;
     with guidance (guidance_scale > 1) the embeddings are [uncond; cond] (diffusers' order).
  2. initial latents [B, (F - 1) // 4 + 1, H / 8, W / 8, C] (channel-last) from `jax.random` with `seed`, or the
     given `latents`; times the scheduler's init_noise_sigma (1 for both CogVideoX schedulers). CogVideoX 1.5
     (patch_size_t 2) pads the latent frames to a multiple of patch_size_t: `latents` must have the padded count.
  3. the folder's scheduler (`scheduler_config.json`: CogVideoXDDIMScheduler -> 'ddim', CogVideoXDPMScheduler ->
     'dpmpp_2m_sde') or `sampler`, with CFG on the doubled batch, optional dynamic CFG, the raw integer timestep
     given to the transformer, latents cast back to the pipeline dtype after every step (diffusers casts them to
     the text embeddings' dtype). Positions (sincos or RoPE) are computed inside the transformer from the latent
     size, as diffusers' pipeline computes them.
  4. CogVideoX 1.5 drops the leading padding frames, then latents * (1 / scaling_factor) -> VAE decode ->
     (x * 0.5 + 0.5) clipped to [0, 1] (diffusers' video processor).
The denoiser step, T5 and the VAE decode are each jitted once per input shape, with params as arguments; the
compiled programs are shared by pipelines whose models have equal configurations.

Memory (rough), 49 frames at 480x720 (latents 13x60x90, 17,550 video + 226 text tokens, CFG batch 2), bf16.
Weights, from the parameter counts (2b transformer 1.694B, 5b / 1.5-5B 5.570B, T5-XXL encoder 4.762B, VAE
0.216B) x 2 bytes: 2b 3.4 + T5 9.5 + VAE 0.4 = 13.3 GB; 5b 11.1 + 9.5 + 0.4 = 21.0 GB (fp32: twice that).
Working memory, from XLA's compile-time memory analysis of the jitted programs on CPU (`compiled.memory_analysis()
.temp_size_in_bytes`; accelerator buffer assignment differs, so take these as the order of magnitude):
  denoiser call, attention_backend 'chunked':  2b 9.3 GB, 5b 26.4 GB
    ('xla' would materialise [2, heads, 17776, 17776] f32 scores: 76 GB for 2b, 121 GB for 5b; do not use it here)
  VAE decode (chunks of 2 latent frames, untiled): 48.8 GB -- the largest part at this size.
    `vae_kwargs={"tile_sample_size": (240, 360)}` did NOT lower it in that analysis (67 GB: the tiles are one
    program and XLA keeps several alive), so decode smaller clips or fewer videos at once if it does not fit.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vdm_jax import xla_cpu
from vdm_jax.convert import cogvideox, cogvideox_transformer, cogvideox_vae, t5
from vdm_jax.convert import safetensors_io as st
from vdm_jax.diffusion import samplers
from vdm_jax.parallel import sharding
# The folder's parts and scheduler (re-exported: callers name them here).
from vdm_jax.pipelines.cogvideox_folder import (BETA_SCHEDULES, PARTS, SCHEDULER_CLASSES,  # noqa: F401
                                                 SchedulerSettings, check_folder, scheduler_settings)
from vdm_jax.text import T5Tokenizer


# Both CogVideoX schedulers start from unit-variance noise (diffusers' `init_noise_sigma`).
INIT_NOISE_SIGMA = 1.0
OUTPUT_TYPES = ("np", "latent")


def check_channels(in_channels: int, latent_channels: int) -> None:
  """Fails unless the transformer takes the latents (text-to-video) or the latents and the image's latents on
  channels (image-to-video: in_channels = 2 x latent_channels)."""
  if in_channels not in (latent_channels, 2 * latent_channels):
    raise ValueError(f"transformer in_channels={in_channels} but the VAE has latent_channels={latent_channels}: "
                     f"expected {latent_channels} (text-to-video) or {2 * latent_channels} (image-to-video).")


def load(path: str, dtype=jnp.float32, *, transformer_kwargs: dict[str, Any] | None = None,
         vae_kwargs: dict[str, Any] | None = None, lora: str | None = None,
         lora_scale: float = 1.0) -> "CogVideoXPipeline":
  """A diffusers CogVideoX folder (text-to-video, or image-to-video: 5b-I2V, 1.5-5B-I2V) -> CogVideoXPipeline.

  `dtype`: parameters and compute dtype of all three models (jnp.bfloat16 on accelerators; norms, modulation,
  RoPE stay float32 inside them; T5's `wo` stays float32). `transformer_kwargs` / `vae_kwargs`: module fields
  passed to the loaders (e.g. {"attention_backend": "cudnn"}, {"tile_sample_size": (240, 360)}). `lora`: a
  diffusers LoRA file (or the folder holding pytorch_lora_weights.safetensors) merged into the transformer at
  `lora_scale` (`vdm_jax.convert.cogvideox.load_lora`), as diffusers' `load_lora_weights` then `set_adapters`.
  """
  path = os.path.expanduser(path)
  check_folder(path)
  part = lambda name: os.path.join(path, name)
  scheduler = scheduler_settings(st.read_config(part("scheduler"), "scheduler_config.json"))
  # Refuse a transformer that fits neither layout before reading gigabytes of weights.
  vae_config = st.read_config(part("vae"))
  check_channels(st.read_config(part("transformer")).get("in_channels", 16), vae_config.get("latent_channels", 16))
  tokenizer = T5Tokenizer.from_pretrained(part("tokenizer"))
  transformer, transformer_params = cogvideox.load_transformer(part("transformer"), dtype, **(transformer_kwargs or {}))
  if lora:
    transformer_params = cogvideox.load_lora(transformer_params, lora, scale=lora_scale)
  vae, vae_params = cogvideox.load_vae(part("vae"), dtype, **(vae_kwargs or {}))
  text_encoder, text_params = t5.load_encoder(part("text_encoder"), dtype)
  return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, text_params=text_params,
                           transformer=transformer, transformer_params=transformer_params, vae=vae,
                           vae_params=vae_params, scheduler=scheduler, dtype=dtype,
                           invert_scale_latents=bool(vae_config.get("invert_scale_latents", False)))


# The model functions are cached per module configuration (linen modules compare by their fields), so pipelines
# of equal configurations share their compiled programs; params always enter as arguments.


@functools.lru_cache(maxsize=8)
def _denoiser(transformer):
  """The samplers' model_fn(latents [B', T', H', W', C], timesteps [B'], params, text_embeds [B', L, D][, image
  latents [B', T', H', W', C]]); image-to-video transformers read the image latents concatenated on channels. The
  samplers cache their jitted step on this function object."""
  def denoise(latents, timesteps, params, text_embeds, image_latents=None):
    if image_latents is not None:
      latents = jnp.concatenate([latents, image_latents.astype(latents.dtype)], axis=-1)
    return transformer.apply({"params": params}, latents, timesteps, text_embeds)
  return denoise


@functools.lru_cache(maxsize=8)
def _image_encoder(vae):
  """jitted (params, frames [B, 1, H, W, 3] in [-1, 1]) -> the posterior's (mean, std) [B, 1, H', W', C]."""
  def encode(params, frames):
    posterior = vae.apply({"params": params}, frames, method="encode")
    return posterior.mean, jnp.exp(0.5 * posterior.logvar)
  return jax.jit(encode)


@functools.lru_cache(maxsize=8)
def _text_encoder(text_encoder, dtype: str):
  """jitted (params, input_ids [B, L]) -> embeddings [B, L, d_model] in `dtype` (no attention mask)."""
  return jax.jit(lambda params, ids: text_encoder.apply({"params": params}, ids).astype(dtype))


@functools.lru_cache(maxsize=8)
def _decoder(vae, dtype: str):
  """jitted (params, scaled latents [B, T', H', W', C]) -> video [B, T, H, W, 3] float32 in [0, 1]: diffusers'
  `1 / scaling_factor * latents`, `vae.decode`, then the video processor's (x * 0.5 + 0.5).clamp(0, 1)."""
  scale = 1.0 / vae.scaling_factor

  def decode(params, latents):
    video = vae.apply({"params": params}, (scale * latents).astype(dtype), method="decode")
    return jnp.clip(video.astype(jnp.float32) * 0.5 + 0.5, 0.0, 1.0)
  return xla_cpu.jit(decode)


@dataclasses.dataclass(eq=False)
class CogVideoXPipeline:
  """The three models of a CogVideoX folder and its scheduler; call it to generate videos (module docstring)."""
  tokenizer: Any  # vdm_jax.text.T5Tokenizer
  text_encoder: Any  # vdm_jax.models.t5.T5Encoder
  text_params: Any
  transformer: Any  # vdm_jax.models.dit.DiT
  transformer_params: Any
  vae: Any  # vdm_jax.models.vae.AutoencoderKL
  vae_params: Any
  scheduler: SchedulerSettings
  dtype: Any = jnp.float32
  # CogVideoX 1.5 I2V: the image latents are divided by the scaling factor, not multiplied (as it was trained).
  invert_scale_latents: bool = False

  def __post_init__(self):
    check_channels(self.transformer.in_channels, self.vae.latent_channels)
    if self.transformer.text_dim != self.text_encoder.d_model:
      raise ValueError(f"transformer text_embed_dim={self.transformer.text_dim} but the text encoder's d_model is "
                       f"{self.text_encoder.d_model}.")
    self._denoise = _denoiser(self.transformer)
    self._encode = _text_encoder(self.text_encoder, jnp.dtype(self.dtype).name)
    self._decode = _decoder(self.vae, jnp.dtype(self.dtype).name)
    self._encode_image = _image_encoder(self.vae)

  # --- Sizes (diffusers' names).

  @property
  def vae_scale_factor_spatial(self) -> int:
    return self.vae.spatial_compression

  @property
  def vae_scale_factor_temporal(self) -> int:
    return self.vae.temporal_compression_ratio

  @property
  def latent_channels(self) -> int:
    return self.vae.latent_channels

  @property
  def image_to_video(self) -> bool:
    """Whether the transformer takes the image's latents on channels (the I2V layouts)."""
    return self.transformer.in_channels == 2 * self.vae.latent_channels

  def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    """[B, T', H', W', C] of the initial latents, T' padded to a multiple of patch_size_t (CogVideoX 1.5)."""
    frames = (num_frames - 1) // self.vae_scale_factor_temporal + 1
    frames += -frames % self.transformer.patch_size_t
    s = self.vae_scale_factor_spatial
    return (batch_size, frames, height // s, width // s, self.latent_channels)

  def check_size(self, num_frames: int, height: int, width: int) -> None:
    """Fails unless num_frames = 4k + 1 and height, width are multiples of 8 * patch_size."""
    r, s = self.vae_scale_factor_temporal, self.vae_scale_factor_spatial * self.transformer.patch_size
    if num_frames < 1 or (num_frames - 1) % r:
      raise ValueError(f"num_frames={num_frames}: must be {r}k + 1 (e.g. 49, 81).")
    if height <= 0 or width <= 0 or height % s or width % s:
      raise ValueError(f"height={height}, width={width}: both must be positive multiples of {s} (VAE factor "
                       f"{self.vae_scale_factor_spatial} x patch_size {self.transformer.patch_size}).")

  def shard(self, mesh, rules=None) -> "CogVideoXPipeline":
    """A copy of this pipeline with the params of its three models placed on `mesh` by their logical axes.

    `rules`: logical axis -> mesh axes (default `vdm_jax.parallel.sharding.DEFAULT_RULES`: `embed` over fsdp,
    heads / mlp / vocab over tensor; a mesh axis that does not divide a dimension is dropped for it). The jitted
    denoiser, T5 and VAE decode then run as one SPMD program over the mesh's devices with the weights sharded
    (XLA gathers them where a layer needs them), so the weights need not fit on one device once placed. The
    loaders put every weight on the default device first, so that device must hold them once.

        mesh = vdm_jax.parallel.mesh.create_mesh({"fsdp": -1})   # every device of the runtime
        pipe = cogvideox.load(path, dtype=jnp.bfloat16).shard(mesh)
    """
    ids = jnp.zeros((1, 1), jnp.int32)
    abstract = {
        "transformer": cogvideox_transformer.abstract_params(self.transformer, boxed=True),
        "vae": cogvideox_vae.abstract_params(self.vae, boxed=True),
        "text": jax.eval_shape(lambda: self.text_encoder.init(jax.random.PRNGKey(0), ids))["params"],
    }
    shardings = sharding.logical_shardings(abstract, mesh, sharding.DEFAULT_RULES if rules is None else rules)
    params = jax.device_put({"transformer": self.transformer_params, "vae": self.vae_params,
                             "text": self.text_params}, shardings)
    return dataclasses.replace(self, transformer_params=params["transformer"], vae_params=params["vae"],
                               text_params=params["text"])

  # --- The steps of a call.

  def encode_prompt(self, prompts: Sequence[str], max_sequence_length: int = 226) -> jax.Array:
    """Prompts -> T5 embeddings [B, max_sequence_length, d_model] in the pipeline dtype (no attention mask)."""
    for prompt in prompts:
      length = len(self.tokenizer.encode(prompt))
      if length > max_sequence_length - 1:
        logging.warning("Prompt truncated to %d tokens (of %d): %r", max_sequence_length - 1, length, prompt)
    ids = self.tokenizer(list(prompts), max_length=max_sequence_length)
    return self._encode(self.text_params, jnp.asarray(ids))

  def image_latents(self, image, batch_size: int, num_frames: int, noise: Any = None,
                    key: jax.Array | None = None) -> jax.Array:
    """The image-to-video condition (diffusers' `prepare_latents`): `image` uint8 or float in [0, 1], [H, W, 3] (for
    every video) or [B, H, W, 3] at the video's size -> its VAE posterior sample mean + std * noise (`noise`
    [B, 1, H', W', C], else drawn from `key`), times the scaling factor (divided by it with `invert_scale_latents`),
    then zeros to the video's latent frames T' (1.5: already padded to a multiple of patch_size_t, so the image
    sits on the leading padding frame that decoding drops, as diffusers pads it): [B, T', H', W', C] in the
    pipeline dtype."""
    s = self.vae_scale_factor_spatial
    image = np.asarray(image)
    image = image[None] if image.ndim == 3 else image
    if image.ndim != 4 or image.shape[-1] != 3 or len(image) not in (1, batch_size):
      raise ValueError(f"image {image.dtype} {list(image.shape)}: expected [H, W, 3] or [{batch_size}, H, W, 3], "
                       "uint8 or float in [0, 1].")
    if image.dtype == np.uint8:
      pixels = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating) and image.min() >= 0.0 and image.max() <= 1.0:
      pixels = image.astype(np.float32)
    else:
      raise ValueError(f"image {image.dtype} with values in [{image.min()}, {image.max()}]: give uint8, or float "
                       "in [0, 1].")
    _, frames, h, w, c = self.latent_shape(batch_size, num_frames, image.shape[1], image.shape[2])
    if (h * s, w * s) != image.shape[1:3]:
      raise ValueError(f"image {list(image.shape)}: its height and width must be multiples of {s}.")
    pixels = np.broadcast_to(pixels, (batch_size,) + pixels.shape[1:])
    mean, std = self._encode_image(self.vae_params, jnp.asarray(2.0 * pixels - 1.0, self.dtype)[:, None])
    noise = jax.random.normal(key, mean.shape, mean.dtype) if noise is None else jnp.asarray(noise, mean.dtype)
    if noise.shape != mean.shape:
      raise ValueError(f"image_noise has shape {tuple(noise.shape)}; expected {tuple(mean.shape)} [B, 1, H', W', C].")
    latents = (mean + std * noise).astype(self.dtype)
    scale = self.vae.scaling_factor
    latents = latents / scale if self.invert_scale_latents else latents * scale
    return jnp.concatenate([latents, jnp.zeros((batch_size, frames - 1, h, w, c), latents.dtype)], axis=1)

  def decode_latents(self, latents: jax.Array) -> np.ndarray:
    """Scaled latents [B, T', H', W', C] -> float32 video [B, T, H, W, 3] in [0, 1]."""
    return np.asarray(self._decode(self.vae_params, latents), np.float32)

  def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = "", *,
               num_frames: int | None = None, height: int | None = None, width: int | None = None,
               num_inference_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
               seed: int = 0, latents: Any = None, sampler: str | None = None, max_sequence_length: int = 226,
               output_type: str = "np", progress: bool = True, image: Any = None,
               image_noise: Any = None) -> np.ndarray:
    """Videos float32 [B, T, H, W, 3] in [0, 1] for `prompt` (one per prompt).

    Image-to-video folders need `image` (see `image_latents`: one for every prompt or one per prompt, at the
    video's size; the posterior noise of its encoding is `image_noise` or drawn from `seed`), which the videos
    start from; text-to-video folders take none.

    num_frames / height / width default to the transformer's sample size (49 x 480 x 720 for CogVideoX 1.0).
    `latents` [B, T', H', W', C] (see `latent_shape`) replace the initial noise drawn from `seed`; `seed` also
    seeds the noise of the 'dpmpp_2m_sde' sampler. `sampler`: None (the folder's scheduler) or one of
    samplers.DISCRETE_SAMPLERS. `output_type='latent'` returns the final latents instead (before the 1.5 frame drop).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
      raise ValueError("prompt: give a string or a non-empty list of strings.")
    negative_prompt = "" if negative_prompt is None else negative_prompt  # diffusers' default
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
      raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}.")
    sampler = sampler or self.scheduler.sampler
    if sampler not in samplers.DISCRETE_SAMPLERS:
      raise ValueError(f"sampler={sampler!r}; CogVideoX is a discrete-time model, allowed: "
                       f"{list(samplers.DISCRETE_SAMPLERS)} (or None: the folder's scheduler, {self.scheduler.sampler!r}).")
    if output_type not in OUTPUT_TYPES:
      raise ValueError(f"output_type={output_type!r}; allowed: {list(OUTPUT_TYPES)}.")
    t = self.transformer
    s = self.vae_scale_factor_spatial
    height = height or t.sample_height * s
    width = width or t.sample_width * s
    num_frames = num_frames or (t.sample_frames - 1) * self.vae_scale_factor_temporal + 1
    self.check_size(num_frames, height, width)

    if self.image_to_video != (image is not None):
      raise ValueError("This is an image-to-video folder: give image=." if self.image_to_video else
                       "image= needs an image-to-video folder (transformer in_channels = 2 x the VAE's latent "
                       "channels); this one is text-to-video.")
    use_cfg = guidance_scale > 1.0
    embeds = self.encode_prompt((negatives + prompts) if use_cfg else prompts, max_sequence_length)

    shape = self.latent_shape(len(prompts), num_frames, height, width)
    noise_key, sampler_key = jax.random.split(jax.random.PRNGKey(seed))
    if latents is None:
      latents = jax.random.normal(noise_key, shape, jnp.float32)
    elif tuple(latents.shape) != shape:
      raise ValueError(f"latents have shape {tuple(latents.shape)}; for {len(prompts)} prompt(s), {num_frames} "
                       f"frames of {height}x{width} they must be {shape} [B, T', H', W', C] (T' padded to a "
                       f"multiple of patch_size_t={t.patch_size_t}).")
    latents = (jnp.asarray(latents, jnp.float32) * INIT_NOISE_SIGMA).astype(self.dtype)
    model_args = (self.transformer_params, embeds)
    if image is not None:
      condition = self.image_latents(image, len(prompts), num_frames, image_noise,
                                     jax.random.fold_in(jax.random.PRNGKey(seed), 2))
      model_args += (jnp.concatenate([condition, condition]) if use_cfg else condition,)

    latents = samplers.sample(
        self._denoise, latents, schedule=self.scheduler.schedule, sampler=sampler, num_steps=num_inference_steps,
        prediction_type=self.scheduler.prediction_type, guidance_scale=guidance_scale,
        use_dynamic_cfg=use_dynamic_cfg, rng=sampler_key, timestep_spacing=self.scheduler.timestep_spacing,
        progress=progress, model_args=model_args)
    if output_type == "latent":
      return np.asarray(latents)
    # CogVideoX 1.5: the padding frames are the leading ones.
    padding = shape[1] - ((num_frames - 1) // self.vae_scale_factor_temporal + 1)
    return self.decode_latents(latents[:, padding:])
