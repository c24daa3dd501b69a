"""The `t2v` experiment's hooks for the evaluators (vdm_jax.eval.evaluators: the loss at a timestep, generated and
reconstructed videos) and its samples: mp4s with a contact sheet for fixed prompts."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import io
from vdm_jax.data import pipeline
from vdm_jax.parallel import sharding


def loss_at(experiment, params, batch, t: int, rng) -> np.ndarray:
  """Per-example loss [B] (host) of an eval batch of the joined source at integer timestep t (flow: t /
  num_train_timesteps), with noise from `rng`, on the posterior means (unweighted): the `val_loss_grid` hook."""
  config = experiment.config
  cached = config.text.cached
  if experiment.__dict__.get("_grid_loss") is None:
    d = config.diffusion

    @jax.jit
    def grid_loss(params, moments, text, t, rng):
      z = experiment.latents(moments, None)
      noise = jax.random.normal(rng, z.shape)
      embeds = text.astype(jnp.float32) if cached else experiment.text_embeds(params["text"], text)
      if d.prediction_type == "flow":
        times = jnp.full((z.shape[0],), t / d.num_train_timesteps)
      else:
        times = jnp.full((z.shape[0],), t, jnp.int32)
      return experiment.mse_at(params["dit"], z, noise, times, embeds)[0]
    experiment._grid_loss = grid_loss  # pylint: disable=protected-access
  eval_params = params if experiment.text.trainable or cached else {**params, "text": experiment.encoder_params()}
  dev = sharding.shard_batch(pipeline.numeric(batch), experiment.mesh)
  text = dev["text_embeds" if cached else "tokens"]
  return sharding.to_host(experiment._grid_loss(eval_params, dev["latent_moments"], text, t, rng))  # pylint: disable=protected-access


def generate(experiment, params, prompts, seeds) -> np.ndarray:
  """uint8 videos [N, T, H, W, 3] for `prompts` with `seeds`, by the run's `sample` settings."""
  s = experiment.config.sample
  return experiment.pipeline(params).generate(
      prompts, seeds=seeds, sampler=s.sampler, num_steps=s.num_steps, guidance_scale=s.guidance_scale,
      use_dynamic_cfg=s.use_dynamic_cfg, guidance_rescale=s.guidance_rescale, batch_size=s.batch_size)


def reconstruct(experiment, params, video) -> np.ndarray:
  """Host float clips [B, T, H, W, 3] in [-1, 1] through the run's VAE (posterior mean, decoded), float32."""
  out = experiment.pipeline(params).reconstruct(io.to_uint8(video))
  return out.astype(np.float32) / 127.5 - 1.0


def write_samples(experiment, params, out_dir: str) -> None:
  """`sample.prompts` with seeds `sample.seed + i`: an mp4 each and a contact sheet (process 0 writes)."""
  s = experiment.config.sample
  prompts = list(s.prompts)
  videos = generate(experiment, params, prompts, [s.seed + i for i in range(len(prompts))])
  if jax.process_index() != 0:
    return
  os.makedirs(out_dir, exist_ok=True)
  for i, video in enumerate(videos):
    io.write_video(os.path.join(out_dir, f"sample_{i:02d}.mp4"), video)
  io.write_image(os.path.join(out_dir, "samples.png"), io.contact_sheet(videos, captions=prompts))
