"""Text-embedding cache: a frozen encoder's embeddings of a split's captions, computed once, served with the batch.

    text = encoders.build(config.text); params = text.init(rng)
    cache.cache_split("/data/cache/train", config.input, "train", text, params)     # once, e.g. T5-XXL
    source = cache.cached_source(config.input, "train", "/data/cache/train")
    ds = pipeline.make_dataset(config.input, split="train", source=source,
                               pp="...|keep('video', 'caption', 'text_embeds', 'text_mask')")

Each example of the joined source gains `text_embeds` [max_length, d_model] (the encoder's dtype) and `text_mask`
int32 [max_length] (1 on the caption's tokens and EOS). The join happens by index in the split, before the
pipeline shuffles, so an embedding travels with its example.

On disk (no pickle; every byte written is read back unchanged):
  cache.json                  num_examples, shape, dtype, the encoder's fingerprint, where the captions came from
  embeddings.array_record     record i = example i of the split
  empty_prompt.array_record   one record: the embedding of "" (the unconditional input of classifier-free guidance)
A record is `uint32 n | n bytes of JSON header | raw array bytes (C order, little-endian)`; the header holds the
index, shape, dtype, token count and the SHA-256 of the caption, which the joined source checks against the
example's caption, so a cache built from other data or another order fails loudly instead of training on the
wrong text.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from vdm_jax.data.records import decode_record, encode_record  # noqa: F401  (re-exported)

FORMAT_VERSION = 1
META_FILE = "cache.json"
EMBEDDINGS_FILE = "embeddings.array_record"
EMPTY_FILE = "empty_prompt.array_record"


class CacheMismatchError(ValueError):
  """A cached embedding does not belong to the example it is joined with (other captions, order or encoder)."""


def caption_hash(caption: str | bytes) -> str:
  """SHA-256 hex digest of a caption's UTF-8 bytes."""
  return hashlib.sha256(caption.encode("utf-8") if isinstance(caption, str) else bytes(caption)).hexdigest()


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _encode(encoder, params, captions: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings [B, L, D], token counts [B]) with the batch padded to `batch_size` (one compiled shape)."""
  padded = captions + [""] * (batch_size - len(captions))
  ids, mask = encoder.tokenize(padded)
  embeds = np.asarray(encoder.encode_tokens(params, ids, mask))
  return embeds[:len(captions)], mask[:len(captions)].sum(axis=1)


def write_cache(directory: str, captions: Iterable[str | bytes], encoder, params, *, batch_size: int = 64,
                source_info: Mapping[str, Any] | None = None) -> "EmbeddingCache":
  """Encodes `captions` (in split order: record i is caption i) and the empty prompt into `directory`.

  `encoder` is a `vdm_jax.text.encoders.TextEncoder`, `params` its (frozen) params. `cache.json` is written last,
  so a cache interrupted while writing is never read as complete. Returns the cache, opened.
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  meta_file = os.path.join(directory, META_FILE)
  if os.path.exists(meta_file):
    os.remove(meta_file)  # the old cache is invalid from here on
  count, shape, dtype = 0, None, None
  # group_size:1 keeps each record independently readable (random access without decoding neighbours).
  writer = ArrayRecordWriter(os.path.join(directory, EMBEDDINGS_FILE), "group_size:1")
  try:
    for batch in _batches(captions, batch_size):
      texts = [c.decode("utf-8") if isinstance(c, bytes) else c for c in batch]
      embeds, lengths = _encode(encoder, params, texts, batch_size)
      for text, embed, length in zip(texts, embeds, lengths):
        writer.write(encode_record(embed, {"index": count, "caption_sha256": caption_hash(text),
                                           "length": int(length)}))
        count += 1
      shape, dtype = list(embeds.shape[1:]), embeds.dtype.name
  finally:
    writer.close()
  embeds, lengths = _encode(encoder, params, [""], 1)
  writer = ArrayRecordWriter(os.path.join(directory, EMPTY_FILE), "group_size:1")
  writer.write(encode_record(embeds[0], {"index": -1, "caption_sha256": caption_hash(""), "length": int(lengths[0])}))
  writer.close()
  meta = {"format_version": FORMAT_VERSION, "num_examples": count, "shape": shape or list(embeds.shape[1:]),
          "dtype": dtype or embeds.dtype.name, "encoder": encoder.fingerprint(), "source": dict(source_info or {})}
  with open(meta_file + ".tmp", "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(meta_file + ".tmp", meta_file)
  return EmbeddingCache(directory)


def cache_split(directory: str, input_config, split: str, encoder, params, *, caption_key: str = "caption",
                batch_size: int = 64) -> "EmbeddingCache":
  """Caches the embeddings of every caption of `split` of `input_config`'s dataset (run on one process)."""
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  source = pipeline.data_source(input_config, split)
  captions = (source[i][caption_key] for i in range(len(source)))
  info = {"dataset": input_config.dataset, "builder_config": input_config.get("builder_config", ""),
          "split": split, "caption_key": caption_key}
  return write_cache(directory, captions, encoder, params, batch_size=batch_size, source_info=info)


class EmbeddingCache:
  """Random-access reader of a cache directory (grain-compatible: `len()`, `[i]`, picklable).

  `cache[i]` -> {'text_embeds': [L, D], 'text_mask': int32 [L], 'caption_sha256': str}; `cache.empty_prompt()` the
  same for "".
  """

  def __init__(self, directory: str):
    import grain  # pylint: disable=g-import-not-at-top
    meta_file = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_file):
      raise FileNotFoundError(f"No {META_FILE} in {directory!r}: not a text-embedding cache, or its writing did not "
                              "finish (build it with vdm_jax.text.cache.write_cache / cache_split).")
    with open(meta_file) as f:
      self.meta = json.load(f)
    if self.meta.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"{meta_file}: format_version {self.meta.get('format_version')}, this code reads "
                       f"{FORMAT_VERSION}; rebuild the cache.")
    self.directory = directory
    self._records = grain.sources.ArrayRecordDataSource([os.path.join(directory, EMBEDDINGS_FILE)])
    self._empty = grain.sources.ArrayRecordDataSource([os.path.join(directory, EMPTY_FILE)])
    if len(self._records) != self.meta["num_examples"]:
      raise ValueError(f"{directory!r}: {len(self._records)} records but cache.json says "
                       f"{self.meta['num_examples']}; rebuild the cache.")

  def __len__(self) -> int:
    return len(self._records)

  @staticmethod
  def _example(record: bytes, expected_index: int) -> dict[str, Any]:
    embeds, header = decode_record(record)
    if header["index"] != expected_index:
      raise CacheMismatchError(f"Cache record {expected_index} holds example {header['index']}.")
    mask = (np.arange(embeds.shape[0]) < header["length"]).astype(np.int32)
    return {"text_embeds": embeds, "text_mask": mask, "caption_sha256": header["caption_sha256"]}

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"Example {index} is not in this cache of {len(self)} examples.")
    index %= len(self)
    return self._example(self._records[index], index)

  def empty_prompt(self) -> dict[str, Any]:
    """The cached embedding of the empty prompt (for classifier-free guidance and caption dropout)."""
    return self._example(self._empty[0], -1)

  def __repr__(self) -> str:
    return f"EmbeddingCache({self.directory!r}, {len(self)} x {self.meta['shape']} {self.meta['dtype']})"


class CachedTextSource:
  """`source[i]` with the cached `text_embeds` and `text_mask` of example i (a grain random-access source).

  With `check_captions`, each example's caption is hashed and compared with the one the embedding was computed
  from (CacheMismatchError if they differ).
  """

  def __init__(self, source, cache: EmbeddingCache, *, caption_key: str = "caption", check_captions: bool = True):
    if len(source) != len(cache):
      raise CacheMismatchError(f"The source has {len(source)} examples, the cache {cache.directory!r} has "
                               f"{len(cache)}: it was built for another split or dataset.")
    self.source, self.cache = source, cache
    self.caption_key, self.check_captions = caption_key, check_captions

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = dict(self.source[index])
    cached = self.cache[index]
    if self.check_captions and caption_hash(example[self.caption_key]) != cached["caption_sha256"]:
      raise CacheMismatchError(f"Example {index}: caption {example[self.caption_key]!r} is not the one cached in "
                               f"{self.cache.directory!r}; the cache was built from other data or another order.")
    example["text_embeds"], example["text_mask"] = cached["text_embeds"], cached["text_mask"]
    return example


def cached_source(input_config, split: str, directory: str, *, caption_key: str = "caption",
                  check_captions: bool = True) -> CachedTextSource:
  """The split's data source joined with its cache, for `pipeline.make_dataset(..., source=...)`."""
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  cache = EmbeddingCache(directory)
  cached_split = cache.meta.get("source", {}).get("split")
  if cached_split is not None and cached_split != split:
    raise CacheMismatchError(f"The cache {directory!r} holds split {cached_split!r}, not {split!r}.")
  return CachedTextSource(pipeline.data_source(input_config, split), cache, caption_key=caption_key,
                          check_captions=check_captions)
