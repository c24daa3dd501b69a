"""diffusers `CogVideoXTransformer3DModel` folders -> (`vdm_jax.models.dit.DiT`, params), without torch.

    module, params = load_transformer("/path/CogVideoX-5b/transformer", dtype=jnp.bfloat16)
    out = module.apply({'params': params}, latents, timesteps, text_embeds)  # latents [B, T, H, W, C]

Covers CogVideoX 2b (sincos), 5b (RoPE), 5b-I2V (32 input channels, learned positions + RoPE), 1.5 T2V/I2V
(patch_size_t 2, Linear patch projection, RoPE 'slice' grid; I2V's ofs embedding). Per-layer torch tensors are
stacked on a leading `layers` axis (the DiT scans over its layers).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.convert import safetensors_io as st
from vdm_jax.models.dit import DiT
from vdm_jax.parallel.sharding import strip_boxes


def _dense(flax: tuple[str, ...], torch_name: str, transform: Callable | None = st.linear) -> dict:
  """{flax kernel/bias path: (torch weight/bias name, layout transform)} of one Linear."""
  return {flax + ("kernel",): (f"{torch_name}.weight", transform), flax + ("bias",): (f"{torch_name}.bias", None)}


def _norm(flax: tuple[str, ...], torch_name: str) -> dict:
  """{flax scale/bias path: (torch weight/bias name, None)} of one LayerNorm."""
  return {flax + ("scale",): (f"{torch_name}.weight", None), flax + ("bias",): (f"{torch_name}.bias", None)}


def _patch_kernel(weight: np.ndarray) -> np.ndarray:
  """Conv2d [D, C, p, p] (1.0) or Linear [D, C * pt * p * p] (1.5) -> Dense kernel [C * pt * p * p, D].

  Both flatten in (C, pt, ph, pw) order, the order of `vdm_jax.models.patchify.patchify`.
  """
  return np.transpose(weight.reshape(weight.shape[0], -1))


# flax path inside a block (stacked under `layers`) -> (name inside `transformer_blocks.{i}.`, layout transform).
_BLOCK = {
    **_dense(("adaln_1",), "norm1.linear"), **_norm(("norm_1",), "norm1.norm"),
    **_dense(("attn", "to_q"), "attn1.to_q"), **_dense(("attn", "to_k"), "attn1.to_k"),
    **_dense(("attn", "to_v"), "attn1.to_v"), **_dense(("attn", "to_out"), "attn1.to_out.0"),
    **_norm(("attn", "norm_q"), "attn1.norm_q"), **_norm(("attn", "norm_k"), "attn1.norm_k"),
    **_dense(("adaln_2",), "norm2.linear"), **_norm(("norm_2",), "norm2.norm"),
    **_dense(("mlp", "fc_in"), "ff.net.0.proj"), **_dense(("mlp", "fc_out"), "ff.net.2"),
}
# flax path -> (diffusers name, layout transform) outside the blocks.
_TOP = {
    **_dense(("patch_embed", "proj"), "patch_embed.proj", _patch_kernel),
    **_dense(("text_proj",), "patch_embed.text_proj"),
    ("pos_embedding",): ("patch_embed.pos_embedding", lambda x: x[0]),  # [1, L, D] -> [L, D]
    **_dense(("time_embed", "linear_1"), "time_embedding.linear_1"),
    **_dense(("time_embed", "linear_2"), "time_embedding.linear_2"),
    **_dense(("ofs_embed", "linear_1"), "ofs_embedding.linear_1"),
    **_dense(("ofs_embed", "linear_2"), "ofs_embedding.linear_2"),
    **_norm(("norm_final",), "norm_final"), **_dense(("adaln_out",), "norm_out.linear"),
    **_norm(("norm_out",), "norm_out.norm"), **_dense(("proj_out",), "proj_out"),
}


# Fields of every CogVideoXTransformer3DModel config.json (diffusers writes all its arguments, and these were
# arguments from the first release on): a missing one is refused rather than defaulted to CogVideoX-2b's value.
# Fields added in later releases (RoPE, learned positions, patch_size_t, patch_bias, ofs_embed_dim) default as
# diffusers defaults them, which reads the older configs as they were written.
REQUIRED = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "flip_sin_to_cos",
            "freq_shift", "time_embed_dim", "text_embed_dim", "num_layers", "attention_bias", "sample_width",
            "sample_height", "sample_frames", "patch_size", "temporal_compression_ratio", "max_text_seq_length",
            "norm_elementwise_affine", "norm_eps", "spatial_interpolation_scale", "temporal_interpolation_scale")


def module_from_config(config: dict[str, Any], dtype=jnp.float32, **overrides) -> DiT:
  """The DiT for a diffusers CogVideoXTransformer3DModel config.json (`overrides`: e.g. attention_backend).
  Raises ModelConfigError naming the first missing REQUIRED field."""
  st.require(config, REQUIRED, "CogVideoXTransformer3DModel")
  unsupported = {k: config[k] for k in ("dropout",) if config.get(k)}
  if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
    unsupported["activation_fn"] = config["activation_fn"]
  if config.get("timestep_activation_fn", "silu") != "silu":
    unsupported["timestep_activation_fn"] = config["timestep_activation_fn"]
  if unsupported:
    raise ValueError(f"CogVideoX config values not supported: {unsupported}.")
  rope = bool(config.get("use_rotary_positional_embeddings", False))
  learned = bool(config.get("use_learned_positional_embeddings", False))
  if learned and not rope:
    raise ValueError("CogVideoX config: learned positions without RoPE do not exist (diffusers refuses them too).")
  patch_size_t = config.get("patch_size_t") or 1
  ratio = config["temporal_compression_ratio"]
  kwargs = dict(
      in_channels=config["in_channels"], out_channels=config["out_channels"] or None,
      patch_size=config["patch_size"], patch_size_t=patch_size_t,
      # diffusers' 1.5 patch projection is a Linear that always has a bias, whatever patch_bias says.
      patch_bias=bool(config.get("patch_bias", True)) or patch_size_t > 1,
      num_layers=config["num_layers"], num_heads=config["num_attention_heads"],
      head_dim=config["attention_head_dim"], mlp_ratio=4.0, text_dim=config["text_embed_dim"],
      time_embed_dim=config["time_embed_dim"], flip_sin_to_cos=config["flip_sin_to_cos"],
      freq_shift=float(config["freq_shift"]), ofs_embed_dim=config.get("ofs_embed_dim") or None,
      conditioning="joint", activation="gelu_tanh", norm_eps=config["norm_eps"],
      norm_affine=config["norm_elementwise_affine"], qk_norm=True, qk_norm_eps=1e-6,
      attention_bias=config["attention_bias"], attention_out_bias=True,
      pos_embed="learned" if learned else ("none" if rope else "sincos"), use_rope=rope,
      rope_grid="slice" if patch_size_t > 1 else "linspace",
      spatial_interpolation_scale=config["spatial_interpolation_scale"],
      temporal_interpolation_scale=config["temporal_interpolation_scale"],
      sample_frames=(config["sample_frames"] - 1) // ratio + 1, sample_height=config["sample_height"],
      sample_width=config["sample_width"], max_text_length=config["max_text_seq_length"],
      zero_init=False, dtype=dtype, param_dtype=dtype)
  kwargs.update(overrides)
  return DiT(**kwargs)


def abstract_params(module: DiT, boxed: bool = False) -> Any:
  """Shapes of the module's params (no memory), traced at the config's sample size; unboxed unless `boxed` (then
  with their logical-axis boxes, for `vdm_jax.parallel.sharding.logical_shardings`)."""
  latents = jax.ShapeDtypeStruct((1, module.sample_frames, module.sample_height, module.sample_width,
                                  module.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  text = jax.ShapeDtypeStruct((1, module.max_text_length, module.text_dim), jnp.float32)
  if module.patch_size_t > 1 and module.sample_frames % module.patch_size_t:
    latents = jax.ShapeDtypeStruct((1, module.patch_size_t, *latents.shape[2:]), jnp.float32)
  init = lambda *args: module.init(jax.random.PRNGKey(0), *args)["params"]
  abstract = jax.eval_shape(init, latents, t, text)
  return abstract if boxed else strip_boxes(abstract)


class _Stacked:
  """Per-layer torch tensors stacked on a new leading axis when read (np.asarray), so stacking is one leaf at a time."""

  def __init__(self, parts: list[np.ndarray], transform: Callable | None):
    self.parts, self.transform = parts, transform
    first = transform(parts[0]) if transform else parts[0]
    self.shape = (len(parts),) + tuple(first.shape)

  def __array__(self, dtype=None, copy=None):
    out = np.stack([self.transform(p) if self.transform else p for p in self.parts])
    return out if dtype is None else out.astype(dtype, copy=False)


def convert(tensors: dict[str, np.ndarray], num_layers: int, expected: Any = None,
            source: str = "weights") -> tuple[dict[tuple[str, ...], Any], list[str]]:
  """diffusers state dict -> ({flax path: array}, unused torch names).

  Only paths of `expected` (the abstract params; all known paths if None) are converted; other tensors are
  returned as unused. Per-layer tensors are stacked lazily (see `_Stacked`). Raises WeightsMismatchError naming a
  layer's missing or differently shaped tensor.
  """
  wanted = None
  if expected is not None:
    flat = jax.tree_util.tree_flatten_with_path(expected)[0]
    wanted = {tuple(str(getattr(k, "key", k)) for k in path) for path, _ in flat}
  values: dict[tuple[str, ...], Any] = {}
  used = set()
  for path, (name, transform) in _TOP.items():
    if name in tensors and (wanted is None or path in wanted):
      values[path] = transform(tensors[name]) if transform else tensors[name]
      used.add(name)
  for path, (name, transform) in _BLOCK.items():
    if wanted is not None and ("layers",) + path not in wanted:
      continue
    names = [f"transformer_blocks.{i}.{name}" for i in range(num_layers)]
    if not any(n in tensors for n in names):
      continue  # reported by `assign` as a missing parameter
    for n in names:
      if n not in tensors:
        raise st.WeightsMismatchError(f"{source}: no tensor {n!r} (for parameter layers/{'/'.join(path)}).")
      if tensors[n].shape != tensors[names[0]].shape:
        raise st.WeightsMismatchError(f"{source}: tensor {n!r} has shape {tuple(tensors[n].shape)} but "
                                      f"{names[0]!r} has {tuple(tensors[names[0]].shape)}.")
    values[("layers",) + path] = _Stacked([tensors[n] for n in names], transform)
    used.update(names)
  return values, sorted(set(tensors) - used)


def load_transformer(path: str, dtype=jnp.float32, **overrides):
  """A diffusers CogVideoXTransformer3DModel folder (config.json + safetensors) -> (DiT, params).

  Params are jax arrays in `dtype` (e.g. jnp.bfloat16 for inference); the module computes in `dtype` too, with
  norms, modulation and RoPE in float32. `overrides` set DiT fields (attention_backend, remat_policy, ...).
  Raises WeightsMismatchError naming the first missing, unexpected or wrongly shaped parameter.
  """
  config = st.read_config(path)
  module = module_from_config(config, dtype=dtype, **overrides)
  tensors = st.read_tensors(path)
  expected = abstract_params(module)
  values, unused = convert(tensors, module.num_layers, expected, source=path)
  params = st.assign(expected, values, dtype=dtype, unused=unused, source=path)
  return module, _to_jax_in_place(params)


CLASS_NAME = "CogVideoXTransformer3DModel"
# DiT fields that say how the model computes, not what it is: two models differing only in these share weights.
NOT_ARCHITECTURE = ("attention_backend", "attention_fallback", "attention_q_block", "attention_kv_block",
                    "attention_chunk_threshold", "remat_policy", "scan_unroll", "zero_init", "dtype", "param_dtype",
                    "parent", "name")


def transformer_folder(path: str) -> str | None:
  """The CogVideoXTransformer3DModel folder at `path`: `path` itself or a pipeline folder's `transformer/` (by the
  `_class_name` diffusers writes into config.json); None when `path` is neither (e.g. a vdm_jax workdir)."""
  for folder in (os.path.join(path, "transformer"), path):
    file = os.path.join(folder, "config.json")
    if os.path.isfile(file):
      try:
        with open(file, encoding="utf-8") as f:
          config = json.load(f)
      except ValueError:
        continue
      if isinstance(config, dict) and config.get("_class_name") == CLASS_NAME:
        return folder
  return None


def mismatches(module: DiT, folder: str) -> list[str]:
  """'field=X there, Y here' for every architectural DiT field on which `module` differs from the transformer in
  `folder` (fields that change no weight shape, like RoPE, included)."""
  reference = module_from_config(st.read_config(folder))
  norm = {"out_channels": lambda m: m.out_channels or m.in_channels,
          "time_freq_dim": lambda m: m.time_freq_dim or m.num_heads * m.head_dim}
  out = []
  for field in dataclasses.fields(DiT):
    if field.name in NOT_ARCHITECTURE:
      continue
    get = norm.get(field.name, lambda m, n=field.name: getattr(m, n))
    there, here = get(reference), get(module)
    if there != here:
      out.append(f"{field.name}={there!r} there, {here!r} here")
  return out


def _to_jax_in_place(tree: dict) -> dict:
  """numpy leaves -> jax arrays one at a time, dropping each numpy array as it goes (peak ~ model + one leaf)."""
  for key, value in tree.items():
    tree[key] = _to_jax_in_place(value) if isinstance(value, dict) else jnp.asarray(value)
  return tree
