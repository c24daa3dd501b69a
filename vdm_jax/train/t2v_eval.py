"""The `t2v` experiment's evals and samples: validation loss on a fixed grid of timesteps, the probe's accuracy on
videos sampled for held-out seeds, and mp4s with a contact sheet for fixed prompts."""
from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import io
from vdm_jax.data import pipeline
from vdm_jax.data import shapes as shapes_lib
from vdm_jax.eval import probe
from vdm_jax.parallel import sharding


def probe_prompts(n: int) -> list[str]:
  """n prompts cycling over all 120 (color, shape, motion) combinations in a fixed shuffled order, each with a
  caption template drawn from a fixed seed."""
  combos = list(itertools.product(shapes_lib.COLORS, shapes_lib.SHAPES, shapes_lib.MOTIONS))
  rng = np.random.default_rng(0)
  order = rng.permutation(len(combos))
  return [shapes_lib.caption_for(*combos[order[i % len(combos)]], template=int(rng.integers(0, 6)))
          for i in range(n)]


def validation_losses(experiment, params) -> dict[str, float]:
  """Mean loss on the validation split at each timestep of `eval.loss_timesteps`, with fixed noise, on the
  posterior means (unweighted)."""
  config = experiment.config
  e, d = config.eval, config.diffusion
  ds = pipeline.eval_batches(config.input, split=e.split, batch_size=e.batch_size, num_examples=e.num_examples,
                             source=experiment.data_source(e.split))
  cached = config.text.cached
  text_key = "text_embeds" if cached else "tokens"

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

  eval_params = params if experiment.text.trainable or cached else {**params, "text": experiment.encoder_params()}
  per_t = {int(t): [] for t in e.loss_timesteps}
  for i, batch in enumerate(ds):
    dev = sharding.shard_batch(pipeline.numeric(batch), experiment.mesh)
    for t in per_t:
      rng = jax.random.fold_in(jax.random.PRNGKey(1234 + i), t)
      per_t[t].append(sharding.to_host(grid_loss(eval_params, dev["latent_moments"], dev[text_key], t, rng)))
  return {f"val_loss_t{t}": float(np.mean(np.concatenate(v))) for t, v in per_t.items() if v}


def _generate(experiment, params, prompts, seeds):
  s = experiment.config.sample
  return experiment.pipeline(params).generate(
      prompts, seeds=seeds, sampler=s.sampler, num_steps=s.num_steps, guidance_scale=s.guidance_scale,
      use_dynamic_cfg=s.use_dynamic_cfg, guidance_rescale=s.guidance_rescale, batch_size=s.batch_size)


def evaluate(experiment, params) -> dict[str, float]:
  """Validation losses, and on Captioned Shapes the probe's accuracy (`probe_color`, ...) on sampled videos."""
  metrics = validation_losses(experiment, params)
  e = experiment.config.eval
  if e.probe_prompts > 0 and experiment.config.input.dataset == "captioned_shapes":
    prompts = probe_prompts(e.probe_prompts)
    videos = _generate(experiment, params, prompts, [e.probe_seed + i for i in range(len(prompts))])
    scores = probe.score(videos, prompts)
    metrics.update({f"probe_{k}": v for k, v in scores.items() if k != "num_videos"})
  return metrics


def write_samples(experiment, params, out_dir: str) -> None:
  """`sample.prompts` with seeds `sample.seed + i`: an mp4 each and a contact sheet (process 0 writes)."""
  s = experiment.config.sample
  prompts = list(s.prompts)
  videos = _generate(experiment, params, prompts, [s.seed + i for i in range(len(prompts))])
  if jax.process_index() != 0:
    return
  os.makedirs(out_dir, exist_ok=True)
  for i, video in enumerate(videos):
    io.write_video(os.path.join(out_dir, f"sample_{i:02d}.mp4"), video)
  io.write_image(os.path.join(out_dir, "samples.png"), io.contact_sheet(videos, captions=prompts))
