"""How much a clip moves, from dense optical flow (OpenCV's Farneback) on a few frame pairs at low resolution, as
Stable Video Diffusion scores its clips.

    scores = motion_scores(frames)   # uint8 [T, H, W, 3] -> {'motion', 'camera', 'object', 'static'}

Every frame is resized so that its short side is `short_side` pixels (128 by default) before the flow, so scores
are in pixels per frame at that size whatever the source resolution, and comparable across sources of one frame
rate. Flow is only measured where the image has texture (a flat sky or a flat-coloured object's inside moves
without the flow seeing it), so every score is over the pixels whose Sobel gradient exceeds `min_gradient`:
`motion` is their mean flow magnitude; the flow is split into a camera part (the median flow vector, what a pan or
tilt moves everywhere) and an object part (the mean magnitude of what is left); `static` is the fraction of them
that move less than `static_px`. A frame without texture scores 0 motion and is static.
"""
from __future__ import annotations

import numpy as np

# Farneback's parameters: a 3-level pyramid at half scale with 15 px windows, OpenCV's documented defaults.
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def cv2_module():
  """OpenCV, or an ImportError that says how to install it (only curation needs it)."""
  try:
    import cv2  # pylint: disable=g-import-not-at-top  (a curation-only dependency, imported when scoring)
  except ImportError as e:
    raise ImportError("Motion scores need OpenCV: pip install opencv-python-headless.") from e
  return cv2


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
  """`frame` [H, W, ...] resized (area interpolation down, linear up) so that min(H, W) == short_side."""
  cv2 = cv2_module()
  h, w = frame.shape[:2]
  scale = short_side / min(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def pair_indices(num_frames: int, num_pairs: int, gap: int = 1) -> list[int]:
  """First frames of `num_pairs` pairs (t, t + gap) spread evenly over a clip of `num_frames` frames (gap 0:
  `num_pairs` frames spread over it)."""
  last = num_frames - 1 - gap
  if last < 0:
    return []
  return sorted({int(round(x)) for x in np.linspace(0, last, min(num_pairs, last + 1))})


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Dense flow from grayscale uint8 frame `a` to `b` [H, W]: float32 [H, W, 2] (dx, dy) in pixels."""
  return cv2_module().calcOpticalFlowFarneback(a, b, None, **_FARNEBACK)


def textured(gray: np.ndarray, min_gradient: float) -> np.ndarray:
  """bool [H, W]: where grayscale uint8 `gray` has a Sobel (3x3) gradient magnitude of at least `min_gradient`."""
  cv2 = cv2_module()
  gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
  gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
  return np.hypot(gx, gy) >= min_gradient


def motion_scores(frames: np.ndarray, num_pairs: int = 4, short_side: int = 128, gap: int = 1,
                  static_px: float = 0.5, min_gradient: float = 40.0) -> dict[str, float]:
  """Motion of uint8 frames [T, H, W, 3] (T >= gap + 1), averaged over `num_pairs` pairs (t, t + gap) spread over
  the clip: 'motion' (mean flow magnitude, px/frame at `short_side`), 'camera' (magnitude of the median flow
  vector), 'object' (mean magnitude of the flow minus that vector), 'static' (fraction of pixels under
  `static_px`)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [T, H, W, 3].")
  starts = pair_indices(len(frames), num_pairs, gap)
  if not starts:
    raise ValueError(f"{len(frames)} frames: motion needs at least {gap + 1} (pairs {gap} apart).")
  cv2 = cv2_module()
  gray = {}
  for t in sorted({s for s in starts} | {s + gap for s in starts}):
    gray[t] = cv2.cvtColor(resize_short_side(frames[t], short_side), cv2.COLOR_RGB2GRAY)
  totals = {"motion": 0.0, "camera": 0.0, "object": 0.0, "static": 0.0}
  for t in starts:
    mask = textured(gray[t], min_gradient)
    if not mask.any():
      totals["static"] += 1.0
      continue
    f = (flow(gray[t], gray[t + gap]) / gap)[mask]
    magnitude = np.linalg.norm(f, axis=-1)
    camera = np.median(f, axis=0)
    totals["motion"] += float(magnitude.mean())
    totals["camera"] += float(np.linalg.norm(camera))
    totals["object"] += float(np.linalg.norm(f - camera, axis=-1).mean())
    totals["static"] += float((magnitude < static_px).mean())
  return {k: v / len(starts) for k, v in totals.items()}
