"""Evaluators chosen by name in the config (big_vision's `config.evals`); adding an evaluator is adding a file here.

    c.evals.val = dict(type="val_loss_grid", every_steps=500)      # validation loss on a grid of timesteps
    c.evals.probe = dict(type="probe", probe_prompts=64)            # the Captioned Shapes probe
    c.evals.fvd = dict(type="fvd", num_clips=256, reference_points=True, every_steps=0)   # 0: only at the end

An entry's `type` names a module of this package (`probe`, `psnr_ssim`, `val_loss_grid`, `temporal`, `fvd`, ...).
Each module has

    DEFAULTS: dict       # the settings it takes, with defaults
    NEEDS: tuple        # the experiment's methods it calls, a tuple of names for 'any of' (checked at validation)
    def run(ctx: Context, **settings) -> dict[str, float]

A setting comes from the entry, else from the shared `config.eval` section (split, num_examples, batch_size, ...),
else from DEFAULTS. `every_steps` (default `train.eval_every`; 0: only at the end) is when the trainer runs it and
`prefix` (default '') is put before its metric names; the trainer logs the metrics as `eval/<prefix><metric>` to
TensorBoard and `metrics.jsonl`, and `python -m experiments.evaluate` runs the evaluators on a checkpoint.
Evaluators of one round share a `Context`, so two of them that read the same reconstructions decode them once.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import re
from typing import Any, Callable, Iterable

from absl import logging

RESERVED = ("type", "every_steps", "prefix")


@dataclasses.dataclass
class Context:
  """What an evaluator reads: the experiment (its config, mesh and hooks), the params evaluated (EMA params) and the
  step, plus a memo shared by the evaluators of one round."""
  experiment: Any
  params: Any
  step: int
  memo: dict = dataclasses.field(default_factory=dict)

  @property
  def config(self):
    return self.experiment.config

  def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()` the first time `key` is asked for in this round, the stored value after."""
    if key not in self.memo:
      self.memo[key] = compute()
    return self.memo[key]


def types() -> list[str]:
  """The evaluator types available: the modules of this package (names starting with '_' are helpers)."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def module(type_: str):
  """The module of evaluator `type_`; a ValueError naming the available types for an unknown one."""
  if not isinstance(type_, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", type_) or type_ not in types():
    close = difflib.get_close_matches(str(type_), types(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown evaluator type {type_!r}.{hint} Available: {types()} (a type is a module of "
                     "vdm_jax/eval/evaluators/).")
  return importlib.import_module(f"{__name__}.{type_}")


def entries(config) -> dict[str, Any]:
  """name -> entry of `config.evals` ({} when the config has none)."""
  evals = config.get("evals")
  return {k: v for k, v in evals.items() if not k.startswith("_")} if evals else {}  # `_free_form`: a marker


def settings(config, name: str) -> dict[str, Any]:
  """The keyword arguments evaluator `name` runs with: its entry over `config.eval` over the module's DEFAULTS."""
  entry = entries(config)[name]
  mod = module(entry.get("type"))
  shared = config.get("eval") or {}
  out = {key: (entry[key] if key in entry else shared[key] if key in shared else default)
         for key, default in mod.DEFAULTS.items()}
  return out


def validate(config, experiment_cls) -> None:
  """Raises ValueError for an entry of `config.evals` with an unknown type, an unknown setting, a bad `every_steps`
  or a type that needs a method the experiment lacks; the message names `evals.<name>.<key>`."""
  for name, entry in entries(config).items():
    if not hasattr(entry, "get") or "type" not in entry:
      raise ValueError(f"evals.{name} must be a dict with a 'type' (one of {types()}), got {entry!r}.")
    try:
      mod = module(entry["type"])
    except ValueError as e:
      raise ValueError(f"evals.{name}.type: {e}") from None
    allowed = set(mod.DEFAULTS) | set(RESERVED)
    for key in entry.keys():
      if key not in allowed:
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"Unknown config key 'evals.{name}.{key}' for an evaluator of type {entry['type']!r}.{hint} "
                         f"Allowed keys: {sorted(allowed)}.")
    every = entry.get("every_steps", 0)
    if not isinstance(every, int) or every < 0:
      raise ValueError(f"evals.{name}.every_steps is {every!r}; must be an int >= 0 (0: only at the end).")
    has = lambda method: callable(getattr(experiment_cls, method, None))
    missing = [need if isinstance(need, str) else " or ".join(need) for need in mod.NEEDS
               if not (has(need) if isinstance(need, str) else any(has(m) for m in need))]
    if missing:
      raise ValueError(f"evals.{name}: an evaluator of type {entry['type']!r} calls the experiment's {missing}, which "
                       f"experiment {getattr(experiment_cls, 'name', experiment_cls.__name__)!r} does not have.")


def due(config, step: int, total: int) -> list[str]:
  """Names of the evaluators to run after `step` of `total`: each every `every_steps` (default `train.eval_every`)
  and all of them at the last step."""
  out = []
  for name, entry in entries(config).items():
    every = entry.get("every_steps", config.train.eval_every)
    if step == total or (every > 0 and step % every == 0):
      out.append(name)
  return out


def run(experiment, params, step: int, names: Iterable[str] | None = None) -> dict[str, float]:
  """Runs the evaluators `names` (default: all of `config.evals`, by name) on `params`; their metrics merged, each
  under its entry's prefix. Two evaluators giving the same metric name is an error (set a `prefix`)."""
  config = experiment.config
  all_entries = entries(config)
  names = sorted(all_entries) if names is None else list(names)
  unknown = [n for n in names if n not in all_entries]
  if unknown:
    raise ValueError(f"No evaluator named {unknown} in config.evals; it has {sorted(all_entries)}.")
  ctx, out, owner = Context(experiment, params, step), {}, {}
  for name in names:
    entry = all_entries[name]
    metrics = module(entry["type"]).run(ctx, **settings(config, name))
    prefix = entry.get("prefix", "")
    for key, value in metrics.items():
      key = prefix + key
      if key in out:
        raise ValueError(f"Evaluators {owner[key]!r} and {name!r} both report {key!r}: give one of them a prefix "
                         f"(evals.{name}.prefix).")
      out[key], owner[key] = float(value), name
    logging.info("Eval %s (%s) at step %d: %s", name, entry["type"], step, metrics)
  return out
