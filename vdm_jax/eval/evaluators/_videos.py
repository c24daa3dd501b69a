"""What several evaluators read, cached per round in the `Context`: the experiment's eval batches and their
reconstructions, videos sampled for prompts, and raw clips of a split."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vdm_jax import io
from vdm_jax.data import buckets, pipeline
from vdm_jax.eval import fvd_report, probe

SOURCES = ("auto", "samples", "reconstructions")


def on_shapes(ctx) -> bool:
  """Whether the experiment's (first bucket's) dataset is Captioned Shapes: the probe reads nothing else."""
  return buckets.first_input(ctx.config.input).dataset == "captioned_shapes"


def eval_batches(ctx, split: str, num_examples: int, batch_size: int):
  """The experiment's own evaluation batches of `split` (its input pipeline, in order, at least `num_examples`)."""
  return pipeline.eval_batches(buckets.first_input(ctx.config.input), split=split, batch_size=batch_size,
                               num_examples=num_examples, source=ctx.experiment.data_source(split))


def reconstructions(ctx, split: str, num_examples: int, batch_size: int):
  """(originals, reconstructions, captions) of the eval batches: float [-1, 1] arrays per batch (lists), captions
  as strings ('' where the data has none). Decoded once per round."""
  def compute():
    originals, recons, captions = [], [], []
    for batch in eval_batches(ctx, split, num_examples, batch_size):
      if "video" not in batch:
        raise ValueError(f"Reconstructions need 'video' in the eval batches of split {split!r}; this experiment's "
                         f"batches hold {sorted(batch)} (its input.pp).")
      video = np.asarray(batch["video"], np.float32)
      originals.append(video)
      recons.append(np.clip(np.asarray(ctx.experiment.reconstruct_videos(ctx.params, video), np.float32), -1.0, 1.0))
      captions.extend(fvd_report.caption_text(c) for c in batch.get("caption", [""] * len(video)))
    return originals, recons, captions
  return ctx.cached(("reconstructions", split, num_examples, batch_size), compute)


def samples(ctx, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
  """uint8 videos the experiment generates for `prompts` with `seeds` (its sampling settings), once per round."""
  return ctx.cached(("samples", tuple(prompts), tuple(seeds)),
                    lambda: np.asarray(ctx.experiment.generate_videos(ctx.params, list(prompts), list(seeds)), np.uint8))


def resolve_source(ctx, source: str, name: str) -> str:
  """`source` with 'auto' made concrete: samples where the experiment generates, else reconstructions."""
  if source not in SOURCES:
    raise ValueError(f"{name}: source={source!r}; allowed: {list(SOURCES)}.")
  if source == "auto":
    source = "samples" if callable(getattr(ctx.experiment, "generate_videos", None)) else "reconstructions"
  hook = "generate_videos" if source == "samples" else "reconstruct_videos"
  if not callable(getattr(ctx.experiment, hook, None)):
    raise ValueError(f"{name}: source={source!r} needs the experiment's {hook}(), which "
                     f"{type(ctx.experiment).__name__} does not have.")
  return source


def videos(ctx, source: str, name: str, *, split: str, num_examples: int, batch_size: int,
           probe_prompts: int, probe_seed: int) -> tuple[np.ndarray, list[str]]:
  """(uint8 videos, their captions): `probe_prompts` samples with seeds from `probe_seed` for source 'samples'
  (prompts cycling over every Captioned Shapes combination), else the eval batches' reconstructions."""
  if resolve_source(ctx, source, name) == "samples":
    prompts = probe.prompts(probe_prompts)
    return samples(ctx, prompts, [probe_seed + i for i in range(len(prompts))]), prompts
  _, recons, captions = reconstructions(ctx, split, num_examples, batch_size)
  return (np.concatenate([io.to_uint8(r) for r in recons]) if recons else np.zeros((0,), np.uint8)), captions


def real_clips(ctx, split: str, start: int, count: int, builder_config: str = "") -> tuple[np.ndarray, list[str]]:
  """Records start..start+count of `split` as stored (uint8 [count, T, H, W, 3], captions), from the experiment's
  dataset or another config of it (`builder_config`)."""
  name = builder_config or buckets.first_input(ctx.config.input).builder_config
  return ctx.cached(("real", name, split, start, count),
                    lambda: fvd_report.dataset_clips(ctx.config.input, split, start, count, name))
