"""The latent space of a text-to-video run: its frozen VAE, the latent cache, and the DiT's normalisation.

    space = LatentSpace(config, workdir)           # config: a `t2v` run's resolved config
    z = space.normalize(vae_latents)               # (z - latent_shift) * scaling_factor
    vae_latents = space.denormalize(z)

The statistics a 'channel' normalisation needs come from the training split's latent cache
(`vdm_jax.data.cache`), which training writes; a pipeline only reads it. `ensure_cache(split, directory)`, when
given, is called for a cache that is not there yet (the trainer passes its writer).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import runs
from vdm_jax.convert import cogvideox
from vdm_jax.data import cache as cache_lib
from vdm_jax.models import vae as vae_lib


def load_vae(vae_config) -> tuple[Any, Any]:
  """(module, params) of the frozen VAE a `vae` section names: a `vae` workdir (EMA params) or a CogVideoX folder.

  The params are in the backend's inference layout (`vdm_jax.models.vae.inference_params`: per-tap conv kernels on
  the CPU); the VAE is only run forward here (the latent cache, decoding samples)."""
  if vae_config.path:
    module, params = cogvideox.load_vae(os.path.expanduser(vae_config.path))
    return module, vae_lib.inference_params(params)
  workdir = os.path.expanduser(vae_config.workdir)
  config = runs.read_config(workdir)
  if config.get("experiment") != "vae":
    raise ValueError(f"vae.workdir {workdir!r} holds a {config.get('experiment')!r} run, not a 'vae' one.")
  params, _ = runs.load_params(workdir)
  module = vae_lib.build(config.model, config.train.compute_dtype, config.train.param_dtype)
  return module, vae_lib.inference_params(params["vae"])


class LatentSpace:
  """The frozen VAE of a `t2v` config and how its latents are normalised for the DiT."""

  def __init__(self, config, workdir: str | None = None,
               ensure_cache: Callable[[str, str], None] | None = None):
    self.config, self.workdir, self._ensure_cache = config, workdir, ensure_cache
    self._vae = None
    self._caches: dict[str, cache_lib.Cache] = {}

  def vae(self) -> tuple[Any, Any]:
    """(module, params) of the frozen VAE, loaded on first use."""
    if self._vae is None:
      self._vae = load_vae(self.config.vae)
    return self._vae

  def split_dir(self, override: str, name: str, split: str) -> str:
    """`<override or <vae workdir, else this workdir>/<name>>/<builder_config or dataset>/<split>`."""
    root = override or os.path.join(self.config.vae.workdir or self.workdir or ".", name)
    return os.path.join(root, self.config.input.builder_config or self.config.input.dataset, split)

  def cache_dir(self, split: str) -> str:
    return self.split_dir(self.config.vae.cache_dir, "latent_cache", split)

  def has_cache(self, split: str) -> bool:
    return split in self._caches or os.path.isfile(os.path.join(self.cache_dir(split), cache_lib.META_FILE))

  def cache(self, split: str) -> cache_lib.Cache:
    """The split's latent cache (written first through `ensure_cache` when it is missing and one was given)."""
    if split not in self._caches:
      directory = self.cache_dir(split)
      if self._ensure_cache is not None:
        self._ensure_cache(split, directory)
      self._caches[split] = cache_lib.Cache(directory)
    return self._caches[split]

  def _train_meta(self) -> dict[str, Any]:
    return self.cache(self.config.input.split).meta

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
      return np.asarray(self._train_meta()["latent_mean"], np.float32)
    return 0.0

  @property
  def scaling_factor(self) -> np.ndarray | float:
    """The latent scale: float32 [C] (latent_norm='channel': 1 / the channel stds) or one float."""
    v = self.config.vae
    if self.latent_norm == "channel":
      std = np.asarray(self._train_meta()["latent_std"], np.float64)
      return (1.0 / np.maximum(std, 1e-6)).astype(np.float32)
    if v.scaling_factor > 0:
      return float(v.scaling_factor)
    if v.path:
      return float(self.vae()[0].scaling_factor)
    return 1.0 / float(self._train_meta()["latent_std_overall"])

  def normalize(self, z):
    """VAE latents [..., C] -> the DiT's latents: (z - latent_shift) * scaling_factor."""
    return (z - jnp.asarray(self.latent_shift, jnp.float32)) * jnp.asarray(self.scaling_factor, jnp.float32)

  def latent_shape(self) -> tuple[int, ...]:
    """[T', h, w, C] of one clip's latents: from the latent cache, or from `vae.latent_shape` while there is none
    (so a run can be planned without data or VAE weights); both given must agree."""
    configured = tuple(int(x) for x in self.config.vae.latent_shape)
    split = self.config.input.split
    if configured and not self.has_cache(split):
      return configured
    t, h, w, c2 = self.cache(split).meta["shape"]
    if configured and configured != (t, h, w, c2 // 2):
      raise config_lib.ConfigError(f"vae.latent_shape={configured} but the latent cache {self.cache_dir(split)} "
                                   f"holds latents of shape {(t, h, w, c2 // 2)}; fix or remove vae.latent_shape.")
    return (t, h, w, c2 // 2)
