"""Diffusion objectives: forward noising, training targets, x0/eps from a model output, and the loss.

Discrete-time (DDPM family) with prediction types `epsilon`, `v_prediction`, `sample` (x0), and rectified flow
(`flow`: x_t = (1 - t) x0 + t eps, target eps - x0, t in [0, 1], the model sees 1000 t).
Shapes: x0, noise [B, ...]; abar or t [B].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")
WEIGHTINGS = ("none", "min_snr")


def _bcast(a: jax.Array, x: jax.Array) -> jax.Array:
  """[B] -> [B, 1, ..., 1] matching x's rank, in x's dtype."""
  return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim)).astype(x.dtype)


def add_noise(x0: jax.Array, noise: jax.Array, abar: jax.Array) -> jax.Array:
  """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
  return _bcast(jnp.sqrt(abar), x0) * x0 + _bcast(jnp.sqrt(1.0 - abar), x0) * noise


def velocity(x0: jax.Array, noise: jax.Array, abar: jax.Array) -> jax.Array:
  """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho)."""
  return _bcast(jnp.sqrt(abar), x0) * noise - _bcast(jnp.sqrt(1.0 - abar), x0) * x0


def flow_interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """Rectified flow: x_t = (1 - t) x0 + t eps, t in [0, 1]."""
  return _bcast(1.0 - t, x0) * x0 + _bcast(t, x0) * noise


def target(prediction_type: str, x0: jax.Array, noise: jax.Array, abar_or_t: jax.Array) -> jax.Array:
  """What the model is trained to output."""
  if prediction_type == "epsilon":
    return noise
  if prediction_type == "v_prediction":
    return velocity(x0, noise, abar_or_t)
  if prediction_type == "sample":
    return x0
  if prediction_type == "flow":
    return noise - x0
  raise ValueError(f"Unknown prediction_type {prediction_type!r}; allowed: {list(PREDICTION_TYPES)}.")


def predict_x0(prediction_type: str, x_t: jax.Array, output: jax.Array, abar_or_t: jax.Array) -> jax.Array:
  """The clean sample implied by a model output at x_t."""
  if prediction_type == "flow":
    return x_t - _bcast(abar_or_t, x_t) * output
  sa, s1a = _bcast(jnp.sqrt(abar_or_t), x_t), _bcast(jnp.sqrt(1.0 - abar_or_t), x_t)
  if prediction_type == "epsilon":
    return (x_t - s1a * output) / sa
  if prediction_type == "v_prediction":
    return sa * x_t - s1a * output
  if prediction_type == "sample":
    return output
  raise ValueError(f"Unknown prediction_type {prediction_type!r}; allowed: {list(PREDICTION_TYPES)}.")


def loss_weight(weighting: str, prediction_type: str, abar: jax.Array, min_snr_gamma: float = 5.0) -> jax.Array:
  """Per-example weight [B] of the MSE on the target. `min_snr` clips the SNR at gamma (Hang et al. 2023),
  expressed for the given prediction type."""
  if weighting == "none" or prediction_type == "flow":
    return jnp.ones_like(abar)
  if weighting == "min_snr":
    snr = abar / jnp.maximum(1.0 - abar, 1e-20)
    clipped = jnp.minimum(snr, min_snr_gamma)
    per_type = {"epsilon": clipped / jnp.maximum(snr, 1e-20), "v_prediction": clipped / (snr + 1.0),
                "sample": clipped}
    return per_type[prediction_type]
  raise ValueError(f"Unknown loss weighting {weighting!r}; allowed: {list(WEIGHTINGS)}.")


def mse_per_example(output: jax.Array, target_: jax.Array) -> jax.Array:
  """Mean squared error over all but the batch axis, in float32: [B]."""
  diff = output.astype(jnp.float32) - target_.astype(jnp.float32)
  return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
