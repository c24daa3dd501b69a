"""Evaluates the latest (or a given) checkpoint of a run with its evaluators (`config.evals`, all or --evals);
writes W/eval/<name>_step<N>.json.

    python -m experiments.evaluate --config configs/vae.py:size=tiny --workdir /tmp/vae_tiny
    python -m experiments.evaluate --config configs/vae.py:size=tiny --config.eval.num_examples=1024 --workdir W
    python -m experiments.evaluate --workdir W --step 500     # the run's own W/config.json
    python -m experiments.evaluate --config configs/t2v.py:fvd=256 --workdir W --evals fvd   # FVD, reference points

Works for any registered experiment: the state is restored the way the trainer restores it (abstract state from the
experiment's `init` and the optimizer, shardings from the model's logical axes, orbax restore into them), then
the evaluators run on the EMA params (`experiment.evaluate(ema_params, step, names)`) and their scalars are
written as JSON together with the step, the checkpoint path and the resolved config. Without --config, the run's `W/config.json` is used as it is
(`--config.<key>=...` overrides need --config).
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags, logging

from vdm_jax import runs
from vdm_jax.train import checkpoint as checkpoint_lib
from vdm_jax.train import config as config_lib
from vdm_jax.train import loop
from vdm_jax.train import setup as setup_lib
from vdm_jax.train.state import make_optimizer

_CONFIG = config_lib.define_config_flag("config", "Config file, e.g. configs/vae.py[:arg]; default: the run's "
                                        "W/config.json.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (its checkpoints are read, W/eval/ written).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_NAME = flags.DEFINE_string("name", None, "Name of the output file (default: the experiment's name).")
_EVALS = flags.DEFINE_list("evals", None, "Names of config.evals entries to run (default: all).")
flags.mark_flags_as_required(["workdir"])


def restore_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
  """(experiment, restored TrainState, step) for `workdir`'s checkpoint `step` (default: the newest that
  restores)."""
  run = setup_lib.setup(config, workdir)
  mesh, rules, experiment = run.mesh, run.rules, run.experiment
  shapes = setup_lib.batch_shapes(run, shuffle=False)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    _, abstract_state, state_shardings = loop.state_initializer(experiment, make_optimizer(config), shapes, mesh,
                                                                rules)
    checkpointer = checkpoint_lib.Checkpointer(workdir, async_save=False)
    target = checkpoint_lib.abstract_with_shardings(abstract_state, state_shardings)
    try:
      if step is None:  # the newest that restores, damaged newer ones skipped with a warning (left in place)
        step, state = checkpointer.restore_latest(target)
        if step is None:
          raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}: train first (experiments.train).")
      else:  # the step asked for, or a short CheckpointError naming it
        step, state, _ = runs.restore_newest(checkpointer.directory, [step],
                                             lambda s: checkpointer.restore(s, target))
    finally:
      checkpointer.close()
  return experiment, state, mesh, rules, step


def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None, name: str | None = None,
             evals: list[str] | None = None) -> tuple[str, dict]:
  """Runs the evaluators `evals` (default: all of config.evals) on the checkpoint's EMA params; returns (path of
  the JSON written, results)."""
  experiment, state, mesh, rules, step = restore_state(config, workdir, step)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    results = experiment.evaluate(state.ema_params, step, names=evals)
  out = {"experiment": config.experiment, "step": int(step), "workdir": os.path.abspath(workdir),
         "metrics": {k: float(v) for k, v in results.items()}, "config": json.loads(config.to_json_best_effort())}
  path = os.path.join(workdir, "eval", f"{name or config.experiment}_step{step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(out, f, indent=2, sort_keys=True)
  return path, out


def main(argv):
  logging.set_verbosity(logging.INFO)
  workdir = _WORKDIR.value
  del argv
  config = _CONFIG.value if _CONFIG.value is not None else loop.load_config_json(workdir)
  path, out = evaluate(config, workdir, _STEP.value, _NAME.value, _EVALS.value)
  logging.info("Step %d: %s -> %s", out["step"], out["metrics"], path)
  print(json.dumps({"step": out["step"], **out["metrics"], "file": path}))


if __name__ == "__main__":
  app.run(main)
