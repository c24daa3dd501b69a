"""PSNR (one formula for evals and training metrics) and SSIM on videos: closed forms on known inputs and a direct
(loop) evaluation of Wang et al.'s formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.eval import metrics
from vdm_jax.train import toy_ae


def test_psnr_closed_form():
  a = np.zeros((2, 3, 8, 8, 3))
  b = a.copy()
  b[0] += 0.2  # MSE 0.04 on range 2: 10 log10(4 / 0.04) = 20 dB
  b[1, :, :4] = 1.0  # half the pixels off by 1: MSE 0.5 -> 10 log10(8) dB
  np.testing.assert_allclose(metrics.psnr(b, a), [20.0, 10 * np.log10(8.0)], rtol=1e-12)
  np.testing.assert_allclose(metrics.psnr(b * 127.5, a * 127.5, data_range=255.0), [20.0, 10 * np.log10(8.0)],
                             rtol=1e-12)
  np.testing.assert_allclose(metrics.psnr(a, a), 10 * np.log10(4 / 1e-20))  # identical: MSE floored, finite
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    metrics.psnr(a[0], b[0])


def test_psnr_from_mse_is_the_formula_on_host_and_in_a_jitted_step():
  """One formula for the evals (numpy, float64) and the training losses (JAX, float32, traced): MSE 0.04 on range 2
  is 20 dB, and both give 10 log10(range^2 / MSE) on random clips (the formulas the losses used before)."""
  assert metrics.psnr_from_mse(0.04, 2.0) == pytest.approx(20.0, abs=1e-12)
  assert metrics.psnr_from_mse(0.04 * 127.5 ** 2, 255.0) == pytest.approx(20.0, abs=1e-12)
  rng = np.random.default_rng(0)
  a, b = rng.uniform(-1, 1, (3, 2, 8, 8, 3)), rng.uniform(-1, 1, (3, 2, 8, 8, 3))
  mse = np.mean((a - b) ** 2, axis=(1, 2, 3, 4))
  np.testing.assert_allclose(metrics.psnr(a, b), 10 * np.log10(4 / mse), rtol=1e-12)
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  # the toy autoencoder's eval, which used 10 log10(1 / mean(((a - b) / 2)^2)): the same float32 bits
  old_toy = lambda x, y: 10 * jnp.log10(1 / jnp.mean(jnp.square((x - y) / 2), axis=(1, 2, 3, 4)))
  toy = jax.jit(toy_ae.psnr)(a32, b32)
  assert toy.dtype == jnp.float32
  np.testing.assert_array_equal(toy, jax.jit(old_toy)(a32, b32))
  np.testing.assert_allclose(toy, metrics.psnr(a, b), rtol=1e-6)
  # the VAE loss's metric on its batch MSE, which used 10 log10(4 / MSE)
  mse32 = jnp.mean(jnp.square(a32 - b32))
  np.testing.assert_array_equal(jax.jit(metrics.psnr_from_mse)(mse32), jax.jit(lambda m: 10 * jnp.log10(4 / m))(mse32))


def _ssim_direct(x, y, data_range):
  """Wang et al. 2004 evaluated window by window with explicit weighted sums (one frame, one channel)."""
  size, sigma = 11, 1.5
  g = np.exp(-0.5 * ((np.arange(size) - 5) / sigma) ** 2)
  w = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  values = []
  for i in range(x.shape[0] - size + 1):
    for j in range(x.shape[1] - size + 1):
      px, py = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
      mx, my = np.sum(w * px), np.sum(w * py)
      vx, vy = np.sum(w * (px - mx) ** 2), np.sum(w * (py - my) ** 2)
      cxy = np.sum(w * (px - mx) * (py - my))
      values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return np.mean(values)


def test_ssim_matches_direct_formula():
  rng = np.random.default_rng(0)
  a = rng.uniform(-1, 1, (1, 2, 16, 15, 2))
  b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
  expected = np.mean([_ssim_direct(a[0, t, :, :, c], b[0, t, :, :, c], 2.0) for t in range(2) for c in range(2)])
  np.testing.assert_allclose(metrics.ssim(a, b), [expected], rtol=1e-10)


def test_ssim_closed_forms():
  a = np.full((1, 1, 12, 12, 1), 0.5)
  np.testing.assert_allclose(metrics.ssim(a, a), [1.0])
  # Constant images: the structure term is C2 / C2 = 1, the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
  b = np.full_like(a, -0.25)
  c1 = (0.01 * 2.0) ** 2
  expected = (2 * 0.5 * -0.25 + c1) / (0.5 ** 2 + 0.25 ** 2 + c1)
  np.testing.assert_allclose(metrics.ssim(a, b), [expected], rtol=1e-12)
  # Symmetric, below 1 for any difference, and decreasing with the noise level.
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 2, 20, 20, 3))
  noise = rng.normal(size=x.shape)
  np.testing.assert_allclose(metrics.ssim(x, x * 0.5), metrics.ssim(x * 0.5, x), rtol=1e-12)
  small, large = metrics.ssim(x, x + 0.05 * noise), metrics.ssim(x, x + 0.5 * noise)
  assert np.all(small < 1.0) and np.all(large < small) and np.all(small > 0.9)
  with pytest.raises(ValueError, match="smaller than the 11x11 window"):
    metrics.ssim(x[:, :, :8], x[:, :, :8])
