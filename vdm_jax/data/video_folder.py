"""A tfds dataset (`video_folder`) of the kept clips of a curated folder (`experiments.curate`'s output), at one size,
length and frame rate, written as array_record like `captioned_shapes` and read by the same grain pipeline.

    source = video_folder.load_data_source("/data/curated", "64x64x17", "train")   # built on first use
    python -m experiments.train --config configs/vae.py:data=folder --config.input.folder=/data/curated --workdir W

`spec` is `HxWxT` or `HxWxT_Nfps` (frames taken at N frames per second; without it, every source frame). A record:
  video    uint8 [T, H, W, 3]
  caption  bytes ('' for a clip without one; `captioned_shapes.decode_text` gives str)
  source   bytes, the video's path relative to the curated folder's input
  start    int64, the source frame of the record's first frame; `step` float32, source frames between its frames
  fps      float32, the record's frame rate; `motion` float32, the clip's curation motion score

Windows: a kept clip `[start, end)` of a source at `fps_src` gives non-overlapping windows of T frames taken every
`step = max(fps_src / N, 1)` source frames (indices rounded); a clip shorter than one window gives none.
`max_windows` > 0 keeps that many per clip, spread evenly. Frames are resized with OpenCV's INTER_AREA to cover
H x W, then center-cropped. Each source is decoded once, streamed (`io.iter_video`), so memory does not grow
with its length.

Splits: a clip goes to `validation` when sha256("source:start") read as a fraction is under `validation_fraction`
(windows of one clip never straddle the splits); if that leaves validation empty and there are two clips or more,
the last clip goes there.

The build lives under `<folder>/tfds` (or `data_dir`); its config name holds the first 8 hex digits of
clips.jsonl's sha256, so a new curation of the folder builds a new dataset instead of reading a stale one.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from vdm_jax import io
from vdm_jax.data import sources

SPLITS = ("train", "validation")
_SPEC = re.compile(r"(\d+)x(\d+)x(\d+)(?:_(\d+(?:\.\d+)?)fps)?")


def parse_spec(spec: str) -> tuple[int, int, int, float]:
  """`"64x64x17"` -> (64, 64, 17, 0.0); `"48x80x17_8fps"` -> (48, 80, 17, 8.0)."""
  match = _SPEC.fullmatch(spec)
  if not match:
    raise ValueError(f"video_folder spec {spec!r}: expected HxWxT or HxWxT_Nfps, e.g. '64x64x17' or '64x64x17_8fps'.")
  height, width, frames = (int(g) for g in match.groups()[:3])
  if min(height, width) < 8 or frames < 1:
    raise ValueError(f"video_folder spec {spec!r}: height and width must be >= 8 and frames >= 1.")
  return height, width, frames, float(match.group(4) or 0.0)


def clips_digest(folder: str) -> str:
  """The first 8 hex digits of `<folder>/clips.jsonl`'s sha256 (FileNotFoundError names what is missing)."""
  path = os.path.join(folder, "clips.jsonl")
  if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, "report.json")):
    raise FileNotFoundError(f"{folder!r} holds no finished curation (clips.jsonl and report.json): run "
                            f"`python -m experiments.curate --input DIR --output {folder}` first.")
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:8]


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """A curated folder at one size. `videos`: the folder the curation read ('' -> report.json's `input`)."""
  folder: str = ""
  videos: str = ""
  height: int = 64
  width: int = 64
  num_frames: int = 17
  fps: float = 0.0
  validation_fraction: float = 0.1
  max_windows: int = 0


def make_config(folder: str, spec: str, videos: str = "", validation_fraction: float = 0.1,
                max_windows: int = 0) -> VideoFolderConfig:
  """The builder config of `folder` (a finished curation) at `spec`; its name is `<spec>_<clips digest>`, with
  `_val<fraction>` and `_max<max_windows>` when those differ from their defaults."""
  height, width, frames, fps = parse_spec(spec)
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction={validation_fraction}: must be in [0, 1).")
  folder = os.path.abspath(folder)
  digest = clips_digest(folder)  # first: it names a missing clips.jsonl or report.json
  if not videos:
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
      videos = json.load(f).get("input", "")
    if not videos:
      raise ValueError(f"{folder}/report.json does not say which folder was curated (curated before the report "
                       "recorded `input`): pass videos=<the curation's --input>.")
  name = f"{spec}_{digest}"
  if validation_fraction != 0.1:  # options that change the records name their own build
    name += f"_val{validation_fraction:g}"
  if max_windows:
    name += f"_max{max_windows}"
  return VideoFolderConfig(name=name, folder=folder, videos=os.path.abspath(videos),
                           height=height, width=width, num_frames=frames, fps=fps,
                           validation_fraction=validation_fraction, max_windows=max_windows,
                           description=f"{folder} at {spec}")


def read_kept_clips(folder: str) -> list[dict[str, Any]]:
  """The kept lines of `<folder>/clips.jsonl`, in file order."""
  with open(os.path.join(folder, "clips.jsonl"), encoding="utf-8") as f:
    return [line for line in map(json.loads, filter(str.strip, f)) if line.get("kept")]


def clip_split(clip: dict[str, Any], fraction: float) -> str:
  digest = hashlib.sha256(f"{clip['source']}:{clip['start']}".encode()).hexdigest()
  return "validation" if int(digest[:8], 16) / 2**32 < fraction else "train"


def assign_splits(clips: list[dict[str, Any]], fraction: float) -> dict[str, list[dict[str, Any]]]:
  """Split name -> its clips (see the module docstring)."""
  out = {split: [] for split in SPLITS}
  for clip in clips:
    out[clip_split(clip, fraction)].append(clip)
  if fraction > 0 and not out["validation"] and len(clips) >= 2:
    out["validation"].append(clips[-1])
    out["train"] = [c for c in out["train"] if c is not clips[-1]]
  return out


def windows(clip: dict[str, Any], num_frames: int, fps: float, max_windows: int = 0) -> list[np.ndarray]:
  """The source frame indices of each window of `clip` (int arrays of `num_frames`)."""
  step = max(clip["fps"] / fps, 1.0) if fps > 0 and clip.get("fps") else 1.0
  span = (num_frames - 1) * step + 1
  count = int((clip["end"] - clip["start"] - span) // (num_frames * step)) + 1
  if count <= 0:
    return []
  starts = range(count)
  if 0 < max_windows < count:
    starts = np.linspace(0, count - 1, max_windows).round().astype(int)
  base = np.arange(num_frames) * step
  return [clip["start"] + np.round(w * num_frames * step + base).astype(np.int64) for w in starts]


def resize_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, 3] resized (INTER_AREA; cubic when enlarging) to cover [height, width], center-cropped."""
  import cv2  # pylint: disable=g-import-not-at-top
  h, w = frame.shape[:2]
  scale = max(height / h, width / w)
  size = (max(width, round(w * scale)), max(height, round(h * scale)))
  resized = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
  top, left = (size[1] - height) // 2, (size[0] - width) // 2
  return np.ascontiguousarray(resized[top:top + height, left:left + width])


def source_examples(config: VideoFolderConfig, source: str, clips: list[dict[str, Any]]
                    ) -> Iterator[tuple[str, dict[str, Any]]]:
  """(key, example) for every window of `clips` (all of one source), decoding the source once."""
  plan = [(clip, index) for clip in clips
          for index in windows(clip, config.num_frames, config.fps, config.max_windows)]
  if not plan:
    return
  wanted = set(np.concatenate([index for _, index in plan]).tolist())
  frames = {}
  for t, frame in enumerate(io.iter_video(os.path.join(config.videos, source))):
    if t in wanted:
      frames[t] = resize_crop(frame, config.height, config.width)
    if t >= max(wanted):
      break
  for clip, index in plan:
    missing = [int(t) for t in index if int(t) not in frames]
    if missing:
      raise io.VideoReadError(f"{source}: frames {missing[:3]} of the clip at {clip['start']} did not decode "
                              f"(clips.jsonl does not match the file in {config.videos}).")
    step = float(index[1] - index[0]) if len(index) > 1 else 1.0
    yield f"{source}:{int(index[0])}", {
        "video": np.stack([frames[int(t)] for t in index]), "caption": clip.get("caption") or "",
        "source": source, "start": int(index[0]), "step": step,
        "fps": float(clip.get("fps") or 0.0) / step, "motion": float(clip.get("motion") or 0.0)}


def window_counts(config: VideoFolderConfig) -> dict[str, int]:
  """Split name -> how many windows (records) it will have."""
  splits = assign_splits(read_kept_clips(config.folder), config.validation_fraction)
  return {split: sum(len(windows(clip, config.num_frames, config.fps, config.max_windows)) for clip in clips)
          for split, clips in splits.items()}


def _no_windows(config: VideoFolderConfig, split: str) -> str:
  return (f"video_folder/{config.name} has no examples in {split}: the kept clips of {config.folder} give no window "
          f"of {config.num_frames} frames there (curate more footage, lower the frame count or the validation "
          "fraction).")


def split_sources(config: VideoFolderConfig, split: str) -> list[tuple[str, list[dict[str, Any]]]]:
  """(source, its clips in `split`) in clips.jsonl's order: the unit of work, one decode per source."""
  by_source: dict[str, list[dict[str, Any]]] = {}
  for clip in assign_splits(read_kept_clips(config.folder), config.validation_fraction)[split]:
    by_source.setdefault(clip["source"], []).append(clip)
  return list(by_source.items())


def split_examples(config: VideoFolderConfig, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """Every (key, example) of `split`, source by source in clips.jsonl's order."""
  for source, group in split_sources(config, split):
    yield from source_examples(config, source, group)


def _beam_examples(config: VideoFolderConfig, item: tuple[str, list[dict[str, Any]]]):
  return source_examples(config, *item)


def beam_split(config: VideoFolderConfig, split: str):
  """`split_examples` as a Beam PTransform: one element per source, so workers decode sources in parallel."""
  beam = tfds.core.lazy_imports.apache_beam
  return (beam.Create(split_sources(config, split))
          | beam.Reshuffle()
          | beam.FlatMap(functools.partial(_beam_examples, config)))


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """The kept clips of a curated video folder, at one size, length and frame rate (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  code_path = epath.Path(__file__)  # as captioned_shapes: skips tfds' importlib_resources lookup

  def __init__(self, *, file_format=None, use_beam: bool = False, **kwargs):
    """`use_beam`: generate with Beam (`beam_split`); `download_and_prepare` then needs a runner or options."""
    self._use_beam = use_beam
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Kept clips of the curated folder {c.folder}.",
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(c.num_frames, c.height, c.width, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "caption": tfds.features.Text(),
            "source": tfds.features.Text(),
            "start": tfds.features.Scalar(dtype=np.int64),
            "step": tfds.features.Scalar(dtype=np.float32),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "motion": tfds.features.Scalar(dtype=np.float32),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only
    c = self.builder_config
    counts = window_counts(c)
    if not any(counts.values()):
      raise ValueError(_no_windows(c, "any split"))
    generate = beam_split if self._use_beam else split_examples
    return {split: generate(c, split) for split in SPLITS if counts[split]}  # tfds refuses an empty split

  def _generate_examples(self, split):  # tfds' abstract method; `_split_generators` gives the generators
    return split_examples(self.builder_config, split)


def builder(folder: str, spec: str, data_dir: str | None = None, use_beam: bool = False, **kwargs) -> VideoFolder:
  """The builder of `folder` at `spec` (kwargs: `make_config`'s), stored under `<folder>/tfds` by default."""
  config = make_config(folder, spec, **kwargs)
  return VideoFolder(config=config, data_dir=data_dir or os.path.join(config.folder, "tfds"), use_beam=use_beam)


def build(folder: str, spec: str, data_dir: str | None = None, beam_runner: str = "", beam_options=(),
          **kwargs) -> VideoFolder:
  """Builds `folder` at `spec` unless it is built (on Beam's `beam_runner` with `beam_options`, Beam's
  command-line options, when a runner is named); returns the builder."""
  folder_builder = builder(folder, spec, data_dir, use_beam=bool(beam_runner), **kwargs)
  name = f"video_folder/{folder_builder.builder_config.name}"
  sources.check_info(name, folder_builder.data_path)
  if not folder_builder.is_prepared():
    logging.info("Building %s from %s into %s%s.", name, folder, folder_builder.data_dir,
                 f" on Beam's {beam_runner}" if beam_runner else "")
    download_config = tfds.download.DownloadConfig(try_download_gcs=False)
    if beam_runner:
      options = tfds.core.lazy_imports.apache_beam.options.pipeline_options.PipelineOptions(list(beam_options))
      download_config = tfds.download.DownloadConfig(try_download_gcs=False, beam_runner=beam_runner,
                                                     beam_options=options)
    folder_builder.download_and_prepare(download_config=download_config)
  return folder_builder


def load_data_source(folder: str, spec: str, split: str, data_dir: str | None = None, prepare: bool = True,
                     **kwargs):
  """Random-access source of `split` (records in the module docstring), built first when missing."""
  if prepare:
    folder_builder = build(folder, spec, data_dir, **kwargs)
  else:
    folder_builder = builder(folder, spec, data_dir, **kwargs)
    sources.check_info(f"video_folder/{folder_builder.builder_config.name}", folder_builder.data_path)
    if not folder_builder.is_prepared():
      raise FileNotFoundError(f"video_folder/{folder_builder.builder_config.name} is not built in "
                              f"{folder_builder.data_dir}; call with prepare=True.")
  name = f"video_folder/{folder_builder.builder_config.name}"
  base = split.split("[")[0]
  if base not in folder_builder.info.splits:
    if base in SPLITS:  # built without it: it had no windows
      raise ValueError(_no_windows(folder_builder.builder_config, repr(base)))
    raise ValueError(f"Unknown split {split!r}; allowed values: {list(SPLITS)}.")
  return sources.checked_source(folder_builder.as_data_source(split), name, split, folder_builder.data_path)
