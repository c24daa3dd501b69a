r"""Where a training run's time goes: input pipeline vs the compiled step, and the step's XLA operations by time.

    python -m experiments.profile_step --config configs/t2v.py --config.vae.workdir=/tmp/q/vae --workdir /tmp/prof
    python -m experiments.profile_step --config configs/vae.py --workdir /tmp/prof_vae --trace_steps 5

Builds the run as the trainer does (the same setup, state initialisation and compiled step; nothing is saved), then
times, each over `--steps` steps after `--warmup`:
  data   fetching and placing a batch (`next` on the input pipeline + `shard_batch`), alone;
  step   the compiled step on one fixed batch, alone (blocked on each result);
  loop   both, as the trainer interleaves them (the step is dispatched asynchronously, so host work may overlap).
With `--trace_steps N` it records N steps with `jax.profiler` and sums the XLA operations' own times by name and by
kind (convolution, dot, fusion, ...), printing the top ones: what to make cheaper first. Times are seconds.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags
import flax.linen as nn
import jax

from vdm_jax.data import pipeline
from vdm_jax.parallel import sharding
from vdm_jax.train import config as config_lib
from vdm_jax.train import loop
from vdm_jax.train import profiler
from vdm_jax.train import setup as setup_lib

_CONFIG = config_lib.define_config_flag("config", "Config file, e.g. configs/t2v.py[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run's caches go (the experiment's workdir); nothing is "
                               "saved there otherwise.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps before each measurement.")
_TRACE_STEPS = flags.DEFINE_integer("trace_steps", 0, "Steps to record with jax.profiler (0: no trace).")
_TOP = flags.DEFINE_integer("top", 25, "Operations to list from the trace.")
_JSON = flags.DEFINE_string("json", "", "Also write the results here as JSON.")
_HLO = flags.DEFINE_string("hlo", "", "Also write the compiled step's optimised HLO here (to read the top operations).")
flags.mark_flags_as_required(["config", "workdir"])


def build(config, workdir):
  """(experiment, mesh, batch iterator, compiled step, state, frozen): the trainer's own construction."""
  run = setup_lib.setup(config, workdir)
  mesh, rules, experiment = run.mesh, run.rules, run.experiment
  ds = pipeline.make_dataset(config.input, seed=config.seed + config.input.shuffle_seed,
                             source=experiment.data_source(config.input.split))
  batches = iter(ds)
  shapes = setup_lib.global_shapes(config.input.batch_size, pipeline.numeric(next(batches)))
  tx, schedule = loop.make_optimizer(config), loop.make_schedule(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init_fn, abstract_state, shardings = loop.state_initializer(experiment, tx, shapes, mesh, rules)
    state = init_fn(jax.random.PRNGKey(config.seed))
    frozen, frozen_shardings = loop.place_frozen(experiment, mesh, rules)
    start = time.perf_counter()
    step_fn = loop.compile_train_step(experiment, tx, schedule, config, mesh, abstract_state, shardings, shapes,
                                      frozen, frozen_shardings)
    compile_seconds = time.perf_counter() - start
  return mesh, batches, step_fn, state, frozen, compile_seconds


def _per_step(fn, steps: int, warmup: int, finish=lambda: None) -> float:
  """Seconds per call of `fn` over `steps` calls after `warmup`, including `finish()` (waiting for the last)."""
  for _ in range(warmup):
    fn()
  finish()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  finish()
  return (time.perf_counter() - start) / steps


def main(argv):
  del argv
  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  mesh, batches, step_fn, state, frozen, compile_seconds = build(config, workdir)
  fetch = lambda: sharding.shard_batch(pipeline.numeric(next(batches)), mesh)
  fixed = fetch()
  holder = {"state": state}

  def step_alone():
    holder["state"], metrics, _ = step_fn(holder["state"], fixed, frozen)
    jax.block_until_ready(metrics)

  def step_in_loop():  # as the trainer: fetch, dispatch; the result is waited for by the next call's donation
    holder["state"], holder["metrics"], _ = step_fn(holder["state"], fetch(), frozen)

  if _HLO.value:
    with open(_HLO.value, "w") as f:
      f.write(step_fn.as_text())
  results = {"compile": compile_seconds,
             "data": _per_step(fetch, _STEPS.value, _WARMUP.value),
             "step": _per_step(step_alone, _STEPS.value, _WARMUP.value)}
  results["loop"] = _per_step(step_in_loop, _STEPS.value, _WARMUP.value,
                              finish=lambda: jax.block_until_ready(holder["metrics"]))
  print(f"compile {results['compile']:.1f} s; per step: data {results['data'] * 1e3:.1f} ms, step "
        f"{results['step'] * 1e3:.1f} ms, loop {results['loop'] * 1e3:.1f} ms "
        f"({1 / results['loop']:.2f} steps/s)")

  if _TRACE_STEPS.value:
    trace_dir = tempfile.mkdtemp(prefix="vdm_trace_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(_TRACE_STEPS.value):
        step_alone()
    results.update(profiler.summarize(trace_dir, _TRACE_STEPS.value, step_fn.as_text(), _TOP.value))
    total = results["ops_per_step"]
    print(f"XLA ops: {total * 1e3:.1f} ms per step (summed over threads); by kind:")
    for kind, seconds in results["kinds"].items():
      print(f"  {kind:24s} {seconds * 1e3:8.2f} ms  {seconds / total:6.1%}")
    print("top operations (result shape, JAX source):")
    for op in results["top_ops"]:
      print(f"  {op['name']:28s} {op['seconds'] * 1e3:8.2f} ms  {op['seconds'] / total:6.1%}  {op['what']}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
