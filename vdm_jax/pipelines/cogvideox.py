"""CogVideoX text -> video from a diffusers folder, reproducing diffusers' `CogVideoXPipeline`.

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
from vdm_jax.diffusion import samplers, schedules
from vdm_jax.parallel import sharding
from vdm_jax.text import T5Tokenizer

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULER_CLASSES = {"CogVideoXDDIMScheduler": "ddim", "CogVideoXDPMScheduler": "dpmpp_2m_sde"}
# diffusers beta_schedule names -> vdm_jax.diffusion.schedules names
BETA_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
# Samplers for a discrete-time (DDPM-trained) model; 'euler' is for rectified flow models.
# Both CogVideoX schedulers start from unit-variance noise (diffusers' `init_noise_sigma`).
INIT_NOISE_SIGMA = 1.0
OUTPUT_TYPES = ("np", "latent")


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
  """What `vdm_jax.diffusion.samplers.sample` needs from a diffusers scheduler config."""
  sampler: str
  schedule: schedules.NoiseSchedule
  prediction_type: str
  timestep_spacing: str


def scheduler_settings(config: dict[str, Any]) -> SchedulerSettings:
  """A diffusers CogVideoX scheduler config (`scheduler_config.json`) -> SchedulerSettings; fails naming the key
  whose value the samplers do not support."""
  name = config.get("_class_name")
  if name not in SCHEDULER_CLASSES:
    raise ValueError(f"scheduler_config.json: _class_name={name!r}; supported: {sorted(SCHEDULER_CLASSES)}.")
  beta_schedule = config.get("beta_schedule", "scaled_linear")
  if beta_schedule not in BETA_SCHEDULES:
    raise ValueError(f"scheduler_config.json: beta_schedule={beta_schedule!r}; supported: {sorted(BETA_SCHEDULES)}.")
  if config.get("trained_betas") is not None:
    raise ValueError("scheduler_config.json: trained_betas is not supported; give beta_schedule/beta_start/beta_end.")
  spacing = config.get("timestep_spacing", "leading")
  if spacing not in schedules.TIMESTEP_SPACINGS:
    raise ValueError(f"scheduler_config.json: timestep_spacing={spacing!r}; supported: "
                     f"{list(schedules.TIMESTEP_SPACINGS)}.")
  # diffusers adds steps_offset to 'leading' timesteps only; the samplers have no offset.
  if spacing == "leading" and config.get("steps_offset", 0):
    raise ValueError(f"scheduler_config.json: timestep_spacing='leading' with steps_offset="
                     f"{config['steps_offset']} is not supported by vdm_jax.diffusion.samplers (steps_offset 0 is; "
                     "'trailing' and 'linspace' ignore steps_offset).")
  prediction_type = config.get("prediction_type", "epsilon")
  if prediction_type not in ("epsilon", "v_prediction", "sample"):
    raise ValueError(f"scheduler_config.json: prediction_type={prediction_type!r}; supported: "
                     "['epsilon', 'v_prediction', 'sample'].")
  schedule = schedules.make_schedule(
      BETA_SCHEDULES[beta_schedule], num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
      beta_start=float(config.get("beta_start", 0.00085)), beta_end=float(config.get("beta_end", 0.012)),
      snr_shift_scale=float(config.get("snr_shift_scale", 3.0)),
      rescale_betas_zero_snr=bool(config.get("rescale_betas_zero_snr", False)),
      set_alpha_to_one=bool(config.get("set_alpha_to_one", True)))
  return SchedulerSettings(SCHEDULER_CLASSES[name], schedule, prediction_type, spacing)


def check_folder(path: str) -> None:
  """Fails naming every part of a diffusers CogVideoX folder that is missing (before anything is loaded)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a folder; expected a diffusers CogVideoX folder with {list(PARTS)}.")
  missing = [part for part in PARTS if not os.path.isdir(os.path.join(path, part))]
  if missing:
    raise FileNotFoundError(f"{path!r} is not a complete diffusers CogVideoX folder: missing {missing} "
                            f"(a CogVideoX folder has {list(PARTS)}).")


def check_text_to_video(in_channels: int, latent_channels: int) -> None:
  """Fails for an image-to-video transformer (it takes the image latents too: in_channels = 2 x latent_channels)."""
  if in_channels != latent_channels:
    raise ValueError(f"transformer in_channels={in_channels} but the VAE has latent_channels={latent_channels}: "
                     "an image-to-video folder; this pipeline is text-to-video only.")


def load(path: str, dtype=jnp.float32, *, transformer_kwargs: dict[str, Any] | None = None,
         vae_kwargs: dict[str, Any] | None = None) -> "CogVideoXPipeline":
  """A diffusers CogVideoX text-to-video folder -> CogVideoXPipeline.

  `dtype`: parameters and compute dtype of all three models (jnp.bfloat16 on accelerators; norms, modulation,
  RoPE stay float32 inside them; T5's `wo` stays float32). `transformer_kwargs` / `vae_kwargs`: module fields
  passed to the loaders (e.g. {"attention_backend": "cudnn"}, {"tile_sample_size": (240, 360)}).
  """
  path = os.path.expanduser(path)
  check_folder(path)
  part = lambda name: os.path.join(path, name)
  scheduler = scheduler_settings(st.read_config(part("scheduler"), "scheduler_config.json"))
  # Refuse an image-to-video folder before reading gigabytes of weights.
  check_text_to_video(st.read_config(part("transformer")).get("in_channels", 16),
                      st.read_config(part("vae")).get("latent_channels", 16))
  tokenizer = T5Tokenizer.from_pretrained(part("tokenizer"))
  transformer, transformer_params = cogvideox.load_transformer(part("transformer"), dtype, **(transformer_kwargs or {}))
  vae, vae_params = cogvideox.load_vae(part("vae"), dtype, **(vae_kwargs or {}))
  text_encoder, text_params = t5.load_encoder(part("text_encoder"), dtype)
  return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, text_params=text_params,
                           transformer=transformer, transformer_params=transformer_params, vae=vae,
                           vae_params=vae_params, scheduler=scheduler, dtype=dtype)


# The model functions are cached per module configuration (linen modules compare by their fields), so pipelines
# of equal configurations share their compiled programs; params always enter as arguments.


@functools.lru_cache(maxsize=8)
def _denoiser(transformer):
  """The samplers' model_fn(latents [B', T', H', W', C], timesteps [B'], params, text_embeds [B', L, D]); the
  samplers cache their jitted step on this function object."""
  def denoise(latents, timesteps, params, text_embeds):
    return transformer.apply({"params": params}, latents, timesteps, text_embeds)
  return denoise


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

  def __post_init__(self):
    check_text_to_video(self.transformer.in_channels, self.vae.latent_channels)
    if self.transformer.text_dim != self.text_encoder.d_model:
      raise ValueError(f"transformer text_embed_dim={self.transformer.text_dim} but the text encoder's d_model is "
                       f"{self.text_encoder.d_model}.")
    self._denoise = _denoiser(self.transformer)
    self._encode = _text_encoder(self.text_encoder, jnp.dtype(self.dtype).name)
    self._decode = _decoder(self.vae, jnp.dtype(self.dtype).name)

  # --- Sizes (diffusers' names).

  @property
  def vae_scale_factor_spatial(self) -> int:
    return self.vae.spatial_compression

  @property
  def vae_scale_factor_temporal(self) -> int:
    return self.vae.temporal_compression_ratio

  @property
  def latent_channels(self) -> int:
    return self.transformer.in_channels

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

  def decode_latents(self, latents: jax.Array) -> np.ndarray:
    """Scaled latents [B, T', H', W', C] -> float32 video [B, T, H, W, 3] in [0, 1]."""
    return np.asarray(self._decode(self.vae_params, latents), np.float32)

  def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = "", *,
               num_frames: int | None = None, height: int | None = None, width: int | None = None,
               num_inference_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
               seed: int = 0, latents: Any = None, sampler: str | None = None, max_sequence_length: int = 226,
               output_type: str = "np", progress: bool = True) -> np.ndarray:
    """Videos float32 [B, T, H, W, 3] in [0, 1] for `prompt` (one per prompt).

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

    latents = samplers.sample(
        self._denoise, latents, schedule=self.scheduler.schedule, sampler=sampler, num_steps=num_inference_steps,
        prediction_type=self.scheduler.prediction_type, guidance_scale=guidance_scale,
        use_dynamic_cfg=use_dynamic_cfg, rng=sampler_key, timestep_spacing=self.scheduler.timestep_spacing,
        progress=progress, model_args=(self.transformer_params, embeds))
    if output_type == "latent":
      return np.asarray(latents)
    # CogVideoX 1.5: the padding frames are the leading ones.
    padding = shape[1] - ((num_frames - 1) // self.vae_scale_factor_temporal + 1)
    return self.decode_latents(latents[:, padding:])
