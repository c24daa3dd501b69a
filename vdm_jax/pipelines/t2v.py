"""Text -> video with a trained `t2v` workdir: encode the prompt, sample latents with the DiT, decode with the VAE.

    pipe = TextToVideoPipeline.from_workdir("/tmp/quickstart/t2v")
    videos = pipe.generate(["a red circle moving left"], seeds=[0])      # uint8 [N, T, H, W, 3]
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import io, xla_cpu
from vdm_jax.diffusion import samplers
from vdm_jax.diffusion.schedules import NoiseSchedule


def load_vae(vae_config) -> tuple[Any, Any]:
  """(module, params) of the frozen VAE a `t2v` config names: a `vae` workdir (EMA params) or a CogVideoX folder.

  The params are in the backend's inference layout (`vdm_jax.models.vae.inference_params`: per-tap conv kernels on
  the CPU); the VAE is only run forward here (the latent cache, decoding samples)."""
  from vdm_jax.models.vae import inference_params  # pylint: disable=g-import-not-at-top
  if vae_config.path:
    from vdm_jax.convert import cogvideox  # pylint: disable=g-import-not-at-top
    module, params = cogvideox.load_vae(os.path.expanduser(vae_config.path))
    return module, inference_params(params)
  from vdm_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import checkpoint, loop, registry  # pylint: disable=g-import-not-at-top
  workdir = os.path.expanduser(vae_config.workdir)
  config = loop.load_config_json(workdir)
  if config.experiment != "vae":
    raise ValueError(f"vae.workdir {workdir!r} holds a {config.experiment!r} run, not a 'vae' one.")
  params, _ = checkpoint.load_params(workdir)
  # The run's own model definition (the experiment builds its module from the resolved config; no init happens).
  module = registry.get("vae")(config, mesh_lib.create_mesh({"data": 1}, jax.devices()[:1])).model
  return module, inference_params(params["vae"])


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
  def from_workdir(cls, workdir: str) -> "TextToVideoPipeline":
    """The pipeline of a trained `t2v` run: its resolved config, EMA params and frozen VAE."""
    from vdm_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    from vdm_jax.train import checkpoint, loop, registry  # pylint: disable=g-import-not-at-top
    config = loop.load_config_json(workdir)
    if config.experiment != "t2v":
      raise ValueError(f"{workdir!r} holds a {config.experiment!r} run; sampling needs a 't2v' run.")
    experiment = registry.get("t2v")(config, mesh_lib.create_mesh({"data": 1}, jax.devices()[:1]))
    experiment.workdir = workdir
    params, _ = checkpoint.load_params(workdir)
    return experiment.pipeline(params)

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
