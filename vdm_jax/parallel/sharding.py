"""From logical axis annotations to `NamedSharding`s, and host batches to global arrays.

Models annotate parameters with logical axis names (`nn.with_logical_partitioning`); the config maps logical names
to mesh axes (`config.sharding_rules`). Nothing here knows about a particular model.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Logical axis -> mesh axes. Parameters: `embed` over fsdp (ZeRO-3 style), heads/mlp/vocab over tensor.
# Activations: `batch` over data x fsdp, `length` (tokens / frames) over context.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("conv_t", None),
    ("conv_h", None),
    ("conv_w", None),
    ("norm", None),
    ("layers", None),  # the stacked-layers axis of nn.scan
)

BATCH_AXES = ("data", "fsdp")


def rules_tuple(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Config rules (lists from JSON/CLI or tuples) as the hashable tuple flax expects."""
  return tuple((str(name), tuple(target) if isinstance(target, list) else target) for name, target in rules)


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (the dim is then replicated on them)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    kept, size = [], 1
    for name in names:
      if dim % (size * mesh.shape[name]) == 0:
        kept.append(name)
        size *= mesh.shape[name]
    fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*fitted)


def strip_boxes(tree: Any) -> Any:
  """Removes `nn.LogicallyPartitioned` boxes without applying sharding constraints (safe on abstract trees)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a (possibly boxed, abstract) tree of `nn.LogicallyPartitioned` values.

  Leaves without annotations are replicated. A mesh axis that does not divide a dimension is dropped for that
  dimension (logged), so small models still run on big meshes.
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules_tuple(rules))
  shapes = strip_boxes(abstract_tree)

  def to_sharding(spec, leaf):
    spec = spec if isinstance(spec, P) else P()
    fitted = _fit_spec(spec, leaf.shape, mesh)
    if fitted != spec:
      logging.info("Sharding %s of shape %s fitted to %s", spec, leaf.shape, fitted)
    return NamedSharding(mesh, fitted)

  return jax.tree.map(to_sharding, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P) or x is None)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dim over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Turns this process's part of the batch (numpy, leading dim = global batch / process count) into global arrays.

  Non-numeric leaves (caption strings) are left on the host as they are.
  """
  def put(x):
    x = np.asarray(x)
    if x.dtype.kind in "OUS":
      return x
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

  return jax.tree.map(put, batch)


def to_host(tree: Any) -> Any:
  """Global arrays -> numpy on every process (all-gathered when they span other processes' devices).

  Every process must call it (it is a collective in multi-process runs).
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)

