"""Curation of a video folder (`python -m experiments.curate`): clip lengths, score settings and the thresholds
that decide which clips are kept (docs/curation.md).

    python -m experiments.curate --input DIR --output OUT
    python -m experiments.curate --input DIR --output OUT --config configs/curate.py:strict
    python -m experiments.curate --input DIR --output OUT --config.thresholds.min_motion=0.5

Defaults suit footage at 24-30 fps: clips of 1-5 s (25-121 frames). `strict` keeps only clips that move clearly
and are sharp, in the spirit of SVD's filtered set.
"""
import ml_collections

from vdm_jax.config import ConfigError


def get_config(arg: str | None = None):
  if arg not in (None, "", "strict"):
    raise ConfigError(f"Config argument {arg!r}; allowed: '' or 'strict'.")
  c = ml_collections.ConfigDict()
  c.clip = ml_collections.ConfigDict({"min_frames": 25, "max_frames": 121})
  c.scores = ml_collections.ConfigDict({"motion_pairs": 4, "motion_short_side": 128, "quality_frames": 4,
                                        "quality_short_side": 256})
  # motion in px/frame at a 128-px short side; sharpness: variance of the luma's Laplacian at 256 px; brightness and
  # contrast: mean and std of the luma, 0-255.
  c.thresholds = ml_collections.ConfigDict({
      "min_motion": 0.1, "max_motion": 12.0, "min_sharpness": 20.0, "min_brightness": 16.0,
      "max_brightness": 240.0, "min_contrast": 8.0})
  c.require_caption = False
  if arg == "strict":
    c.thresholds.update({"min_motion": 0.5, "max_motion": 8.0, "min_sharpness": 60.0})
  return c
