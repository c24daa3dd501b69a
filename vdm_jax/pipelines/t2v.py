"""Text -> video with a trained `t2v` workdir: encode the prompt, sample latents with the DiT, decode with the VAE.

    pipe = TextToVideoPipeline.from_workdir("/tmp/quickstart/t2v")
    videos = pipe.generate(["a red circle moving left"], seeds=[0])      # uint8 [N, T, H, W, 3]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import io, runs, xla_cpu
from vdm_jax import text as text_lib
from vdm_jax.diffusion import samplers
from vdm_jax.diffusion.schedules import NoiseSchedule
from vdm_jax.models.dit import DiT
from vdm_jax.pipelines import t2v_config
from vdm_jax.pipelines.latents import LatentSpace


def build_dit(config, latent_shape: tuple[int, ...], text) -> DiT:
  """The DiT of a `t2v` config for latents [T', h, w, C] and a text encoder (`vdm_jax.text.TextEncoder`); fails on
  `model.*` keys that are not DiT fields."""
  t, h, w, c = latent_shape
  fields = {f.name for f in dataclasses.fields(DiT)}
  model = config.model.to_dict()
  unknown = sorted(set(model) - fields)
  if unknown:
    raise config_lib.ConfigError(f"Config keys {['model.' + k for k in unknown]} are not DiT fields; "
                                 f"allowed: {sorted(fields)}.")
  kwargs = {**model, "in_channels": c, "text_dim": text.d_model, "max_text_length": text.max_length,
            "sample_frames": t, "sample_height": h, "sample_width": w,
            "dtype": jnp.dtype(config.train.compute_dtype)}
  return DiT(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def frozen_text_params(config, text) -> Any:
  """A frozen encoder's params: its weights, or the fixed random init a run with an untrained encoder used."""
  return text.init(jax.random.PRNGKey(config.seed + 1))


@dataclasses.dataclass(eq=False)
class TextToVideoPipeline:
  """The three models and what sampling needs; `generate` turns prompts and seeds into uint8 videos."""
  dit: Any
  dit_params: Any
  text: Any  # vdm_jax.text.encoders.TextEncoder
  text_params: Any
  vae: Any
  vae_params: Any
  scaling_factor: Any  # float, or float32 [C]: the DiT's latents are (VAE latents - latent_shift) * scaling_factor
  latent_shape: tuple[int, ...]  # [T', h, w, C]
  schedule: NoiseSchedule
  prediction_type: str = "v_prediction"
  flow_shift: float = 1.0
  latent_shift: Any = 0.0  # float, or float32 [C]

  def __post_init__(self):
    self._decode = xla_cpu.jit(lambda p, z: self.vae.apply({"params": p}, z, method="decode"))

  def denormalize(self, latents: jax.Array) -> jax.Array:
    """The DiT's latents -> VAE latents (the inverse of the training normalisation)."""
    return latents / jnp.asarray(self.scaling_factor, jnp.float32) + jnp.asarray(self.latent_shift, jnp.float32)

  def _model_fn(self, x, t, dit_params, embeds):
    return self.dit.apply({"params": dit_params}, x, t, embeds)

  @classmethod
  def from_config(cls, config, params, workdir: str | None = None, *, space: LatentSpace | None = None,
                  text=None, text_params=None) -> "TextToVideoPipeline":
    """The pipeline of a `t2v` config with its trained params ({'dit', and 'text' for a trained encoder}).

    `workdir` locates the latent cache when the config names none; `space`, `text` and `text_params` reuse what
    the caller already built (the trainer's own)."""
    space = space or LatentSpace(config, workdir)
    text = text or text_lib.build(config.text)
    if text_params is None:
      text_params = params["text"] if config.text.trainable else frozen_text_params(config, text)
    vae_module, vae_params = space.vae()
    d = config.diffusion
    return cls(dit=build_dit(config, space.latent_shape(), text), dit_params=params["dit"], text=text,
               text_params=text_params, vae=vae_module, vae_params=vae_params, scaling_factor=space.scaling_factor,
               latent_shift=space.latent_shift, latent_shape=space.latent_shape(),
               schedule=t2v_config.make_schedule(d), prediction_type=d.prediction_type, flow_shift=d.flow_shift)

  @classmethod
  def from_workdir(cls, workdir: str) -> "TextToVideoPipeline":
    """The pipeline of a trained `t2v` run: its resolved config, EMA params and frozen VAE."""
    config = runs.read_config(workdir)
    if config.get("experiment") != "t2v":
      raise ValueError(f"{workdir!r} holds a {config.get('experiment')!r} run; sampling needs a 't2v' run.")
    config = runs.read_config(workdir, t2v_config.inference_defaults())
    params, _ = runs.load_params(workdir)
    return cls.from_config(config, params, workdir)

  def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, sampler: str = "ddim", num_steps: int = 25,
               guidance_scale: float = 4.0, use_dynamic_cfg: bool = False, guidance_rescale: float = 0.0,
               negative_prompt: str = "", batch_size: int = 16, progress: bool = False,
               return_latents: bool = False) -> np.ndarray:
    """uint8 videos [N, T, H, W, 3], video i from prompts[i] and the initial noise of seeds[i]. Batches are padded
    to `batch_size` so one compiled program serves all of them. `guidance_rescale`: see
    `vdm_jax.diffusion.samplers.rescale_guidance`."""
    if len(prompts) != len(seeds):
      raise ValueError(f"Got {len(prompts)} prompts but {len(seeds)} seeds.")
    batch_size = max(1, min(batch_size, len(prompts)))
    outputs = []
    for start in range(0, len(prompts), batch_size):
      chunk = list(prompts[start:start + batch_size])
      chunk_seeds = list(seeds[start:start + batch_size])
      pad = batch_size - len(chunk)
      chunk, chunk_seeds = chunk + chunk[-1:] * pad, chunk_seeds + chunk_seeds[-1:] * pad
      ids, mask = self.text.tokenize(chunk)
      embeds = jnp.asarray(self.text.encode_tokens(self.text_params, ids, mask), jnp.float32)
      if guidance_scale > 1.0:
        neg_ids, neg_mask = self.text.tokenize([negative_prompt] * len(chunk))
        uncond = jnp.asarray(self.text.encode_tokens(self.text_params, neg_ids, neg_mask), jnp.float32)
        embeds = jnp.concatenate([uncond, embeds])
      noise = jnp.stack([jax.random.normal(jax.random.PRNGKey(int(s)), self.latent_shape) for s in chunk_seeds])
      latents = samplers.sample(self._model_fn, noise, schedule=self.schedule, sampler=sampler, num_steps=num_steps,
                                prediction_type=self.prediction_type, guidance_scale=guidance_scale,
                                use_dynamic_cfg=use_dynamic_cfg, guidance_rescale=guidance_rescale, rng=jax.random.PRNGKey(int(chunk_seeds[0])),
                                flow_shift=self.flow_shift, progress=progress,
                                model_args=(self.dit_params, embeds))
      if return_latents:
        outputs.append(np.asarray(latents)[:len(chunk) - pad])
        continue
      video = self._decode(self.vae_params, self.denormalize(latents))
      outputs.append(io.to_uint8(video)[:len(chunk) - pad])
    return np.concatenate(outputs)
