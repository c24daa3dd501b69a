"""Experiments by name: `config.experiment` picks the class; adding one means adding a file and a line here.

An experiment owns its config sections (`model`, `loss`, ...), its model, its loss and its evals. The generic loop
(`vdm_jax.train.loop`) owns everything else: mesh, input, sharding, optimizer, checkpoints, metrics.
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import jax
import ml_collections

from vdm_jax.data import pipeline
from vdm_jax.eval import evaluators

# name -> module that registers it; imported only when that experiment is asked for.
_MODULES = {
    "toy_ae": "vdm_jax.train.toy_ae",
    "t2v": "vdm_jax.train.t2v",
    "vae": "vdm_jax.train.vae",
}
_REGISTRY: dict[str, type["Experiment"]] = {}


def register(name: str):
  """Class decorator: makes an Experiment subclass available as `config.experiment = name`."""
  def wrap(cls):
    cls.name = name
    _REGISTRY[name] = cls
    return cls
  return wrap


def names() -> list[str]:
  return sorted(set(_MODULES) | set(_REGISTRY))


def get(name: str) -> type["Experiment"]:
  if name not in _REGISTRY and name in _MODULES:
    importlib.import_module(_MODULES[name])
  if name not in _REGISTRY:
    raise ValueError(f"Unknown experiment {name!r}; registered experiments: {names()}.")
  return _REGISTRY[name]


class Experiment:
  """Base class: every hook the loop, `experiments.evaluate` and `experiments.plan` call, with its signature.

  Subclasses implement `default_config`, `init` and `loss`; the rest have working defaults. `init` and `loss` are
  traced inside `jax.jit` by the loop; `evaluate` and `write_samples` run on the host and jit what they need.
  """
  name = ""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None, workdir: str | None = None):
    """`workdir`: the run's directory (caches and samples go under it); None where nothing is written."""
    self.config = config
    self.mesh = mesh
    self.workdir = workdir

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict:
    """The sections this experiment adds to the generic config (e.g. `model`), with defaults."""
    return ml_collections.ConfigDict()

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    """Raises vdm_jax.config.ConfigError for values the experiment cannot use."""

  def init(self, rng: jax.Array, batch: Any) -> Any:
    """Returns the parameters (boxed with logical axes) for an example batch (arrays or ShapeDtypeStructs)."""
    raise NotImplementedError

  def loss(self, params: Any, batch: Any, rng: jax.Array, frozen: Any,
           step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (scalar loss, dict of scalar metrics) for one global batch. `frozen` is `frozen_params()` placed on
    devices ({} when there are none); `step` is the int32 step being taken (for warm-ups)."""
    raise NotImplementedError

  def data_source(self, split: str) -> Any:
    """The random-access source the input pipeline reads for `split`, or None for `config.input`'s dataset as is.

    Experiments that join caches to the examples (latents, text embeddings) return the joined source here.
    """
    return None

  def bucket_source(self, input_config: ml_collections.ConfigDict, split: str) -> Any:
    """The source of one bucket of a bucketed input (`input.buckets`): `input_config` is the run's input with that
    bucket's dataset and batch size (`vdm_jax.data.buckets.bucket_input`). Default: that dataset as is."""
    return pipeline.data_source(input_config, split)

  def batch_shapes(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct] | None:
    """The global batch's shapes when the experiment knows them without reading data (planning), else None: the
    planner then reads one batch of the input pipeline."""
    return None

  def flops_per_step(self, batch_shapes: Any) -> float | None:
    """Model FLOPs of one training step over the global batch, or None to use XLA's cost analysis."""
    return None

  def frozen_params(self, abstract: bool = False) -> Any:
    """Parameters the loss reads but never trains (a frozen VAE or text encoder), {} if none.

    Host arrays, optionally boxed with logical axes (`nn.LogicallyPartitioned`, as `module.init` returns them) to be
    sharded by the config's rules, else replicated. The loop places them on devices once and passes them to `loss`.
    With `abstract`, return ShapeDtypeStructs (for planning, without loading weights).
    """
    return {}

  def evaluate(self, params: Any, step: int, names: Sequence[str] | None = None) -> dict[str, float]:
    """Runs the evaluators `names` of `config.evals` (default: all) on `params` (the EMA params); returns their
    scalar metrics. What an evaluator asks of the experiment are hooks it implements where it can:
    `reconstruct_videos(params, video)` (float [-1, 1] [B, T, H, W, 3] host arrays in and out),
    `generate_videos(params, prompts, seeds)` (uint8 videos) and `loss_at(params, batch, t, rng)` (per-example
    losses of an eval batch at timestep t, host array); see vdm_jax/eval/evaluators/."""
    return evaluators.run(self, params, step, names)

  def write_samples(self, params: Any, step: int, out_dir: str) -> None:
    """Writes samples (videos, images) for `params` under `out_dir`."""
