"""A small per-frame convolutional autoencoder: the tiny model the training loop is tested and demonstrated with."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models.layers import conv


class FrameAutoencoder(nn.Module):
  """[B, T, H, W, C] -> [B, T, H, W, C]: strided convs down by 2**len(features), a bottleneck, nearest-up convs."""
  features: Sequence[int] = (16, 32)
  latent_channels: int = 4
  out_channels: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    b, t, h, w, c = video.shape
    factor = 2 ** len(self.features)
    if h % factor or w % factor:
      raise ValueError(f"Frame size {h}x{w} must be divisible by {factor} (2 ** len(features)).")
    x = video.reshape(b * t, h, w, c).astype(self.dtype)
    for i, f in enumerate(self.features):
      x = nn.silu(conv(f, (3, 3), strides=2, dtype=self.dtype, name=f"down_{i}")(x))
    x = conv(self.latent_channels, (1, 1), dtype=self.dtype, name="to_latent")(x)
    for i, f in enumerate(reversed(self.features)):
      n, hh, ww, cc = x.shape
      x = jax.image.resize(x, (n, hh * 2, ww * 2, cc), method="nearest")
      x = nn.silu(conv(f, (3, 3), dtype=self.dtype, name=f"up_{i}")(x))
    x = conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_out")(x)
    return x.astype(jnp.float32).reshape(b, t, h, w, self.out_channels)
