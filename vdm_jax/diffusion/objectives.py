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


def x0_from_output(prediction_type: str, x_t: jax.Array, output: jax.Array, sqrt_abar, sqrt_one_minus_abar):
  """The clean sample implied by a discrete-time model output at x_t, given sqrt(abar) and sqrt(1 - abar) already
  shaped to broadcast against x_t (arrays, or scalars the caller computed in the precision it needs)."""
  if prediction_type == "epsilon":
    return (x_t - sqrt_one_minus_abar * output) / sqrt_abar
  if prediction_type == "v_prediction":
    return sqrt_abar * x_t - sqrt_one_minus_abar * output
  if prediction_type == "sample":
    return output
  raise ValueError(f"prediction_type {prediction_type!r} is not a discrete-time type; allowed: "
                   f"{[p for p in PREDICTION_TYPES if p != 'flow']}.")


def predict_x0(prediction_type: str, x_t: jax.Array, output: jax.Array, abar_or_t: jax.Array) -> jax.Array:
  """The clean sample implied by a model output at x_t (abar_or_t [B]: abar, or the flow time t)."""
  if prediction_type == "flow":
    return x_t - _bcast(abar_or_t, x_t) * output
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; allowed: {list(PREDICTION_TYPES)}.")
  return x0_from_output(prediction_type, x_t, output, _bcast(jnp.sqrt(abar_or_t), x_t),
                        _bcast(jnp.sqrt(1.0 - abar_or_t), x_t))


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


def noised(prediction_type: str, x0: jax.Array, noise: jax.Array, t: jax.Array, alphas_cumprod: jax.Array | None,
           weighting: str = "none") -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The training example at times t: (x_t, the model's timesteps, target, per-example loss weight [B]).

  Shared by the training loss and its validation grid. Discrete types: t int32 [B] indexes `alphas_cumprod` [N]
  and is what the model sees. Flow: t float [B] in [0, 1]; the model sees 1000 t and every weight is 1.
  """
  model_t, weight = timesteps_and_weight(prediction_type, t, alphas_cumprod, weighting)
  if prediction_type == "flow":
    return flow_interpolate(x0, noise, t), model_t, target("flow", x0, noise, t), weight
  abar = alphas_cumprod[t]
  return add_noise(x0, noise, abar), model_t, target(prediction_type, x0, noise, abar), weight


def timesteps_and_weight(prediction_type: str, t: jax.Array, alphas_cumprod: jax.Array | None,
                         weighting: str = "none") -> tuple[jax.Array, jax.Array]:
  """(What the model sees, the loss weight) for training times t of any shape: 1000 t and 1 for flow; t and
  `loss_weight` for the discrete types."""
  if prediction_type == "flow":
    return t * 1000.0, jnp.ones(t.shape)
  return t, loss_weight(weighting, prediction_type, alphas_cumprod[t])


def noised_packed(prediction_type: str, x0: jax.Array, noise: jax.Array, t: jax.Array, slot_index: jax.Array,
                  alphas_cumprod: jax.Array | None, weighting: str = "none"):
  """`noised` for packed rows (vdm_jax.models.packing): x0 and noise patch tokens [B, L, P], times per slot t
  [B, S], each token's slot [B, L] -> (x_t tokens, the model's timesteps [B, S], target tokens, weight [B, S]).
  Every token is noised at its own clip's time, exactly as the clip alone would be."""
  x_t, _, target_, _ = noised(prediction_type, x0, noise, jnp.take_along_axis(t, slot_index, axis=1),
                              alphas_cumprod, weighting)
  model_t, weight = timesteps_and_weight(prediction_type, t, alphas_cumprod, weighting)
  return x_t, model_t, target_, weight


def mse_per_example(output: jax.Array, target_: jax.Array) -> jax.Array:
  """Mean squared error over all but the batch axis, in float32: [B]."""
  diff = output.astype(jnp.float32) - target_.astype(jnp.float32)
  return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def packed_loss(output: jax.Array, target_: jax.Array, weight: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """The loss of packed rows, equal to the mean over clips of each clip's weighted `mse_per_example`: output and
  target tokens [B, L, P], weight per slot [B, S], segment ids [B, L] (slot + 1, 0 padding). Slots without a
  token (empty) count for nothing."""
  per_token = jnp.mean(jnp.square(output.astype(jnp.float32) - target_.astype(jnp.float32)), axis=-1)
  onehot = (segment_ids[:, :, None] == jnp.arange(1, weight.shape[1] + 1)[None, None]).astype(jnp.float32)
  tokens = jnp.sum(onehot, axis=1)  # [B, S]
  mse = jnp.einsum("bl,bls->bs", per_token, onehot) / jnp.maximum(tokens, 1.0)
  present = (tokens > 0).astype(jnp.float32)
  return jnp.sum(weight * mse * present) / jnp.maximum(jnp.sum(present), 1.0)
