"""The VAE's building blocks: ResNet blocks with causal convolutions, and the down/up-sampling between levels.

`ResnetBlock3D` (GroupNorm, or SpatialNorm3D in the decoder), `Downsample3D`/`Upsample3D` (per-frame stride-2 conv
and nearest x2, with optional time compression that keeps frame 0 apart), and `Blocks3D`, one level of either
tower. Every block returns its causal-conv cache next to its output, for streaming over time chunks.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import layers
from vdm_jax.models.vae.conv import ACTIVATION_AXES, Cache, CausalConv3d, Conv3d, Dtype, conv2d_general_dilated
from vdm_jax.models.vae.norm import GroupNorm3D, SpatialNorm3D


def _frames_2d(fn, x: jax.Array) -> jax.Array:
  """Applies a per-frame 2D op `fn` ([N, H, W, C] -> [N, H', W', C']) to [B, T, H, W, C]."""
  b, t = x.shape[:2]
  y = fn(x.reshape((b * t,) + x.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


class Downsample3D(nn.Module):
  """Optional time compression (average pool of frame pairs, frame 0 apart when T is odd), then a stride-2 3x3
  conv per frame with one row/column of zeros padded at the bottom/right. [B, T, H, W, C] -> [B, T', H/2, W/2, F]."""
  features: int
  compress_time: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    t = x.shape[1]
    if self.compress_time and t > 1:
      first, rest = (x[:, :1], x[:, 1:]) if t % 2 else (x[:, :0], x)
      rest = (rest[:, 0::2] + rest[:, 1::2]) * 0.5
      x = jnp.concatenate([first, rest], axis=1)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
    layer = layers.conv(self.features, (3, 3), strides=2, padding="VALID", dtype=self.dtype,
                   param_dtype=self.param_dtype, name="conv")
    return _frames_2d(layer, x)


class Upsample3D(nn.Module):
  """Nearest x2 in (H, W), and in time when `compress_time` (T -> 2T; odd T > 1: frame 0 only spatially,
  T -> 1 + 2 (T - 1)), then a 3x3 conv per frame. [B, T, H, W, C] -> [B, T', 2H, 2W, F]."""
  features: int
  compress_time: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    t = x.shape[1]
    if self.compress_time and t > 1:
      if t % 2:
        x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
      else:
        x = jnp.repeat(x, 2, axis=1)
    layer = layers.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        param_dtype=self.param_dtype, conv_general_dilated=conv2d_general_dilated, name="conv")
    return _frames_2d(layer, x)



class ResnetBlock3D(nn.Module):
  """norm1 - SiLU - causal conv1 - norm2 - SiLU - causal conv2, plus a 1x1x1 conv shortcut when channels change.

  The norms are GroupNorm, or SpatialNorm3D conditioned on `zq` in the decoder (`spatial_norm=True`).
  """
  features: int
  num_groups: int = 32
  eps: float = 1e-6
  spatial_norm: bool = False
  over_time: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _norm(self, name: str):
    if self.spatial_norm:
      return SpatialNorm3D(self.num_groups, 1e-6, self.over_time, self.dtype, self.param_dtype, name=name)
    return GroupNorm3D(self.num_groups, self.eps, self.over_time, self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, zq: Optional[jax.Array] = None,
               cache: Optional[Cache] = None) -> tuple[jax.Array, Cache]:
    """x [B, T, H, W, C] -> ([B, T, H, W, features], cache {'conv1', 'conv2'})."""
    cache = cache or {}
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_args = (zq,) if self.spatial_norm else ()
    h = nn.silu(self._norm("norm1")(x, *norm_args)).astype(self.dtype)
    h, c1 = CausalConv3d(self.features, 3, name="conv1", **kw)(h, cache.get("conv1"))
    h = nn.silu(self._norm("norm2")(h, *norm_args)).astype(self.dtype)
    h, c2 = CausalConv3d(self.features, 3, name="conv2", **kw)(h, cache.get("conv2"))
    if x.shape[-1] != self.features:
      x = Conv3d(self.features, (1, 1, 1), (0, 0), name="conv_shortcut", **kw)(x)
    out = nn.with_logical_constraint(h + x.astype(self.dtype), ACTIVATION_AXES)
    return out, {"conv1": c1, "conv2": c2}


class Blocks3D(nn.Module):
  """A down, mid or up block: `num_layers` ResNet blocks, then an optional Downsample3D / Upsample3D."""
  features: int
  num_layers: int
  resample: str = "none"  # 'none' | 'down' | 'up'
  compress_time: bool = False
  num_groups: int = 32
  eps: float = 1e-6
  spatial_norm: bool = False
  over_time: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    block = nn.remat(ResnetBlock3D) if self.remat else ResnetBlock3D
    self.resnets = [block(self.features, self.num_groups, self.eps, self.spatial_norm, self.over_time, self.dtype,
                          self.param_dtype) for _ in range(self.num_layers)]
    kw = dict(compress_time=self.compress_time, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.resample == "down":
      self.downsamplers = [Downsample3D(self.features, **kw)]
    elif self.resample == "up":
      self.upsamplers = [Upsample3D(self.features, **kw)]

  def __call__(self, x: jax.Array, zq: Optional[jax.Array] = None,
               cache: Optional[Cache] = None) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    new_cache = {}
    for i, resnet in enumerate(self.resnets):
      x, new_cache[f"resnet_{i}"] = resnet(x, zq, cache.get(f"resnet_{i}"))
    if self.resample == "down":
      x = self.downsamplers[0](x)
    elif self.resample == "up":
      x = self.upsamplers[0](x)
    return x, new_cache
