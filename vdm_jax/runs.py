"""Reading a finished run: the resolved config it wrote (`W/config.json`) and its parameters (orbax checkpoints).

Below both `vdm_jax.pipelines` (sampling from a workdir) and `vdm_jax.train` (which writes runs), so inference
never needs the training code. The parameters come back as host numpy arrays; their tree comes from the
checkpoint's own metadata, so no model code is needed to read them.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"


def read_config(workdir: str, defaults: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to `workdir`, over `defaults` when given: a key added to the code after the
  run was written (e.g. `model.patch_size`) reads as its default, which is what the run used."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No {CONFIG_FILE} in {workdir!r}: not a run's workdir (python -m experiments.train "
                            "writes one).")
  with open(path) as f:
    written = json.load(f)
  if defaults is None:
    return ml_collections.ConfigDict(written)

  def merge(base, new):
    for key, value in new.items():
      base[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base

  return ml_collections.ConfigDict(merge(defaults.to_dict(), written))


def experiment_name(workdir: str) -> str:
  """The `experiment` a run's config names ('' if none)."""
  return str(read_config(workdir).get("experiment", ""))


def load_params(workdir: str, item: str = "ema_params", step: int | None = None) -> tuple[Any, int]:
  """(params as host numpy arrays, step) from a run's checkpoint (the latest unless `step`): `item` is
  'ema_params' (for evaluation and sampling) or 'params'."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: train it first (python -m experiments.train ...).")
  manager = ocp.CheckpointManager(directory, item_names=("state",),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No finished checkpoint in {directory!r}.")
    # Restored onto one local device whatever mesh the run used (its devices need not exist here).
    metadata = manager.item_metadata(step)["state"]
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), metadata)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  finally:
    manager.close()
  if item not in state:
    raise KeyError(f"Checkpoint {step} in {directory!r} has no {item!r}; it has {sorted(state)}.")
  return jax.tree.map(np.asarray, state[item]), step
