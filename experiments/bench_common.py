"""What every benchmark measures with: wall time of a callable (median or best of repeats, after warm-up calls), peak
RSS, a JAX device's peak memory, the matmul rate FLOP/s are held against, worker subprocesses that print one JSON
result, short error text and the errors of an output against a reference.

Imports neither JAX nor torch at the top (drivers and torch workers import it too); `matmul_flops_per_s` imports JAX
when it is called.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

# ru_maxrss is in KiB on Linux.
_RSS_UNITS = {"MiB": 2 ** 10, "GiB": 2 ** 20}


def no_sync(out):
  """The `sync` of host work: nothing to wait for."""
  return out


def timed(fn, sync=no_sync) -> tuple[float, object]:
  """(seconds, result) of fn() with `sync(result)` inside the timed region (device work is asynchronous)."""
  start = time.perf_counter()
  out = fn()
  sync(out)
  return time.perf_counter() - start, out


def wall_times(fn, repeats: int, *, warmup: int = 0, sync=no_sync) -> list[float]:
  """Seconds of each of `repeats` calls of fn(), timed as in `timed`, after `warmup` untimed calls."""
  for _ in range(warmup):
    sync(fn())
  return [timed(fn, sync)[0] for _ in range(repeats)]


def median_time(fn, repeats: int, *, warmup: int = 0, sync=no_sync) -> float:
  """The median of `wall_times` (the mean of the middle two for an even count): the typical call."""
  return float(statistics.median(wall_times(fn, repeats, warmup=warmup, sync=sync)))


def best_time(fn, repeats: int, *, warmup: int = 0, sync=no_sync) -> float:
  """The least of `wall_times`: the call least disturbed by whatever else runs on the machine."""
  return min(wall_times(fn, repeats, warmup=warmup, sync=sync))


def peak_rss(unit: str = "GiB") -> float:
  """This process's peak resident set size so far (`ru_maxrss`: weights, buffers and compilation), in MiB or GiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _RSS_UNITS[unit]


def device_peak_gb(device, missing=None):
  """GiB a JAX device's allocator has held at most since the process started (`peak_bytes_in_use`; JAX cannot reset
  it), or `missing` where the device does not report it (a CPU)."""
  stats = device.memory_stats() or {}
  return stats["peak_bytes_in_use"] / 2 ** 30 if "peak_bytes_in_use" in stats else missing


def matmul_flops_per_s(size: int, dtype, repeats: int) -> float:
  """Measured FLOP/s of a jitted size^3 matmul of random data in `dtype` on JAX's default device (the median of
  `repeats` after a compiling call): the peak that a model's FLOP/s are compared with."""
  import jax  # pylint: disable=g-import-not-at-top  # here only: torch workers and drivers import this module
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  product = jax.jit(lambda a: a @ a)
  return 2 * size ** 3 / median_time(lambda: product(a), repeats, warmup=1, sync=jax.block_until_ready)


def worker_command(module: str, args) -> list[str]:
  """`python -m <module> <args>` with this interpreter."""
  return [sys.executable, "-m", module, *args]


def print_result(result: dict) -> None:
  """A worker's result: one JSON object as the last line of its stdout (what `run_worker` reads)."""
  print(json.dumps(result), flush=True)


def run_worker(module: str, args, *, name: str, env: dict | None = None) -> dict:
  """Runs `python -m <module> <args>` to the end in its own process (its peak RSS and device memory are its own) with
  `env` added to this process's environment, and returns the JSON object its last stdout line holds; raises a
  RuntimeError with the end of its stderr if it fails."""
  proc = subprocess.run(worker_command(module, args), capture_output=True, text=True, check=False,
                        env=dict(os.environ, **(env or {})))
  if proc.returncode:
    raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def short_error(e: BaseException, limit: int = 2000) -> str:
  """'<type>: <message>', its middle cut out where it is `limit` characters or longer (XLA errors can run to pages)."""
  text = f"{type(e).__name__}: {e}"
  return text if len(text) < limit else text[:limit // 2] + " [...] " + text[-(limit // 2):]


def errors(out, reference) -> dict:
  """{'max_abs', 'max_rel', 'l2_rel'} of `out` against `reference` in float32: the max abs error, that over max
  |reference|, and the relative L2 error; all NaN where either holds a non-finite value."""
  ref = np.asarray(reference, np.float32)
  diff = np.abs(np.asarray(out, np.float32) - ref)
  if not np.isfinite(diff).all():
    return {"max_abs": float("nan"), "max_rel": float("nan"), "l2_rel": float("nan")}
  return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / np.abs(ref).max()),
          "l2_rel": float(np.linalg.norm(diff) / np.linalg.norm(ref))}
