"""Latent cache: a frozen VAE's posterior moments of every clip of a split, computed once, served with the batch.

    cache = latent_cache.write(directory, source, encode_fn, batch_size=32)     # once
    source = latent_cache.CachedLatentSource(source, cache)                     # example i gains `latent_moments`

`latent_moments` [T', h, w, 2C] float32 is the posterior's (mean | logvar) along channels; the training step
samples z = mean + exp(logvar / 2) eps from it (or takes the mean), so caching loses nothing. The join is by
index in the split, before shuffling; each record also stores the SHA-256 of its caption, checked on read.

On disk: `latents.array_record` (record i = example i, `vdm_jax.data.records` format) and `cache.json` (written
last: count, shape, the VAE's fingerprint, and the latents' per-channel mean and std of the posterior mean, for a
data-derived scaling factor).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from vdm_jax.data.records import decode_record, encode_record
from vdm_jax.text.cache import CacheMismatchError, caption_hash

META_FILE = "cache.json"
LATENTS_FILE = "latents.array_record"
FORMAT_VERSION = 1


def write(directory: str, source, encode_fn: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 32,
          video_key: str = "video", caption_key: str = "caption", fingerprint: Mapping[str, Any] | None = None,
          progress: bool = True) -> "LatentCache":
  """Encodes every example of `source` (uint8 [T, H, W, 3] under `video_key`) with `encode_fn`: float32 video in
  [-1, 1] [B, T, H, W, 3] -> moments [B, T', h, w, 2C]. Batches are padded to `batch_size` (one compiled shape)."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  meta_file = os.path.join(directory, META_FILE)
  if os.path.exists(meta_file):
    os.remove(meta_file)
  writer = ArrayRecordWriter(os.path.join(directory, LATENTS_FILE), "group_size:1")
  total, shape = len(source), None
  sums = sq_sums = None
  count = 0
  try:
    for start in tqdm(range(0, total, batch_size), disable=not progress, desc="latent cache"):
      examples = [source[i] for i in range(start, min(start + batch_size, total))]
      video = np.stack([np.asarray(e[video_key]) for e in examples]).astype(np.float32) / 127.5 - 1.0
      padded = np.concatenate([video, np.repeat(video[-1:], batch_size - len(video), axis=0)])
      moments = np.asarray(encode_fn(padded), np.float32)[:len(video)]
      for offset, (example, m) in enumerate(zip(examples, moments)):
        caption = example.get(caption_key, b"")
        writer.write(encode_record(m, {"index": start + offset, "caption_sha256": caption_hash(caption)}))
      mean = moments[..., :moments.shape[-1] // 2].reshape(-1, moments.shape[-1] // 2).astype(np.float64)
      sums = mean.sum(0) if sums is None else sums + mean.sum(0)
      sq_sums = (mean**2).sum(0) if sq_sums is None else sq_sums + (mean**2).sum(0)
      count += len(mean)
      shape = list(moments.shape[1:])
  finally:
    writer.close()
  channel_mean = sums / count
  channel_std = np.sqrt(np.maximum(sq_sums / count - channel_mean**2, 0.0))
  overall_std = float(np.sqrt(np.mean(sq_sums / count) - np.mean(channel_mean) ** 2))
  meta = {"format_version": FORMAT_VERSION, "num_examples": total, "shape": shape, "dtype": "float32",
          "vae": dict(fingerprint or {}), "latent_mean": channel_mean.tolist(), "latent_std": channel_std.tolist(),
          "latent_std_overall": overall_std}
  with open(meta_file + ".tmp", "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(meta_file + ".tmp", meta_file)
  return LatentCache(directory)


class LatentCache:
  """Random-access reader (grain-compatible, picklable): `cache[i]` -> {'latent_moments', 'caption_sha256'}."""

  def __init__(self, directory: str):
    import grain  # pylint: disable=g-import-not-at-top
    meta_file = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_file):
      raise FileNotFoundError(f"No {META_FILE} in {directory!r}: not a latent cache, or its writing did not finish.")
    with open(meta_file) as f:
      self.meta = json.load(f)
    if self.meta.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"{meta_file}: format_version {self.meta.get('format_version')}; rebuild the cache.")
    self.directory = directory
    self._records = grain.sources.ArrayRecordDataSource([os.path.join(directory, LATENTS_FILE)])
    if len(self._records) != self.meta["num_examples"]:
      raise ValueError(f"{directory}: {len(self._records)} records but cache.json says {self.meta['num_examples']}.")

  def __len__(self) -> int:
    return self.meta["num_examples"]

  def __getitem__(self, index: int) -> dict[str, Any]:
    moments, header = decode_record(self._records[index])
    if header["index"] != index:
      raise CacheMismatchError(f"{self.directory}: record {index} holds example {header['index']}.")
    return {"latent_moments": moments, "caption_sha256": header["caption_sha256"]}

  def __getstate__(self):
    return {"directory": self.directory}

  def __setstate__(self, state):
    self.__init__(state["directory"])


class CachedLatentSource:
  """`source[i]` with the cached `latent_moments` of example i (and without the pixels unless `keep_video`)."""

  def __init__(self, source, cache: LatentCache, *, caption_key: str = "caption", keep_video: bool = False):
    if len(source) != len(cache):
      raise CacheMismatchError(f"The source has {len(source)} examples, the latent cache {cache.directory!r} has "
                               f"{len(cache)}: it was built for another split or dataset.")
    self.source, self.cache, self.caption_key, self.keep_video = source, cache, caption_key, keep_video

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = dict(self.source[index])
    cached = self.cache[index]
    if caption_hash(example.get(self.caption_key, b"")) != cached["caption_sha256"]:
      raise CacheMismatchError(f"Example {index}: its caption is not the one cached in {self.cache.directory!r}; "
                               "the cache was built from other data or another order.")
    if not self.keep_video:
      example.pop("video", None)
    example["latent_moments"] = cached["latent_moments"]
    return example
