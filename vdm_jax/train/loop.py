"""The generic training loop, in the order a run happens:

  config -> mesh -> input -> model (abstract init) -> shardings -> state (init or restore) -> jitted update
  -> loop (log, checkpoint, eval, samples, preemption) -> final checkpoint.

Everything specific to a model lives in its experiment (`vdm_jax.train.registry`). A run is a pure function of
its config: data order comes from grain's seed, randomness from `fold_in(state.rng, step)`.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from vdm_jax import runs, xla_cpu
from vdm_jax.data import buckets as buckets_lib
from vdm_jax.data import pipeline
from vdm_jax.eval import evaluators
from vdm_jax.parallel import sharding
from vdm_jax.train import checkpoint as checkpoint_lib
from vdm_jax.train import config as config_lib
from vdm_jax.train import flops as flops_lib
from vdm_jax.train import metrics as metrics_lib
from vdm_jax.train import profiler as profiler_lib
from vdm_jax.train import registry
from vdm_jax.train import setup as setup_lib
from vdm_jax.train import lora_run, warm_start
from vdm_jax.train.state import TrainState, l2_norm, make_optimizer, make_schedule, nonfinite_paths


class NonFiniteError(FloatingPointError):
  """The loss or a gradient became NaN/inf; the message names the step and the tree paths."""


class RunStopped(Exception):
  """Raised by `train` after a SIGTERM or SIGINT stopped the run early and its checkpoint was saved: the run did not
  finish, so a caller must not go on to use it as if it had (rerunning the same command resumes it)."""
  exit_code = 75  # EX_TEMPFAIL (sysexits.h): try again later; what experiments.train and the quickstart exit with

  def __init__(self, step: int, total: int, signal_name: str):
    super().__init__(f"Stopped at step {step} of {total} after {signal_name}; rerun the same command to resume.")
    self.step, self.total, self.signal_name = step, total, signal_name


class _Preemption:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks between steps (save, then stop). A second
  SIGINT raises KeyboardInterrupt at once, for a user who does not want to wait for the step and the save."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint and stopping after this step%s.", self.signal_name,
                    " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else "")

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The resolved config, as JSON, in the workdir (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def make_train_step(experiment, tx, schedule, ema_decay: float):
  """(state, batch, frozen) -> (state, metrics, finite flags per gradient leaf). Traced once under jit.

  `frozen` is the experiment's non-trained parameters ({} when it has none), passed to the loss with the step.
  """

  def train_step(state: TrainState, batch, frozen):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = jax.value_and_grad(
        lambda p: experiment.loss(p, batch, rng, frozen, state.step), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if ema_decay > 0:
      ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
    else:
      ema_params = params
    finite = jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads)
    metrics = {"loss": loss, **aux, "lr": schedule(state.step), "l2_grads": l2_norm(grads),
               "l2_params": l2_norm(params), "l2_updates": l2_norm(updates),
               "finite": jnp.isfinite(loss) & jnp.all(jnp.stack(jax.tree.leaves(finite)))}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return new_state, metrics, finite

  return train_step


def state_initializer(experiment, tx, batch_shapes, mesh, rules):
  """Returns (jitted init: rng -> TrainState, abstract TrainState, its NamedShardings).

  Parameters, optimizer state and EMA params get the shardings of the model's logical annotations (the optimizer
  state mirrors the params' boxes, so it is sharded like them); the state is created directly in those shardings,
  never whole on one device. Call under `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`.
  """
  def init_state(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = experiment.init(params_rng, batch_shapes)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=params,
                      rng=state_rng)

  boxed = jax.eval_shape(init_state, jax.random.PRNGKey(0))
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  init_fn = jax.jit(lambda rng: nn.meta.unbox(init_state(rng)), out_shardings=shardings)
  return init_fn, sharding.strip_boxes(boxed), shardings


def compile_train_step(experiment, tx, schedule, config, mesh, abstract_state, state_shardings, batch_shapes,
                       abstract_frozen=None, frozen_shardings=None):
  """The jitted update step lowered and compiled for these abstract inputs (nothing is allocated).

  Used by the trainer (which then calls the compiled step) and by `experiments.plan` (which only reads its cost
  and memory analysis). Call under `jax.set_mesh(mesh)` and the logical-axis rules.
  """
  abstract_frozen, frozen_shardings = abstract_frozen or {}, frozen_shardings or {}
  batch_shardings = jax.tree.map(lambda x: sharding.batch_sharding(mesh, len(x.shape)), batch_shapes)
  step_fn = jax.jit(make_train_step(experiment, tx, schedule, config.train.ema_decay),
                    in_shardings=(state_shardings, batch_shardings, frozen_shardings),
                    out_shardings=(state_shardings, None, None), donate_argnums=(0,))
  abstract_batch = checkpoint_lib.abstract_with_shardings(batch_shapes, batch_shardings)
  return step_fn.lower(checkpoint_lib.abstract_with_shardings(abstract_state, state_shardings), abstract_batch,
                       checkpoint_lib.abstract_with_shardings(abstract_frozen, frozen_shardings)).compile(
                           compiler_options=xla_cpu.compiler_options(config.train.cpu_ynn_reductions))


def place_frozen(experiment, mesh, rules):
  """The experiment's frozen parameters on devices (sharded by their logical axes, else replicated), with their
  shardings; ({}, {}) when it has none."""
  host = experiment.frozen_params()
  if not host:
    return {}, {}
  shardings = sharding.logical_shardings(host, mesh, rules)
  return jax.device_put(sharding.strip_boxes(host), shardings), shardings


class CompiledSteps:
  """The train step compiled for each batch signature it meets (one per bucket of a bucketed input), cached: a
  signature seen before costs nothing. Logs every compile with the running count (`count`)."""

  def __init__(self, compile_fn: Callable, experiment, num_devices: int):
    self._compile, self._experiment, self._num_devices = compile_fn, experiment, num_devices
    self._steps = {}
    self.last = None

  @property
  def count(self) -> int:
    return len(self._steps)

  def get(self, shapes):
    """(compiled step, FLOPs per device, their source) for a global batch of these ShapeDtypeStructs."""
    key = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(shapes.items()))
    if key not in self._steps:
      what = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(shapes.items()))
      logging.info("Compiling the train step (minutes for large models) for %s...", what)
      start = time.perf_counter()
      step_fn = self._compile(shapes)
      logging.info("Compiled the train step in %.1f s (%d compiled in this run).", time.perf_counter() - start,
                   len(self._steps) + 1)
      self._steps[key] = (step_fn, *flops_lib.step_flops(self._experiment, shapes, step_fn, self._num_devices))
    self.last = self._steps[key][0]
    return self._steps[key]


def train_input(config, experiment):
  """The training batches: `config.input`'s dataset over the experiment's source, or with `input.buckets` one
  source per bucket mixed by step (`vdm_jax.data.buckets`)."""
  seed = config.seed + config.input.shuffle_seed
  split = config.input.split
  if not buckets_lib.enabled(config.input):
    return pipeline.make_dataset(config.input, seed=seed, source=experiment.data_source(split))
  table = buckets_lib.table(config.input)
  logging.info("Buckets: %s", ", ".join(f"{b.name} (batch {b.batch_size}, keep {b.keep:g})" for b in table))
  sources = [experiment.bucket_source(buckets_lib.bucket_input(config.input, b), split) for b in table]
  return buckets_lib.make_dataset(config.input, sources, seed=seed, split=split)


def _check_finite(step: int, metrics, finite) -> None:
  if bool(metrics["finite"]):
    return
  paths = nonfinite_paths(finite)
  loss = float(metrics["loss"])
  raise NonFiniteError(f"Non-finite values at step {step}: loss={loss}; non-finite gradients at "
                       f"{paths or 'none (the loss itself)'}.")


def train(config: ml_collections.ConfigDict, workdir: str,
          job_eta: Callable[[float], float] | None = None) -> TrainState:
  """Trains `config.experiment` in `workdir`, resuming from its newest checkpoint that restores; returns the final
  state. Raises RunStopped (after saving a checkpoint) when SIGTERM or SIGINT stopped it before `train.steps`.

  `job_eta` (for a caller that runs this as one stage of a job): maps the run's remaining seconds to the job's,
  shown on each progress line."""
  # Signals are caught from the start: one during the restore or the compile stops the run before its first step.
  with _Preemption() as preemption:
    return _train(config, workdir, preemption, job_eta)


def _train(config: ml_collections.ConfigDict, workdir: str, preemption: _Preemption,
           job_eta: Callable[[float], float] | None) -> TrainState:
  # --- Config, mesh and experiment.
  run = setup_lib.setup(config, workdir, distributed=True)
  mesh, rules, experiment = run.mesh, run.rules, run.experiment
  write_config(config, workdir)
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.size, jax.process_count())

  # --- Input.
  train_ds = train_input(config, experiment)
  train_iter = iter(train_ds)
  global_shapes = setup_lib.batch_global_shapes(pipeline.numeric(next(iter(train_ds))))

  # --- Model and optimizer state, initialised directly into their shardings.
  tx, schedule = make_optimizer(config), make_schedule(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init_fn, abstract_state, state_shardings = state_initializer(experiment, tx, global_shapes, mesh, rules)
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    logging.info("Parameters: %.3fM", num_params / 1e6)

    checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                               async_save=config.train.async_checkpoints)
    # The newest checkpoint that restores; damaged newer ones are moved aside with a warning each.
    target = checkpoint_lib.abstract_with_shardings(abstract_state, state_shardings)
    start_step, state = checkpointer.restore_latest(target, train_iter, move_aside=True)
    if start_step is None:
      state = init_fn(jax.random.PRNGKey(config.seed))
      start_step = 0
      if config.init_from and lora_run.enabled(config):  # the base is frozen (lora_run), the adapters fresh
        experiment.base()  # read (and checked) once, here; the frozen parameters reuse it
        logging.info("LoRA on the %s of %s (its step %d): %d adapter parameters.", config.init_from_item,
                     config.init_from, experiment.base_step, sum(x.size for x in jax.tree.leaves(state.params)))
      elif config.init_from:
        state, source_step = warm_start.load_into(state, state_shardings, config.init_from, config.init_from_item,
                                                  warm_start.experiment_dit(experiment))
        logging.info("Starting from the %s of %s (its step %d), with a fresh optimizer.", config.init_from_item,
                     config.init_from, source_step)
    else:
      logging.info("Resuming from checkpoint %d in %s.", start_step, checkpointer.directory)
      # Every process logs the same global checksum: a restore under another mesh or process count can be checked
      # against the `l2_params` the saving run logged at that step.
      logging.info("Restored step %d: l2_params=%.9g", start_step, float(l2_norm(state.params)))

    if start_step >= config.train.steps:
      # A finished run (e.g. the quickstart's reused VAE): nothing to compile or train.
      logging.info("Already at step %d of train.steps=%d; nothing to train.", start_step, config.train.steps)
      checkpointer.close()
      return state

    # --- Update step: compiled ahead of time with explicit shardings, the state donated; once per batch
    # signature (a bucketed input has one per bucket), each the first time it comes.
    frozen, frozen_shardings = place_frozen(experiment, mesh, rules)
    steps = CompiledSteps(lambda shapes: compile_train_step(experiment, tx, schedule, config, mesh, abstract_state,
                                                            state_shardings, shapes, frozen, frozen_shardings),
                          experiment, mesh.size)
    step_fn, step_flops, flops_source = steps.get(global_shapes)
    peak = flops_lib.peak_tflops(jax.devices()[0], config.train.compute_dtype, config.train.peak_tflops)
    memory = flops_lib.memory_summary(step_fn)
    logging.info("Train step: %s GFLOP per device (%s); memory per device (MB): %s",
                 f"{step_flops / 1e9:.3f}" if step_flops else "?", flops_source,
                 {k: round(v / 2**20, 1) for k, v in memory.items()})

    # --- Loop.
    total = config.train.steps
    current = {"flops": step_flops}  # the step just taken (utilisation with buckets is that bucket's)
    writer = metrics_lib.MetricWriter(workdir, total, start_step,
                                      utilisation=lambda rate: flops_lib.utilisation(current["flops"], rate, peak),
                                      job_eta=job_eta)
    every = lambda n, step: (n > 0 and step % n == 0) or step == total
    profile = profiler_lib.StepProfiler(os.path.join(workdir, "profile"), start_step + config.train.profile_start,
                                        config.train.profile_steps, hlo_text=lambda: steps.last.as_text())
    pending = None  # (step, metrics, finite) of the previous step, checked one step late to keep dispatch async
    stopped = None
    try:
      for step in range(start_step + 1, total + 1):
        if preemption.requested:  # before the first step (during the restore or the compile): nothing new to save
          stopped = RunStopped(step - 1, total, preemption.signal_name)
          break
        host_batch = pipeline.numeric(next(train_iter))
        step_fn, current["flops"], _ = steps.get(setup_lib.batch_global_shapes(host_batch))
        batch = sharding.shard_batch(host_batch, mesh)
        profile.before_step(step)
        state, metrics, finite = step_fn(state, batch, frozen)
        profile.after_step(step, metrics)
        if pending is not None:
          _check_finite(*pending)
        pending = (step, metrics, finite)
        if every(config.train.log_every, step):
          _check_finite(*pending)
          writer.write(step, {**{k: v for k, v in jax.device_get(metrics).items() if k != "finite"},
                              "data/unreadable": pipeline.unreadable_count(), "compiles": steps.count},
                       progress=True)
        saved = every(config.train.checkpoint_every, step)
        if saved:
          _check_finite(*pending)
          checkpointer.save(step, state, train_iter, config, force=True)
        due = evaluators.due(config, step, total)
        if due:
          evals = experiment.evaluate(state.ema_params, step, names=due)
          if evals:
            writer.write(step, {f"eval/{k}": v for k, v in evals.items()})
        if every(config.train.sample_every, step):
          experiment.write_samples(state.ema_params, step, os.path.join(workdir, "samples", f"step_{step:08d}"))
        if preemption.requested and step < total:  # checked last, so a signal during the evals still saves
          _check_finite(*pending)
          if not saved:
            checkpointer.save(step, state, train_iter, config, force=True)
          stopped = RunStopped(step, total, preemption.signal_name)
          break
    except BaseException:
      profile.abort()  # a step that raised: stop the trace so the process can trace again
      raise
    profile.close(pending[1] if pending is not None else None)
    if pending is not None:
      _check_finite(*pending)
      if stopped is None:
        logging.info("Finished step %d: l2_params=%.9g", pending[0], float(pending[1]["l2_params"]))
    checkpointer.close()
    writer.close()
  if stopped is not None:
    logging.warning("%s", stopped)
    raise stopped
  return state


def load_config_json(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to its workdir, over its experiment's current defaults (`runs.read_config`)."""
  name = runs.experiment_name(workdir)
  if name not in registry.names():  # no or unknown experiment: the file as written
    return runs.read_config(workdir)
  return runs.read_config(workdir, config_lib.base_config(name))
