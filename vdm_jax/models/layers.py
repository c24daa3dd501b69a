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


def layer_norm(epsilon: float = 1e-5, *, use_affine: bool = True, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
  """nn.LayerNorm over the last axis computed in float32, with torch's two-pass variance (parity with PyTorch).

  Parameters `scale`/`bias` carry the logical axis 'norm'. The output is float32: cast it to the compute dtype.
  """
  partitioned = lambda init: nn.with_logical_partitioning(init, ("norm",))
  return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype, use_bias=use_affine,
                      use_scale=use_affine, use_fast_variance=False, scale_init=partitioned(nn.initializers.ones),
                      bias_init=partitioned(nn.initializers.zeros), name=name)
