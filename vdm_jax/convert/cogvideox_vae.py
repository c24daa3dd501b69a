"""diffusers `AutoencoderKLCogVideoX` folders -> (`vdm_jax.models.vae.AutoencoderKL`, params), without torch.

    module, params = load_vae("/path/CogVideoX-2b/vae")
    posterior = module.apply({"params": params}, video, method="encode")    # video [B, T, H, W, 3] in [-1, 1]
    video = module.apply({"params": params}, posterior.mode(), method="decode")

The flax module tree mirrors diffusers' names, so a torch tensor name maps to a flax path by joining list indices
(`down_blocks.0.resnets.1` -> `down_blocks_0/resnets_1`) and renaming the leaf (`weight` -> `kernel` for convs,
`scale` for norms). `module.scaling_factor` keeps the config's scaling factor (latents for the DiT are
`posterior.mode() * scaling_factor`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.convert import safetensors_io as st
from vdm_jax.models.vae import AutoencoderKL
from vdm_jax.parallel.sharding import strip_boxes

_BLOCKS = {"down_block_types": "CogVideoXDownBlock3D", "up_block_types": "CogVideoXUpBlock3D"}


# Fields of every AutoencoderKLCogVideoX config.json that set the module's shapes or numbers: a missing one is
# refused rather than defaulted to CogVideoX-2b's value. Fields with one supported value (block types, act_fn, quant
# convs) and later additions (invert_scale_latents) default as diffusers defaults them.
REQUIRED = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
            "norm_num_groups", "norm_eps", "temporal_compression_ratio", "scaling_factor")


def module_from_config(config: dict[str, Any], dtype=jnp.float32, **overrides) -> AutoencoderKL:
  """The AutoencoderKL for a diffusers AutoencoderKLCogVideoX `config.json` dict; `overrides` set module fields
  (e.g. `tile_sample_size=(240, 360)`). Raises ModelConfigError naming the first missing REQUIRED field."""
  st.require(config, REQUIRED, "AutoencoderKLCogVideoX")
  for key, block in _BLOCKS.items():
    types = config.get(key, [block] * 4)
    if any(t != block for t in types):
      raise ValueError(f"config {key}={types}: only {block} is supported.")
  if config.get("act_fn", "silu") not in ("silu", "swish"):
    raise ValueError(f"config act_fn={config['act_fn']!r}: only 'silu' is supported.")
  for key in ("use_quant_conv", "use_post_quant_conv"):
    if config.get(key, False):
      raise ValueError(f"config {key}=True is not supported (CogVideoX VAEs have no quant convs).")
  # invert_scale_latents (CogVideoX 1.5) only changes how the I2V pipeline scales the image's latents (there).
  if config.get("shift_factor") is not None:
    raise ValueError("config shift_factor is not supported; shift latents yourself.")
  channels = tuple(config["block_out_channels"])
  if len(config.get("down_block_types", channels)) != len(channels):
    raise ValueError(f"config has {len(config['down_block_types'])} down blocks but block_out_channels={channels}.")
  kwargs = dict(
      in_channels=config["in_channels"], out_channels=config["out_channels"],
      block_out_channels=channels, layers_per_block=config["layers_per_block"],
      latent_channels=config["latent_channels"], norm_num_groups=config["norm_num_groups"],
      norm_eps=config["norm_eps"], temporal_compression_ratio=int(config["temporal_compression_ratio"]),
      scaling_factor=float(config["scaling_factor"]), dtype=dtype, param_dtype=dtype)
  kwargs.update(overrides)
  return AutoencoderKL(**kwargs)


def flax_path(name: str, ndim: int) -> tuple[str, ...]:
  """A diffusers tensor name -> the flax param path of the same tensor (see the module docstring)."""
  parts = name.split(".")
  path: list[str] = []
  for part in parts[:-1]:
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  leaf = parts[-1]
  if leaf == "weight":
    leaf = "kernel" if ndim > 1 else "scale"
  return tuple(path) + (leaf,)


def abstract_params(module: AutoencoderKL, boxed: bool = False) -> Any:
  """ShapeDtypeStructs of the module's params (no computation); with their logical-axis boxes if `boxed`."""
  s = module.spatial_compression
  video = jax.ShapeDtypeStruct((1, 1, s, s, module.in_channels), jnp.float32)
  variables = jax.eval_shape(lambda v: module.init(jax.random.PRNGKey(0), v, chunked=False), video)
  return variables["params"] if boxed else strip_boxes(variables["params"])


def convert(tensors: dict[str, np.ndarray], abstract: Any, *, dtype=None, source: str = "weights") -> Any:
  """diffusers state dict (numpy) -> flax params tree matching `abstract`; raises WeightsMismatchError naming the
  first parameter whose name or shape is wrong."""
  expected = {tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  values, unused = {}, []
  for name, tensor in tensors.items():
    path = flax_path(name, tensor.ndim)
    if path not in expected:
      unused.append(name)
      continue
    values[path] = st.conv(tensor) if path[-1] == "kernel" else tensor
  return st.assign(abstract, values, dtype=dtype, unused=unused, source=source)


def load_vae(path: str, dtype=jnp.float32, **overrides) -> tuple[AutoencoderKL, Any]:
  """A diffusers AutoencoderKLCogVideoX folder (`config.json` + `diffusion_pytorch_model.safetensors` or a sharded
  index) -> (module, params). `dtype` is the parameter and compute dtype (norms stay float32)."""
  config = st.read_config(path)
  module = module_from_config(config, dtype=dtype, **overrides)
  params = convert(st.read_tensors(path), abstract_params(module), dtype=dtype, source=path)
  return module, params
