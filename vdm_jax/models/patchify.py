"""Spacetime patches: latents [B, T, H, W, C] <-> tokens [B, N, C * pt * p * p], and the patch embedding.

Tokens are time-major (n = t * Hp * Wp + h * Wp + w) and each patch vector is ordered (C, pt, ph, pw), channel
slowest. That is CogVideoX's order for both layouts: 1.0 (patch_size_t 1, a Conv2d over (p, p) whose weight
[D, C, p, p] flattens to exactly this order) and 1.5 (patch_size_t 2, a Linear over (C, pt, ph, pw)); the output
projection is unpatchified with the same (C, pt, ph, pw) order, so converted weights need no permutation.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models.layers import dense


def patch_grid(shape: tuple[int, ...], patch_size: int, patch_size_t: int = 1) -> tuple[int, int, int]:
  """(T/pt, H/p, W/p) for latents of shape [B, T, H, W, C]; fails naming the dimension that does not divide."""
  _, t, h, w, _ = shape
  for name, size, p in (("frames T", t, patch_size_t), ("height H", h, patch_size), ("width W", w, patch_size)):
    if size % p:
      raise ValueError(f"Latents {tuple(shape)}: {name}={size} is not divisible by its patch size {p} "
                       f"(patch_size={patch_size}, patch_size_t={patch_size_t}).")
  return t // patch_size_t, h // patch_size, w // patch_size


def patchify(x: jax.Array, patch_size: int, patch_size_t: int = 1) -> jax.Array:
  """[B, T, H, W, C] -> [B, (T/pt) * (H/p) * (W/p), C * pt * p * p], tokens time-major, vectors (C, pt, ph, pw)."""
  b, _, _, _, c = x.shape
  gt, gh, gw = patch_grid(x.shape, patch_size, patch_size_t)
  p, pt = patch_size, patch_size_t
  x = x.reshape(b, gt, pt, gh, p, gw, p, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # [B, gt, gh, gw, C, pt, ph, pw]
  return x.reshape(b, gt * gh * gw, c * pt * p * p)


def unpatchify(tokens: jax.Array, grid: tuple[int, int, int], patch_size: int, patch_size_t: int = 1) -> jax.Array:
  """Exact inverse of `patchify`: [B, gt * gh * gw, C * pt * p * p] -> [B, gt * pt, gh * p, gw * p, C]."""
  b, n, d = tokens.shape
  gt, gh, gw = grid
  p, pt = patch_size, patch_size_t
  if n != gt * gh * gw or d % (pt * p * p):
    raise ValueError(f"Tokens {tuple(tokens.shape)} do not fit grid {tuple(grid)} with patch {(pt, p, p)}.")
  c = d // (pt * p * p)
  x = tokens.reshape(b, gt, gh, gw, c, pt, p, p)
  x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # [B, gt, pt, gh, ph, gw, pw, C]
  return x.reshape(b, gt * pt, gh * p, gw * p, c)


class PatchEmbed(nn.Module):
  """Latents [B, T, H, W, C] -> tokens [B, N, features] (one Dense on the patch vectors) and the grid (gt, gh, gw);
  patch vectors already made, [B, N, C * pt * p * p] (packed sequences), -> tokens and grid None."""
  features: int
  patch_size: int = 2
  patch_size_t: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latents: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
    if latents.ndim == 3:
      patches, grid = latents, None
    else:
      grid = patch_grid(latents.shape, self.patch_size, self.patch_size_t)
      patches = patchify(latents, self.patch_size, self.patch_size_t)
    tokens = dense(self.features, (None, "embed"), use_bias=self.use_bias, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="proj")(patches)
    return tokens, grid
