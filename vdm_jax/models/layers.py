"""Dense and conv layers whose parameters carry logical axis names (for sharding rules in the config); the Dense's
matmul has its own backward, written for XLA:CPU's speed."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, kernel):
  return _matmul(x, kernel), (x, kernel)


def _matmul_bwd(saved, g):
  """The kernel's gradient as one [N, in]^T x [N, out] product over the flattened leading axes: autodiff's form
  (contracting all leading axes of both) makes XLA:CPU transpose the output gradient first, and fuse into that
  transpose every elementwise op that produced it (the whole residual stream's gradient, once per Dense)."""
  x, kernel = saved
  dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
  dk = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for nn.Dense: a float32 x[..., in] @ kernel[in, out] through `_matmul` (its explicit
  backward); other dtypes (in bfloat16 the explicit backward measured no faster), contractions, precisions and output
  types through lax.dot_general itself."""
  if (dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())) and rhs.ndim == 2 and precision is None
      and preferred_element_type is None and lhs.dtype == rhs.dtype == jnp.float32):
    return _matmul(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)


def dense(features: int, axes: tuple[str | None, str | None] = ("embed", "mlp"), *, use_bias: bool = True,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, kernel_init=nn.initializers.lecun_normal(),
          name: str | None = None) -> nn.Dense:
  """nn.Dense with kernel axes `axes` ([in, out]) and bias axis `axes[1]`; its matmul has the explicit backward of
  `matmul_dot_general` in float32 (the same values; faster on XLA:CPU, docs/cpu_profile.md)."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, dot_general=matmul_dot_general,
                  kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)), name=name)


def conv(features: int, kernel_size: Sequence[int], *, strides: int | Sequence[int] = 1, padding: Any = "SAME",
         use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         kernel_init=nn.initializers.lecun_normal(), conv_general_dilated=None, name: str | None = None) -> nn.Conv:
  """nn.Conv (channel-last) with kernel axes ('conv_t', 'conv_h', 'conv_w')[-k:] + ('conv_in', 'conv_out');
  `conv_general_dilated` replaces lax's (same signature), as nn.Conv allows."""
  if not 1 <= len(kernel_size) <= 3:
    raise ValueError(f"conv kernel_size {tuple(kernel_size)}: 1 to 3 spatial dims are supported.")
  axes = ("conv_t", "conv_h", "conv_w")[3 - len(kernel_size):] + ("conv_in", "conv_out")
  return nn.Conv(features, tuple(kernel_size), strides=strides, padding=padding, use_bias=use_bias, dtype=dtype,
                 param_dtype=param_dtype, kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
                 conv_general_dilated=conv_general_dilated, name=name)


def layer_norm(epsilon: float = 1e-5, *, use_affine: bool = True, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
  """nn.LayerNorm over the last axis computed in float32, with torch's two-pass variance (parity with PyTorch).

  Parameters `scale`/`bias` carry the logical axis 'norm'. The output is float32: cast it to the compute dtype.
  """
  partitioned = lambda init: nn.with_logical_partitioning(init, ("norm",))
  return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype, use_bias=use_affine,
                      use_scale=use_affine, use_fast_variance=False, scale_init=partitioned(nn.initializers.ones),
                      bias_init=partitioned(nn.initializers.zeros), name=name)
