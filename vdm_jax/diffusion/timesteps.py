"""Training-time timestep sampling. Discrete samplers return int32 [B] in [0, N); flow samplers float32 t [B] in (0, 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SAMPLERS = ("uniform", "explicit_uniform", "logit_normal")


def uniform(rng: jax.Array, batch_size: int, num_train_timesteps: int) -> jax.Array:
  """t ~ U{0, ..., N-1} independently per example."""
  return jax.random.randint(rng, (batch_size,), 0, num_train_timesteps, dtype=jnp.int32)


def explicit_uniform(rng: jax.Array, batch_size: int, num_train_timesteps: int, num_groups: int) -> jax.Array:
  """CogVideoX's explicit uniform sampling: the batch is `num_groups` contiguous groups (one per data-parallel
  shard), and group g draws from its own interval [g N / G, (g + 1) N / G), so every step covers all noise levels.
  """
  if batch_size % num_groups:
    raise ValueError(f"Batch size {batch_size} is not divisible by {num_groups} timestep groups.")
  group = jnp.arange(batch_size) // (batch_size // num_groups)
  low = group * num_train_timesteps // num_groups
  high = (group + 1) * num_train_timesteps // num_groups
  u = jax.random.uniform(rng, (batch_size,))
  return jnp.minimum(low + jnp.floor(u * (high - low)).astype(jnp.int32), high - 1).astype(jnp.int32)


def logit_normal(rng: jax.Array, batch_size: int, mean: float = 0.0, std: float = 1.0,
                 shift: float = 1.0) -> jax.Array:
  """Flow time t = sigmoid(N(mean, std)), then shifted toward noise: t' = s t / (1 + (s - 1) t) (SD3)."""
  t = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch_size,)))
  return shift * t / (1.0 + (shift - 1.0) * t)
