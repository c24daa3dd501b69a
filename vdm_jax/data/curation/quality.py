"""Per-clip image quality for curation: sharpness, brightness and contrast of a few frames.

    scores = quality_scores(frames)   # uint8 [T, H, W, 3] -> {'sharpness', 'brightness', 'contrast'}

Frames are resized to a short side of `short_side` pixels first, so that the scores do not depend on the source's
resolution. `sharpness` is the variance of the Laplacian of the luma (low for blurred or out-of-focus footage),
`brightness` the mean luma and `contrast` its standard deviation, both in [0, 255] (BT.601 luma).
"""
from __future__ import annotations

import numpy as np

from vdm_jax.data.curation import motion


def quality_scores(frames: np.ndarray, num_frames: int = 4, short_side: int = 256) -> dict[str, float]:
  """Sharpness, brightness and contrast of uint8 frames [T, H, W, 3], averaged over `num_frames` frames spread over
  the clip."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [T, H, W, 3], T >= 1.")
  cv2 = motion.cv2_module()
  picks = motion.pair_indices(len(frames), num_frames, gap=0)  # frames spread over the clip, as motion's pairs
  totals = {"sharpness": 0.0, "brightness": 0.0, "contrast": 0.0}
  for t in picks:
    luma = cv2.cvtColor(motion.resize_short_side(frames[t], short_side), cv2.COLOR_RGB2GRAY)
    totals["sharpness"] += float(cv2.Laplacian(luma, cv2.CV_64F).var())
    totals["brightness"] += float(luma.mean())
    totals["contrast"] += float(luma.std())
  return {k: v / len(picks) for k, v in totals.items()}
