"""Device meshes from config, and multi-host initialisation.

Axes, outermost first: `data` (pure data parallel), `fsdp` (data parallel with params and optimizer state sharded),
`tensor` (heads / MLP hidden), `context` (sequence). The batch is split over `data` x `fsdp`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor", "context")


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves per-axis sizes (missing axes are 1, one axis may be -1 to fill) to a shape over MESH_AXES."""
  unknown = [a for a in sizes if a not in MESH_AXES]
  if unknown:
    raise ValueError(f"Unknown mesh axes {unknown}; allowed axes: {list(MESH_AXES)}.")
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise ValueError(f"Mesh {dict(sizes)}: at most one axis may be -1.")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"Mesh {dict(sizes)}: sizes must be positive or -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"Mesh {dict(sizes)}: {num_devices} devices are not divisible by the fixed axes ({known}).")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"Mesh {dict(zip(MESH_AXES, shape))} has {math.prod(shape)} devices but {num_devices} are available; "
        "set one axis to -1 to fill.")
  return tuple(shape)


def create_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over MESH_AXES from per-axis sizes, e.g. `{'data': -1, 'tensor': 2}`.

  Uses `mesh_utils.create_device_mesh` so that inner axes (tensor, context) land on fast interconnect when the
  platform exposes a topology; falls back to a plain reshape on CPU.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(dict(sizes), len(devices))
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def maybe_initialize_distributed(config) -> None:
  """Calls `jax.distributed.initialize` when `config.distributed.enabled` (once per process, before any jax use)."""
  if not config.distributed.enabled:
    return
  kwargs = {}
  if config.distributed.coordinator_address:
    kwargs["coordinator_address"] = config.distributed.coordinator_address
  if config.distributed.num_processes > 0:
    kwargs["num_processes"] = config.distributed.num_processes
  if config.distributed.process_id >= 0:
    kwargs["process_id"] = config.distributed.process_id
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
