"""The causal 3D VAE: `AutoencoderKL` and its parts, and `build` to make one from a `vae` experiment's config.

The package splits the model by job: `conv` (the causal Conv3d and its per-tap CPU formulation), `norm` (GroupNorm
and the decoder's SpatialNorm3D), `blocks` (ResNet and resampling blocks), `autoencoder` (encoder, decoder,
posterior, streaming and tiled encode/decode) and `discriminator` (the 3D patch GAN used in training). Every public
name is re-exported here, so `from vdm_jax.models.vae import X` works for all of them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from vdm_jax.models.vae.autoencoder import AutoencoderKL
from vdm_jax.models.vae.autoencoder import Decoder3D
from vdm_jax.models.vae.autoencoder import DiagonalGaussian
from vdm_jax.models.vae.autoencoder import Encoder3D
from vdm_jax.models.vae.autoencoder import depth_to_space
from vdm_jax.models.vae.autoencoder import frame_chunks
from vdm_jax.models.vae.autoencoder import space_to_depth
from vdm_jax.models.vae.blocks import Blocks3D
from vdm_jax.models.vae.blocks import Downsample3D
from vdm_jax.models.vae.blocks import ResnetBlock3D
from vdm_jax.models.vae.blocks import Upsample3D
from vdm_jax.models.vae.conv import ACTIVATION_AXES
from vdm_jax.models.vae.conv import Cache
from vdm_jax.models.vae.conv import CausalConv3d
from vdm_jax.models.vae.conv import Conv3d
from vdm_jax.models.vae.conv import Dtype
from vdm_jax.models.vae.conv import inference_params
from vdm_jax.models.vae.conv import per_tap_kernels
from vdm_jax.models.vae.discriminator import PatchDiscriminator3D
from vdm_jax.models.vae.norm import GroupNorm3D
from vdm_jax.models.vae.norm import SpatialNorm3D
from vdm_jax.models.vae.norm import group_norm
from vdm_jax.models.vae.norm import resize_nearest

# Keys of a `vae` experiment's `model` section that are options of the calls (`apply(..., chunked=)`), not fields.
CALL_OPTIONS = ("chunked",)
_DTYPE_FIELDS = ("dtype", "param_dtype")  # given by the experiment's `train` section, not by `model`


def model_fields() -> tuple[str, ...]:
  """The AutoencoderKL fields a `model` config section may set (all but flax's own and the dtypes)."""
  return tuple(f.name for f in dataclasses.fields(AutoencoderKL)
               if f.name not in ("parent", "name") + _DTYPE_FIELDS)


def build(model_config: Mapping[str, Any], dtype: Any = "float32", param_dtype: Any = "float32") -> AutoencoderKL:
  """The AutoencoderKL of a `vae` experiment's `model` section (a dict or ConfigDict): each key sets the field of
  that name (sequences become tuples); `chunked` (a call option) is allowed and ignored here. `dtype` and
  `param_dtype` (the experiment's `train.compute_dtype` / `train.param_dtype`) are the module's dtypes.

  Raises ValueError naming an unknown key and the allowed ones.
  """
  fields = model_fields()
  kwargs = {}
  for key, value in model_config.items():
    if key in CALL_OPTIONS:
      continue
    if key not in fields:
      raise ValueError(f"VAE model config key '{key}' is unknown; allowed keys: {sorted(fields + CALL_OPTIONS)}.")
    kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else value
  return AutoencoderKL(**kwargs, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype))
