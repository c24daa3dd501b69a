"""Spacetime patchify: exact inverse for every patch layout, time-major token order, and CogVideoX's layouts
(the 1.0 Conv2d patch projection and the 1.5 (C, pt, ph, pw) patch vectors, built with torch) reproduced exactly."""
import numpy as np
import pytest

from vdm_jax.models.patchify import patch_grid, patchify, unpatchify


@pytest.mark.parametrize("patch_size,patch_size_t", [(1, 1), (2, 1), (2, 2), (3, 1), (1, 3), (4, 2)])
def test_unpatchify_is_exact_inverse(patch_size, patch_size_t):
  rng = np.random.default_rng(0)
  shape = (2, 3 * patch_size_t, 2 * patch_size, 5 * patch_size, 3)
  x = rng.normal(size=shape).astype(np.float32)
  tokens = patchify(x, patch_size, patch_size_t)
  grid = patch_grid(shape, patch_size, patch_size_t)
  assert grid == (3, 2, 5)
  assert tokens.shape == (2, 3 * 2 * 5, 3 * patch_size_t * patch_size ** 2)
  np.testing.assert_array_equal(np.asarray(unpatchify(tokens, grid, patch_size, patch_size_t)), x)
  # and the other way round: every token vector survives unpatchify -> patchify
  np.testing.assert_array_equal(np.asarray(patchify(unpatchify(tokens, grid, patch_size, patch_size_t), patch_size,
                                                    patch_size_t)), np.asarray(tokens))


def test_token_order_is_time_major_and_vector_order_is_c_pt_ph_pw():
  b, t, h, w, c, p, pt = 1, 4, 6, 4, 3, 2, 2
  x = np.arange(b * t * h * w * c, dtype=np.float32).reshape(b, t, h, w, c)
  tokens = np.asarray(patchify(x, p, pt))
  gh, gw = h // p, w // p
  for ti, hi, wi in [(0, 0, 0), (1, 2, 1), (1, 0, 1)]:
    n = ti * gh * gw + hi * gw + wi
    patch = x[0, ti * pt:(ti + 1) * pt, hi * p:(hi + 1) * p, wi * p:(wi + 1) * p, :]  # [pt, ph, pw, C]
    np.testing.assert_array_equal(tokens[0, n], patch.transpose(3, 0, 1, 2).reshape(-1))


def test_cogvideox_15_patch_vectors(torch):
  """diffusers CogVideoXPatchEmbed (patch_size_t set) builds its Linear input this way from [B, F, C, H, W]."""
  b, f, c, h, w, p, pt = 2, 4, 3, 6, 4, 2, 2
  x = torch.randn(b, f, c, h, w)
  ref = x.permute(0, 1, 3, 4, 2).reshape(b, f // pt, pt, h // p, p, w // p, p, c)
  ref = ref.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(4, 7).flatten(1, 3).numpy()
  ours = np.asarray(patchify(x.numpy().transpose(0, 1, 3, 4, 2), p, pt))
  np.testing.assert_array_equal(ours, ref)


def test_cogvideox_10_conv_patch_projection(torch):
  """The 1.0 Conv2d(C, D, p, stride p) equals a Dense on our patch vectors with kernel weight.reshape(D, -1).T."""
  b, f, c, h, w, p, d = 1, 2, 4, 6, 8, 2, 5
  torch.manual_seed(0)
  conv = torch.nn.Conv2d(c, d, p, stride=p, bias=False)
  x = torch.randn(b, f, c, h, w)
  with torch.no_grad():
    ref = conv(x.reshape(-1, c, h, w)).reshape(b, f, d, -1).transpose(2, 3).flatten(1, 2).numpy()
  kernel = conv.weight.detach().numpy().reshape(d, -1).T
  ours = np.asarray(patchify(x.numpy().transpose(0, 1, 3, 4, 2), p, 1)) @ kernel
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_patch_grid_errors():
  with pytest.raises(ValueError, match="frames T=3 is not divisible by its patch size 2"):
    patch_grid((1, 3, 4, 4, 2), 2, 2)
  with pytest.raises(ValueError, match="width W=5"):
    patchify(np.zeros((1, 2, 4, 5, 2)), 2)
