"""The VAE's normalisations: float32 GroupNorm over (C/G, T, H, W), and the decoder's SpatialNorm3D.

`group_norm`/`GroupNorm3D` normalise per group over time and space (or per frame), in float32. `SpatialNorm3D`
is the decoder's GroupNorm modulated by the latents, resized to the features' grid with PyTorch's nearest rule
(`resize_nearest`).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models.vae.conv import CausalConv3d, Dtype


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, eps: float,
               over_time: bool = True) -> jax.Array:
  """GroupNorm of `x` [B, T, H, W, C] in float32: statistics over (C/G, T, H, W) per group (over (C/G, H, W) per
  frame when `over_time` is False), two-pass variance. Returns float32.

  Sums are taken per channel over the leading axes first (contiguous, vectorised reductions), then per group; the
  normalisation and affine are folded into one per-channel multiply-add. On CPU this is much faster than reducing
  a [B, T, H, W, G, C/G] view.
  """
  b, t, h, w, c = x.shape
  if c % num_groups:
    raise ValueError(f"GroupNorm: {c} channels are not divisible by {num_groups} groups.")
  per_group = c // num_groups
  x = x.astype(jnp.float32)
  axes = (1, 2, 3) if over_time else (2, 3)
  count = per_group * math.prod(x.shape[a] for a in axes)

  def group_mean(values):  # per-channel sums [B, (T,) C] -> per-group mean repeated per channel
    sums = jnp.sum(values, axis=axes)
    sums = sums.reshape(sums.shape[:-1] + (num_groups, per_group)).sum(-1, keepdims=True) / count
    return jnp.broadcast_to(sums, sums.shape[:-1] + (per_group,)).reshape(sums.shape[:-2] + (c,))

  mean = group_mean(x)
  expand = (lambda v: v[:, None, None, None, :]) if over_time else (lambda v: v[:, :, None, None, :])
  var = group_mean(jnp.square(x - expand(mean)))
  a = jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
  return x * expand(a) + expand(bias.astype(jnp.float32) - mean * a)


class GroupNorm3D(nn.Module):
  """GroupNorm over (C/G, T, H, W) with a per-channel affine; computed and returned in float32."""
  num_groups: int = 32
  eps: float = 1e-6
  over_time: bool = True
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (c,),
                       self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), (c,),
                      self.param_dtype)
    return group_norm(x, scale, bias, self.num_groups, self.eps, self.over_time)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of PyTorch's `F.interpolate(mode='nearest', size=out_size)` along one axis."""
  if out_size == in_size:
    return np.arange(out_size)
  if out_size == 2 * in_size:
    return np.arange(out_size) >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def resize_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Nearest-neighbour resize of [B, T, H, W, C] to (T', H', W') with PyTorch's index rule."""
  for axis, out in zip((1, 2, 3), size):
    idx = _nearest_indices(x.shape[axis], out)
    if out % x.shape[axis] == 0 and np.array_equal(idx, np.arange(out) // (out // x.shape[axis])):
      x = jnp.repeat(x, out // x.shape[axis], axis=axis)
    else:
      x = jnp.take(x, jnp.asarray(idx), axis=axis)
  return x


class SpatialNorm3D(nn.Module):
  """Decoder norm conditioned on the latent zq: GroupNorm(f) * conv_y(zq') + conv_b(zq'), zq' = zq resized (nearest)
  to f's (T, H, W), frame 0 resized separately when T is odd and > 1 (so it never mixes with later frames)."""
  num_groups: int = 32
  eps: float = 1e-6
  over_time: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, zq: jax.Array) -> jax.Array:
    """f [B, T, H, W, C], zq [B, T_z, h, w, C_z] -> float32 [B, T, H, W, C]."""
    t, h, w = f.shape[1:4]
    if t > 1 and t % 2:
      zq = jnp.concatenate([resize_nearest(zq[:, :1], (1, h, w)), resize_nearest(zq[:, 1:], (t - 1, h, w))], axis=1)
    else:
      zq = resize_nearest(zq, (t, h, w))
    kw = dict(kernel_size=1, dtype=self.dtype, param_dtype=self.param_dtype)
    y, _ = CausalConv3d(f.shape[-1], name="conv_y", **kw)(zq)
    b, _ = CausalConv3d(f.shape[-1], name="conv_b", **kw)(zq)
    norm = GroupNorm3D(self.num_groups, self.eps, self.over_time, self.param_dtype, name="norm_layer")(f)
    return norm * y.astype(jnp.float32) + b.astype(jnp.float32)
