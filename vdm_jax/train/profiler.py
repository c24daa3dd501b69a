"""Where a training step's time goes: a `jax.profiler` trace of a few steps, summed by XLA operation.

`StepProfiler` records steps (first, first + n] of a training loop (`train.profile_steps`, `train.profile_start`)
into `<workdir>/profile/` (a trace TensorBoard's profiler or Perfetto opens) and writes `summary.json` there: wall
seconds per step over the recorded steps, and XLA's operations' own times per step, by kind ('fusion', 'dot', ...)
and by name with each one's result shape and the JAX operation it came from. `op_times`, `by_kind` and `op_info`
read any such trace and compiled module (`experiments/profile_step.py` uses them too).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import time
from typing import Any, Callable

import jax
from absl import logging

# An XLA op name's kind: the HLO opcode or fusion kind its name starts with ('copy_bitcast_fusion.35' ->
# 'copy_bitcast_fusion', 'dot.12' -> 'dot').
_KIND = re.compile(r"^([a-z][a-z\-_]*?)(?:[._]\d+)*$")
_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?\[[^\]]*\])")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def op_times(trace_dir: str) -> dict[str, float]:
  """Seconds per XLA operation name, summed over the complete events of the newest perfetto trace under
  `trace_dir` (over all threads: concurrent operations both count)."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"No perfetto_trace.json.gz under {trace_dir!r}.")
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ops = [e for e in events if e.get("ph") == "X" and _KIND.match(e.get("name", ""))]
  tagged = [e for e in ops if "hlo_op" in str(e.get("args", ""))]  # XLA's own events, where the trace tags them
  totals = collections.Counter()
  for e in tagged or ops:
    totals[e["name"]] += e.get("dur", 0) / 1e6
  return dict(totals)


def by_kind(times: dict[str, float]) -> dict[str, float]:
  """`op_times` summed by operation kind, largest first."""
  kinds = collections.Counter()
  for name, seconds in times.items():
    match = _KIND.match(name)
    kinds[match.group(1) if match else name] += seconds
  return dict(kinds.most_common())


def op_info(hlo_text: str) -> dict[str, str]:
  """For each instruction of a compiled module's HLO text: its result shape and the JAX operation it came from
  (the `op_name` metadata's last three parts), e.g. 'f32[128,1280] mlp/fc_out/transpose'."""
  info = {}
  for line in hlo_text.splitlines():
    m = _HLO_LINE.match(line)
    if m and m.group(1) not in info:
      source = _OP_NAME.search(line)
      where = "/".join(source.group(1).split("/")[-3:]) if source else ""
      info[m.group(1)] = f"{m.group(2)} {where}".strip()
  return info


def summarize(trace_dir: str, steps: int, hlo_text: str = "", top: int = 25) -> dict[str, Any]:
  """Per step: all operations' seconds, by kind, and the `top` operations (with shape and source when `hlo_text`,
  the step's compiled module, is given)."""
  times = {name: seconds / steps for name, seconds in op_times(trace_dir).items()}
  info = op_info(hlo_text) if hlo_text else {}
  ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
  return {"ops_per_step": sum(times.values()), "kinds": by_kind(times),
          "top_ops": [{"name": n, "seconds": s, "what": info.get(n, "")} for n, s in ranked]}


class StepProfiler:
  """Traces steps (first, first + num_steps] of a loop; process 0 only, a no-op when num_steps is 0.

  Call `before_step(step)` before dispatching each step and `after_step(step, outputs)` after; `close()` stops a
  trace the loop left running (a run that ended or stopped early) and summarises the steps it recorded."""

  def __init__(self, directory: str, first: int, num_steps: int, hlo_text: Callable[[], str] = lambda: ""):
    self.directory, self.first, self.num_steps, self._hlo_text = directory, first, num_steps, hlo_text
    self.enabled = num_steps > 0 and jax.process_index() == 0
    self._start, self._recorded, self._running = None, 0, False

  def before_step(self, step: int) -> None:
    if self.enabled and step == self.first + 1:
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self._running, self._start = True, time.perf_counter()

  def after_step(self, step: int, outputs: Any) -> None:
    if self._running:
      self._recorded += 1
      if step == self.first + self.num_steps:
        self._stop(outputs)

  def close(self, outputs: Any = None) -> None:
    if self._running and self._recorded:
      self._stop(outputs)
    elif self._running:
      jax.profiler.stop_trace()
      self._running = False

  def abort(self) -> None:
    """Stops a running trace without summarising it (the loop raised): a trace left running would make the
    process's next `jax.profiler.start_trace` fail."""
    if self._running:
      jax.profiler.stop_trace()
      self._running = False

  def _stop(self, outputs: Any) -> None:
    jax.block_until_ready(outputs)
    seconds = (time.perf_counter() - self._start) / self._recorded
    jax.profiler.stop_trace()
    self._running = False
    summary = {"steps": [self.first + 1, self.first + self._recorded], "seconds_per_step": seconds,
               **summarize(self.directory, self._recorded, self._hlo_text())}
    with open(os.path.join(self.directory, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
    kinds = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in list(summary["kinds"].items())[:5])
    logging.info("Profiled steps %d-%d: %.1f ms a step; XLA operations by kind: %s (%s/summary.json).",
                 self.first + 1, self.first + self._recorded, seconds * 1e3, kinds, self.directory)
