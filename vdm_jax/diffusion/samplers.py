"""Samplers: DDIM (CogVideoX's, eta 0), DPM-Solver++(2M) deterministic and the SDE variant CogVideoX uses, Euler for
rectified flow; classifier-free guidance (incl. CogVideoX's dynamic CFG, and the guidance rescale of Lin et al. 2023,
"Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4, for zero-terminal-SNR models).

Per-step coefficients are computed on the host in float64 (as diffusers does) and enter one jitted step function as
float32 scalars, so a whole sampling run compiles the model once; the Python loop over steps carries a progress bar.

`model_fn(x, t, *model_args) -> output` takes latents [B', ...] and int32 timesteps [B'] (flow: float t * 1000),
plus `model_args` (params, text embeddings, ...) that enter the jitted step as arguments, never as constants, so
the compiled step is reused across calls with the same `model_fn` and shapes. With guidance, the sampler calls it
once on the doubled batch [x; x] and the caller's model_args must pair those with [uncond; cond] conditioning
(CogVideoX's order); with a separate image-guidance scale, on [x; x; x] paired with [neither text nor frames;
frames only; both].

Frame conditions (`keep`, a `vdm_jax.diffusion.conditioning.Condition`): the kept latent frames are set to the
condition's latents before the first step and after every step, inside the jitted step, so they come out
bit-identical whatever the sampler (the model reads them, and the condition channels, through model_fn).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vdm_jax.diffusion import conditioning, objectives
from vdm_jax.diffusion.schedules import NoiseSchedule, inference_timesteps, prev_timestep

DISCRETE_SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_2m_sde")  # on a NoiseSchedule
SAMPLERS = DISCRETE_SAMPLERS + ("euler",)  # euler: rectified flow


def dynamic_guidance_scale(guidance_scale: float, timestep: float, num_inference_steps: int) -> float:
  """CogVideoX's dynamic CFG: 1 + g (1 - cos(pi ((N - t) / N) ** 5)) / 2, with the raw timestep t (as the pipeline
  computes it, so it is only meaningful for t < N)."""
  n = num_inference_steps
  return 1.0 + guidance_scale * (1.0 - math.cos(math.pi * ((n - float(timestep)) / n) ** 5.0)) / 2.0


# --- Single steps (pure functions of arrays and float32 scalars; tested against diffusers one step at a time).


def ddim_step(x: jax.Array, output: jax.Array, prediction_type: str, abar_t, abar_prev) -> tuple[jax.Array, jax.Array]:
  """Deterministic DDIM (eta 0): x_prev = a x + b x0 with a = sqrt((1-abar_p)/(1-abar)), b = sqrt(abar_p) - sqrt(abar) a.

  Returns (x_prev, x0). `abar_t`, `abar_prev` are scalars (python floats or 0-d arrays).
  """
  abar_t, abar_prev = np.float64(abar_t), np.float64(abar_prev)
  x0 = _x0(x, output, prediction_type, abar_t)
  a = np.sqrt((1.0 - abar_prev) / (1.0 - abar_t))
  b = np.sqrt(abar_prev) - np.sqrt(abar_t) * a
  return _f32(a, x) * x + _f32(b, x) * x0, x0


def _x0(x, output, prediction_type, abar_t):
  """x0 with float64-computed scalars cast to x's dtype (diffusers' scalar-tensor arithmetic)."""
  return objectives.x0_from_output(prediction_type, x, output, _f32(np.sqrt(abar_t), x),
                                   _f32(np.sqrt(1.0 - abar_t), x))


def _f32(value, like):
  return jnp.asarray(value, dtype=like.dtype)


@dataclasses.dataclass(frozen=True)
class DPMCoefficients:
  """float64 multipliers of one DPM-Solver++(2M) step, as diffusers' CogVideoXDPMScheduler computes them."""
  mult1: float
  mult2: float
  mult3: float
  mult4: float
  mult_noise: float
  second_order: bool


def dpm_coefficients(abar_t: float, abar_prev: float, abar_back: float | None, *, stochastic: bool,
                     use_second_order: bool) -> DPMCoefficients:
  """Coefficients in the half-log-SNR lambda = log sqrt(abar / (1 - abar)); h = lambda_prev - lambda_t.

  SDE (stochastic): x' = sqrt((1-abar_p)/(1-abar)) e^-h x + (1 - e^-2h) sqrt(abar_p) D + sqrt(1-abar_p) sqrt(1-e^-2h) z
  ODE: x' = sqrt((1-abar_p)/(1-abar)) x + (1 - e^-h) sqrt(abar_p) D. D = x0 (first order) or
  (1 + 1/2r) x0 - 1/2r x0_old with r = h_last / h. Infinite lambdas (zero terminal SNR) are allowed: IEEE math
  gives the limits diffusers gets.
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    lam = lambda a: np.log(np.sqrt(np.float64(a) / (1.0 - np.float64(a))))
    h = lam(abar_prev) - lam(abar_t)
    ratio = np.sqrt((1.0 - abar_prev) / (1.0 - abar_t))
    if stochastic:
      mult1 = ratio * np.exp(-h)
      mult2 = np.expm1(-2.0 * h) * np.sqrt(abar_prev)  # negative: x' = mult1 x - mult2 D
      mult_noise = np.sqrt(1.0 - abar_prev) * np.sqrt(1.0 - np.exp(-2.0 * h))
    else:
      mult1 = ratio
      mult2 = np.expm1(-h) * np.sqrt(abar_prev)
      mult_noise = 0.0
    if abar_back is not None and use_second_order:
      r = (lam(abar_t) - lam(abar_back)) / h
      mult3, mult4 = 1.0 + 1.0 / (2.0 * r), 1.0 / (2.0 * r)
    else:
      mult3, mult4 = 1.0, 0.0
  return DPMCoefficients(float(mult1), float(mult2), float(mult3), float(mult4), float(mult_noise),
                         bool(abar_back is not None and use_second_order))


def dpm_step(x: jax.Array, output: jax.Array, old_x0: jax.Array | None, prediction_type: str, abar_t: float,
             c: DPMCoefficients, noise: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """One DPM-Solver++(2M) step (SDE when c.mult_noise > 0). Returns (x_prev, x0)."""
  x0 = _x0(x, output, prediction_type, np.float64(abar_t))
  d = x0
  if c.second_order and old_x0 is not None:
    d = _f32(c.mult3, x) * x0 - _f32(c.mult4, x) * old_x0
  x_prev = _f32(c.mult1, x) * x - _f32(c.mult2, x) * d
  if noise is not None and c.mult_noise:
    x_prev = x_prev + _f32(c.mult_noise, x) * noise
  return x_prev, x0


def euler_flow_step(x: jax.Array, velocity: jax.Array, t: float, t_next: float) -> jax.Array:
  """Rectified flow Euler step from time t to t_next (t decreasing to 0): x + (t_next - t) v."""
  return x + _f32(t_next - t, x) * velocity


def flow_timesteps(num_steps: int, shift: float = 1.0) -> np.ndarray:
  """num_steps + 1 flow times from 1 to 0 (float64), shifted toward noise by `shift` (SD3)."""
  t = np.linspace(1.0, 0.0, num_steps + 1)
  return shift * t / (1.0 + (shift - 1.0) * t)


# --- Sampling loops.


def rescale_guidance(guided: jax.Array, cond: jax.Array, guidance_rescale) -> jax.Array:
  """Lin et al.'s guidance rescale (diffusers' `rescale_noise_cfg`): the guided output [B, ...] rescaled to the
  per-example std of the conditional one, mixed back with the guided output by `guidance_rescale` (0: unchanged,
  1: fully rescaled). Against the over-saturation that large guidance gives a zero-terminal-SNR v-model."""
  axes = tuple(range(1, guided.ndim))
  rescaled = guided * (jnp.std(cond, axis=axes, keepdims=True) / jnp.std(guided, axis=axes, keepdims=True))
  return guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided


@functools.lru_cache(maxsize=32)
def _flow_step_fn(model_fn: Callable, guidance: str, dtype: str, use_rescale: bool = False):
  """The jitted Euler step for `model_fn` (cached: one compile per model function and shapes)."""
  @jax.jit
  def flow_step(x, t, t_next, g, rescale, keep, model_args):
    v = _guided(model_fn, x, jnp.full((x.shape[0],), t * 1000.0, jnp.float32), guidance, g, model_args,
                rescale if use_rescale else None)
    return _kept(euler_flow_step(x.astype(jnp.float32), v, t, t_next).astype(dtype), keep)
  return flow_step


def _kept(x: jax.Array, keep: conditioning.Condition | None) -> jax.Array:
  return x if keep is None else conditioning.apply(x, keep)


@functools.lru_cache(maxsize=32)
def _discrete_step_fn(model_fn: Callable, guidance: str, prediction_type: str, dtype: str, use_rescale: bool = False):
  """The jitted DDIM / DPM++ step for `model_fn`: every sampler is `mult1 x - mult2 D + mult_noise z` with
  D = mult3 x0 - mult4 x0_old; coef float32 [7] = (sqrt abar, sqrt(1-abar), mult1, mult2, mult3, mult4, mult_noise).
  """
  @jax.jit
  def step(x, old_x0, t, coef, g, rescale, noise, keep, model_args):
    out = _guided(model_fn, x, jnp.full((x.shape[0],), t, jnp.int32), guidance, g, model_args,
                  rescale if use_rescale else None)
    xf = x.astype(jnp.float32)
    x0 = objectives.x0_from_output(prediction_type, xf, out, coef[0], coef[1])
    d = coef[4] * x0 - coef[5] * old_x0
    return _kept((coef[2] * xf - coef[3] * d + coef[6] * noise).astype(dtype), keep), x0
  return step


def _guided(model_fn: Callable, x: jax.Array, t: jax.Array, guidance: str, scales: jax.Array, model_args,
            rescale: jax.Array | None = None) -> jax.Array:
  """Model output with classifier-free guidance in float32. 'text': one call on [x; x], uncond + g (cond - uncond)
  with g = scales[0]; 'text_and_image': one call on [x; x; x] (neither; frames only; both),
  uncond + s_img (frames - uncond) + g (both - frames) with s_img = scales[1] (Open-Sora's two scales).
  Optionally with the guidance rescale (against the fully conditioned output)."""
  if guidance == "none":
    return model_fn(x, t, *model_args).astype(jnp.float32)
  n = 2 if guidance == "text" else 3
  out = model_fn(jnp.concatenate([x] * n), jnp.concatenate([t] * n), *model_args).astype(jnp.float32)
  if n == 2:
    uncond, cond = jnp.split(out, 2)
    guided = uncond + scales[0] * (cond - uncond)
  else:
    uncond, frames, cond = jnp.split(out, 3)
    guided = uncond + scales[1] * (frames - uncond) + scales[0] * (cond - frames)
  return guided if rescale is None else rescale_guidance(guided, cond, rescale)


def sample(model_fn: Callable, latents: jax.Array, *, schedule: NoiseSchedule | None = None, sampler: str = "ddim",
           num_steps: int = 50, prediction_type: str = "v_prediction", guidance_scale: float = 1.0,
           use_dynamic_cfg: bool = False, guidance_rescale: float = 0.0, rng: jax.Array | None = None,
           timestep_spacing: str = "trailing", flow_shift: float = 1.0, progress: bool = True,
           model_args: tuple = (), keep: conditioning.Condition | None = None,
           image_guidance_scale: float | None = None, init_latents: jax.Array | None = None,
           strength: float = 1.0) -> jax.Array:
  """Runs `sampler` from initial noise `latents` [B, ...] for `num_steps`; returns the final sample.

  guidance_scale > 1 turns on CFG (the model is called on the doubled batch); `use_dynamic_cfg` applies CogVideoX's
  schedule to it; `guidance_rescale` in [0, 1] rescales the guided output (`rescale_guidance`; 0: off).
  `image_guidance_scale` (not None) guides the frame condition separately (the model is called on the tripled
  batch; see `_guided`). `keep` holds the condition's kept frames at its latents throughout.
  SDEdit (video-to-video): with `init_latents`, sampling starts from them noised with `latents` to the timestep
  `strength` of the way to pure noise and runs the last round(strength * num_steps) steps (diffusers' img2img rule;
  strength 1: from pure noise, the input ignored).
  `rng` is needed by `dpmpp_2m_sde` (two normal draws per step, like the reference).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; allowed: {list(SAMPLERS)}.")
  if prediction_type == "flow" and sampler in DISCRETE_SAMPLERS:  # said here, not from inside the traced step
    raise ValueError(f"sampler {sampler!r} needs a discrete-time model; a prediction_type 'flow' model samples with "
                     "sampler 'euler'.")
  if not 0.0 <= guidance_rescale <= 1.0:
    raise ValueError(f"guidance_rescale={guidance_rescale}; allowed: [0, 1] (0: off).")
  guidance = "text_and_image" if image_guidance_scale is not None else ("text" if guidance_scale > 1.0 else "none")
  if guidance == "text_and_image" and keep is None:
    raise ValueError("image_guidance_scale guides a frame condition: pass keep (a conditioning.Condition).")
  use_rescale = guidance != "none" and guidance_rescale > 0.0
  rescale = jnp.float32(guidance_rescale)
  dtype = latents.dtype
  scales = lambda g: jnp.asarray([g, 1.0 if image_guidance_scale is None else image_guidance_scale], jnp.float32)
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"strength={strength}; allowed: (0, 1] (the share of the steps that are run).")
  first = num_steps - min(int(num_steps * strength), num_steps) if init_latents is not None else 0
  if first == num_steps:
    raise ValueError(f"strength={strength} runs none of the {num_steps} steps; raise it or num_steps.")
  x = _kept(latents, keep)

  if sampler == "euler":
    times = flow_timesteps(num_steps, flow_shift)
    flow_step = _flow_step_fn(model_fn, guidance, jnp.dtype(dtype).name, use_rescale)
    if first:
      x = _kept(objectives.flow_interpolate(init_latents, latents, jnp.full(latents.shape[:1], times[first]))
                .astype(dtype), keep)
    for i in tqdm(range(first, num_steps), disable=not progress, desc="euler"):
      x = flow_step(x, jnp.float32(times[i]), jnp.float32(times[i + 1]), scales(guidance_scale), rescale, keep,
                    model_args)
    return x

  if schedule is None:
    raise ValueError(f"sampler {sampler!r} needs a NoiseSchedule.")
  if sampler == "dpmpp_2m_sde" and rng is None:
    raise ValueError("dpmpp_2m_sde draws noise: pass rng.")
  n_train = schedule.num_train_timesteps
  timesteps = inference_timesteps(num_steps, n_train, timestep_spacing)
  abar = schedule.alphas_cumprod

  step = _discrete_step_fn(model_fn, guidance, prediction_type, jnp.dtype(dtype).name, use_rescale)

  old_x0 = jnp.zeros(latents.shape, jnp.float32)
  if first:
    abar_start = jnp.full(latents.shape[:1], abar[int(timesteps[first])], jnp.float32)
    x = _kept(objectives.add_noise(init_latents.astype(jnp.float32), latents.astype(jnp.float32), abar_start)
              .astype(dtype), keep)
  for i in tqdm(range(first, num_steps), disable=not progress, desc=sampler):
    t = int(timesteps[i])
    t_prev = prev_timestep(t, num_steps, n_train)
    abar_t, abar_p = float(abar[t]), schedule.alpha_prev(t_prev)
    g = dynamic_guidance_scale(guidance_scale, t, num_steps) if use_dynamic_cfg else guidance_scale
    if sampler == "ddim":
      a = np.sqrt((1.0 - abar_p) / (1.0 - abar_t))
      # x' = a x + b x0 written as mult1 x - mult2 D with D = x0
      mults = (a, -(np.sqrt(abar_p) - np.sqrt(abar_t) * a), 1.0, 0.0, 0.0)
      noise = jnp.zeros(latents.shape, jnp.float32)
    else:
      back = float(abar[int(timesteps[i - 1])]) if i > first else None
      c = dpm_coefficients(abar_t, abar_p, back, stochastic=sampler == "dpmpp_2m_sde",
                           use_second_order=t_prev >= 0)
      mults = (c.mult1, c.mult2, c.mult3, c.mult4, c.mult_noise)
      if sampler == "dpmpp_2m_sde":
        rng, k1, k2 = jax.random.split(rng, 3)
        # The reference draws noise for the first-order update, then again for the second-order one.
        noise = jax.random.normal(k2 if c.second_order else k1, latents.shape, jnp.float32)
      else:
        noise = jnp.zeros(latents.shape, jnp.float32)
    coef = jnp.asarray([np.sqrt(abar_t), np.sqrt(1.0 - abar_t), *mults], jnp.float32)
    x, old_x0 = step(x, old_x0, jnp.int32(t), coef, scales(g), rescale, noise, keep, model_args)
  return x

