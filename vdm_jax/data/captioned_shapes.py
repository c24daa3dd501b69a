"""Captioned Shapes as a tensorflow-datasets builder (`captioned_shapes`), rendered locally into array_record files.

    from vdm_jax.data import captioned_shapes
    source = captioned_shapes.load_data_source("32x32x9", "train", data_dir="/tmp/tfds")  # builds if missing
    record = source[0]

A record read through `builder.as_data_source(split)` (random access, grain-ready) is a dict:
  video    uint8 [T, H, W, 3]
  caption  bytes, e.g. b'a red circle moving left' (tfds Text decodes to bytes; `decode_text(record)` gives str)
  color, shape, motion  bytes, the attribute words (b'red', b'circle', b'left')
  seed     int (an int64 feature); the clip is exactly
           `shapes.render_clip(seed, T, H, W, color=color, shape=shape, motion=motion)`.
Record `i` of a split is example `i` (shuffling disabled: the seeds are already random draws; grain shuffles).

Splits: `train`, `validation`, and `heldout` when the config holds combinations out. Each split has its own disjoint
seed range (`seed_offset + SPLIT_SEED_BASE[split] + index`). A clip whose (color, shape, motion) contains a held-out
pair is never written to train/validation: its attributes are redrawn from `default_rng([seed, 1])` among the allowed
combinations, keeping its geometry; `heldout` holds only held-out combinations, drawn the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import os
import re
import shutil
import time
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from vdm_jax.data import shapes, sources

SPLIT_SEED_BASE = {"train": 0, "validation": 1_000_000_000, "heldout": 2_000_000_000}
# An `incomplete.*` build folder untouched this long is left over from an interrupted build (a running build
# writes every few seconds; the largest config builds in under a minute).
STALE_BUILD_SECONDS = 10 * 60
_REDRAW_STREAM = 1  # default_rng([seed, 1]) redraws attributes; stream 0 is the clip itself


@dataclasses.dataclass(eq=False)
class CaptionedShapesConfig(tfds.core.BuilderConfig):
  """Size, split sizes and held-out combinations of a Captioned Shapes variant.

  heldout: pairs of attribute values of different kinds, e.g. (("red", "circle"), ("blue", "left")): every clip
  whose combination contains a pair is excluded from train/validation and goes to the `heldout` split
  (`num_heldout` clips; the split exists only when both are non-empty).
  """
  height: int = 64
  width: int = 64
  num_frames: int = 17
  num_train: int = 16384
  num_validation: int = 1024
  num_heldout: int = 0
  heldout: tuple[tuple[str, str], ...] = ()
  seed_offset: int = 0

  def __post_init__(self):
    self.heldout = shapes.validate_heldout(self.heldout)
    if self.num_heldout and not self.heldout:
      raise ValueError(f"Config {self.name}: num_heldout={self.num_heldout} needs held-out pairs in `heldout`.")
    for key in ("num_train", "num_validation", "num_heldout"):
      if not 0 <= getattr(self, key) < 1_000_000_000:
        raise ValueError(f"Config {self.name}: {key}={getattr(self, key)} must be in [0, 1e9).")
    if min(self.height, self.width) < 8 or self.num_frames < 1:
      raise ValueError(f"Config {self.name}: need height, width >= 8 and num_frames >= 1.")
    if self.description is None:
      held = f", held out {list(self.heldout)}" if self.heldout else ""
      self.description = f"{self.height}x{self.width}, {self.num_frames} frames{held}."

  @property
  def splits(self) -> dict[str, int]:
    """Split name -> number of clips, for the non-empty splits."""
    sizes = {"train": self.num_train, "validation": self.num_validation, "heldout": self.num_heldout}
    return {split: size for split, size in sizes.items() if size}


HELDOUT_PAIRS = (("red", "circle"), ("blue", "square"), ("green", "left"), ("yellow", "up"))


def split_seed(config: CaptionedShapesConfig, split: str, index: int) -> int:
  """The seed of example `index` of `split`."""
  return config.seed_offset + SPLIT_SEED_BASE[split] + index


def render_example(config: CaptionedShapesConfig, split: str, index: int) -> dict[str, Any]:
  """Example `index` of `split` as written to disk: video uint8 [T, H, W, 3], caption/color/shape/motion str, seed."""
  seed = split_seed(config, split, index)
  attributes = shapes.clip_params(seed, config.height, config.width)
  want_heldout = split == "heldout"
  if shapes.is_heldout(attributes, config.heldout) != want_heldout:
    rng = np.random.default_rng([seed, _REDRAW_STREAM])
    attributes = shapes.sample_attributes(rng, config.heldout, only_heldout=want_heldout)
  attributes = {key: attributes[key] for key in shapes.ATTRIBUTES}
  clip = shapes.render_clip(seed, config.num_frames, config.height, config.width, **attributes)
  return dict(video=clip["video"], caption=clip["caption"], seed=seed, **attributes)


class CaptionedShapes(tfds.core.GeneratorBasedBuilder):
  """Captioned Shapes: one coloured shape moving on black, with a caption naming color, shape and motion."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (spec v1, docs/captioned_shapes.md)."}
  # Sizes: rendering + writing runs at ~500 clips/s (64x64x17) on one CPU core, ~1.6 KB per clip on disk,
  # so the default builds in ~35 s.
  BUILDER_CONFIGS = [
      CaptionedShapesConfig(name="64x64x17", num_train=16384, num_validation=1024),
      CaptionedShapesConfig(name="32x32x9", height=32, width=32, num_frames=9, num_train=16384, num_validation=1024),
      # Builds in about a second: for tests and `runlocal` smoke runs.
      CaptionedShapesConfig(name="32x32x9_tiny", height=32, width=32, num_frames=9, num_train=512,
                            num_validation=64),
      CaptionedShapesConfig(name="64x64x17_heldout", num_train=16384, num_validation=1024, num_heldout=1024,
                            heldout=HELDOUT_PAIRS),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "64x64x17"
  # tfds 4.9.10 derives `code_path` through `importlib_resources`, which it no longer installs on Python >= 3.9;
  # giving the path directly skips that (it is only used to look for a checksums file, and there is none).
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    """As tfds builders, but writes array_record by default (random access for grain)."""
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n")[0] + " " + config.description,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(
                shape=(config.num_frames, config.height, config.width, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            "caption": tfds.features.Text(),
            "color": tfds.features.Text(),
            "shape": tfds.features.Text(),
            "motion": tfds.features.Text(),
            "seed": tfds.features.Scalar(dtype=np.int64),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # rendered, nothing to download
    return {split: self._generate_examples(split) for split in self.builder_config.splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for index in range(self.builder_config.splits[split]):
      yield index, render_example(self.builder_config, split, index)


# Split sizes of configs named by size alone: "HxWxT" as the 64x64x17 default, "HxWxT_tiny" as 32x32x9_tiny, and
# "HxWxT_small" for bucketed runs that read a few thousand clips per size (a quarter of the rendering).
SIZED_SPLITS = {"": (16384, 1024), "_small": (4096, 256), "_tiny": (512, 64)}
_SIZED = re.compile(r"^(\d+)x(\d+)x(\d+)(_small|_tiny)?$")


def config_named(name: str) -> str | CaptionedShapesConfig:
  """A predefined config name as it is, or a config for any size named "HxWxT" (16,384 / 1,024 clips),
  "HxWxT_small" (4,096 / 256) or "HxWxT_tiny" (512 / 64): buckets of several sizes and durations read these
  (frames 1: single images)."""
  if name in {c.name for c in CaptionedShapes.BUILDER_CONFIGS}:
    return name
  match = _SIZED.match(name)
  if not match:
    allowed = [c.name for c in CaptionedShapes.BUILDER_CONFIGS]
    raise ValueError(f"Captioned Shapes config {name!r}; allowed: {allowed}, or any 'HxWxT', 'HxWxT_small' or "
                     "'HxWxT_tiny'.")
  height, width, frames = (int(x) for x in match.groups()[:3])
  num_train, num_validation = SIZED_SPLITS[match.group(4) or ""]
  return CaptionedShapesConfig(name=name, height=height, width=width, num_frames=frames, num_train=num_train,
                               num_validation=num_validation)


def builder(config: str | CaptionedShapesConfig = "64x64x17", data_dir: str | None = None) -> CaptionedShapes:
  """The builder for a config name (predefined, or any size: `config_named`) or a custom `CaptionedShapesConfig`
  (array_record format)."""
  return CaptionedShapes(config=config_named(config) if isinstance(config, str) else config, data_dir=data_dir)


def load_data_source(config: str | CaptionedShapesConfig, split: str, data_dir: str | None = None,
                     prepare: bool = True):
  """Random-access source for `split` (see the module docstring for records); renders the dataset first if missing.

  With `prepare=False` a missing dataset raises FileNotFoundError instead of being built. A build holds a lock
  file in the config's folder, so processes starting together build once and the others wait for it; under it,
  `incomplete.*` folders that interrupted builds left behind are deleted once untouched for
  `STALE_BUILD_SECONDS`. An incomplete or damaged prepared folder (no dataset_info.json, a missing, truncated or
  overwritten shard) raises `sources.DatasetError` naming dataset, split, file and the folder to delete.
  """
  shapes_builder = builder(config, data_dir)
  name = f"captioned_shapes/{shapes_builder.builder_config.name}"
  with _build_lock(shapes_builder.data_path.parent):
    sources.check_info(name, shapes_builder.data_path)
    remove_stale_builds(shapes_builder.data_path.parent)
    if not shapes_builder.is_prepared():
      if not prepare:
        raise FileNotFoundError(f"{name} is not prepared in {shapes_builder.data_dir}; call with prepare=True.")
      shapes_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  if split.split("[")[0] not in shapes_builder.info.splits:  # slices such as 'train[:10%]' are allowed
    raise ValueError(f"Unknown split {split!r}; allowed values: {list(shapes_builder.info.splits)}.")
  return sources.checked_source(shapes_builder.as_data_source(split), name, split, shapes_builder.data_path)


@contextlib.contextmanager
def _build_lock(folder):
  """An exclusive lock on `<folder>/.build.lock` (local folders; elsewhere, such as gs://, none)."""
  folder = os.fspath(folder)
  if "://" in folder:
    yield
    return
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, ".build.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    yield


def remove_stale_builds(folder, max_age: float | None = None) -> list[str]:
  """Deletes the `incomplete.*` folders in `folder` (a builder config's folder) whose newest file is older than
  `max_age` seconds (default `STALE_BUILD_SECONDS`); returns their paths. Call under `_build_lock`: a builder
  of this module holds it while it writes, and the age spares a build by another tool (`tfds build`)."""
  max_age = STALE_BUILD_SECONDS if max_age is None else max_age
  removed = []
  for path in sorted(glob.glob(os.path.join(os.fspath(folder), "incomplete.*"))):
    newest = max([os.path.getmtime(path)] + [os.path.getmtime(os.path.join(root, f))
                                            for root, _, files in os.walk(path) for f in files])
    age = time.time() - newest
    if age >= max_age:
      logging.info("Deleting %s: left by an interrupted build (untouched for %.0f minutes).", path, age / 60)
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


def decode_text(record: Mapping[str, Any]) -> dict[str, Any]:
  """A record with its bytes values (caption, color, shape, motion) decoded to str; usable as a grain map."""
  return {key: value.decode("utf-8") if isinstance(value, bytes) else value for key, value in record.items()}
