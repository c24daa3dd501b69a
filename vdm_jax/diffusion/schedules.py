"""Discrete noise schedules: betas, alphas_cumprod, SNR shift, zero-terminal-SNR rescale, inference timesteps.

Everything is computed in float64 numpy (as diffusers does for the CogVideoX schedules) and cast only where it
meets the model. The CogVideoX order of operations is: betas -> cumprod -> SNR shift -> zero-terminal rescale.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")


def make_betas(beta_schedule: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
               beta_end: float = 0.012) -> np.ndarray:
  """float64 betas [N]: `linear` in beta, `scaled_linear` (linear in sqrt(beta)), `cosine` (Nichol & Dhariwal,
  diffusers' squaredcos_cap_v2, betas capped at 0.999)."""
  n = num_train_timesteps
  if beta_schedule == "linear":
    return np.linspace(beta_start, beta_end, n, dtype=np.float64)
  if beta_schedule == "scaled_linear":
    return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
  if beta_schedule == "cosine":
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float64)
  raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; allowed: {list(BETA_SCHEDULES)}.")


def shift_snr(alphas_cumprod: np.ndarray, scale: float) -> np.ndarray:
  """Divides the SNR by `scale` at every t: abar / (scale + (1 - scale) * abar) (CogVideoX's snr_shift_scale)."""
  return alphas_cumprod / (scale + (1.0 - scale) * alphas_cumprod)


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
  """Shifts and scales sqrt(abar) so the last step has SNR 0 and the first is unchanged (Lin et al. 2023, Alg. 1)."""
  root = np.sqrt(alphas_cumprod)
  first, last = root[0], root[-1]
  root = (root - last) * first / (first - last)
  return root**2


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """alphas_cumprod [N] (float64) of a discrete-time diffusion, and the value used after the last step.

  final_alpha_cumprod is 1 with `set_alpha_to_one` (the sampler's last step lands on clean data), else abar[0].
  """
  alphas_cumprod: np.ndarray
  final_alpha_cumprod: float = 1.0

  @property
  def num_train_timesteps(self) -> int:
    return len(self.alphas_cumprod)

  def alpha_prev(self, prev_timestep: int) -> float:
    """abar at `prev_timestep`, or `final_alpha_cumprod` past the end (prev < 0)."""
    return float(self.alphas_cumprod[prev_timestep]) if prev_timestep >= 0 else self.final_alpha_cumprod

  @property
  def snr(self) -> np.ndarray:
    a = self.alphas_cumprod
    with np.errstate(divide="ignore"):
      return a / (1.0 - a)


def make_schedule(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                  beta_end: float = 0.012, snr_shift_scale: float = 1.0, rescale_betas_zero_snr: bool = False,
                  set_alpha_to_one: bool = True) -> NoiseSchedule:
  """The schedule from the same arguments as diffusers' CogVideoX schedulers (CogVideoX-2b: scaled_linear,
  0.00085..0.012, snr_shift_scale 3.0, zero-terminal rescale, set_alpha_to_one)."""
  if snr_shift_scale <= 0:
    raise ValueError(f"snr_shift_scale must be > 0, got {snr_shift_scale}.")
  alphas_cumprod = np.cumprod(1.0 - make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end))
  alphas_cumprod = shift_snr(alphas_cumprod, snr_shift_scale)
  if rescale_betas_zero_snr:
    alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
  final = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
  return NoiseSchedule(alphas_cumprod=alphas_cumprod, final_alpha_cumprod=final)


def inference_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "trailing",
                        steps_offset: int = 0) -> np.ndarray:
  """int64 timesteps, descending: `trailing` (999, 979, ..., 19 for 50 of 1000), `leading` or `linspace`."""
  if not 0 < num_inference_steps <= num_train_timesteps:
    raise ValueError(f"num_inference_steps={num_inference_steps} must be in [1, {num_train_timesteps}].")
  n, k = num_train_timesteps, num_inference_steps
  if spacing == "trailing":
    return np.round(np.arange(n, 0, -n / k)).astype(np.int64) - 1
  if spacing == "leading":
    return (np.arange(0, k) * (n // k)).round()[::-1].astype(np.int64) + steps_offset
  if spacing == "linspace":
    return np.linspace(0, n - 1, k).round()[::-1].astype(np.int64)
  raise ValueError(f"Unknown timestep spacing {spacing!r}; allowed: {list(TIMESTEP_SPACINGS)}.")


def prev_timestep(timestep: int, num_inference_steps: int, num_train_timesteps: int = 1000) -> int:
  """The timestep a DDIM/DPM step lands on: t - N // k (negative past the end), as diffusers computes it."""
  return int(timestep) - num_train_timesteps // num_inference_steps
