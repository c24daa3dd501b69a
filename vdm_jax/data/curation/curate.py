"""Curates a folder of videos into scored clips: `OUT/clips.jsonl`, `OUT/report.json` (the contract in
docs/curation.md) and `OUT/report.html`.

    report = curate_folder(input_dir, output_dir, config)   # config: configs/curate.py's ConfigDict

Each video file under `input_dir` (by extension, `VIDEO_EXTENSIONS`) is decoded with PyAV, cut into shots
(`cuts.detect_cuts`), each shot split into clips (`clips.split_shot`; a shot too short for any gets one line, not
kept), each clip scored (`motion`, `quality`) and kept or rejected by the config's thresholds. A file that cannot be
decoded (empty, truncated, not a video, a folder with a video's name) is listed in the report's `unreadable` with
its error and the run goes on.

Every source's result is written on its own (`OUT/.parts/`, renamed into place when complete), so a rerun after an
interruption skips the sources already done, and `clips.jsonl` and `report.json` are rebuilt from all of them in
the order of the sources' paths: the output does not depend on where a run was stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable

import numpy as np

from vdm_jax import io
from vdm_jax.config import ConfigError
from vdm_jax.data.curation import captioner, captions, clips, cuts, motion, quality, text_overlay
from vdm_jax.data.curation import frames as frames_lib
from vdm_jax.data.curation import report as report_lib

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")


def find_videos(input_dir: str) -> list[str]:
  """Paths (relative to `input_dir`, sorted) of every entry whose name ends with a video extension: folders with
  such a name are listed too, so that they are reported as unreadable rather than silently skipped."""
  found = []
  for root, dirs, files in os.walk(input_dir):
    dirs.sort()
    for name in files + [d for d in dirs if d.lower().endswith(VIDEO_EXTENSIONS)]:
      if name.lower().endswith(VIDEO_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), input_dir))
  return sorted(found)


def frame_rate(path: str) -> float:
  """Frames per second of the video at `path`: its stream's average rate (GIF: from the frame durations)."""
  if path.lower().endswith(".gif"):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(path) as im:
      durations = []
      for i in range(getattr(im, "n_frames", 1)):
        im.seek(i)
        durations.append(im.info.get("duration", 100))
    return 1000.0 / max(float(np.mean(durations)), 1.0)
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path) as container:
    rate = container.streams.video[0].average_rate
  return float(rate) if rate else 0.0


def score_clip(frames: np.ndarray, config) -> dict[str, float]:
  """Every score of a clip's frames [T, H, W, 3] that the thresholds read."""
  c = config.scores
  return {**motion.motion_scores(frames, num_pairs=c.motion_pairs, short_side=c.motion_short_side),
          **quality.quality_scores(frames, num_frames=c.quality_frames, short_side=c.quality_short_side),
          **text_overlay.text_scores(frames, num_frames=c.quality_frames, short_side=c.quality_short_side)}


def curate_source(input_dir: str, source: str, caption: str | None, config
                  ) -> tuple[list[dict[str, Any]], list[str]]:
  """The clips.jsonl lines of one video and a thumbnail of each line's middle frame (raises on a file that
  cannot be decoded). Memory: small copies of every frame plus the full frames up to `config.max_memory_mb`
  (`frames.SourceFrames`); the output is the same whatever the budget."""
  path = os.path.join(input_dir, source)
  if not os.path.isfile(path):
    raise io.VideoReadError(f"{source!r} is not a file")
  video = frames_lib.SourceFrames(path, int(config.max_memory_mb) << 20)
  fps = frame_rate(path)
  shots = cuts.shots_between(cuts.detect_cuts(video.small, short_side=frames_lib.CUT_SHORT_SIDE), video.num_frames)
  lines, spans = [], []  # spans: the frames each line needs (a clip's, or a too-short shot's middle one)
  for index, (shot_start, shot_end) in enumerate(shots):
    base = {"source": source, "shot": index, "shot_start": shot_start, "shot_end": shot_end, "fps": fps,
            "caption": caption}
    pieces = clips.split_shot(shot_start, shot_end, config.clip.min_frames, config.clip.max_frames)
    if not pieces:
      lines.append({**base, "start": shot_start, "end": shot_end, "motion": None, "kept": False,
                    "reasons": ["shot_too_short"]})
      middle = (shot_start + shot_end) // 2
      spans.append((middle, middle + 1))
    for start, end in pieces:
      lines.append({**base, "start": start, "end": end})
      spans.append((start, end))
  thumbnails = []
  for line, (start, end), span in zip(lines, spans, video.spans(spans)):
    thumbnails.append(report_lib.thumbnail(span[(start + end) // 2 - start]))
    if "kept" in line:  # a too-short shot: decided already
      continue
    scores = score_clip(span, config)
    kept, reasons = clips.decide(scores, config.thresholds)
    if kept and caption is None and config.captioner.model:  # a model captions what passed the thresholds
      c = config.captioner
      line["captions"] = captioner.cached(c.model, c.num_captions, c.max_new_tokens)(span)
      line["caption"] = line["captions"][len(line["captions"]) // 2] or None
    if config.require_caption and not line["caption"]:
      kept, reasons = False, reasons + ["no_caption"]
    line.update({**{k: round(v, 6) for k, v in scores.items()}, "kept": kept, "reasons": reasons})
  return lines, thumbnails


def _part_path(output_dir: str, source: str) -> str:
  return os.path.join(output_dir, ".parts", hashlib.sha1(source.encode()).hexdigest() + ".json")


def _write_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def validate(config) -> None:
  """Fails with a ConfigError naming the key unless `config` has configs/curate.py's sections and sane values."""
  for section, keys in (("clip", ("min_frames", "max_frames")), ("scores", ("motion_pairs", "motion_short_side",
                        "quality_frames", "quality_short_side")), ("thresholds", [b for _, b, _ in clips.RULES])):
    for key in keys:
      if key not in config.get(section, {}):
        raise ConfigError(f"config.{section}.{key} is missing (configs/curate.py has every key).")
  clips.check_lengths(config.clip.min_frames, config.clip.max_frames)
  if "captioner" not in config or {"model", "num_captions", "max_new_tokens"} - set(config.captioner):
    raise ConfigError("config.captioner (model, num_captions, max_new_tokens) is missing or incomplete "
                      "(configs/curate.py has every key).")
  if config.captioner.model and not os.path.isfile(os.path.join(config.captioner.model, "config.json")):
    raise ConfigError(f"config.captioner.model={config.captioner.model!r}: no transformers model folder there "
                      "(config.json missing); nothing is downloaded.")
  if "max_memory_mb" not in config:
    raise ConfigError("config.max_memory_mb is missing (configs/curate.py has every key).")
  if config.max_memory_mb < 0:
    raise ConfigError(f"config.max_memory_mb={config.max_memory_mb}: must be >= 0 (0: always decode twice).")
  for key in ("motion_pairs", "motion_short_side", "quality_frames", "quality_short_side"):
    if config.scores[key] < 1:
      raise ConfigError(f"config.scores.{key}={config.scores[key]}: must be >= 1.")


def start(input_dir: str, output_dir: str, config, manifest: str | None = None
          ) -> tuple[list[str], list[str], dict[str, str] | None]:
  """Checks the config and folders and lists the work: (every source, the sources not done yet, the manifest's
  captions or None for sidecars). The first step of `curate_folder` and of its Beam version (`on_beam`)."""
  validate(config)
  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f"--input {input_dir!r} is not a folder.")
  os.makedirs(os.path.join(output_dir, ".parts"), exist_ok=True)
  listed = captions.read_manifest(manifest) if manifest else None
  sources = find_videos(input_dir)
  return sources, [s for s in sources if not os.path.exists(_part_path(output_dir, s))], listed


def curate_one(input_dir: str, output_dir: str, source: str, listed: dict[str, str] | None, config) -> None:
  """Curates one source and writes its part (its clips, or its error when it cannot be decoded) atomically."""
  began = time.time()
  try:
    caption = (listed.get(os.path.normpath(source)) if listed is not None
               else captions.sidecar_caption(os.path.join(input_dir, source)))
    lines, thumbnails = curate_source(input_dir, source, caption, config)
    result = {"source": source, "clips": lines, "thumbnails": thumbnails}
  except (io.VideoReadError, FileNotFoundError, ValueError) as e:
    result = {"source": source, "error": f"{type(e).__name__}: {e}"}
  result["seconds"] = time.time() - began
  _write_atomic(_part_path(output_dir, source), json.dumps(result))


def finish(input_dir: str, output_dir: str, sources: list[str], seconds: float, config) -> dict[str, Any]:
  """clips.jsonl, report.json and report.html from every source's part; returns the report."""
  return _assemble(output_dir, sources, seconds, config.thresholds, input_dir)


def curate_folder(input_dir: str, output_dir: str, config, manifest: str | None = None,
                  on_source: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Curates every video under `input_dir` into `output_dir` (see the module docstring) and returns the report.
  `manifest`: a CSV/JSONL of captions (else sidecars); `on_source(source)` is called before each source is done."""
  start_time = time.time()
  sources, todo, listed = start(input_dir, output_dir, config, manifest)
  for source in todo:
    if on_source is not None:
      on_source(source)
    curate_one(input_dir, output_dir, source, listed, config)
  return finish(input_dir, output_dir, sources, time.time() - start_time, config)


def _assemble(output_dir: str, sources: list[str], seconds: float, thresholds, input_dir: str) -> dict[str, Any]:
  """clips.jsonl, report.json and report.html from the parts of `sources`, in their order."""
  lines, thumbnails, unreadable, spent = [], [], [], 0.0
  for source in sources:
    with open(_part_path(output_dir, source), encoding="utf-8") as f:
      part = json.load(f)
    spent += part["seconds"]
    if "error" in part:
      unreadable.append({"source": source, "error": part["error"]})
    else:
      lines += part["clips"]
      thumbnails += part["thumbnails"]
  _write_atomic(os.path.join(output_dir, "clips.jsonl"), "".join(json.dumps(line) + "\n" for line in lines))
  report = {"files": len(sources), "unreadable": unreadable,
            "shots": len({(line["source"], line["shot"]) for line in lines}), "clips": len(lines),
            "kept": sum(line["kept"] for line in lines), "seconds": round(spent, 3),
            "seconds_this_run": round(seconds, 3), "input": os.path.abspath(input_dir)}
  _write_atomic(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1))
  _write_atomic(os.path.join(output_dir, "report.html"),
                report_lib.report_html(report, lines, thumbnails, thresholds))
  return report
