"""Temporal consistency of generated videos, from dense optical flow (OpenCV's Farneback, as curation uses it):

    temporal.metrics(videos)          # uint8 [N, T, H, W, 3] -> {'flicker', 'warping_error'} means over clips
    temporal.probe_consistency(video) # Captioned Shapes: the share of frames whose color and shape are the clip's

- `flicker`: the mean absolute difference of consecutive frames (0-255, all channels) over the pixels the flow says
  are static (|flow| < `static_pixels`): a still background should not change; it does when a model flickers.
- `warping_error` (Lai et al. 2018): frame t+1 warped back onto frame t along the flow t -> t+1, and the mean
  squared difference (pixels in [0, 1]) over the pixels that pass the forward-backward check (|f(x) + b(x +
  f(x))| < `occlusion_pixels`), i.e. are not occluded. Smooth, coherent motion gives little; frames that do not
  follow each other give much.
- `probe_consistency`: the probe's color and shape read on every frame alone against its reading of the whole clip.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vdm_jax.data.curation.motion import cv2_module, flow
from vdm_jax.eval import probe


def _gray(frame: np.ndarray) -> np.ndarray:
  return cv2_module().cvtColor(np.ascontiguousarray(frame), cv2_module().COLOR_RGB2GRAY)


def _check(video: np.ndarray) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or len(video) < 2:
    raise ValueError(f"Expected a uint8 video [T >= 2, H, W, 3], got {video.dtype} {video.shape}.")
  return video


def _warp(frame: np.ndarray, flow_: np.ndarray) -> np.ndarray:
  """`frame` sampled at x + flow(x) (bilinear, edges replicated): the next frame brought back onto this one."""
  cv2 = cv2_module()
  h, w = flow_.shape[:2]
  grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=-1)
  coords = grid + flow_
  return cv2.remap(frame, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def flicker(video: np.ndarray, static_pixels: float = 0.5) -> float:
  """Mean |frame t+1 - frame t| (0-255) over static pixels of all pairs; 0 where nothing is static."""
  video = _check(video)
  gray = [_gray(f) for f in video]
  total, count = 0.0, 0
  for t in range(len(video) - 1):
    static = np.linalg.norm(flow(gray[t], gray[t + 1]), axis=-1) < static_pixels
    diff = np.abs(video[t + 1].astype(np.float64) - video[t].astype(np.float64)).mean(axis=-1)
    total += float(diff[static].sum())
    count += int(static.sum())
  return total / count if count else 0.0


def warping_error(video: np.ndarray, occlusion_pixels: float = 1.0) -> float:
  """Mean squared difference ([0, 1] pixels) between frame t and frame t+1 warped back, over unoccluded pixels."""
  video = _check(video)
  gray = [_gray(f) for f in video]
  total, count = 0.0, 0
  for t in range(len(video) - 1):
    forward, backward = flow(gray[t], gray[t + 1]), flow(gray[t + 1], gray[t])
    visible = np.linalg.norm(forward + _warp(backward, forward), axis=-1) < occlusion_pixels
    warped = _warp(video[t + 1], forward).astype(np.float64) / 255.0
    error = np.mean((warped - video[t].astype(np.float64) / 255.0) ** 2, axis=-1)
    total += float(error[visible].sum())
    count += int(visible.sum())
  return total / count if count else 0.0


def probe_consistency(video: np.ndarray) -> float:
  """Captioned Shapes: the share of frames whose own color and shape reading equals the clip's (0 for a clip the
  probe cannot read)."""
  video = _check(video)
  whole = probe.read(video)
  if whole["color"] is None:
    return 0.0
  same = [(r["color"], r["shape"]) == (whole["color"], whole["shape"]) for r in (probe.read(f[None]) for f in video)]
  return float(np.mean(same))


def metrics(videos: Sequence[np.ndarray] | np.ndarray, shapes: bool = False) -> dict[str, float]:
  """Means over clips of `flicker` and `warping_error` (and `probe_consistency` with `shapes`)."""
  if len(videos) == 0:
    raise ValueError("temporal.metrics needs at least one video.")
  out = {"flicker": float(np.mean([flicker(v) for v in videos])),
         "warping_error": float(np.mean([warping_error(v) for v in videos]))}
  if shapes:
    out["probe_consistency"] = float(np.mean([probe_consistency(v) for v in videos]))
  return out
