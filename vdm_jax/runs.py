"""Reading a finished run: the resolved config it wrote (`W/config.json`) and its parameters (orbax checkpoints).

Below both `vdm_jax.pipelines` (sampling from a workdir) and `vdm_jax.train` (which writes runs), so inference
never needs the training code. The parameters come back as host numpy arrays; their tree comes from the
checkpoint's own metadata, so no model code is needed to read them. Restores fall back to the newest checkpoint
that restores and check the values against the per-leaf checksums the trainer saved with them (the writer is
`vdm_jax.train.checkpoint`; both sides of the checksum live here).
"""
from __future__ import annotations

import json
import logging as logging_std
import os
import sys
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vdm_jax.convert import cogvideox_transformer
from vdm_jax.models import lora

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


class CheckpointError(RuntimeError):
  """No checkpoint of a run restores (or the one asked for does not); names the directory and each step's reason."""


def error_line(error: BaseException) -> str:
  """The innermost cause's type and first line: orbax and tensorstore wrap the error that names the damaged file
  (e.g. `Requested byte range [1123, 2244) is not valid for value of size 10` in `.../4/state/`)."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _from_orbax(error: BaseException | None) -> bool:
  """Whether `error` was raised inside orbax (a frame of its traceback is in an orbax file)."""
  tb = error.__traceback__ if error is not None else None
  while tb is not None:
    if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


class _OrphanedRestoreErrors(logging_std.Filter):
  """Drops asyncio's `Task exception was never retrieved` records for orbax's reads: when one read of a restore
  fails, orbax gives up on its sibling reads, and each of those that fails too is logged with its whole traceback
  when its task is collected (after the restore has already raised the first error)."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if not str(record.msg).startswith("Task exception was never retrieved"):
      return True
    return not (record.exc_info and _from_orbax(record.exc_info[1]))


def _quiet_failed_restores() -> None:
  """When one read of a restore fails, orbax closes its asyncio loop while tensorstore's other reads are in flight;
  each of them then reports `RuntimeError: Event loop is closed` through sys.unraisablehook, or asyncio logs it as
  a task exception never retrieved (hundreds of lines that bury the real error, which is raised anyway). Drops
  those reports, passes every other one on."""
  asyncio_logger = logging_std.getLogger("asyncio")
  if not any(isinstance(f, _OrphanedRestoreErrors) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_OrphanedRestoreErrors())
  if getattr(sys.unraisablehook, "drops_closed_event_loops", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.drops_closed_event_loops = True
  sys.unraisablehook = hook


def restore_newest(directory: str, steps: Iterable[int], restore: Callable[[int], Any]
                   ) -> tuple[int, Any, list[tuple[int, str]]]:
  """(step, restore(step), [(step skipped, its reason)]) for the newest of `steps` whose checkpoint restores.

  Damage (truncated or corrupted files, a missing `_METADATA` or item, a checksum error) shows up as many error
  types, so any error skips the step; the caller reports the skipped ones (`warn_skipped`). When none restores,
  raises CheckpointError naming `directory` and every step's reason.
  """
  _quiet_failed_restores()
  failures = []
  for step in sorted(steps, reverse=True):
    try:
      return step, restore(step), failures
    except Exception as e:  # pylint: disable=broad-except
      failures.append((step, error_line(e)))
  reasons = "; ".join(f"step {s}: {r}" for s, r in failures) or "no checkpoints"
  raise CheckpointError(f"No checkpoint in {directory} restores ({reasons}).")


def warn_skipped(directory: str, failures: list[tuple[int, str]], restored: int, moved: dict | None = None) -> None:
  """One warning line per checkpoint skipped for `restored`: its directory (and where it was moved) and error."""
  for step, reason in failures:
    where = os.path.join(directory, str(step))
    if moved and step in moved:
      where += f" (moved aside to {moved[step]})"
    logging.warning("Checkpoint step %d does not restore, using step %d: %s: %s", step, restored, where, reason)


@jax.jit
def _bit_sums(leaves: list) -> list:
  """Per leaf, the sum of its values' bits as unsigned integers mod 2**32: any one flipped bit changes it, and the
  sum is the same whatever the sharding or the order of the reduction."""
  def one(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype.itemsize in (2, 4):
      x = jax.lax.bitcast_convert_type(x, jnp.uint16 if x.dtype.itemsize == 2 else jnp.uint32)
    return jnp.sum(x.astype(jnp.uint32), dtype=jnp.uint32)
  return [one(x) for x in leaves]


def leaf_checksums(state: Any) -> dict[str, list]:
  """{leaf path: [dtype, bit sum]} of a state's leaves (computed on the devices; only the sums are fetched)."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  sums = jax.device_get(_bit_sums([x for _, x in leaves]))
  return {_path_name(path): [str(x.dtype), int(s)] for (path, x), s in zip(leaves, sums)}


def _path_name(path) -> str:
  """'opt_state/1/0/mu/up_0/kernel': the same for a TrainState and for the dicts and lists its metadata restores as."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_leaf_checksums(state: Any, saved: dict[str, list], where: str) -> None:
  """Raises ValueError when a leaf restored with the dtype it was saved with has other values than were saved
  (a leaf restored into another dtype, e.g. after a param_dtype change, is not comparable and is skipped)."""
  now = leaf_checksums(state)
  bad = [path for path, (dtype, total) in saved.items()
         if path in now and now[path][0] == dtype and now[path][1] != total]
  if bad:
    raise ValueError(f"{len(bad)} of {len(saved)} leaves in {where} differ from the checksums saved with them "
                     f"(the files changed after the save), e.g. {bad[0]}")


def load_params(workdir: str, item: str = "ema_params", step: int | None = None) -> tuple[Any, int]:
  """(params as host numpy arrays, step) from a run's checkpoint: `item` is 'ema_params' (for evaluation and
  sampling) or 'params'. `step` None: the newest checkpoint that restores (`restore_newest`: damaged ones are
  skipped with a warning); a given `step` that does not restore raises CheckpointError naming it."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: train it first (python -m experiments.train ...).")
  manager = ocp.CheckpointManager(directory, item_names=("state", "checksums"),
                                  item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                 "checksums": ocp.JsonCheckpointHandler()})
  one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def restore(s):
    # Restored onto one local device whatever mesh the run used (its devices need not exist here).
    metadata = manager.item_metadata(s)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), metadata)
    items = {"state": ocp.args.StandardRestore(target)}
    checked = os.path.isdir(os.path.join(directory, str(s), "checksums"))  # saves before checksums have none
    if checked:
      items["checksums"] = ocp.args.JsonRestore()
    restored = manager.restore(s, args=ocp.args.Composite(**items))
    if checked:
      check_leaf_checksums(restored["state"], restored["checksums"], os.path.join(directory, str(s), "state"))
    return restored["state"]

  try:
    steps = manager.all_steps() if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"No finished checkpoint in {directory!r}.")
    step, state, failures = restore_newest(directory, steps, restore)
    warn_skipped(directory, failures, step)
  finally:
    manager.close()
  if item not in state:
    raise KeyError(f"Checkpoint {step} in {directory!r} has no {item!r}; it has {sorted(state)}.")
  return jax.tree.map(np.asarray, state[item]), step


def load_model_params(workdir: str, item: str = "ema_params", lora_scale: float = 1.0) -> tuple[Any, int]:
  """(the model's parameters, step) of a run: `load_params`, and for a LoRA run (its config sets `lora.targets`,
  vdm_jax.train.lora_run) its adapters merged into its base's (`init_from`) parameters at `lora_scale`."""
  params, step = load_params(workdir, item)
  config = read_config(workdir)
  targets = config.get("lora", {}).get("targets") if config.get("lora") else None
  if not targets:
    if lora_scale != 1.0:
      raise ValueError(f"lora_scale={lora_scale} asked of {workdir!r}, which is not a LoRA run (no lora.targets).")
    return params, step
  base, _ = load_base_params(config.init_from, config.get("init_from_item", "ema_params"))
  return lora.merge(base, params, lora.Spec.of(targets), lora_scale), step


def load_base_params(source: str, item: str = "ema_params", dtype=np.float32) -> tuple[Any, int]:
  """(parameters, step) a run starts from (`config.init_from`): a vdm_jax workdir's `item` (`load_params`), or the
  transformer of a diffusers CogVideoX folder (a pipeline folder or its `transformer/`) as {'dit': ...} in `dtype`
  at step 0."""
  folder = cogvideox_transformer.transformer_folder(source)
  if folder is None:
    return load_params(source, item)
  _, params = cogvideox_transformer.load_transformer(folder, dtype=jnp.dtype(dtype))
  return {"dit": jax.tree.map(np.asarray, params)}, 0
