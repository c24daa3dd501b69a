"""Per-example caches: arrays computed once per split by a frozen model, joined back to the examples by index.

Two kinds share one format and one join:
  latents   a frozen VAE's posterior moments, `latent_moments` [T', h, w, 2C] float32 = (mean | logvar) along
            channels (the step samples z = mean + exp(logvar / 2) eps from it, so caching loses nothing);
  text      a frozen text encoder's `text_embeds` [L, D] (the encoder's dtype) and `text_mask` int32 [L], plus the
            embedding of "" (the unconditional input of classifier-free guidance).

    cache = write_latents(directory, source, encode_fn)             # once
    source = CachedSource(source, Cache(directory))                 # example i gains `latent_moments`
    source = CachedSource(source, Cache(text_directory))            # ... and `text_embeds`, `text_mask`

On disk (no pickle; every byte written is read back unchanged): `<kind>.array_record` (record i = example i, in the
`vdm_jax.data.records` format, its header holding the index and the SHA-256 of the example's caption) and
`cache.json`, written last (kind, count, shape, dtype, the producer's fingerprint, and the kind's statistics), so a
cache whose writing did not finish is never read as complete. The join happens by index in the split, before the
pipeline shuffles, and checks each caption's hash, so a cache built from other data or another order fails loudly.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from vdm_jax.data import pipeline
from vdm_jax.data.records import decode_record, encode_record

FORMAT_VERSION = 1
META_FILE = "cache.json"
KINDS = ("latents", "text")
_DATA_FILES = {"latents": "latents.array_record", "text": "embeddings.array_record"}
EMPTY_FILE = "empty_prompt.array_record"  # text caches only


class CacheMismatchError(ValueError):
  """A cached array does not belong to the example it is joined with (other captions, order or producer)."""


def caption_hash(caption: str | bytes) -> str:
  """SHA-256 hex digest of a caption's UTF-8 bytes."""
  return hashlib.sha256(caption.encode("utf-8") if isinstance(caption, str) else bytes(caption)).hexdigest()


def files_identity(folder: str) -> dict[str, list[int]]:
  """{file name: [size, mtime in ns]} of a weights folder's `config.json`, `*.safetensors` and their index: what
  changes when the weights are replaced or fine-tuned, read without loading them."""
  folder = os.path.expanduser(folder)
  names = sorted(n for n in os.listdir(folder)
                 if n == "config.json" or n.endswith(".safetensors") or n.endswith(".safetensors.index.json"))
  return {n: [(st := os.stat(os.path.join(folder, n))).st_size, st.st_mtime_ns] for n in names}


def encoder_identity(encoder) -> dict[str, Any]:
  """What determines a text encoder's embeddings: its settings (`TextEncoder.fingerprint`) and, for an encoder
  loaded from a folder, its weights files (a T5 replaced or fine-tuned at the same path is another encoder)."""
  identity = dict(encoder.fingerprint())
  if encoder.weights_path:
    identity["weights"] = files_identity(encoder.weights_path)
  return json.loads(json.dumps(identity))  # as read back from cache.json (tuples become lists)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _write(directory: str, kind: str, records: Iterable[tuple[np.ndarray, dict[str, Any]]],
           meta: Callable[[], Mapping[str, Any]]) -> "Cache":
  """Writes `records` (array, header) in order as records 0, 1, ..., then `cache.json` from `meta()` (called after
  the last record, so it can hold statistics gathered while writing). An old `cache.json` is removed first: from
  here on the old cache is invalid."""
  os.makedirs(directory, exist_ok=True)
  meta_file = os.path.join(directory, META_FILE)
  if os.path.exists(meta_file):
    os.remove(meta_file)
  count, shape, dtype = 0, None, None
  # group_size:1 keeps each record independently readable (random access without decoding neighbours).
  writer = ArrayRecordWriter(os.path.join(directory, _DATA_FILES[kind]), "group_size:1")
  try:
    for array, header in records:
      writer.write(encode_record(array, {**header, "index": count}))
      count, shape, dtype = count + 1, list(array.shape), array.dtype.name
  finally:
    writer.close()
  full = {"format_version": FORMAT_VERSION, "kind": kind, "num_examples": count, "shape": shape, "dtype": dtype,
          **meta()}
  with open(meta_file + ".tmp", "w") as f:
    json.dump(full, f, indent=1)
  os.replace(meta_file + ".tmp", meta_file)
  return Cache(directory)


def write_latents(directory: str, source, encode_fn: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 32,
                  video_key: str = "video", caption_key: str = "caption",
                  fingerprint: Mapping[str, Any] | None = None, progress: bool = True,
                  desc: str = "latent cache") -> "Cache":
  """Encodes every example of `source` (uint8 [T, H, W, 3] under `video_key`) with `encode_fn`: float32 video in
  [-1, 1] [B, T, H, W, 3] -> moments [B, T', h, w, 2C]. Batches are padded to `batch_size` (one compiled shape).
  `cache.json` also holds the per-channel mean and std of the posterior means (a data-derived normalisation) and,
  under "vae", `fingerprint`: the producing VAE's identity, which readers compare with the VAE they use."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top  (a progress bar only)
  stats = {"sum": 0.0, "sq_sum": 0.0, "count": 0}

  def records():
    total = len(source)
    for start in tqdm(range(0, total, batch_size), disable=not progress, desc=desc):
      examples = [source[i] for i in range(start, min(start + batch_size, total))]
      video = np.stack([np.asarray(e[video_key]) for e in examples]).astype(np.float32) / 127.5 - 1.0
      padded = np.concatenate([video, np.repeat(video[-1:], batch_size - len(video), axis=0)])
      moments = np.asarray(encode_fn(padded), np.float32)[:len(video)]
      mean = moments[..., :moments.shape[-1] // 2]
      mean = mean.reshape(-1, mean.shape[-1]).astype(np.float64)
      stats["sum"] += mean.sum(0)
      stats["sq_sum"] += (mean**2).sum(0)
      stats["count"] += len(mean)
      for example, m in zip(examples, moments):
        yield m, {"caption_sha256": caption_hash(example.get(caption_key, b""))}

  def meta():
    channel_mean = stats["sum"] / stats["count"]
    channel_std = np.sqrt(np.maximum(stats["sq_sum"] / stats["count"] - channel_mean**2, 0.0))
    overall_std = float(np.sqrt(np.mean(stats["sq_sum"] / stats["count"]) - np.mean(channel_mean) ** 2))
    return {"vae": dict(fingerprint or {}), "latent_mean": channel_mean.tolist(),
            "latent_std": channel_std.tolist(), "latent_std_overall": overall_std}

  return _write(directory, "latents", records(), meta)


def _encode_text(encoder, params, captions: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings [B, L, D], token counts [B]) with the batch padded to `batch_size` (one compiled shape)."""
  padded = captions + [""] * (batch_size - len(captions))
  ids, mask = encoder.tokenize(padded)
  embeds = np.asarray(encoder.encode_tokens(params, ids, mask))
  return embeds[:len(captions)], mask[:len(captions)].sum(axis=1)


def write_text(directory: str, captions: Iterable[str | bytes], encoder, params, *, batch_size: int = 64,
               source_info: Mapping[str, Any] | None = None) -> "Cache":
  """Encodes `captions` (in split order: record i is caption i) and the empty prompt into `directory`.

  `encoder` is a `vdm_jax.text.encoders.TextEncoder`, `params` its (frozen) params.
  """
  def records():
    for batch in _batches(captions, batch_size):
      texts = [c.decode("utf-8") if isinstance(c, bytes) else c for c in batch]
      embeds, lengths = _encode_text(encoder, params, texts, batch_size)
      for text, embed, length in zip(texts, embeds, lengths):
        yield embed, {"caption_sha256": caption_hash(text), "length": int(length)}
    # The empty prompt goes in its own file, before cache.json marks the cache complete.
    embeds, lengths = _encode_text(encoder, params, [""], 1)
    writer = ArrayRecordWriter(os.path.join(directory, EMPTY_FILE), "group_size:1")
    writer.write(encode_record(embeds[0], {"index": -1, "caption_sha256": caption_hash(""),
                                           "length": int(lengths[0])}))
    writer.close()

  return _write(directory, "text", records(),
                lambda: {"encoder": encoder_identity(encoder), "source": dict(source_info or {})})


def write_text_split(directory: str, input_config, split: str, encoder, params, *, caption_key: str = "caption",
                     batch_size: int = 64) -> "Cache":
  """Caches the embeddings of every caption of `split` of `input_config`'s dataset (run on one process)."""
  source = pipeline.data_source(input_config, split)
  captions = (source[i][caption_key] for i in range(len(source)))
  info = {"dataset": input_config.dataset, "builder_config": input_config.get("builder_config", ""),
          "split": split, "caption_key": caption_key}
  return write_text(directory, captions, encoder, params, batch_size=batch_size, source_info=info)


class Cache:
  """Random-access reader of a cache directory (grain-compatible: `len()`, `[i]`, picklable).

  `cache[i]` -> {'latent_moments'} (latents) or {'text_embeds', 'text_mask'} (text), plus 'caption_sha256';
  text caches also give `cache.empty_prompt()`, the same for "".
  """

  def __init__(self, directory: str):
    meta_file = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_file):
      raise FileNotFoundError(f"No {META_FILE} in {directory!r}: not a cache, or its writing did not finish "
                              "(build it with vdm_jax.data.cache.write_latents / write_text_split).")
    with open(meta_file) as f:
      self.meta = json.load(f)
    # Caches written before the two kinds shared this module have no `kind`: their data file tells.
    self.meta.setdefault("kind", "latents" if os.path.isfile(os.path.join(directory, _DATA_FILES["latents"]))
                         else "text")
    if self.meta.get("format_version") != FORMAT_VERSION or self.meta["kind"] not in KINDS:
      raise ValueError(f"{meta_file}: format_version {self.meta.get('format_version')} and kind "
                       f"{self.meta.get('kind')!r}; this code reads version {FORMAT_VERSION} of kinds {list(KINDS)}. "
                       "Rebuild the cache.")
    self.directory, self.kind = directory, self.meta["kind"]
    self._records = grain.sources.ArrayRecordDataSource([os.path.join(directory, _DATA_FILES[self.kind])])
    if len(self._records) != self.meta["num_examples"]:
      raise ValueError(f"{directory!r}: {len(self._records)} records but cache.json says "
                       f"{self.meta['num_examples']}; rebuild the cache.")

  def __len__(self) -> int:
    return self.meta["num_examples"]

  def _example(self, record: bytes, expected_index: int) -> dict[str, Any]:
    array, header = decode_record(record)
    if header["index"] != expected_index:
      raise CacheMismatchError(f"{self.directory}: record {expected_index} holds example {header['index']}.")
    if self.kind == "latents":
      return {"latent_moments": array, "caption_sha256": header["caption_sha256"]}
    mask = (np.arange(array.shape[0]) < header["length"]).astype(np.int32)
    return {"text_embeds": array, "text_mask": mask, "caption_sha256": header["caption_sha256"]}

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"Example {index} is not in the cache {self.directory!r} of {len(self)} examples.")
    index %= len(self)
    return self._example(self._records[index], index)

  def empty_prompt(self) -> dict[str, Any]:
    """The cached embedding of the empty prompt (text caches: classifier-free guidance and caption dropout)."""
    if self.kind != "text":
      raise ValueError(f"{self.directory!r} is a {self.kind!r} cache; only text caches hold the empty prompt.")
    empty = grain.sources.ArrayRecordDataSource([os.path.join(self.directory, EMPTY_FILE)])
    return self._example(empty[0], -1)

  def __getstate__(self):
    return {"directory": self.directory}

  def __setstate__(self, state):
    self.__init__(state["directory"])

  def __repr__(self) -> str:
    return f"Cache({self.directory!r}, {self.kind}, {len(self)} x {self.meta['shape']} {self.meta['dtype']})"


class CachedSource:
  """`source[i]` joined with `cache[i]` (a grain random-access source): the cached fields are added to the example
  (under other keys with `rename`).

  Each example's caption is hashed and compared with the one the cache recorded (CacheMismatchError if they
  differ). A latent cache replaces the pixels unless `keep_video`.
  """

  def __init__(self, source, cache: Cache, *, caption_key: str = "caption", keep_video: bool = False,
               rename: Mapping[str, str] | None = None):
    if len(source) != len(cache):
      raise CacheMismatchError(f"The source has {len(source)} examples, the cache {cache.directory!r} has "
                               f"{len(cache)}: it was built for another split or dataset.")
    self.source, self.cache, self.caption_key, self.keep_video = source, cache, caption_key, keep_video
    self.rename = dict(rename or {})  # cached field -> the example's key (two latent caches on one example)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = dict(self.source[index])
    cached = self.cache[index]
    caption = example.get(self.caption_key, b"")
    if caption_hash(caption) != cached.pop("caption_sha256"):
      raise CacheMismatchError(f"Example {index}: its caption {caption!r} is not the one cached in "
                               f"{self.cache.directory!r}; the cache was built from other data or another order.")
    if self.cache.kind == "latents" and not self.keep_video:
      example.pop("video", None)
    example.update({self.rename.get(k, k): v for k, v in cached.items()})
    return example


def cached_source(input_config, split: str, directory: str, *, caption_key: str = "caption") -> CachedSource:
  """The split's data source joined with the cache in `directory`, for `pipeline.make_dataset(..., source=...)`."""
  cache = Cache(directory)
  cached_split = cache.meta.get("source", {}).get("split")
  if cached_split is not None and cached_split != split:
    raise CacheMismatchError(f"The cache {directory!r} holds split {cached_split!r}, not {split!r}.")
  return CachedSource(pipeline.data_source(input_config, split), cache, caption_key=caption_key)
