"""Temporal metrics ([L]): flicker reads a static scene's brightness jumps (and nothing of a still one), the
warping error is small for a texture moving smoothly and large for frames that do not follow each other, and the
probe's per-frame consistency is 1 for a rendered Captioned Shapes clip and drops with a color change midway."""
import numpy as np
import pytest
from scipy import ndimage

from vdm_jax.data import shapes
from vdm_jax.eval import temporal


def _texture(seed, size=64):
  noise = np.random.default_rng(seed).uniform(0, 1, (size + 16, size + 16))
  smooth = ndimage.gaussian_filter(noise, 2.0)
  smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
  return np.repeat((60 + 120 * smooth)[..., None], 3, axis=-1)  # [size + 16, size + 16, 3] in [60, 180]


def test_flicker_reads_brightness_jumps_of_a_static_scene():
  frame = _texture(0)[:64, :64]
  still = np.stack([frame] * 6).astype(np.uint8)
  assert temporal.flicker(still) == 0.0
  flickering = np.stack([frame + (12 if t % 2 else 0) for t in range(6)]).astype(np.uint8)
  assert temporal.flicker(flickering) == pytest.approx(12.0, abs=0.5)


def test_warping_error_is_small_for_smooth_motion_and_large_for_unrelated_frames():
  texture = _texture(1)
  moving = np.stack([texture[8:72, 4 + t:68 + t] for t in range(8)]).astype(np.uint8)  # 1 px per frame
  unrelated = np.stack([_texture(10 + t)[:64, :64] for t in range(8)]).astype(np.uint8)
  smooth, jumpy = temporal.warping_error(moving), temporal.warping_error(unrelated)
  assert smooth < 1e-3 and jumpy > 10 * smooth, (smooth, jumpy)
  result = temporal.metrics(np.stack([moving, unrelated]))
  assert result["warping_error"] == pytest.approx((smooth + jumpy) / 2)
  with pytest.raises(ValueError, match=r"uint8 video \[T >= 2, H, W, 3\]"):
    temporal.flicker(moving[:1])


def test_probe_consistency_of_a_rendered_clip_and_of_one_changing_color():
  params = shapes.clip_params(3, color="red", shape="square", motion="right")
  video = shapes.render_video(params, num_frames=8)
  assert temporal.probe_consistency(video) == 1.0
  changed = video.copy()
  changed[5:] = shapes.render_video({**params, "color": "blue"}, num_frames=8)[5:]  # the clip still reads red
  assert temporal.probe_consistency(changed) == 5 / 8
  assert temporal.metrics([video], shapes=True)["probe_consistency"] == 1.0
