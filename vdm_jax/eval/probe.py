"""The Captioned Shapes probe: reads color, shape and motion back from pixels, with no learned weights.

Rules (docs/captioned_shapes.md): foreground = pixels whose max channel difference from the black background
exceeds 40; color = palette color nearest (Euclidean RGB) to the median foreground color; shape = median over frames
of foreground area / bounding-box area, nearest of square 1.0, circle pi/4, triangle 0.5; motion = centroid
displacement from the first to the last frame, the larger axis and its sign, `still` below 2 px (at 64 px, scaled
with min(H, W)).

Every frame must hold exactly one blob (8-connected) of meaningful size (>= 8 px at 64x64, scaled with H*W);
smaller specks are ignored. Otherwise -- no foreground in some frame, or two objects -- the reading is all None,
which scores as wrong on every attribute.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from vdm_jax.data import shapes

BACKGROUND = (0, 0, 0)
FOREGROUND_THRESHOLD = 40  # max channel difference from the background
STILL_PIXELS_AT_64 = 2.0
MIN_BLOB_PIXELS_AT_64 = 8
SHAPE_FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}  # area / bounding-box area
_PALETTE_NAMES = tuple(shapes.COLORS)
_PALETTE = np.array([shapes.COLORS[c] for c in _PALETTE_NAMES], np.float64)  # [8, 3]
_NOTHING = {"color": None, "shape": None, "motion": None}


def prompts(n: int) -> list[str]:
  """n prompts cycling over all 120 (color, shape, motion) combinations in a fixed shuffled order, each with a
  caption template drawn from a fixed seed: what the probe scores a text-to-video model on."""
  combos = list(itertools.product(shapes.COLORS, shapes.SHAPES, shapes.MOTIONS))
  rng = np.random.default_rng(0)
  order = rng.permutation(len(combos))
  return [shapes.caption_for(*combos[order[i % len(combos)]], template=int(rng.integers(0, 6))) for i in range(n)]


def foreground(video: np.ndarray) -> np.ndarray:
  """uint8 [T, H, W, 3] -> bool [T, H, W]: max channel difference from BACKGROUND > FOREGROUND_THRESHOLD."""
  diff = np.abs(video.astype(np.int16) - np.asarray(BACKGROUND, np.int16))
  return diff.max(axis=-1) > FOREGROUND_THRESHOLD


def _big_blobs(mask: np.ndarray, min_pixels: float) -> tuple[np.ndarray, np.ndarray]:
  """bool [H, W] -> (8-connected labels, the labels of the blobs with >= min_pixels pixels)."""
  labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
  if count == 0:
    return labels, np.zeros((0,), np.int64)
  sizes = np.bincount(labels.ravel())[1:]
  return labels, np.flatnonzero(sizes >= min_pixels) + 1


def single_blob(mask: np.ndarray, min_pixels: float) -> np.ndarray | None:
  """bool [H, W] -> the only blob of >= min_pixels pixels (bool [H, W]), or None if there are zero or several."""
  labels, big = _big_blobs(mask, min_pixels)
  return labels == big[0] if len(big) == 1 else None


def _fill(blob: np.ndarray) -> float:
  """Area / bounding-box area of a non-empty bool [H, W] blob."""
  rows, cols = np.nonzero(blob)
  return len(rows) / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))


def _motion(first: np.ndarray, last: np.ndarray, still_pixels: float) -> str:
  """Direction of the centroid displacement between two bool [H, W] blobs."""
  delta = np.mean(np.nonzero(last), axis=1) - np.mean(np.nonzero(first), axis=1)  # (d_row, d_col)
  if np.abs(delta).max() < still_pixels:
    return "still"
  if abs(delta[1]) >= abs(delta[0]):
    return "right" if delta[1] > 0 else "left"
  return "down" if delta[0] > 0 else "up"


def _read(video: np.ndarray) -> tuple[dict[str, str | None], str | None, float | None]:
  """(reading, why it is unreadable or None, the shape's fill ratio or None) of one uint8 [T, H, W, 3] video."""
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or not np.issubdtype(video.dtype, np.integer):
    raise ValueError(f"Expected a uint8 video [T, H, W, 3], got {video.dtype} {video.shape}.")
  _, height, width, _ = video.shape
  scale = min(height, width) / 64
  min_pixels = MIN_BLOB_PIXELS_AT_64 * height * width / 64**2
  found = [_big_blobs(mask, min_pixels) for mask in foreground(video)]
  counts = [len(big) for _, big in found]
  if any(count != 1 for count in counts):
    return dict(_NOTHING), ("no_object" if 0 in counts else "several_objects"), None
  blobs = np.stack([labels == big[0] for labels, big in found])  # [T, H, W]
  median_rgb = np.median(video[blobs].astype(np.float64), axis=0)
  color = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - median_rgb, axis=1)))]
  fill = float(np.median([_fill(blob) for blob in blobs]))
  shape = min(SHAPE_FILL, key=lambda name: abs(SHAPE_FILL[name] - fill))
  reading = {"color": color, "shape": shape, "motion": _motion(blobs[0], blobs[-1], STILL_PIXELS_AT_64 * scale)}
  return reading, None, fill


def read(video: np.ndarray) -> dict[str, str | None]:
  """Reads one video, uint8 [T, H, W, 3], into {'color', 'shape', 'motion'}: words, or all None if unreadable."""
  return _read(video)[0]


def _target(target: str | Mapping[str, Any]) -> dict[str, Any]:
  return shapes.parse_caption(target) if isinstance(target, str) else dict(target)


def _readings(videos, targets) -> list[tuple[dict[str, Any], dict[str, str | None], str | None, float | None]]:
  """Per video: (target dict, reading, why it is unreadable or None, fill ratio or None); `score` and `diagnose`."""
  if len(videos) != len(targets):
    raise ValueError(f"Got {len(videos)} videos but {len(targets)} targets.")
  return [(_target(target), *_read(video)) for video, target in zip(videos, targets)]


def score(videos: Sequence[np.ndarray] | np.ndarray, targets: Sequence[str | Mapping[str, Any]]) -> dict[str, float]:
  """Fraction of videos whose reading matches the target, per attribute and for `all` three at once.

  videos: a list of uint8 [T, H, W, 3] or one array [N, T, H, W, 3]. targets: per video, a dict with `color`,
  `shape`, `motion`, or a caption/prompt string (parsed with `shapes.parse_caption`). An attribute the target does
  not name (None) is never matched. Returns {'color', 'shape', 'motion', 'all', 'num_videos'}.
  """
  readings = _readings(videos, targets)
  if not readings:
    raise ValueError("score() needs at least one video.")
  hits = {"color": [], "shape": [], "motion": []}
  for want, reading, _, _ in readings:
    for key, values in hits.items():
      values.append(reading[key] is not None and reading[key] == want.get(key))
  result = {key: float(np.mean(values)) for key, values in hits.items()}
  result["all"] = float(np.mean(np.logical_and.reduce([hits[k] for k in ("color", "shape", "motion")])))
  result["num_videos"] = len(videos)
  return result


def diagnose(videos: Sequence[np.ndarray] | np.ndarray, targets: Sequence[str | Mapping[str, Any]]) -> dict[str, Any]:
  """Where a set of videos loses its probe score: what `score` averages, broken down.

  Returns {'num_videos', 'unreadable': {'no_object': n, 'several_objects': n} (videos with a frame holding no blob,
  or two), 'confusion': {attribute: {wanted: {read: n}}} over the readable videos, 'shape_fill': {wanted shape:
  [10th, 50th, 90th percentile]} of the fill ratio read (area / bounding box) and 'shape_fill_cuts': the fill
  ratios where the reading changes (between triangle 0.5, circle pi/4 and square 1.0)}. A model that draws the
  right shape with soft or lumpy outlines shows here as squares whose fill sits below the square/circle cut.
  """
  unreadable = {"no_object": 0, "several_objects": 0}
  confusion: dict[str, dict[str, dict[str, int]]] = {"color": {}, "shape": {}, "motion": {}}
  fills: dict[str, list[float]] = {}
  for want, reading, why, fill in _readings(videos, targets):
    if why is not None:
      unreadable[why] += 1
      continue
    for key, table in confusion.items():
      row = table.setdefault(str(want.get(key)), {})
      row[reading[key]] = row.get(reading[key], 0) + 1
    fills.setdefault(str(want.get("shape")), []).append(fill)
  ordered = sorted(SHAPE_FILL.values())
  return {
      "num_videos": len(videos), "unreadable": unreadable, "confusion": confusion,
      "shape_fill": {k: [round(float(q), 3) for q in np.percentile(v, [10, 50, 90])] for k, v in fills.items()},
      "shape_fill_cuts": [round((a + b) / 2, 3) for a, b in zip(ordered, ordered[1:])],
  }
