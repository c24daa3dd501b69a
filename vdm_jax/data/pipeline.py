"""grain input pipelines over tfds array_record data sources.

    record indices -> this process's shard -> shuffle(seed) -> repeat -> read + preprocess ops (random_map, seeded)
           -> batch -> IterDataset (threads, prefetch)

Every stage is index-based and seeded, so the pipeline is deterministic and its iterator state is a few integers
that orbax checkpoints next to the train state (`grain.checkpoint.CheckpointSave`).

An example whose video cannot be decoded (`VideoReadError`: corrupt, truncated, not a video) is skipped: a warning
names it (dataset, split, record index, source file when known), the next record of this process's shard takes its
place in the batch (batches keep their size; the replacement is deterministic), and `unreadable_count()` counts it
for the training metrics (`data/unreadable`). Counts are per process and start at 0 in each run.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

import grain
import jax
import numpy as np
from absl import logging

from vdm_jax.data import ops, sources
from vdm_jax.io import video as video_io

# Consecutive unreadable records after which a pipeline stops skipping and raises: a dataset that is mostly
# unreadable is a problem to fix, not to train around.
MAX_CONSECUTIVE_UNREADABLE = 100
_UNREADABLE = collections.Counter()  # "dataset:split" -> examples skipped in this process
_UNREADABLE_LOCK = threading.Lock()  # prefetch threads skip concurrently


def data_source(input_config, split: str | None = None):
  """The random-access source of `input_config.dataset` (built locally first when it is Captioned Shapes)."""
  split = split or input_config.split
  data_dir = input_config.data_dir or None
  if input_config.dataset == "captioned_shapes":
    from vdm_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
    return captioned_shapes.load_data_source(input_config.builder_config, split, data_dir=data_dir)
  if input_config.dataset == "video_folder":
    from vdm_jax.data import video_folder  # pylint: disable=g-import-not-at-top
    return video_folder.load_data_source(_folder(input_config), input_config.builder_config, split,
                                         data_dir=data_dir, **_folder_options(input_config))
  name = input_config.dataset
  if input_config.builder_config:
    name = f"{name}/{input_config.builder_config}"
  return tfds_source(name, split, data_dir)


def _folder(input_config) -> str:
  if not input_config.get("folder"):
    raise ValueError("input.dataset='video_folder' needs input.folder: the output folder of `python -m "
                     "experiments.curate` (e.g. --config.input.folder=/data/curated).")
  return input_config.folder


def _folder_options(input_config) -> dict[str, Any]:
  return {key: input_config[key] for key in ("videos", "validation_fraction", "max_windows") if key in input_config}


def dataset_key(input_config) -> str:
  """A folder name for what is cached from this input (latents, text embeddings): the builder config for
  Captioned Shapes (as before), the size and the clips' digest for a curated folder."""
  if input_config.dataset == "video_folder":
    from vdm_jax.data import video_folder  # pylint: disable=g-import-not-at-top
    config = video_folder.make_config(_folder(input_config), input_config.builder_config,
                                      **_folder_options(input_config))
    return f"video_folder_{config.name}"
  return input_config.get("builder_config") or input_config.dataset


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source(name, split=split)` (downloaded and prepared if missing) with its folder and shards checked
  (`sources.checked_source`): errors name the dataset, split and file instead of tfds' "Unknown split" or
  Riegeli's bare messages."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  folder = tfds.builder(name, data_dir=data_dir).data_path
  sources.check_info(name, folder)
  return sources.checked_source(tfds.data_source(name, split=split, data_dir=data_dir), name, split, folder)


def unreadable_count(where: str | None = None) -> int:
  """Examples skipped as unreadable in this process so far: in `where` ("dataset:split", as the warnings name it),
  or in all pipelines."""
  with _UNREADABLE_LOCK:
    return _UNREADABLE[where] if where is not None else sum(_UNREADABLE.values())


def _name(input_config, split: str) -> str:
  name = input_config.dataset
  if input_config.get("builder_config"):
    name = f"{name}/{input_config.builder_config}"
  return f"{name}:{split}"


class _ReadExample:
  """`(record index, rng) -> preprocessed example`, skipping unreadable records (see the module docstring).

  The only cost on readable records is the try block; the skipping path runs only on a `VideoReadError`.
  """

  def __init__(self, source, preprocess, where: str, step: int):
    self.source, self.preprocess, self.where, self.step = source, preprocess, where, step

  def __call__(self, index, rng):
    index = int(index)
    for _ in range(MAX_CONSECUTIVE_UNREADABLE):
      try:
        return self.preprocess(self.source[index], rng)
      except video_io.VideoReadError as e:
        with _UNREADABLE_LOCK:
          _UNREADABLE[self.where] += 1
        logging.warning("Skipping unreadable example %s[%d]: %s", self.where, index, e)
        error = e
        index = (index + self.step) % len(self.source)
    raise video_io.VideoReadError(
        f"{MAX_CONSECUTIVE_UNREADABLE} consecutive unreadable examples in {self.where}, the last [{index}]: "
        f"{error}") from error


def _stack(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Batches a list of examples: arrays stacked, strings into a numpy str array."""
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of the global batch."""
  if global_batch_size % jax.process_count():
    raise ValueError(f"Batch size {global_batch_size} is not divisible by {jax.process_count()} processes.")
  return global_batch_size // jax.process_count()


def make_dataset(input_config, *, split: str | None = None, pp: str | None = None, batch_size: int | None = None,
                 seed: int | None = None, shuffle: bool = True, repeat: bool = True,
                 drop_remainder: bool = True, source=None) -> grain.IterDataset:
  """The batched IterDataset for one process; `batch_size` is global (default `input_config.batch_size`).

  Records are sharded by process (`process_index::process_count`) before shuffling, so processes never read the
  same record. With `repeat`, each epoch is reshuffled (deterministically from `seed`).
  """
  return to_iter(map_dataset(input_config, split=split, pp=pp, batch_size=batch_size, seed=seed, shuffle=shuffle,
                             repeat=repeat, drop_remainder=drop_remainder, source=source), input_config)


def to_iter(ds: grain.MapDataset, input_config) -> grain.IterDataset:
  """`ds` read ahead with the input's threads and prefetch buffer."""
  read_options = grain.ReadOptions(num_threads=input_config.num_threads, prefetch_buffer_size=input_config.prefetch)
  return ds.to_iter_dataset(read_options)


def map_dataset(input_config, *, split: str | None = None, pp: str | None = None, batch_size: int | None = None,
                seed: int | None = None, shuffle: bool = True, repeat: bool = True,
                drop_remainder: bool = True, source=None) -> grain.MapDataset:
  """`make_dataset`'s batches as a random-access MapDataset (batch i is a pure function of the seed and i)."""
  split = split or input_config.split
  source = data_source(input_config, split) if source is None else source
  seed = input_config.shuffle_seed if seed is None else seed
  batch_size = local_batch_size(batch_size or input_config.batch_size)
  ds = grain.MapDataset.range(len(source))  # indices: the read happens in `_ReadExample`, which can skip
  if jax.process_count() > 1:
    ds = ds[jax.process_index()::jax.process_count()]
  if len(ds) < batch_size and drop_remainder:
    raise ValueError(f"Split {split!r} of {_name(input_config, split)} has {len(ds)} examples for this process, "
                     f"fewer than the per-process batch size {batch_size}.")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)
  preprocess = ops.build(pp if pp is not None else input_config.pp)
  ds = ds.random_map(_ReadExample(source, preprocess, _name(input_config, split), jax.process_count()), seed=seed)
  return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_stack)


def eval_batches(input_config, *, split: str, batch_size: int, num_examples: int, source=None):
  """The first batches of `split` in order (no shuffle, no repeat) until at least `num_examples` are served. A split
  smaller than one batch (a small curated folder's validation) is served in one batch of as many examples as divide
  over the devices."""
  source = data_source(input_config, split) if source is None else source
  if len(source) < batch_size:
    fitting = len(source) // jax.device_count() * jax.device_count()
    if not fitting:
      raise ValueError(f"Split {split!r} of {_name(input_config, split)} has {len(source)} examples, fewer than the "
                       f"{jax.device_count()} devices an evaluation batch is split over.")
    logging.info("Evaluating %s in one batch of %d (the split is smaller than the batch size %d).",
                 _name(input_config, split), fitting, batch_size)
    batch_size = fitting
  ds = make_dataset(input_config, split=split, batch_size=batch_size, shuffle=False, repeat=False, source=source)
  seen = 0
  for batch in ds:
    if seen >= num_examples:
      break
    seen += len(next(iter(batch.values())))
    yield batch


def numeric(batch: dict[str, Any]) -> dict[str, Any]:
  """The part of a batch that can go to devices (drops strings such as raw captions)."""
  return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "OUS"}
