"""Timestep and position embeddings: timestep sinusoid + MLP, CogVideoX 3D sincos positions, 3D RoPE.

Position tables depend only on static shapes, so they are computed with numpy while tracing (float64 for sincos,
float32 for RoPE, as diffusers does) and enter the graph as constants. Everything here stays in float32.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models.layers import dense


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = True, shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoid of (possibly fractional) timesteps [B] -> [B, dim] float32: [sin | cos], or [cos | sin] if flipped.

  Frequencies exp(-log(max_period) * i / (dim / 2 - shift)), i < dim / 2 (diffusers' `get_timestep_embedding`).
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - shift)
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepMLP(nn.Module):
  """[B, in] -> Dense(features) -> act -> Dense(out_features or features), in float32 (diffusers TimestepEmbedding)."""
  features: int
  out_features: int | None = None
  activation: str = "silu"
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.activation != "silu":
      raise ValueError(f"timestep activation {self.activation!r} is not supported; allowed: 'silu'.")
    x = dense(self.features, (None, None), param_dtype=self.param_dtype, name="linear_1")(x.astype(jnp.float32))
    x = nn.silu(x)
    return dense(self.out_features or self.features, (None, None), param_dtype=self.param_dtype,
                 name="linear_2")(x)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """Positions [M] -> [M, dim] float64, [sin | cos] with frequencies 1 / 10000^(i / (dim / 2))."""
  if dim % 2:
    raise ValueError(f"sincos dimension {dim} must be even.")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(np.asarray(positions, np.float64).reshape(-1), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def cogvideox_sincos_3d(dim: int, grid: tuple[int, int, int], spatial_interpolation_scale: float = 1.875,
                        temporal_interpolation_scale: float = 1.0) -> np.ndarray:
  """CogVideoX 2b positions for a (T, H, W) token grid -> [T * H * W, dim] float64, time-major.

  Channels [t: dim/4 | w: 3dim/8 | h: 3dim/8]; positions arange/scale computed in float32 (as diffusers'
  `get_3d_sincos_pos_embed`, whose grid is float32 and whose frequencies are float64).
  """
  if dim % 16:
    raise ValueError(f"3D sincos positions need the embedding dimension divisible by 16, got {dim}.")
  t, h, w = grid
  grid_t = np.arange(t, dtype=np.float32) / np.float32(temporal_interpolation_scale)
  grid_h = np.arange(h, dtype=np.float32) / np.float32(spatial_interpolation_scale)
  grid_w = np.arange(w, dtype=np.float32) / np.float32(spatial_interpolation_scale)
  hh, ww = np.meshgrid(grid_h, grid_w, indexing="ij")  # [H, W]
  spatial = np.concatenate([sincos_1d(3 * dim // 8, ww), sincos_1d(3 * dim // 8, hh)], axis=1)  # [H*W, 3dim/4]
  temporal = sincos_1d(dim // 4, grid_t)  # [T, dim/4]
  out = np.concatenate([np.broadcast_to(temporal[:, None], (t, h * w, dim // 4)),
                        np.broadcast_to(spatial[None], (t, h * w, 3 * dim // 4))], axis=-1)
  return out.reshape(t * h * w, dim)


def resize_crop_region_for_grid(grid_hw: tuple[int, int], base_width: int, base_height: int):
  """CogVideoX 1.0 RoPE: the region ((top, left), (bottom, right)) of the base grid a (h, w) grid is fitted into.

  Uses Python's round (banker's rounding), as the diffusers pipeline does.
  """
  h, w = grid_hw
  if h / w > base_height / base_width:
    resize_h, resize_w = base_height, int(round(base_height / h * w))
  else:
    resize_w, resize_h = base_width, int(round(base_width / w * h))
  top, left = int(round((base_height - resize_h) / 2.0)), int(round((base_width - resize_w) / 2.0))
  return (top, left), (top + resize_h, left + resize_w)


def _linspace_f32(start: float, stop: float, num: int) -> np.ndarray:
  """torch.linspace(start, stop, num, dtype=float32): computed in float64, rounded once to float32."""
  return np.linspace(start, stop, num, dtype=np.float64).astype(np.float32)


def _rope_1d(dim: int, positions: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """Positions [M] -> cos, sin [M, dim] float32, each frequency repeated for its pair (interleaved layout)."""
  freqs = np.float32(1.0) / np.power(np.float32(theta), np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
  angles = np.outer(positions.astype(np.float32), freqs).astype(np.float32)
  return np.repeat(np.cos(angles), 2, axis=1), np.repeat(np.sin(angles), 2, axis=1)


def cogvideox_rope_3d(head_dim: int, grid: tuple[int, int, int], base_size: tuple[int, int],
                      grid_type: str = "linspace", theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
  """3D RoPE tables for a (T, H, W) token grid -> (cos, sin), each [T * H * W, head_dim] float32, time-major.

  The head dim splits into t: head_dim/4 | h: 3head_dim/8 | w: 3head_dim/8, each with interleaved pairs.
  `base_size` is (sample_height, sample_width) // patch_size of the model config. `grid_type`:
    'linspace' (CogVideoX 1.0 pipeline): h/w positions span the crop region of the base grid the (H, W) grid is
      resized into, linspace(start, stop * (n - 1) / n, n); t positions 0..T-1.
    'slice' (CogVideoX 1.5 pipeline): integer positions 0..n-1 (the first n of the base grid; any n).
  """
  if head_dim % 16:
    raise ValueError(f"3D RoPE needs the head dimension divisible by 16, got {head_dim}.")
  t, h, w = grid
  if grid_type == "linspace":
    (top, left), (bottom, right) = resize_crop_region_for_grid((h, w), base_size[1], base_size[0])
    pos_h = _linspace_f32(top, bottom * (h - 1) / h, h)
    pos_w = _linspace_f32(left, right * (w - 1) / w, w)
    pos_t = _linspace_f32(0, t * (t - 1) / t, t)
  elif grid_type == "slice":
    # diffusers slices a table precomputed for the base grid, so it fails on a larger grid; the positions are the
    # same integers either way, and a model trained on several sizes samples larger ones.
    pos_t, pos_h, pos_w = (np.arange(n, dtype=np.float32) for n in (t, h, w))
  else:
    raise ValueError(f"RoPE grid_type {grid_type!r}; allowed: 'linspace', 'slice'.")
  dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
  tables = [_rope_1d(dim_t, pos_t, theta), _rope_1d(dim_hw, pos_h, theta), _rope_1d(dim_hw, pos_w, theta)]

  def combine(i):
    ft, fh, fw = (table[i] for table in tables)
    out = np.concatenate([np.broadcast_to(ft[:, None, None], (t, h, w, dim_t)),
                          np.broadcast_to(fh[None, :, None], (t, h, w, dim_hw)),
                          np.broadcast_to(fw[None, None, :], (t, h, w, dim_hw))], axis=-1)
    return out.reshape(t * h * w, head_dim)

  return combine(0), combine(1)


def _gather_axes(tables: list[np.ndarray], positions: jax.Array) -> jax.Array:
  """Per-axis tables [M, d_i] and integer positions [..., 3] -> [..., sum d_i]: row positions[..., i] of table i."""
  positions = jnp.asarray(positions)
  return jnp.concatenate([jnp.asarray(table, jnp.float32)[positions[..., i]] for i, table in enumerate(tables)],
                         axis=-1)


def cogvideox_sincos_3d_at(dim: int, positions: jax.Array, max_position: int,
                           spatial_interpolation_scale: float = 1.875,
                           temporal_interpolation_scale: float = 1.0) -> jax.Array:
  """`cogvideox_sincos_3d` for tokens at integer (t, h, w) positions [..., 3] (packed sequences, where each clip's
  positions restart at 0) -> [..., dim] float32, equal to the grid version's rows. Positions < max_position."""
  if dim % 16:
    raise ValueError(f"3D sincos positions need the embedding dimension divisible by 16, got {dim}.")
  steps = np.arange(max_position, dtype=np.float32)
  table_t = sincos_1d(dim // 4, steps / np.float32(temporal_interpolation_scale)).astype(np.float32)
  table_s = sincos_1d(3 * dim // 8, steps / np.float32(spatial_interpolation_scale)).astype(np.float32)
  return _gather_axes([table_t, table_s, table_s], jnp.asarray(positions)[..., np.array([0, 2, 1])])  # [t | w | h]


def cogvideox_rope_3d_at(head_dim: int, positions: jax.Array, max_position: int,
                         theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
  """The 'slice' RoPE tables of `cogvideox_rope_3d` for tokens at integer (t, h, w) positions [..., 3] -> (cos,
  sin), each [..., head_dim] float32, equal to the grid version's rows. Positions < max_position."""
  if head_dim % 16:
    raise ValueError(f"3D RoPE needs the head dimension divisible by 16, got {head_dim}.")
  steps = np.arange(max_position, dtype=np.float32)
  tables = [_rope_1d(d, steps, theta) for d in (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)]
  return (_gather_axes([t[0] for t in tables], positions), _gather_axes([t[1] for t in tables], positions))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates interleaved pairs: x [B, L, H, D], cos/sin [L, D] (or [B, L, D], per example) -> x * cos +
  rotate(x) * sin, in float32.

  rotate((x0, x1, x2, x3, ...)) = (-x1, x0, -x3, x2, ...). Returns x's dtype.
  """
  xf = x.astype(jnp.float32)
  pairs = xf.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  cos, sin = (t[None] if t.ndim == 2 else t for t in (cos, sin))
  out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)
