"""Metrics to TensorBoard event files, `metrics.jsonl` and a console progress line (process 0 only)."""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Mapping

import jax
import numpy as np
from absl import logging


# Counters that the console line shows only once they are non-zero (metrics.jsonl and TensorBoard always get them).
_SHOWN_IF_NONZERO = ("data/unreadable",)


def _scalar(value) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """Writes scalar metrics per step; on resume, drops `metrics.jsonl` lines past the restored step."""

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
               utilisation: Callable[[float], Mapping[str, float]] | None = None,
               job_eta: Callable[[float], float] | None = None):
    """`utilisation(steps_per_sec)` adds throughput metrics (TFLOP/s, MFU) to progress lines; `job_eta(seconds)`
    turns this run's remaining seconds into those of a larger job it is a stage of (shown as 'job ...')."""
    self.utilisation, self.job_eta = utilisation, job_eta
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._last_time, self._last_step = time.time(), start_step
    self._start_time, self._start_step = self._last_time, start_step
    self._elapsed_before = 0.0  # training seconds of earlier invocations (resumed runs)
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [json.loads(line) for line in f if line.strip()]
      kept = [m for m in kept if m.get("step", 0) <= start_step]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in kept)
      self._elapsed_before = max([m["train_seconds"] for m in kept if "train_seconds" in m], default=0.0)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float], *, progress: bool = False) -> dict[str, float]:
    """Writes `metrics` for `step`; with `progress`, adds steps/s and prints a progress line with the ETA."""
    scalars = {k: _scalar(v) for k, v in metrics.items()}
    if progress:
      now = time.time()
      steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
      self._last_time, self._last_step = now, step
      scalars["steps_per_sec"] = steps_per_sec
      scalars["train_seconds"] = self._elapsed_before + now - self._start_time
      if self.utilisation is not None:
        scalars.update(self.utilisation(steps_per_sec))
      rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
      eta = (self.total_steps - step) / max(rate, 1e-9)
      shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())
                       if not k.startswith("l2_") and k != "train_seconds" and (v or k not in _SHOWN_IF_NONZERO))
      job = f" (job {duration(self.job_eta(eta))})" if self.job_eta is not None else ""
      logging.info("[%d/%d] %s | ETA %s%s", step, self.total_steps, shown, duration(eta), job)
    if self.enabled:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    return scalars

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


def duration(seconds: float) -> str:
  """'0h12m05s'."""
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class _QuietLibraries(logging.logging.Filter):
  """Keeps INFO lines of our own modules; libraries (orbax, grain, tfds) only say WARNING and above."""

  def filter(self, record):
    # Python levels: absl's own constants (logging.WARNING == 1) are not record.levelno's scale.
    return (record.levelno >= logging.logging.WARNING or "/vdm_jax/" in record.pathname
            or "/experiments/" in record.pathname)


def quiet_library_logs() -> None:
  """For entry points: drop the libraries' INFO logs (orbax logs every checkpoint step in detail)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
