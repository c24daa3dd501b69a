"""Reconstruction metrics on videos: PSNR and SSIM, per clip, in numpy (host side, float64).

Videos are `[B, T, H, W, C]` floats in [-1, 1] (`data_range=2`) or uint8 (`data_range=255`). `psnr_from_mse` is the
one PSNR formula: training losses call it on their (traced) MSE inside a step, `psnr` on host arrays.

SSIM follows Wang et al. 2004 as most libraries compute it (e.g. skimage's `structural_similarity` with
`gaussian_weights=True, use_sample_covariance=False, data_range=...`): an 11x11 Gaussian window with sigma 1.5
(normalised), K1 = 0.01, K2 = 0.03, local statistics over the window's valid positions only, computed per frame and
channel; a clip's SSIM is the mean over its frames, channels and positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_K1, _K2 = 0.01, 0.03
_MSE_FLOOR = 1e-20  # identical inputs: a finite PSNR (about 206 dB for range 2) instead of inf


def _as_float(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def _check(a: np.ndarray, b: np.ndarray, name: str) -> None:
  if a.shape != b.shape or a.ndim != 5:
    raise ValueError(f"{name}: expected two videos [B, T, H, W, C] of the same shape, got {a.shape} and {b.shape}.")


def psnr_from_mse(mse, data_range: float = 2.0):
  """PSNR in dB of a mean squared error (any shape): 10 log10(data_range^2 / MSE). A JAX array (traced too) gives a
  JAX array in its dtype; anything else is computed in numpy."""
  xp = jnp if isinstance(mse, jax.Array) else np
  return 10.0 * xp.log10(data_range ** 2 / xp.maximum(mse, _MSE_FLOOR))


def psnr(a, b, data_range: float = 2.0) -> np.ndarray:
  """Per-clip PSNR in dB, [B], of videos [B, T, H, W, C] on the host (float64): MSE over (T, H, W, C)."""
  a, b = _as_float(a), _as_float(b)
  _check(a, b, "psnr")
  return psnr_from_mse(np.mean(np.square(a - b), axis=(1, 2, 3, 4)), data_range)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Normalised 1-D Gaussian window [size]."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  w = np.exp(-0.5 * np.square(x / sigma))
  return w / w.sum()


def _filter_valid(x: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Separable 'valid' correlation of x [..., H, W, C] with window (x) window over H and W."""
  k = len(window)
  h, w = x.shape[-3], x.shape[-2]
  if h < k or w < k:
    raise ValueError(f"ssim: frames {h}x{w} are smaller than the {k}x{k} window.")
  rows = sum(window[i] * x[..., i:i + h - k + 1, :, :] for i in range(k))
  return sum(window[j] * rows[..., :, j:j + w - k + 1, :] for j in range(k))


def ssim_map(a, b, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Local SSIM [..., H - 10, W - 10, C] of images/videos [..., H, W, C]."""
  a, b = _as_float(a), _as_float(b)
  window = gaussian_window(window_size, sigma)
  c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
  mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
  var_a = _filter_valid(a * a, window) - mu_a * mu_a
  var_b = _filter_valid(b * b, window) - mu_b * mu_b
  cov = _filter_valid(a * b, window) - mu_a * mu_b
  return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim(a, b, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Per-clip SSIM [B] of videos [B, T, H, W, C]: the mean of the local SSIM map over frames, positions and
  channels."""
  a, b = _as_float(a), _as_float(b)
  _check(a, b, "ssim")
  return np.mean(ssim_map(a, b, data_range, window_size, sigma), axis=(1, 2, 3, 4))
