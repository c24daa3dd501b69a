"""The latent space of a text-to-video run: its frozen VAE, the latent cache, and the DiT's normalisation.

    space = LatentSpace(config, workdir)           # config: a `t2v` run's resolved config
    z = space.normalize(vae_latents)               # (z - latent_shift) * scaling_factor
    vae_latents = space.denormalize(z)

The statistics a 'channel' normalisation needs come from the training split's latent cache
(`vdm_jax.data.cache`), which training writes; a pipeline only reads it. `ensure_cache(split, directory)`, when
given, is called for a cache that is not there yet (the trainer passes its writer).

A latent cache records the identity of the VAE that wrote it (`VAEIdentity`: a workdir's checkpoint step and a hash
of its params and model config, or a CogVideoX folder's config and weights files), and a `t2v` run records the one
its DiT trained on (`W/inputs.json`); `check_vae` compares a record with the VAE in use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vdm_jax import config as config_lib
from vdm_jax import runs
from vdm_jax.convert import cogvideox
from vdm_jax.data import cache as cache_lib
from vdm_jax.data import pipeline
from vdm_jax.models import vae as vae_lib
from vdm_jax.parallel import mesh as mesh_lib


INPUTS_FILE = "inputs.json"  # in a t2v workdir: the identity of the VAE whose latents its DiT trained on


def _sha256(*chunks: bytes) -> str:
  h = hashlib.sha256()
  for chunk in chunks:
    h.update(chunk)
  return h.hexdigest()


def _json_sha256(value: Any) -> str:
  return _sha256(json.dumps(value, sort_keys=True).encode())


@dataclasses.dataclass(frozen=True)
class VAEIdentity:
  """Which VAE produced latents: a `vae` workdir at a checkpoint step (`weights_sha256`: its EMA params' bytes) or a
  CogVideoX folder (`weights_sha256`: its weights files' names, sizes and mtimes; no step). `config_sha256` hashes
  the model config the module was built from."""
  source: str  # 'workdir' or 'cogvideox'
  path: str
  step: int | None
  weights_sha256: str
  config_sha256: str

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def __str__(self) -> str:
    at = f" step {self.step}" if self.step is not None else ""
    return f"{self.source} {self.path}{at} (weights {self.weights_sha256[:12]}, config {self.config_sha256[:12]})"


def describe(recorded: Any) -> str:
  """A recorded identity (cache.json's "vae", inputs.json's) in one phrase, including records older than
  VAEIdentity ({workdir, path} only)."""
  try:
    return str(VAEIdentity(**recorded))
  except TypeError:
    return f"unidentified VAE {json.dumps(recorded, sort_keys=True)}"


def params_sha256(params: Any) -> str:
  """SHA-256 of a params tree: every leaf's path, dtype, shape and bytes, in the tree's (sorted) order."""
  chunks = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.ascontiguousarray(leaf)
    chunks += [jax.tree_util.keystr(path).encode(), f"{leaf.dtype}{leaf.shape}".encode(), leaf.tobytes()]
  return _sha256(*chunks)


def cogvideox_identity(path: str) -> VAEIdentity:
  """The identity of a CogVideoX VAE folder, from its files (nothing loaded)."""
  path = os.path.abspath(os.path.expanduser(path))
  with open(os.path.join(path, "config.json"), "rb") as f:
    config = f.read()
  return VAEIdentity("cogvideox", path, None, _json_sha256(cache_lib.files_identity(path)), _sha256(config))


def _load(vae_config) -> tuple[Any, Any, VAEIdentity]:
  # On one local device whatever mesh the caller is in (an eval inside the training mesh): the frozen VAE is read
  # to host arrays, and its restore's own checks must not be spread over the run's devices.
  with jax.set_mesh(mesh_lib.create_mesh({"data": 1}, jax.local_devices()[:1])):
    return _load_concrete(vae_config)


def _load_concrete(vae_config) -> tuple[Any, Any, VAEIdentity]:
  if vae_config.path:
    module, params = cogvideox.load_vae(os.path.expanduser(vae_config.path))
    return module, vae_lib.inference_params(params), cogvideox_identity(vae_config.path)
  workdir = os.path.expanduser(vae_config.workdir)
  config = runs.read_config(workdir)
  if config.get("experiment") != "vae":
    raise ValueError(f"vae.workdir {workdir!r} holds a {config.get('experiment')!r} run, not a 'vae' one.")
  params, step = runs.load_params(workdir)
  module = vae_lib.build(config.model, config.train.compute_dtype, config.train.param_dtype)
  built_from = {"model": config.model.to_dict(), "compute_dtype": config.train.compute_dtype,
                "param_dtype": config.train.param_dtype}
  identity = VAEIdentity("workdir", os.path.abspath(workdir), int(step), params_sha256(params["vae"]),
                         _json_sha256(built_from))
  return module, vae_lib.inference_params(params["vae"]), identity


def load_vae(vae_config) -> tuple[Any, Any]:
  """(module, params) of the frozen VAE a `vae` section names: a `vae` workdir (EMA params) or a CogVideoX folder.

  The params are in the backend's inference layout (`vdm_jax.models.vae.inference_params`: per-tap conv kernels on
  the CPU); the VAE is only run forward here (the latent cache, decoding samples)."""
  return _load(vae_config)[:2]


class LatentSpace:
  """The frozen VAE of a `t2v` config and how its latents are normalised for the DiT."""

  def __init__(self, config, workdir: str | None = None,
               ensure_cache: Callable[[str, str], None] | None = None):
    self.config, self.workdir, self._ensure_cache = config, workdir, ensure_cache
    self._vae = None
    self._identity: VAEIdentity | None = None
    self._caches: dict[str, cache_lib.Cache] = {}

  def vae(self) -> tuple[Any, Any]:
    """(module, params) of the frozen VAE, loaded on first use."""
    if self._vae is None:
      module, params, self._identity = _load(self.config.vae)
      self._vae = (module, params)
      trained_on = self.trained_on()
      if self._ensure_cache is None and trained_on is not None:
        # A reader (sampling) decodes with this VAE what the DiT learned from the recorded VAE's latents.
        mismatch = self.check_vae(trained_on.get("vae"))
        if mismatch:
          logging.warning("The DiT in %s was trained on latents of %s: its samples are decoded by another VAE.",
                          self.workdir, mismatch)
    return self._vae

  def vae_identity(self) -> VAEIdentity:
    """The frozen VAE's identity (a VAE workdir's params are loaded for it; a CogVideoX folder's files are read)."""
    if self._identity is None:
      if self.config.vae.path:
        self._identity = cogvideox_identity(self.config.vae.path)
      else:
        self.vae()
    return self._identity

  def check_vae(self, recorded: Any) -> str | None:
    """None if `recorded` (a VAE identity as written to JSON) is this space's VAE, else a phrase naming both:
    '<recorded>, but the VAE is now <current>'."""
    # The path names the VAE for people but does not identify it: a moved workdir holds the same VAE.
    unplaced = lambda identity: {k: v for k, v in identity.items() if k != "path"}
    if isinstance(recorded, dict) and unplaced(recorded) == unplaced(self.vae_identity().to_json()):
      return None
    return f"{describe(recorded)}, but the VAE is now {self.vae_identity()}"

  def reopen(self, split: str) -> None:
    """Forgets the split's opened cache (its writer rebuilt it), so the next `cache(split)` reads the new one."""
    self._caches.pop(split, None)

  def trained_on(self) -> dict[str, Any] | None:
    """What this run's `inputs.json` records (the VAE whose latents its DiT trained on), or None."""
    path = os.path.join(self.workdir, INPUTS_FILE) if self.workdir else ""
    if not os.path.isfile(path):
      return None
    with open(path) as f:
      return json.load(f)

  def split_dir(self, override: str, name: str, split: str) -> str:
    """`<override or <vae workdir, else this workdir>/<name>>/<pipeline.dataset_key(input)>/<split>`."""
    root = override or os.path.join(self.config.vae.workdir or self.workdir or ".", name)
    return os.path.join(root, pipeline.dataset_key(self.config.input), split)

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
      if self._ensure_cache is None and self._vae is not None:
        # A reader (sampling): the cache's statistics normalise the DiT's latents, so a cache written by another VAE
        # than the one decoding is worth one line; the trainer's `ensure_cache` rebuilds such a cache instead.
        mismatch = self.check_vae(self._caches[split].meta.get("vae"))
        if mismatch:
          logging.warning("The latent cache %s (its statistics normalise the latents) comes from %s.", directory,
                          mismatch)
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
