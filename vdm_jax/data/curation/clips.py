"""Shots into clips, and the thresholds that decide which clips a dataset keeps.

    clips = split_shot(shot_start, shot_end, min_frames=25, max_frames=121)   # [(start, end), ...]
    kept, reasons = decide(scores, thresholds)

A shot shorter than `min_frames` gives no clip; a longer one is cut into the fewest clips of at most `max_frames`,
of equal length (so none is shorter than `min_frames` when `max_frames >= 2 min_frames`).
"""
from __future__ import annotations

import math
from typing import Mapping

from vdm_jax.config import ConfigError

# (score, bound, reason when it fails): a clip is kept when every score is within its bounds.
RULES = (
    ("motion", "min_motion", "static"),
    ("motion", "max_motion", "too_much_motion"),
    ("sharpness", "min_sharpness", "blurry"),
    ("brightness", "min_brightness", "too_dark"),
    ("brightness", "max_brightness", "too_bright"),
    ("contrast", "min_contrast", "low_contrast"),
    ("text", "max_text", "text_overlay"),
)


def check_lengths(min_frames: int, max_frames: int) -> None:
  if min_frames < 2 or max_frames < 2 * min_frames:
    raise ConfigError(f"clip.min_frames={min_frames}, clip.max_frames={max_frames}: need min_frames >= 2 and "
                      "max_frames >= 2 * min_frames (so that splitting a shot never leaves a clip too short).")


def split_shot(start: int, end: int, min_frames: int, max_frames: int) -> list[tuple[int, int]]:
  """The clips (start, end) of the shot [start, end): none if it is shorter than `min_frames`."""
  check_lengths(min_frames, max_frames)
  length = end - start
  if length < min_frames:
    return []
  n = math.ceil(length / max_frames)
  bounds = [start + (length * i) // n for i in range(n + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def decide(scores: Mapping[str, float], thresholds: Mapping[str, float]) -> tuple[bool, list[str]]:
  """(kept, reasons): the reasons are the rules of RULES the scores fail, in that order."""
  reasons = []
  for score, bound, reason in RULES:
    limit = thresholds[bound]
    if (bound.startswith("min") and scores[score] < limit) or (bound.startswith("max") and scores[score] > limit):
      reasons.append(reason)
  return not reasons, reasons
