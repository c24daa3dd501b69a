"""Dense and conv layers whose parameters carry logical axis names (for sharding rules in the config)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def dense(features: int, axes: tuple[str | None, str | None] = ("embed", "mlp"), *, use_bias: bool = True,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, kernel_init=nn.initializers.lecun_normal(),
          name: str | None = None) -> nn.Dense:
  """nn.Dense with kernel axes `axes` ([in, out]) and bias axis `axes[1]`."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)), name=name)


def conv(features: int, kernel_size: Sequence[int], *, strides: int | Sequence[int] = 1, padding: Any = "SAME",
         use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         kernel_init=nn.initializers.lecun_normal(), name: str | None = None) -> nn.Conv:
  """nn.Conv (channel-last) with kernel axes ('conv_t', 'conv_h', 'conv_w')[-k:] + ('conv_in', 'conv_out')."""
  if not 1 <= len(kernel_size) <= 3:
    raise ValueError(f"conv kernel_size {tuple(kernel_size)}: 1 to 3 spatial dims are supported.")
  axes = ("conv_t", "conv_h", "conv_w")[3 - len(kernel_size):] + ("conv_in", "conv_out")
  return nn.Conv(features, tuple(kernel_size), strides=strides, padding=padding, use_bias=use_bias, dtype=dtype,
                 param_dtype=param_dtype, kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)), name=name)
