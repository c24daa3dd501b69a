"""Curation of a video folder (`python -m experiments.curate`): clip lengths, score settings and the thresholds
that decide which clips are kept (docs/curation.md).

    python -m experiments.curate --input DIR --output OUT
    python -m experiments.curate --input DIR --output OUT --config configs/curate.py:strict
    python -m experiments.curate --input DIR --output OUT --config.thresholds.min_motion=0.5
    python -m experiments.curate --input DIR --output OUT --config.captioner.model=/models/blip-captioning

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
  # contrast: mean and std of the luma, 0-255; text: the frame fraction under steady text-shaped edges (subtitles and
  # titles score 0.03-0.15 on real clips, clips without text at most 0.014).
  c.thresholds = ml_collections.ConfigDict({
      "min_motion": 0.1, "max_motion": 12.0, "min_sharpness": 20.0, "min_brightness": 16.0,
      "max_brightness": 240.0, "min_contrast": 8.0, "max_text": 0.025})
  c.require_caption = False
  # A local transformers image-to-text folder ('' = none) captions the clips that pass the thresholds and have no
  # sidecar or manifest caption: `captions` of num_captions frames, the middle one as `caption`.
  c.captioner = ml_collections.ConfigDict({"model": "", "num_captions": 3, "max_new_tokens": 30})
  # Full frames of one source held in memory; a longer file is decoded twice, one clip at a time (same output).
  c.max_memory_mb = 2048
  if arg == "strict":
    c.thresholds.update({"min_motion": 0.5, "max_motion": 8.0, "min_sharpness": 60.0})
  return c
