"""Timestep sinusoid, CogVideoX 3D sincos positions and 3D RoPE (both pipeline grids) against diffusers."""
import jax.numpy as jnp
import numpy as np
import pytest
from reference_extra import need

from vdm_jax.models import embeddings

torch = need("torch")
need("diffusers")
from diffusers.models import embeddings as ref  # noqa: E402  pylint: disable=g-import-not-at-top
from diffusers.pipelines.cogvideo.pipeline_cogvideox import (  # noqa: E402  pylint: disable=g-import-not-at-top
    get_resize_crop_region_for_grid)


@pytest.mark.parametrize("dim,flip,shift", [(1920, True, 0), (64, False, 1), (33, True, 0)])
def test_timestep_embedding(dim, flip, shift):
  t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
  expected = ref.get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
  ours = embeddings.timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, shift=shift)
  assert ours.dtype == jnp.float32 and ours.shape == (4, dim)
  np.testing.assert_allclose(np.asarray(ours), expected.numpy(), rtol=0, atol=2e-4)  # sin(999 * f) in float32


@pytest.mark.parametrize("grid,scales", [((13, 30, 45), (1.875, 1.0)), ((2, 3, 5), (1.0, 2.0)), ((1, 4, 1), (1.5, 1))])
def test_cogvideox_sincos_3d(grid, scales):
  t, h, w = grid
  expected = ref.get_3d_sincos_pos_embed(64, (w, h), t, scales[0], scales[1]).flatten(0, 1).numpy()
  ours = embeddings.cogvideox_sincos_3d(64, grid, *scales)
  assert ours.shape == (t * h * w, 64)
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid_hw,base", [((30, 45), (30, 45)), ((20, 30), (30, 45)), ((24, 24), (30, 45)),
                                          ((7, 40), (30, 45)), ((3, 5), (4, 6))])
def test_resize_crop_region(grid_hw, base):
  assert embeddings.resize_crop_region_for_grid(grid_hw, base[1], base[0]) == \
      get_resize_crop_region_for_grid(grid_hw, base[1], base[0])


@pytest.mark.parametrize("grid", [(13, 30, 45), (13, 20, 30), (3, 24, 24), (2, 7, 40)])
def test_rope_linspace_grid(grid):
  t, h, w = grid
  crops = get_resize_crop_region_for_grid((h, w), 45, 30)
  cos_ref, sin_ref = ref.get_3d_rotary_pos_embed(64, crops, (h, w), t)
  cos, sin = embeddings.cogvideox_rope_3d(64, grid, (30, 45), "linspace")
  assert cos.shape == (t * h * w, 64) and cos.dtype == np.float32
  # positions up to ~45 rad in float32: torch's linspace and cos/sin may differ from numpy's by an ulp or two
  np.testing.assert_allclose(cos, cos_ref.numpy(), rtol=0, atol=2e-5)
  np.testing.assert_allclose(sin, sin_ref.numpy(), rtol=0, atol=2e-5)


def test_rope_slice_grid_and_error():
  cos_ref, sin_ref = ref.get_3d_rotary_pos_embed(64, None, (20, 30), 7, grid_type="slice", max_size=(150, 150))
  cos, sin = embeddings.cogvideox_rope_3d(64, (7, 20, 30), (150, 150), "slice")
  np.testing.assert_allclose(cos, cos_ref.numpy(), rtol=0, atol=2e-5)
  np.testing.assert_allclose(sin, sin_ref.numpy(), rtol=0, atol=2e-5)
  # a grid larger than the base (diffusers' table would be too small) has the same integer positions
  big = embeddings.cogvideox_rope_3d(64, (1, 8, 4), (6, 6), "slice")
  np.testing.assert_array_equal(big[0], embeddings.cogvideox_rope_3d(64, (1, 8, 4), (8, 8), "slice")[0])
  with pytest.raises(ValueError, match="allowed: 'linspace', 'slice'"):
    embeddings.cogvideox_rope_3d(64, (1, 2, 2), (6, 6), "crop")


def test_apply_rope():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 12, 3, 64)).astype(np.float32)  # [B, L, H, D]
  cos, sin = embeddings.cogvideox_rope_3d(64, (2, 2, 3), (4, 6), "linspace")
  expected = ref.apply_rotary_emb(torch.from_numpy(x).transpose(1, 2), (torch.from_numpy(cos), torch.from_numpy(sin)))
  ours = embeddings.apply_rope(jnp.asarray(x), jnp.asarray(cos), jnp.asarray(sin))
  np.testing.assert_allclose(np.asarray(ours), expected.transpose(1, 2).numpy(), rtol=1e-6, atol=1e-6)
