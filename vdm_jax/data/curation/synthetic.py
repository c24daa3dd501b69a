"""Videos with known shot boundaries, for measuring cut detectors: shots joined by hard cuts, dissolves and fades.

    video, truth = join_shots(shots, num_transitions=15, seed=0)   # truth: [Cut, ...]
    scores = match_cuts(detected, truth)                          # precision, recall, per kind

`shots` are uint8 [T_i, H, W, 3] at one size (segments of real footage, each within one shot of its source, or
rendered clips); `render` stands in for clips to render on demand. Each segment is 40-49 frames of a randomly chosen
shot, never the same one twice in a row; each boundary is a hard cut (55%), else a dissolve (60%) or a fade through
black of 8-15 frames made from the last frames of one segment and the first of the next.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from vdm_jax.data.curation.cuts import Cut


def join_shots(shots: Sequence[np.ndarray], num_transitions: int, seed: int,
               render: Callable[[int, int], np.ndarray] | None = None, num_rendered: int = 2,
               lengths: tuple[int, int] = (40, 50), transition: tuple[int, int] = (8, 16)
               ) -> tuple[np.ndarray, list[Cut]]:
  """A video of `num_transitions + 1` segments and its boundaries. `render(seed, num_frames)` (optional) makes a
  clip that counts as `num_rendered` more shot choices."""
  rng = np.random.default_rng(seed)
  choices = len(shots) + (num_rendered if render is not None else 0)
  frames, truth, previous = [], [], None
  for i in range(num_transitions + 1):
    k = previous
    while k == previous:
      k = int(rng.integers(0, choices))
    previous = k
    length = int(rng.integers(*lengths))
    if k >= len(shots):
      clip = render(int(rng.integers(1_000_000, 2_000_000)), length)
    else:
      source = shots[k]
      length = min(length, len(source))
      first = int(rng.integers(0, len(source) - length + 1))
      clip = source[first:first + length]
    if i == 0:
      frames = list(clip)
      continue
    kind = "hard" if rng.random() < 0.55 else ("dissolve" if rng.random() < 0.6 else "fade")
    if kind == "hard":
      truth.append(Cut(len(frames), len(frames), "hard"))
      frames += list(clip)
      continue
    n = int(rng.integers(*transition))
    a, b = np.stack(frames[-n:]).astype(np.float32), clip[:n].astype(np.float32)
    alpha = (np.arange(n) + 1)[:, None, None, None] / (n + 1)
    if kind == "dissolve":
      mixed = (1 - alpha) * a + alpha * b
    else:  # out to black over the first half, in from black over the second
      mixed = np.where(alpha < 0.5, a * (1 - 2 * alpha), b * (2 * alpha - 1))
    start = len(frames) - n
    frames[-n:] = list(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))
    frames += list(clip[n:])
    truth.append(Cut(start, start + n, "gradual"))
  return np.stack(frames), truth


def matches(cut: Cut, true: Cut, tolerance: int = 1) -> bool:
  """Whether a detected `cut` finds the `true` one: a hard cut within `tolerance` frames (any detection that short),
  a gradual one by any detection whose middle frame lies within the transition (give or take `tolerance`)."""
  if true.kind == "hard":
    return abs(cut.start - true.start) <= tolerance and cut.end - cut.start <= 2
  return true.start - tolerance <= (cut.start + cut.end) // 2 <= true.end + tolerance


def match_cuts(detected: Sequence[Cut], truth: Sequence[Cut], tolerance: int = 1) -> dict[str, float]:
  """Precision and recall of `detected` against `truth` (each true cut found at most once), overall and per kind
  of true cut ('recall_hard', 'recall_gradual'), with the counts."""
  found, correct = set(), 0
  for cut in detected:
    hit = next((i for i, true in enumerate(truth) if i not in found and matches(cut, true, tolerance)), None)
    if hit is not None:
      found.add(hit)
      correct += 1
  out = {"precision": correct / max(len(detected), 1), "recall": len(found) / max(len(truth), 1),
         "detected": len(detected), "true": len(truth)}
  for kind in ("hard", "gradual"):
    ids = [i for i, true in enumerate(truth) if true.kind == kind]
    out[f"recall_{kind}"] = sum(i in found for i in ids) / max(len(ids), 1)
  return out
