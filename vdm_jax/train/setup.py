"""The start of every run, in one place: validate the config, build the mesh and the experiment, know the batch.

Used by the trainer (`vdm_jax.train.loop`), `experiments.evaluate` and the planner (`vdm_jax.train.plan`), so the
three see the same mesh, sharding rules and experiment for the same config.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from vdm_jax.data import buckets
from vdm_jax.data import pipeline
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.parallel import sharding
from vdm_jax.train import config as config_lib
from vdm_jax.train import lora_run, registry


@dataclasses.dataclass
class Setup:
  """A validated config with its mesh, logical-axis rules and experiment."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  rules: tuple
  experiment: registry.Experiment


def setup(config: ml_collections.ConfigDict, workdir: str | None = None, *, distributed: bool = False) -> Setup:
  """validate -> (multi-host init) -> mesh -> rules -> batch-size check -> experiment.

  `distributed`: call `jax.distributed.initialize` first when the config enables it (the trainer does)."""
  config_lib.validate(config)
  if distributed:
    mesh_lib.maybe_initialize_distributed(config)
  mesh = mesh_lib.create_mesh(config.mesh)
  rules = sharding.rules_tuple(config.sharding_rules)
  config_lib.check_batch_size(config.input.batch_size, mesh.shape, jax.process_count())
  if buckets.enabled(config.input):
    for bucket in buckets.table(config.input):
      config_lib.check_batch_size(bucket.batch_size, mesh.shape, jax.process_count(),
                                  path=f"input.buckets (the batch size of bucket {bucket.name})")
  return Setup(config, mesh, rules, lora_run.wrap(registry.get(config.experiment)(config, mesh, workdir)))


def global_shapes(batch_size: int, example: Any) -> Any:
  """ShapeDtypeStructs of a global batch of `batch_size` with the per-example shapes of `example` (a batch)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_size,) + x.shape[1:], x.dtype), example)


def batch_global_shapes(local_batch: Any) -> Any:
  """ShapeDtypeStructs of the global batch this process's `local_batch` is its share of (every process reads an
  equal share of each array; a packed step's arrays have one leading size per bucket)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] * jax.process_count(),) + x.shape[1:], x.dtype),
                      local_batch)


def batch_shapes(s: Setup, batch_size: int | None = None, *, shuffle: bool = True) -> Any:
  """The global batch as ShapeDtypeStructs: the experiment's own (`batch_shapes`) when it can say, else from one
  batch of the input pipeline over the experiment's data source."""
  batch_size = batch_size or s.config.input.batch_size
  shapes = s.experiment.batch_shapes(batch_size)
  if shapes is not None:
    return shapes
  # a bucketed input: the first bucket's batch (the planner plans that bucket)
  ds = pipeline.make_dataset(buckets.first_input(s.config.input), batch_size=jax.process_count(), shuffle=shuffle,
                             source=s.experiment.data_source(s.config.input.split))
  return global_shapes(batch_size, pipeline.numeric(next(iter(ds))))
