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

from typing import Any, Sequence

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


def evaluate_tasks(pipe, num: int = 64, seed_base: int = 5_000_000_000, tasks: Sequence[str] = TASKS,
                   extend_frames: int = 3, strength: float = 0.7, samples: dict | None = None,
                   **generate_kwargs) -> dict[str, dict[str, float]]:
  """Runs `tasks` on `num` new clips each with `pipe` (a conditioned `TextToVideoPipeline`) and scores them.
  `generate_kwargs` (sampler, num_steps, guidance_scale, ...) go to every call; seeds are the clips' own.
  `samples`: if given, receives each task's (prompts, generated uint8 videos [num, T, H, W, 3]), for contact
  sheets."""
  unknown = sorted(set(tasks) - set(TASKS))
  if unknown:
    raise ValueError(f"Unknown tasks {unknown}; allowed: {list(TASKS)}.")
  t, h, w, _ = pipe.latent_shape
  r, s = pipe.temporal_ratio, pipe.vae.spatial_compression
  frames, height, width = conditioning.pixel_frames(t, r), h * s, w * s
  context = conditioning.pixel_frames(extend_frames, r)
  report = {}
  for index, task in enumerate(tasks):
    base = seed_base + 1_000_000 * index  # each task its own clips
    clips = render(num, base, frames, height, width, moving=task in ("interpolate", "extend", "extend_backward"))
    video = np.stack([c["video"] for c in clips])
    prompts, seeds = [c["caption"] for c in clips], [base + i for i in range(num)]
    if task == "t2v":
      out = pipe.generate(prompts, seeds, **generate_kwargs)
      report[task] = _attributes(probe.score(out, prompts))
    elif task == "i2v":
      out = pipe.generate(prompts, seeds, frames=video[:, :1], **generate_kwargs)
      psnr = metrics.psnr(out[:, :1].astype(np.float64) / 127.5 - 1, video[:, :1].astype(np.float64) / 127.5 - 1)
      report[task] = {"first_frame_psnr_mean": float(np.mean(psnr)), "first_frame_psnr_min": float(np.min(psnr)),
                      **_attributes(probe.score(out, prompts))}
    elif task == "interpolate":
      out = pipe.generate(prompts, seeds, frames=video[:, :1], last_frames=video[:, -1:], **generate_kwargs)
      report[task] = {**_centroid_report(out, clips, range(1, frames - 1)), **_attributes(probe.score(out, prompts))}
    elif task in ("extend", "extend_backward"):
      backward = task == "extend_backward"
      given = video[:, -context:] if backward else video[:, :context]
      out = pipe.extend(prompts, seeds, given, frames, backward=backward, **generate_kwargs)
      new = range(0, frames - context) if backward else range(context, frames)
      report[task] = {**_centroid_report(out, clips, new), **_attributes(probe.score(out, prompts))}
    else:  # v2v: the clip re-prompted with the next color of the palette
      names = list(shapes.COLORS)
      targets = [dict(color=names[(names.index(c["color"]) + 1) % len(names)], shape=c["shape"], motion=c["motion"])
                 for c in clips]
      new_prompts = [shapes.caption_for(x["color"], x["shape"], x["motion"]) for x in targets]
      out = pipe.generate(new_prompts, seeds, videos=video, strength=strength, **generate_kwargs)
      report[task] = _attributes(probe.score(out, targets))
      prompts = new_prompts
    report[task]["num_videos"] = num
    if samples is not None:
      samples[task] = (prompts, out)
  return report
