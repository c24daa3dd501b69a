"""Orbax checkpoints of a run: train state, the grain iterator state and the config, under `workdir/checkpoints`.

Saves are asynchronous (device arrays are copied to host before `save` returns, the writing happens in the
background) and keep the last N. Restoring takes an abstract state whose leaves carry the target shardings, so a
checkpoint written under one mesh restores under another.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Wraps an orbax CheckpointManager with the three items a run needs."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any = None, config: Any = None, *, force: bool = False) -> bool:
    """Saves `state` (and the iterator/config when given) as checkpoint `step`; returns whether it saved."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict() if hasattr(config, "to_dict") else config)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores the state into `abstract_state`'s shapes/dtypes/shardings; sets the iterator's position in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored.state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(workdir: str, item: str = "ema_params", step: int | None = None) -> tuple[Any, int]:
  """(params as host numpy arrays, step) from a run's checkpoint (the latest unless `step`): `item` is
  'ema_params' (for evaluation and sampling) or 'params'. Needs no model code: the tree comes from the
  checkpoint's own metadata."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
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


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the shardings a restore should produce."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
