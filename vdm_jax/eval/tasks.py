"""Scores of image and video prompts on Captioned Shapes: clips rendered from new seeds, each task run through a
`TextToVideoPipeline`, and what the issue's bars measure.

    report = evaluate_tasks(pipe, num=64, seed_base=5_000_000_000)   # {task: {metric: value}}

Tasks and their scores (the probe reads color, shape and motion; `centroids` finds the object in each frame):
  i2v              the first frame given: PSNR of the generated first frame against it; probe vs the caption
  interpolate      first and last frame of a moving clip: the object's centroid in the frames between, against the
                   rendered clip's (median error, px); color and shape
  extend           the first 1 + r (k - 1) frames (9 of 17 at r = 4, k = 3): centroids in the generated frames
  extend_backward  the last 1 + r (k - 1) frames: centroids in the generated frames before them
  v2v              a clip re-prompted with another color (SDEdit at `strength`): new color, kept shape and motion
  t2v              the captions alone
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from vdm_jax.data import shapes
from vdm_jax.diffusion import conditioning
from vdm_jax.eval import metrics, probe

TASKS = ("t2v", "i2v", "interpolate", "extend", "extend_backward", "v2v")
MOVING = ("left", "right", "up", "down")


def centroids(video: np.ndarray) -> np.ndarray:
  """(row, col) of the single object in each frame of uint8 [T, H, W, 3]: float64 [T, 2], NaN where a frame holds
  no object or several (the probe's foreground and blob rules)."""
  _, height, width, _ = video.shape
  min_pixels = probe.MIN_BLOB_PIXELS_AT_64 * height * width / 64**2
  out = np.full((len(video), 2), np.nan)
  for i, mask in enumerate(probe.foreground(video)):
    blob = probe.single_blob(mask, min_pixels)
    if blob is not None:
      out[i] = np.mean(np.nonzero(blob), axis=1)
  return out


def centroid_errors(generated: np.ndarray, reference: np.ndarray, frames: Sequence[int]) -> np.ndarray:
  """Distance (px) between the object's centroid in `generated` and in `reference` (uint8 [T, H, W, 3] each) at
  `frames`; inf where the generated frame has no single object."""
  a, b = centroids(generated[list(frames)]), centroids(reference[list(frames)])
  error = np.linalg.norm(a - b, axis=1)
  return np.where(np.isnan(error), np.inf, error)


def render(num: int, seed_base: int, num_frames: int, height: int, width: int, moving: bool = False
           ) -> list[dict[str, Any]]:
  """`num` clips from seeds seed_base + i (`shapes.render_clip`); `moving`: motions cycle over the four
  directions."""
  return [shapes.render_clip(seed_base + i, num_frames, height, width,
                             **({"motion": MOVING[i % 4]} if moving else {})) for i in range(num)]


def _attributes(scores: dict[str, float]) -> dict[str, float]:
  return {k: v for k, v in scores.items() if k != "num_videos"}


def _centroid_report(videos, clips, frames) -> dict[str, float]:
  errors = np.concatenate([centroid_errors(v, c["video"], frames) for v, c in zip(videos, clips)])
  return {"centroid_median_px": float(np.median(errors)), "centroid_missing": float(np.mean(np.isinf(errors)))}


@dataclasses.dataclass
class TaskSet:
  """One task's new clips and what is given to the model: `prompts` and `seeds` (the clips' own), `frames` (first
  frames, or the video given to v2v / the frames given to an extension), `last_frames` (interpolation's), and for v2v
  the `targets` the videos are re-prompted to."""
  task: str
  clips: list[dict[str, Any]]
  prompts: list[str]
  seeds: list[int]
  frames: np.ndarray | None = None
  last_frames: np.ndarray | None = None
  targets: list[dict[str, str]] | None = None


def task_set(task: str, num: int, seed_base: int, num_frames: int, height: int, width: int, context: int
             ) -> TaskSet:
  """`num` clips rendered from seeds seed_base + i for `task` (moving ones for the centroid tasks) and its inputs;
  `context`: pixel frames given to the extensions."""
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}; allowed: {list(TASKS)}.")
  clips = render(num, seed_base, num_frames, height, width,
                 moving=task in ("interpolate", "extend", "extend_backward"))
  video = np.stack([c["video"] for c in clips])
  out = TaskSet(task, clips, [c["caption"] for c in clips], [seed_base + i for i in range(num)])
  if task in ("i2v", "interpolate"):
    out.frames = video[:, :1]
    out.last_frames = video[:, -1:] if task == "interpolate" else None
  elif task in ("extend", "extend_backward"):
    out.frames = video[:, -context:] if task == "extend_backward" else video[:, :context]
  elif task == "v2v":  # the clip re-prompted with the next color of the palette
    names = list(shapes.COLORS)
    out.frames = video
    out.targets = [dict(color=names[(names.index(c["color"]) + 1) % len(names)], shape=c["shape"],
                        motion=c["motion"]) for c in clips]
    out.prompts = [shapes.caption_for(x["color"], x["shape"], x["motion"]) for x in out.targets]
  return out


def score_task(inputs: TaskSet, out: np.ndarray, context: int) -> dict[str, float]:
  """The scores of `out` (uint8 [num, T, H, W, 3], generated for `inputs`) that the issue's bars read."""
  task, clips, frames = inputs.task, inputs.clips, out.shape[1]
  if task in ("t2v", "v2v"):
    report = _attributes(probe.score(out, inputs.targets or inputs.prompts))
  elif task == "i2v":
    given = inputs.frames.astype(np.float64) / 127.5 - 1
    psnr = metrics.psnr(out[:, :1].astype(np.float64) / 127.5 - 1, given)
    report = {"first_frame_psnr_mean": float(np.mean(psnr)), "first_frame_psnr_min": float(np.min(psnr)),
              **_attributes(probe.score(out, inputs.prompts))}
  else:
    new = {"interpolate": range(1, frames - 1), "extend": range(context, frames),
           "extend_backward": range(0, frames - context)}[task]
    report = {**_centroid_report(out, clips, new), **_attributes(probe.score(out, inputs.prompts))}
  report["num_videos"] = len(out)
  return report


def generate_task(pipe, inputs: TaskSet, num_frames: int, strength: float = 0.7, **generate_kwargs) -> np.ndarray:
  """`inputs` run through `pipe` (a conditioned `TextToVideoPipeline`): uint8 videos [num, num_frames, H, W, 3]."""
  prompts, seeds, task = inputs.prompts, inputs.seeds, inputs.task
  if task in ("extend", "extend_backward"):
    return pipe.extend(prompts, seeds, inputs.frames, num_frames, backward=task == "extend_backward",
                       **generate_kwargs)
  if task == "v2v":
    return pipe.generate(prompts, seeds, videos=inputs.frames, strength=strength, **generate_kwargs)
  return pipe.generate(prompts, seeds, frames=inputs.frames, last_frames=inputs.last_frames, **generate_kwargs)


def evaluate_tasks(pipe, num: int = 64, seed_base: int = 5_000_000_000, tasks: Sequence[str] = TASKS,
                   extend_frames: int = 3, strength: float = 0.7, samples: dict | None = None,
                   generate: Callable[[TaskSet, int], np.ndarray] | None = None,
                   **generate_kwargs) -> dict[str, dict[str, float]]:
  """Runs `tasks` on `num` new clips each with `pipe` (a conditioned `TextToVideoPipeline`) and scores them.
  `generate_kwargs` (sampler, num_steps, guidance_scale, ...) go to every call; seeds are the clips' own; task i
  renders its clips from seeds seed_base + 1e6 i + j. `samples`: if given, receives each task's (prompts,
  generated uint8 videos [num, T, H, W, 3]), for contact sheets. `generate(inputs, num_frames)`: makes the videos
  another way than `generate_task` in this process (experiments.eval_tasks runs the sample command)."""
  unknown = sorted(set(tasks) - set(TASKS))
  if unknown:
    raise ValueError(f"Unknown tasks {unknown}; allowed: {list(TASKS)}.")
  frames, height, width, context = sizes(pipe, extend_frames)
  report = {}
  for index, task in enumerate(tasks):
    inputs = task_set(task, num, task_seed_base(seed_base, index), frames, height, width, context)
    if generate is None:
      out = generate_task(pipe, inputs, frames, strength, **generate_kwargs)
    else:
      out = generate(inputs, frames)
    report[task] = score_task(inputs, out, context)
    if samples is not None:
      samples[task] = (inputs.prompts, out)
  return report


def task_seed_base(seed_base: int, index: int) -> int:
  """The first clip seed of the index-th task scored: each task its own clips."""
  return seed_base + 1_000_000 * index


def sizes(pipe, extend_frames: int) -> tuple[int, int, int, int]:
  """(frames, height, width, frames given to an extension) of `pipe`'s videos, `extend_frames` latent frames
  given."""
  t, h, w, _ = pipe.latent_shape
  r, s = pipe.temporal_ratio, pipe.vae.spatial_compression
  return conditioning.pixel_frames(t, r), h * s, w * s, conditioning.pixel_frames(extend_frames, r)
