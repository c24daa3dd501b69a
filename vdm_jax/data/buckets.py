"""Buckets: training on several sizes and durations at once, every batch from one (height, width, frames) bucket.

    config.input.buckets = {"64": {"17": (1.0, 16), "33": (0.5, 8), "1": (1.0, 64)}}  # Open-Sora's table
    config.input.aspect_ratios = ("1:1", "3:5", "5:3")                                    # height:width
    config.input.builder_config = "{height}x{width}x{frames}"                              # one dataset per bucket

A resolution key R gives, for each aspect ratio h:w, the size of area about R x R with that ratio, both sides
multiples of `input.bucket_multiple` (the VAE's 8 times the DiT's patch 2 = 16): "64" at 3:5 is 48x80. Each size
takes every frame count of its row: `(keep_probability, batch_size)`, frames 1 being images. A bucket reads the
dataset `input.builder_config` formatted with its size (Captioned Shapes renders any `HxWxT`; a curated folder
builds any spec, resizing and cropping its clips to it).

The order of buckets is a pure function of the seed and the step: steps come in blocks of `input.bucket_block`;
each block holds every bucket in proportion to its weight (keep_probability x examples / batch_size, so each
bucket's examples are seen at the rate of its keep probability), shuffled by `default_rng([seed, block])`. Batch i
of the run is batch j of its bucket's own stream (shuffled, repeated, batched as `pipeline.make_dataset` does), j
being how many batches that bucket served before i. So the whole input is one grain MapDataset indexed by step:
its iterator state (the next step) is what a checkpoint saves, a resumed run continues with the same batches, and
every process draws the same bucket at every step (each reading its own share of that bucket's records).

Packed steps (`input.pack_length` > 0): every step holds batch i of every bucket instead, under keys suffixed with
'@' and the bucket's name ('latent_moments@64x64x17'; `split_packed` undoes it), and the experiment packs all of
them into rows of `pack_length` tokens (vdm_jax.models.packing), so one step, compiled once, sees every size.
Keep probabilities then only drop buckets (0); the batch sizes are each bucket's clips per step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from vdm_jax.data import pipeline

DEFAULT_MULTIPLE = 16
DEFAULT_BLOCK = 256
PACKED_KEY = "{key}@{bucket}"


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One (height, width, frames) bucket with its keep probability and global batch size."""
  height: int
  width: int
  frames: int
  keep: float
  batch_size: int

  @property
  def name(self) -> str:
    return f"{self.height}x{self.width}x{self.frames}"


def parse_ratio(ratio: str) -> float:
  """'3:5' -> height / width = 0.6."""
  try:
    h, w = (float(x) for x in str(ratio).split(":"))
  except ValueError:
    raise ValueError(f"input.aspect_ratios: {ratio!r} is not 'height:width' (e.g. '3:5').") from None
  if h <= 0 or w <= 0:
    raise ValueError(f"input.aspect_ratios: {ratio!r} needs positive sides.")
  return h / w


def size_for(resolution: int, ratio: float, multiple: int = DEFAULT_MULTIPLE) -> tuple[int, int]:
  """(height, width) of area about resolution^2 at height/width = ratio, each a multiple of `multiple` (>= it)."""
  area = float(resolution) ** 2
  round_to = lambda x: max(multiple, int(round(x / multiple)) * multiple)
  return round_to(math.sqrt(area * ratio)), round_to(math.sqrt(area / ratio))


def parse_table(buckets: Mapping[str, Mapping[str, Sequence[float]]], aspect_ratios: Sequence[str] = ("1:1",),
                multiple: int = DEFAULT_MULTIPLE) -> list[Bucket]:
  """The buckets of a table {resolution: {frames: (keep_probability, batch_size)}} at every aspect ratio, in a
  fixed order (resolutions and frames ascending, ratios as given; so a config read back from JSON, which may
  reorder keys, gives the same buckets); keep 0 drops a bucket. Errors name the key at fault."""
  if not buckets:
    raise ValueError("input.buckets is empty; give {resolution: {frames: (keep_probability, batch_size)}}.")
  out, seen = [], set()
  numeric = lambda key: int(key) if str(key).isdigit() else -1  # bad keys first, to fail on them
  for resolution in sorted(buckets, key=numeric):
    row = buckets[resolution]
    if not str(resolution).isdigit() or int(resolution) < multiple:
      raise ValueError(f"input.buckets key {resolution!r}: a resolution must be an integer >= {multiple}.")
    for ratio in aspect_ratios:
      height, width = size_for(int(resolution), parse_ratio(ratio), multiple)
      for frames in sorted(row, key=numeric):
        entry = row[frames]
        where = f"input.buckets[{resolution!r}][{frames!r}]"
        if not str(frames).isdigit() or int(frames) < 1:
          raise ValueError(f"{where}: the frame count must be an integer >= 1.")
        if len(tuple(entry)) != 2:
          raise ValueError(f"{where} = {entry!r}: expected (keep_probability, batch_size).")
        keep, batch_size = float(entry[0]), int(entry[1])
        if not 0.0 <= keep <= 1.0 or batch_size < 1 or batch_size != entry[1]:
          raise ValueError(f"{where} = {tuple(entry)!r}: keep_probability must be in [0, 1] and batch_size an "
                           "integer >= 1.")
        bucket = Bucket(height, width, int(frames), keep, batch_size)
        if keep == 0.0 or bucket.name in seen:  # two ratios can round to one size
          continue
        seen.add(bucket.name)
        out.append(bucket)
  if not out:
    raise ValueError("input.buckets: every bucket has keep_probability 0.")
  return out


def table(input_config) -> list[Bucket]:
  """The buckets of `input_config` (its `buckets`, `aspect_ratios`, `bucket_multiple`)."""
  return parse_table(input_config.buckets, tuple(input_config.get("aspect_ratios", ("1:1",))),
                     int(input_config.get("bucket_multiple", DEFAULT_MULTIPLE)))


def enabled(input_config) -> bool:
  return bool(input_config.get("buckets"))


def packed(input_config) -> bool:
  """Whether steps pack every bucket's clips into rows (`input.pack_length` > 0)."""
  return int(input_config.get("pack_length", 0) or 0) > 0


def split_packed(batch: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """A packed step's batch {'key@bucket': value} -> {bucket: {key: value}}, buckets in name order."""
  out = {}
  for name in sorted(batch):
    key, sep, bucket = name.rpartition("@")
    if not sep:
      raise ValueError(f"Batch key {name!r} of a packed step has no '@bucket' suffix.")
    out.setdefault(bucket, {})[key] = batch[name]
  return out


def bucket_input(input_config, bucket: Bucket):
  """`input_config` for one bucket: `builder_config` formatted with its size, its batch size."""
  config = input_config.copy_and_resolve_references()
  with config.unlocked():
    config.builder_config = input_config.builder_config.format(height=bucket.height, width=bucket.width,
                                                               frames=bucket.frames)
    config.batch_size = bucket.batch_size
    config.buckets = None
  return config


def first_input(input_config):
  """The input config of the first bucket when `input_config` is bucketed (evals and samples read one size),
  else `input_config` itself."""
  return bucket_input(input_config, table(input_config)[0]) if enabled(input_config) else input_config


def one_size(config):
  """A whole run config with its input narrowed to the first bucket (`first_input`); `config` itself when it is
  not bucketed. What reads latents of one size (statistics, evals, samples) reads this."""
  if not enabled(config.input):
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.input = first_input(config.input)
  return config


def block_order(counts: Sequence[int], seed: int, index: int) -> np.ndarray:
  """Bucket indices of block `index`: bucket b `counts[b]` times (`block_counts`), shuffled by
  default_rng([seed, index])."""
  order = np.repeat(np.arange(len(counts)), counts)
  return np.random.default_rng([seed, index]).permutation(order)


def block_counts(weights: Sequence[float], block: int) -> np.ndarray:
  """How many of a block's `block` batches each bucket serves: proportional to `weights`, at least 1 each."""
  share = np.asarray(weights, np.float64) / np.sum(weights)
  if block < len(share):
    raise ValueError(f"input.bucket_block={block} is smaller than the number of buckets ({len(share)}).")
  counts = np.maximum(1, np.floor(share * block)).astype(np.int64)
  while counts.sum() < block:  # largest remainders first
    counts[np.argmax(share * block - counts)] += 1
  while counts.sum() > block:
    counts[np.argmax(np.where(counts > 1, counts - share * block, -np.inf))] -= 1
  return counts


class BucketMix(grain.MapDataset):
  """Batch i of a bucketed run: batch j of bucket b(i) (module docstring). Infinite (length sys.maxsize)."""

  def __init__(self, batched: Sequence[grain.MapDataset], weights: Sequence[float], block: int, seed: int):
    super().__init__(list(batched))
    self._batched, self._block, self._seed = list(batched), int(block), int(seed)
    self._counts = block_counts(weights, self._block)

  def __len__(self) -> int:
    return sys.maxsize

  @functools.lru_cache(maxsize=8)
  def _order(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket per position, how many earlier positions of the block hold the same bucket)."""
    order = block_order(self._counts, self._seed, index)
    rank = np.zeros_like(order)
    seen = np.zeros(len(self._counts), np.int64)
    for position, bucket in enumerate(order):
      rank[position] = seen[bucket]
      seen[bucket] += 1
    return order, rank

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    block, position = divmod(int(index), self._block)
    order, rank = self._order(block)
    bucket = int(order[position])
    return self._batched[bucket][block * int(self._counts[bucket]) + int(rank[position])]

  def __str__(self) -> str:
    return f"BucketMix(buckets={len(self._batched)}, block={self._block}, seed={self._seed})"


class PackedMix(grain.MapDataset):
  """Step i of a packed run: batch i of every bucket, each key suffixed with '@' and its bucket's name. Infinite."""

  def __init__(self, batched: Sequence[grain.MapDataset], names: Sequence[str]):
    super().__init__(list(batched))
    self._batched, self._names = list(batched), list(names)

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return {PACKED_KEY.format(key=key, bucket=name): value
            for name, batched in zip(self._names, self._batched) for key, value in batched[int(index)].items()}

  def __str__(self) -> str:
    return f"PackedMix(buckets={self._names})"


def make_dataset(input_config, sources: Sequence[Any], *, seed: int, split: str | None = None) -> grain.IterDataset:
  """The bucketed training input of `input_config`: `sources[b]` is bucket b's random-access source (in the order
  of `table(input_config)`); each bucket is shuffled, repeated, read and batched as `pipeline.make_dataset` does,
  with its own seed, then mixed by step (module docstring)."""
  buckets = table(input_config)
  if len(sources) != len(buckets):
    raise ValueError(f"{len(sources)} sources for {len(buckets)} buckets {[b.name for b in buckets]}.")
  batched, weights = [], []
  for i, (bucket, source) in enumerate(zip(buckets, sources)):
    config = bucket_input(input_config, bucket)
    batched.append(pipeline.map_dataset(config, split=split, seed=seed + 1000 * (i + 1), source=source))
    weights.append(bucket.keep * len(source) / bucket.batch_size)
  if packed(input_config):
    return pipeline.to_iter(PackedMix(batched, [b.name for b in buckets]), input_config)
  return pipeline.to_iter(BucketMix(batched, weights, int(input_config.get("bucket_block", DEFAULT_BLOCK)), seed),
                          input_config)
