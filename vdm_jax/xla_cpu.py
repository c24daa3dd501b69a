"""XLA:CPU compiler options for vdm_jax's own jitted functions: convolutions by XLA's own (Eigen) kernels.

jaxlib 0.10 hands convolutions, dots and reductions to YNNPACK by default; for the 3D VAE's convolutions XLA's own
kernels are faster on the CPU, above all in the backward pass (docs/vae_cpu_performance.md has the measurements).
`compiler_options()` takes the convolutions back from YNNPACK and leaves it the dots and reductions; `jit(fn, **kw)` is
`jax.jit(fn, **kw)` compiled with those options. Both are per-computation: nothing is set globally or at import, and a
user's own `jax.jit` keeps XLA's defaults (`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`
gives a whole process the same). No options are added when the default backend is not the CPU, when XLA_FLAGS already
sets `xla_cpu_experimental_ynn_fusion_type` (the user's choice wins), or when the installed jaxlib rejects the option.

XLA's own convolutions round differently with the process's device/thread split: results with 1 and with 8 virtual CPU
devices differ by about 1e-6 (they are bitwise equal within a process and for the same device count).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import jax
import numpy as np

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.10's default YNN fusion types are INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION and REDUCE; this drops the
# convolutions (a compile option takes exact names, not XLA_FLAGS' "-name" form).
YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
# Also without YNNPACK's reductions: faster for the DiT's token-axis sums, slower for the VAE's GroupNorms
# (docs/cpu_profile.md), so a run chooses (train.cpu_ynn_reductions).
YNN_DOTS_ONLY = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib compiles with `options` (a trivial function, compiled once per option set)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except  (an unknown option or value: keep XLA's defaults)
    return False
  return True


def compiler_options(ynn_reductions: bool = True) -> Optional[dict[str, str]]:
  """The compile options for vdm_jax's computations on the default backend, or None for XLA's defaults (the backend
  is not the CPU, XLA_FLAGS sets the option, or this jaxlib does not know it). `ynn_reductions=False` also takes
  the reductions back from YNNPACK (dots only)."""
  if jax.default_backend() != "cpu" or YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
    return None
  options = ((YNN_OPTION, YNN_WITHOUT_CONVOLUTIONS if ynn_reductions else YNN_DOTS_ONLY),)
  return dict(options) if _accepted(options) else None


def jit(fn: Callable[..., Any], **kwargs) -> Callable[..., Any]:
  """`jax.jit(fn, **kwargs)` compiled with `compiler_options()`. The options are resolved at the first use, so
  creating the function initialises no backend (e.g. before `jax.distributed.initialize`); after that it is the
  jitted function (`.lower`, `._cache_size`, ... reach it)."""
  return _LazyJit(fn, kwargs)


class _LazyJit:
  """A jax.jit of `fn` made at its first use, with the compile options known then."""

  def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any]):
    functools.update_wrapper(self, fn)
    self._fn, self._kwargs, self._jitted = fn, kwargs, None

  def _get(self):
    if self._jitted is None:
      self._jitted = jax.jit(self._fn, compiler_options=compiler_options(), **self._kwargs)
    return self._jitted

  def __call__(self, *args, **kwargs):
    return self._get()(*args, **kwargs)

  def __getattr__(self, name: str):
    if name.startswith("__") or name in ("_fn", "_kwargs", "_jitted"):
      raise AttributeError(name)
    return getattr(self._get(), name)


def has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether the host CPU has AMX's bfloat16 tile multiply (the `amx_bf16` flag in Linux's /proc/cpuinfo; Intel
  Sapphire Rapids and later), where jaxlib's dots run faster in bfloat16 than in float32 (docs/results.md). False
  where the file is missing or unreadable (not Linux) or has no such flag; nothing is cached, so read it once per
  run."""
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return "amx_bf16" in line.partition(":")[2].split()
  except OSError:
    return False
  return False
