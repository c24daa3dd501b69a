"""Shot boundaries of a video: hard cuts and gradual transitions (dissolves, fades), found by a cascade.

    cuts = detect_cuts(frames)                 # uint8 [T, H, W, 3] -> [Cut(start, end, kind), ...] in frame order
    shots = shots_between(cuts, num_frames)   # [(start, end), ...]: the frames of each shot

1. A cheap pass on small frames (short side 48 px) measures each frame's mean absolute difference from the previous
   one, and fits it as `a * before + b * after` (non-negative least squares), `before` and `after` being the frames
   `span` (8) before and after it.
2. Hard cuts: a step of at least `hard_min` that is `hard_ratio` times the larger of its neighbours' medians on
   either side and of the steps right beside it (fast motion and a fade's equal steps are not cuts). Reported at the
   new shot's first frame.
3. Gradual transitions are confirmed runs of frames that the blend explains clearly better (error under
   `blend_ratio` of the best unscaled neighbour's) than either neighbour alone while the neighbours differ
   (`gradual_min`), with dissolve-like weights (both present, summing to about 1) or a frame darker than the brighter
   neighbour (a fade, or a dissolve into a dark shot). A run is trimmed to its changing frames and confirmed when the
   weights move from one side to the other, or its frames change faster than those around it, or the neighbours'
   difference peaks on it, or its frames go nearly black; a run holding a hard cut, one that hardly changes (a still
   shot between two transitions) or one longer than 2 span + 2 frames is not a transition.

Measured against PySceneDetect on videos with known cuts in docs/curation.md (`experiments/bench_cuts.py`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from vdm_jax.data.curation import motion


@dataclasses.dataclass(frozen=True)
class Cut:
  """A shot boundary. Hard cut: `start == end`, the new shot's first frame. Gradual transition: the frames
  [start, end) belong to neither shot; `end` is the new shot's first frame."""
  start: int
  end: int
  kind: str  # 'hard' or 'gradual'


def small_frames(frames: np.ndarray, short_side: int = 48) -> np.ndarray:
  """float32 [T, h, w, 3] in [0, 1]: `frames` (uint8 [T, H, W, 3]) resized to a short side of `short_side`."""
  return np.stack([motion.resize_short_side(f, short_side) for f in frames]).astype(np.float32) / 255.0


def _blend_fit(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per row of x, a, b [N, D]: the non-negative least-squares weights (wa, wb) of x ~ wa a + wb b [N, 2] and the
  RMS error [N]."""
  aa, bb, ab = (a * a).sum(1), (b * b).sum(1), (a * b).sum(1)
  ax, bx = (a * x).sum(1), (b * x).sum(1)
  det = aa * bb - ab * ab
  safe = np.where(det > 1e-9, det, 1.0)
  wa, wb = (bb * ax - ab * bx) / safe, (aa * bx - ab * ax) / safe
  # Where a weight comes out negative (or the system is degenerate) the best non-negative fit uses one frame.
  only_a = np.maximum(ax / np.maximum(aa, 1e-9), 0.0)
  only_b = np.maximum(bx / np.maximum(bb, 1e-9), 0.0)
  err = lambda ua, ub: np.sqrt(((x - ua[:, None] * a - ub[:, None] * b) ** 2).mean(1))
  use_pair = (det > 1e-9) & (wa >= 0) & (wb >= 0)
  err_a, err_b = err(only_a, 0 * only_a), err(0 * only_b, only_b)
  single_a = err_a <= err_b
  wa = np.where(use_pair, wa, np.where(single_a, only_a, 0.0))
  wb = np.where(use_pair, wb, np.where(single_a, 0.0, only_b))
  return np.stack([wa, wb], 1), err(wa, wb)


def frame_scores(small: np.ndarray, span: int = 8) -> dict[str, np.ndarray]:
  """The cheap pass on small frames [T, h, w, 3]: 'diff' [T] (mean |frame t - frame t-1|, 0 at t = 0), and for
  t in [span, T - span) 'blend' (the blend's RMS error over the best unscaled neighbour's), 'apart' (RMS between
  the neighbours), 'weights' [T, 2] and 'neighbour_brightness' (the brighter neighbour's mean; NaN elsewhere), and
  'brightness' [T] (each frame's mean)."""
  t_all = len(small)
  flat = small.reshape(t_all, -1)
  diff = np.zeros(t_all, np.float32)
  diff[1:] = np.abs(flat[1:] - flat[:-1]).mean(1)
  brightness = flat.mean(1)
  out = {"diff": diff, "blend": np.full(t_all, np.nan), "apart": np.full(t_all, np.nan),
         "weights": np.full((t_all, 2), np.nan), "brightness": brightness,
         "neighbour_brightness": np.full(t_all, np.nan)}
  if t_all > 2 * span:
    x, a, b = flat[span:-span], flat[:-2 * span], flat[2 * span:]
    weights, blend_err = _blend_fit(x, a, b)
    single = np.minimum(np.sqrt(((x - a) ** 2).mean(1)), np.sqrt(((x - b) ** 2).mean(1)))
    out["blend"][span:-span] = blend_err / np.maximum(single, 1e-6)
    out["apart"][span:-span] = np.sqrt(((a - b) ** 2).mean(1))
    out["weights"][span:-span] = weights
    out["neighbour_brightness"][span:-span] = np.maximum(brightness[:-2 * span], brightness[2 * span:])
  return out


def detect_cuts(frames: np.ndarray, short_side: int = 48, span: int = 8, hard_min: float = 0.02,
                hard_ratio: float = 2.5, neighbours: int = 6, blend_ratio: float = 0.8, gradual_min: float = 0.08,
                min_run: int = 4, min_shift: float = 0.3) -> list[Cut]:
  """Hard cuts and gradual transitions of uint8 frames [T, H, W, 3] (see the module docstring), in frame order."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [T, H, W, 3].")
  scores = frame_scores(small_frames(frames, short_side), span)
  hard = hard_cuts(scores["diff"], hard_min, hard_ratio, neighbours)
  gradual = gradual_transitions(scores, hard, span, blend_ratio, gradual_min, min_run, min_shift)
  return sorted([Cut(t, t, "hard") for t in hard] + gradual, key=lambda c: c.start)


def hard_cuts(diff: np.ndarray, hard_min: float = 0.02, hard_ratio: float = 2.5, neighbours: int = 6) -> list[int]:
  """The frames that start a new shot abruptly, from the frame differences `diff` [T] (`frame_scores`)."""
  hard, t_all = [], len(diff)
  for t in range(1, t_all):
    # The larger side's median: a step inside a fade has large differences on at least one side, a cut on neither;
    # and the step must stand alone: a fade's steps come in runs of equal ones.
    sides = [diff[max(1, t - neighbours):t], diff[t + 1:t + 1 + neighbours]]
    baseline = max([float(np.median(x)) for x in sides if len(x)], default=0.0)
    beside = max(diff[t - 1] if t > 1 else 0.0, diff[t + 1] if t + 1 < t_all else 0.0)
    if diff[t] >= hard_min and diff[t] >= hard_ratio * max(baseline, beside, 0.005):
      hard.append(t)
  return hard


def gradual_transitions(scores: dict[str, np.ndarray], hard: list[int], span: int = 8, blend_ratio: float = 0.8,
                        gradual_min: float = 0.08, min_run: int = 4, min_shift: float = 0.3) -> list[Cut]:
  """Dissolves and fades from `frame_scores`' output, away from the `hard` cuts."""
  diff, apart, t_all = scores["diff"], scores["apart"], len(scores["diff"])
  wa, wb = scores["weights"][:, 0], scores["weights"][:, 1]
  darker = scores["brightness"] / np.maximum(scores["neighbour_brightness"], 1e-6)
  dissolve = (wa >= 0.15) & (wb >= 0.15) & (np.abs(wa + wb - 1.0) <= 0.25)
  fade = darker < 0.85
  blended = (scores["blend"] < blend_ratio) & (apart >= gradual_min) & (dissolve | fade)
  found = []
  for start, end in _runs(blended, max_gap=2):
    # Still frames next to a transition also fit as a blend (their neighbours reach into it): keep the frames that
    # change at least half as fast as the run's faster quarter.
    steps = diff[start:end]
    changing = np.flatnonzero(steps >= 0.5 * np.percentile(steps, 75))
    start, end = start + int(changing[0]), start + int(changing[-1]) + 1
    # Smooth motion also fits as a blend of the frames around it, but with constant weights.
    moves = max(np.ptp(wa[start:end]), np.ptp(wb[start:end])) >= min_shift
    # Between two moving shots the motion blurs the weights, but the frames change faster than around them.
    around = np.concatenate([diff[max(1, start - 10):start], diff[end:end + 10]])
    faster = len(around) > 0 and diff[start:end].mean() >= 1.5 * max(float(np.median(around)), 0.005)
    # The neighbours straddle two shots on the run and one shot further out.
    outside = [apart[t] for t in (start - span, end - 1 + span) if 0 <= t < t_all and not np.isnan(apart[t])]
    peaks = len(outside) == 2 and np.nanmax(apart[start:end]) >= 1.5 * max(outside)
    confirmed = moves or faster or peaks or np.min(darker[start:end]) < 0.5
    changes = float(diff[start:end + 1].sum()) >= gradual_min / 3
    has_cut = any(start - 1 <= h <= end for h in hard)
    # Neighbours `span` frames away see across a transition of up to 2 span frames, no longer.
    if min_run <= end - start <= 2 * span + 2 and changes and confirmed and not has_cut:
      found.append(Cut(start, end, "gradual"))
  return found


def _runs(flags: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
  """(start, end) of the runs of True in `flags`, joining runs separated by at most `max_gap` False."""
  runs = []
  for t in np.flatnonzero(flags):
    if runs and t - runs[-1][1] <= max_gap:
      runs[-1][1] = t + 1
    else:
      runs.append([t, t + 1])
  return [(int(a), int(b)) for a, b in runs]


def shots_between(cuts: list[Cut], num_frames: int) -> list[tuple[int, int]]:
  """The shots (start, end) a video of `num_frames` frames splits into at `cuts`; transition frames belong to no
  shot."""
  shots, start = [], 0
  for cut in sorted(cuts, key=lambda c: c.start):
    if cut.start > start:
      shots.append((start, cut.start))
    start = max(start, cut.end)
  if start < num_frames:
    shots.append((start, num_frames))
  return shots
