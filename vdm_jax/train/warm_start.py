"""Starting a run from another run's parameters (`config.init_from`): staged training, fine-tuning.

A run with no checkpoint of its own whose config names `init_from` (a vdm_jax workdir, or a diffusers CogVideoX
folder whose transformer becomes the DiT: its architecture must be the config's `model`) starts from that run's
parameters (`init_from_item`: its EMA parameters by default) at step 0, with a fresh optimizer state and a fresh
EMA; once it has saved a checkpoint it resumes from that instead, like any run. The parameters must match the new
model leaf for leaf: a missing, extra or reshaped leaf fails naming its path and both shapes. Dtypes follow the new
run (`train.param_dtype`).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vdm_jax import runs
from vdm_jax.convert import cogvideox_transformer
from vdm_jax.parallel import mesh as mesh_lib

ITEMS = ("ema_params", "params")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_match(expected: Any, loaded: Any, source: str) -> None:
  """Raises ValueError naming every leaf path that is missing from `loaded`, extra in it, or of another shape."""
  want, got = _shapes(expected), _shapes(loaded)
  problems = [f"{p}: missing" for p in want if p not in got]
  problems += [f"{p}: not in this model" for p in got if p not in want]
  problems += [f"{p}: {got[p]} there, {want[p]} here" for p in want if p in got and got[p] != want[p]]
  if problems:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    hint = ("Stages of one model share its config's `model` section; change only the data, steps and optimizer "
            "between them.")
    if cogvideox_transformer.transformer_folder(source) is not None:
      hint = ("A diffusers folder gives the DiT ('dit') only: every other trained part must be frozen (a text "
              "encoder: text.trainable=False).")
    raise ValueError(f"init_from={source!r}: its parameters do not fit this model ({shown}). {hint}")


def experiment_dit(experiment) -> Any:
  """The experiment's DiT (t2v experiments have one), else None."""
  dit = getattr(experiment, "dit", None)
  return dit() if callable(dit) else None


def read_params(source: str, item: str = "ema_params", dit=None, dtype=np.float32) -> tuple[Any, int]:
  """`runs.load_base_params`, callable inside the trainer's mesh: restored onto one device, under a one-device mesh
  whose devices the restore's checks see (the trainer's would fail them). A diffusers folder's transformer must
  have the architecture of `dit` (when given): a field that differs (RoPE on or off, say) fails naming it."""
  folder = cogvideox_transformer.transformer_folder(source)
  if folder is not None and dit is not None:
    different = cogvideox_transformer.mismatches(dit, folder)
    if different:
      raise ValueError(f"init_from={source!r}: its transformer ({folder}) is not this config's model: "
                       f"{'; '.join(different)}. Set these model.* keys as the folder has them.")
  with jax.set_mesh(mesh_lib.create_mesh({"data": 1}, jax.local_devices()[:1])):
    return runs.load_base_params(source, item, dtype)


def load_into(state, shardings, workdir: str, item: str = "ema_params", dit=None):
  """`state` (a fresh TrainState) with params and EMA params from `workdir`'s newest checkpoint (or a diffusers
  folder's transformer, checked against `dit`), placed in `shardings` (the state's); returns (state, the step it
  was saved at)."""
  if item not in ITEMS:
    raise ValueError(f"init_from_item={item!r}; allowed: {list(ITEMS)}.")
  loaded, step = read_params(workdir, item, dit)
  check_match(state.params, loaded, workdir)
  cast = jax.tree.map(lambda new, old: np.asarray(old, dtype=new.dtype), state.params, loaded)
  # two placements: the step donates the state, and params and EMA params must not share buffers
  return state.replace(params=jax.device_put(cast, shardings.params),
                       ema_params=jax.device_put(cast, shardings.ema_params)), step
