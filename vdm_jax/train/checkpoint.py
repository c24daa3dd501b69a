"""Orbax checkpoints of a run: train state, the grain iterator state and the config, under `workdir/checkpoints`.

Saves are asynchronous (device arrays are copied to host before `save` returns, the writing happens in the
background) and keep the last N. Restoring takes an abstract state whose leaves carry the target shardings, so a
checkpoint written under one mesh restores under another. `restore_latest` falls back to the newest checkpoint
that restores, so a damaged last save (a full disk, a killed copy) costs the steps since the one before it.

Each save also writes a checksum of every state leaf's bits (item `checksums`), checked on restore: OCDBT checksums
its manifests and tree nodes but not the compressed chunks, so a byte flipped in one restored silently.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vdm_jax import runs


class Checkpointer:
  """Wraps an orbax CheckpointManager with the items a run needs: state, data iterator, config, checksums."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), runs.CHECKPOINTS_DIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config", "checksums"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any = None, config: Any = None, *, force: bool = False) -> bool:
    """Saves `state` (and the iterator/config when given) as checkpoint `step`; returns whether it saved."""
    items = {"state": ocp.args.StandardSave(state), "checksums": ocp.args.JsonSave(runs.leaf_checksums(state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict() if hasattr(config, "to_dict") else config)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores the state into `abstract_state`'s shapes/dtypes/shardings; sets the iterator's position in place.
    Raises ValueError naming the leaves whose values differ from the checksums saved with them."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    step_dir = os.path.join(self.directory, str(step))
    checked = os.path.isdir(os.path.join(step_dir, "checksums"))  # saves from before checksums have none
    if checked:
      items["checksums"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if checked:
      runs.check_leaf_checksums(restored.state, restored.checksums, os.path.join(step_dir, "state"))
    return restored.state

  def restore_latest(self, abstract_state: Any, data_iterator: Any = None, *,
                     move_aside: bool = False) -> tuple[int | None, Any]:
    """(step, state) of the newest checkpoint that restores, or (None, None) when there are none.

    Damaged checkpoints are skipped with one warning each (`runs.restore_newest`); none restoring raises
    `runs.CheckpointError`. `move_aside` (the trainer): a skipped step is renamed `<step>.damaged`, kept for
    inspection (a read error may be transient) but out of the way of the save that training will write at that
    step. Only when an older one restored: if none does, the fault may be the target, not the files.
    """
    steps = self.manager.all_steps()
    if not steps:
      return None, None
    step, state, failures = runs.restore_newest(self.directory, steps,
                                                lambda s: self.restore(s, abstract_state, data_iterator))
    moved = {}
    if move_aside and failures:
      if jax.process_index() == 0:
        for s, _ in failures:
          moved[s] = _free_name(os.path.join(self.directory, f"{s}.damaged"))
          os.rename(os.path.join(self.directory, str(s)), moved[s])
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vdm_jax_checkpoints_moved_aside")
      self.manager.reload()
    runs.warn_skipped(self.directory, failures, step, moved)
    return step, state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _free_name(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... : the first that does not exist."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}.{n}"
  return candidate


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the shardings a restore should produce."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
