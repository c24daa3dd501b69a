"""The `t2v` experiment's inputs: the latent and text-embedding caches, written once per split, joined to the data.

Every process calls these for the same caches in the same order: writing is a collective in multi-process runs
(process 0 writes, the others wait).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vdm_jax import runs, xla_cpu
from vdm_jax.diffusion import conditioning
from vdm_jax.data import cache as cache_lib
from vdm_jax.data import pipeline
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.pipelines import latents


def write_once(meta_file: str, name: str, write: Callable[[], Any],
               prepare: Callable[[], Any] | None = None, stale: Callable[[], bool] | None = None) -> None:
  """Calls `write` on process 0 if `meta_file` (a cache's last-written file) is missing or `stale()` says the cache
  is out of date, as process 0 sees it, and `prepare` first on every process; the others wait until it is written.

  `write` runs on process 0's first device under a mesh of its own: called from inside the run's mesh (an eval's
  validation cache), the encoders' sharding constraints would otherwise spread it over every process's devices.
  """
  multi = jax.process_count() > 1
  missing = not os.path.isfile(meta_file) or (stale is not None and stale())
  if multi:
    missing = bool(multihost_utils.broadcast_one_to_all(np.asarray(missing)))
  if not missing:
    return
  if prepare is not None:
    prepare()
  if jax.process_index() == 0:
    with jax.set_mesh(mesh_lib.create_mesh({"data": 1}, jax.local_devices()[:1])):
      write()
  if multi:
    multihost_utils.sync_global_devices(name)


def _stale_latents(space, directory: str) -> bool:
  """Whether the latent cache in `directory` was written by another VAE than the run's (logged in one line): a VAE
  that trained on, or another one at the same path, gives other latents."""
  with open(os.path.join(directory, cache_lib.META_FILE)) as f:
    recorded = json.load(f).get("vae")
  mismatch = space.check_vae(recorded)
  if mismatch:
    logging.warning("The latent cache %s comes from %s; rebuilding it.", directory, mismatch)
  return mismatch is not None


def record_inputs(experiment) -> None:
  """Records in the run's workdir the VAE whose latents its DiT trains on (`inputs.json`), and refuses to go on
  training a DiT whose checkpoints learned another VAE's latents (resuming would mix the two)."""
  space, workdir = experiment.space, experiment.workdir
  if not workdir:
    return
  trained_on = space.trained_on()
  checkpoints = os.path.join(workdir, runs.CHECKPOINTS_DIR)
  if trained_on is not None and os.path.isdir(checkpoints) and os.listdir(checkpoints):
    mismatch = space.check_vae(trained_on.get("vae"))
    if mismatch:
      raise cache_lib.CacheMismatchError(
          f"The DiT checkpoints in {workdir} were trained on latents of {mismatch}. Train this VAE's DiT in a new "
          "workdir (or remove this one's checkpoints and inputs.json to start it over).")
    return
  # Every process: a VAE workdir's identity restores its checkpoint, a step all processes take together.
  identity = space.vae_identity().to_json()
  if jax.process_index() == 0:
    path = os.path.join(workdir, latents.INPUTS_FILE)
    with open(path + ".tmp", "w") as f:
      json.dump({"vae": identity}, f, indent=1)
    os.replace(path + ".tmp", path)


def _moments_encoder(module):
  """jitted (params, video [B, T, H, W, 3] in [-1, 1]) -> posterior moments [B, T', h, w, 2C] (mean | logvar)."""
  return xla_cpu.jit(lambda p, video: jnp.concatenate(
      [(posterior := module.apply({"params": p}, video, method="encode")).mean, posterior.logvar], -1))


def write_latent_cache(experiment, split: str, directory: str, check_vae: bool = False) -> None:
  """Writes the split's latent cache with the frozen VAE if it is missing, or with `check_vae` also if another VAE
  wrote it (then the run's `inputs.json` is checked first: `record_inputs`)."""
  config, space = experiment.config, experiment.space

  def write():
    module, params = space.vae()
    encode = _moments_encoder(module)
    logging.info("Writing the %s latent cache to %s.", split, directory)
    cache_lib.write_latents(directory, pipeline.data_source(config.input, split),
                            lambda video: np.asarray(encode(params, video)),
                            batch_size=config.vae.encode_batch_size,
                            fingerprint=space.vae_identity().to_json())

  stale = None
  if check_vae:
    # Every process loads the VAE (its identity needs its params): restoring a VAE workdir's checkpoint is itself a
    # step all processes take.
    record_inputs(experiment)
    stale = lambda: _stale_latents(space, directory)
  write_once(os.path.join(directory, cache_lib.META_FILE), f"latent_cache_{split}", write, prepare=space.vae,
             stale=stale)


def condition_cache_dir(experiment, split: str) -> str:
  return experiment.space.split_dir(experiment.config.vae.cache_dir, "condition_cache", split)


def write_condition_cache(experiment, split: str, directory: str) -> None:
  """Writes the split's condition cache if it is missing or stale: per clip, the hint latents (posterior moments
  [1 + k, h, w, 2C]) of its last frame and of its last 1 + r (k - 1) frames (`conditioning.hint_input`), which the
  tasks with hints give at the end of the clip. It records the VAE and k; another of either rebuilds it."""
  config, space = experiment.config, experiment.space
  k = config.diffusion.condition.extend_frames
  fingerprint = lambda: {**space.vae_identity().to_json(), "hints": "tail+backward", "extend_frames": k}

  def write():
    module, params = space.vae()
    r = int(module.temporal_compression_ratio)
    encode = _moments_encoder(module)

    def hints(video):  # the hint_input's first latent frame (zeros only) dropped
      tail = encode(params, conditioning.hint_input(video[:, -1:], r))[:, 1:]
      backward = encode(params, conditioning.hint_input(video[:, -conditioning.pixel_frames(k, r):], r))[:, 1:]
      return np.concatenate([np.asarray(tail), np.asarray(backward)], axis=1)

    logging.info("Writing the %s condition cache to %s.", split, directory)
    cache_lib.write_latents(directory, pipeline.data_source(config.input, split), hints,
                            batch_size=config.vae.encode_batch_size, fingerprint=fingerprint(),
                            desc="condition cache")

  def stale():
    with open(os.path.join(directory, cache_lib.META_FILE)) as f:
      recorded = json.load(f).get("vae")
    return recorded != json.loads(json.dumps(fingerprint()))

  write_once(os.path.join(directory, cache_lib.META_FILE), f"condition_cache_{split}", write, prepare=space.vae,
             stale=stale)


def text_cache_dir(experiment, split: str) -> str:
  return experiment.space.split_dir(experiment.config.text.cache_dir, "text_cache", split)


def text_cache(experiment, split: str) -> cache_lib.Cache:
  """The split's text-embedding cache, written first (by process 0, with the frozen encoder) if missing; one
  written by another encoder fails instead of training on the wrong embeddings."""
  directory = text_cache_dir(experiment, split)

  def write():
    logging.info("Writing the %s text-embedding cache to %s.", split, directory)
    cache_lib.write_text_split(directory, experiment.config.input, split, experiment.text,
                               experiment.encoder_params())

  write_once(os.path.join(directory, cache_lib.META_FILE), f"text_cache_{split}", write)
  cache = cache_lib.Cache(directory)
  expected = cache_lib.encoder_identity(experiment.text)
  if cache.meta["encoder"] != expected:
    raise cache_lib.CacheMismatchError(
        f"The text-embedding cache {directory!r} was written by the encoder {cache.meta['encoder']}, not the "
        f"configured {expected}; remove it or point text.cache_dir elsewhere.")
  return cache


def joined_source(experiment, split: str):
  """The split's examples with their cached `latent_moments` (and `hint_moments` when the condition mix has tasks
  with hints; `text_embeds`, `text_mask` with text.cached)."""
  config, space = experiment.config, experiment.space
  # Checked here, where the run builds its input (outside any trace or mesh), rather than wherever the latent cache
  # is first opened: a cache another VAE wrote is rebuilt before its latents or statistics are used.
  write_latent_cache(experiment, split, space.cache_dir(split), check_vae=True)
  space.reopen(split)
  source = cache_lib.CachedSource(pipeline.data_source(config.input, split), space.cache(split))
  if conditioning.needs_hints(config.diffusion.condition.mix):
    directory = condition_cache_dir(experiment, split)
    write_condition_cache(experiment, split, directory)
    source = cache_lib.CachedSource(source, cache_lib.Cache(directory), rename={"latent_moments": "hint_moments"})
  if config.text.cached:
    source = cache_lib.CachedSource(source, experiment.text_cache(split))
  return source
