"""The 3D PatchGAN discriminator that VAE training can add to its reconstruction loss.

Separate from the autoencoder: it is trained next to it (`vdm_jax.train.vae`) and never used at inference.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import layers
from vdm_jax.models.vae.conv import ACTIVATION_AXES, Dtype
from vdm_jax.models.vae.norm import GroupNorm3D


class PatchDiscriminator3D(nn.Module):
  """3D PatchGAN discriminator for VAE training: video [B, T, H, W, C] in [-1, 1] -> patch logits
  [B, T', H', W', 1]. 3x3x3 convs with SAME padding (so a 1-frame image works too), stride 2 in (H, W) at every
  level and in time from the second level on, GroupNorm (from the second level on) and LeakyReLU(0.2)."""
  channels: Sequence[int] = (32, 64, 128)
  num_groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.with_logical_constraint(x.astype(self.dtype), ACTIVATION_AXES)
    for i, features in enumerate(self.channels):
      strides = (1 if i == 0 else 2, 2, 2)
      x = layers.conv(features, (3, 3, 3), strides=strides, padding="SAME", dtype=self.dtype,
                 param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      if i > 0:
        x = GroupNorm3D(min(self.num_groups, features), 1e-6, True, self.param_dtype, name=f"norm_{i}")(x)
      x = nn.leaky_relu(x, 0.2).astype(self.dtype)
    x = layers.conv(1, (3, 3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype, name="conv_out")(x)
    return x.astype(jnp.float32)
