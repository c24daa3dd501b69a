"""LoRA adapter files in the diffusers format for CogVideoX transformers (`pytorch_lora_weights.safetensors`).

    params = load_lora(params, "adapter/pytorch_lora_weights.safetensors", scale=1.0)   # merged into the kernels
    save_lora(adapters, "out/", spec)        # loads with CogVideoXPipeline.load_lora_weights("out/")

Keys are `transformer.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r] (torch Linear layouts), with
`<module>` a diffusers module name (`transformer_blocks.3.attn1.to_q`, `proj_out`, ...), plus optionally
`<module>.alpha` (a scalar). PEFT scales an adapter by alpha / r: alpha comes from the module's `.alpha` tensor,
else from the file's `lora_adapter_metadata` (diffusers writes PEFT's `lora_alpha`, `alpha_pattern`,
`use_rslora` there, prefixed `transformer.`), else it is r (scaling 1), as diffusers reads such files.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.convert import cogvideox_transformer as transformer_lib
from vdm_jax.convert import safetensors_io as st
from vdm_jax.models import lora

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PREFIX = "transformer."
_KEY = re.compile(r"^(?P<module>.+)\.(?:(?P<ab>lora_A|lora_B)\.weight|(?P<alpha>alpha))$")


@functools.lru_cache(maxsize=1)
def _modules() -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
  """(block module name -> flax path inside `layers`, top-level module name -> flax path) of the Linear layers."""
  block = {name[:-len(".weight")]: path[:-1] for path, (name, transform) in transformer_lib._BLOCK.items()  # pylint: disable=protected-access
           if path[-1] == "kernel" and transform is st.linear}
  top = {name[:-len(".weight")]: path[:-1] for path, (name, transform) in transformer_lib._TOP.items()  # pylint: disable=protected-access
         if path[-1] == "kernel" and transform is st.linear}
  return block, top


def _flax_path(module: str, num_layers: int, source: str) -> tuple[tuple[str, ...], int | None]:
  """A diffusers module name -> (flax module path, layer index or None)."""
  block, top = _modules()
  m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", module)
  if m:
    layer, inner = int(m.group(1)), m.group(2)
    if inner not in block:
      raise st.WeightsMismatchError(f"{source}: the adapter names module {module!r}; LoRA applies to the Linear "
                                    f"layers of a block: {sorted(block)}.")
    if layer >= num_layers:
      raise st.WeightsMismatchError(f"{source}: the adapter names layer {layer} ({module!r}) but the model has "
                                    f"{num_layers} layers.")
    return ("layers",) + block[inner], layer
  if module not in top:
    raise st.WeightsMismatchError(f"{source}: the adapter names module {module!r}, which the model lacks (Linear "
                                  f"layers: transformer_blocks.<i>.{{{', '.join(sorted(block))}}}, "
                                  f"{', '.join(sorted(top))}).")
  return top[module], None


def _metadata(file: str) -> dict[str, Any]:
  raw = st.read_metadata(file).get("lora_adapter_metadata")
  if not raw:
    return {}
  try:
    meta = json.loads(raw)
  except ValueError as e:
    raise st.WeightsMismatchError(f"{file}: lora_adapter_metadata is not JSON ({e}).") from None
  return {k[len(PREFIX):]: v for k, v in meta.items() if k.startswith(PREFIX)}


def _alpha(module: str, rank: int, tensors: dict, meta: dict) -> float:
  """PEFT's alpha for `module`: its `.alpha` tensor, an `alpha_pattern` entry (matched as PEFT matches keys, a
  suffix of the module name), the file's `lora_alpha`, else r."""
  if f"{module}.alpha" in tensors:
    return float(np.asarray(tensors[f"{module}.alpha"]).reshape(()))
  for pattern, value in (meta.get("alpha_pattern") or {}).items():
    if re.match(rf"(.*\.)?({pattern})$", module):
      return float(value)
  return float(meta["lora_alpha"]) if meta.get("lora_alpha") is not None else float(rank)


def read_lora(path: str, num_layers: int) -> dict[tuple[tuple[str, ...], int | None], tuple[np.ndarray, np.ndarray, float]]:
  """{(flax module path, layer or None): (A [r, in], B [out, r], scaling)} of a diffusers adapter file (or a folder
  holding `pytorch_lora_weights.safetensors`); errors name the key that is unknown, unpaired or misplaced."""
  file = os.path.join(path, WEIGHT_NAME) if os.path.isdir(path) else path
  tensors = st.read_safetensors(file)
  meta = _metadata(file)
  pairs: dict[str, dict[str, np.ndarray]] = {}
  for key in tensors:
    name = key[len(PREFIX):] if key.startswith(PREFIX) else None
    m = _KEY.match(name or "")
    if m is None:
      raise st.WeightsMismatchError(f"{file}: key {key!r} is not a transformer LoRA tensor (expected "
                                    f"'{PREFIX}<module>.lora_A.weight', '.lora_B.weight' or '.alpha').")
    if m.group("ab"):
      pairs.setdefault(m.group("module"), {})[m.group("ab")] = np.asarray(tensors[key], np.float32)
  out = {}
  for module, ab in sorted(pairs.items()):
    if set(ab) != {"lora_A", "lora_B"}:
      missing = ({"lora_A", "lora_B"} - set(ab)).pop()
      raise st.WeightsMismatchError(f"{file}: {PREFIX}{module} has no {missing}.weight.")
    a, b = ab["lora_A"], ab["lora_B"]
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
      raise st.WeightsMismatchError(f"{file}: {PREFIX}{module}: lora_A {a.shape} and lora_B {b.shape} are not "
                                    "[r, in] and [out, r].")
    rank = a.shape[0]
    scaling = _alpha(module, rank, tensors, meta) / (rank ** 0.5 if meta.get("use_rslora") else rank)
    out[_flax_path(module, num_layers, file)] = (a, b, scaling)
  return out


def load_lora(params: Any, path: str, scale: float = 1.0) -> Any:
  """Converted CogVideoX transformer params with a diffusers adapter merged: each named kernel W [in, out] becomes
  W + scale * alpha / r * (B @ A)^T (float32 arithmetic, cast back to W's dtype). A new tree; `params` unchanged."""
  layer_leaves = jax.tree.leaves(params.get("layers", {}))
  num_layers = int(jnp.shape(layer_leaves[0])[0]) if layer_leaves else 0
  out = jax.tree.map(lambda x: x, params)  # new dicts, shared arrays
  updates: dict[tuple[str, ...], np.ndarray] = {}
  for (flax_path, layer), (a, b, scaling) in read_lora(path, num_layers).items():
    try:
      kernel = lora.subtree(params, flax_path)["kernel"]
    except KeyError:
      raise st.WeightsMismatchError(f"{path}: the adapter adapts {'/'.join(flax_path)}, which these params "
                                    "lack.") from None
    delta = scale * scaling * (b @ a).T  # [in, out]
    want = tuple(kernel.shape[1:] if layer is not None else kernel.shape)
    if delta.shape != want:
      where = f"layer {layer} of " if layer is not None else ""
      raise st.WeightsMismatchError(f"{path}: the adapter for {where}{'/'.join(flax_path)} is [r, in] = {a.shape}, "
                                    f"[out, r] = {b.shape}; the kernel is [in, out] = {want}.")
    full = updates.setdefault(flax_path, np.zeros(kernel.shape, np.float32))
    if layer is None:
      full += delta
    else:
      full[layer] += delta
  for flax_path, delta in updates.items():
    module = lora.subtree(out, flax_path)
    module["kernel"] = (module["kernel"].astype(jnp.float32) + delta).astype(module["kernel"].dtype)
  return out


def save_lora(adapters: Any, path: str, spec: lora.Spec | None = None) -> str:
  """Writes adapters (`vdm_jax.models.lora`, on converted CogVideoX params) as a diffusers adapter file: `path` a
  folder (gets `pytorch_lora_weights.safetensors`) or a .safetensors file. Each A, B is written in torch layout
  with the scaling alpha / r (from `spec`; 1 without) folded into B, so diffusers, which reads files without
  alphas at alpha = r, computes the same update. Returns the file written."""
  block, top = _modules()
  inverse = {("layers",) + p: f"transformer_blocks.{{}}.{name}" for name, p in block.items()}
  inverse.update({p: name for name, p in top.items()})
  tensors = {}
  for flax_path in lora.adapter_paths(adapters):
    if flax_path not in inverse:
      raise ValueError(f"save_lora: the adapter on {'/'.join(flax_path)} is not on a CogVideoX Linear layer "
                       f"(adaptable: {sorted('/'.join(p) for p in inverse)}).")
    target = spec.target("/".join(flax_path)) if spec is not None else None
    scaling = target.scaling if target is not None else 1.0
    adapter = lora.subtree(adapters, flax_path)
    a = np.asarray(adapter["lora_a"], np.float32)
    b = np.asarray(adapter["lora_b"], np.float32) * scaling
    layers = range(a.shape[0]) if flax_path[0] == "layers" else [None]
    for layer in layers:
      name = inverse[flax_path].format(layer) if layer is not None else inverse[flax_path]
      a_l, b_l = (a[layer], b[layer]) if layer is not None else (a, b)
      tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_l.T)  # [r, in]
      tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_l.T)  # [out, r]
  file = path if path.endswith(".safetensors") else os.path.join(path, WEIGHT_NAME)
  os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
  st.write_safetensors(file, tensors, metadata={"format": "pt"})
  return file
