"""Reading Hugging Face / diffusers model folders without torch: `config.json` + safetensors (single or sharded).

safetensors files are parsed directly (an 8-byte header length, a JSON header, raw little-endian bytes) and
memory-mapped, so bf16/fp16 checkpoints load into numpy (bf16 via ml_dtypes) with no framework and no code execution.
The whole header is checked before any tensor is read (`read_header`), and every error names the file and tensor:
the safetensors library refuses the same malformed files but names neither (docs/faults_weights.md).

Converters build a flat `{flax_path: array}` dict from the torch tensors and hand it to `assign`, which checks it
against the module's abstract params and fails naming the first parameter whose name or shape is wrong.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from typing import Any, Iterable, Mapping

import jax
import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
# The safetensors library refuses longer headers too; a length past it means the file is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000


class WeightsMismatchError(ValueError):
  """A weights file does not match the module: a missing, unexpected or wrongly shaped parameter."""


class SafetensorsError(ValueError):
  """A malformed .safetensors file or shard index; the message names the file and, when one is at fault, the tensor."""


class ModelConfigError(ValueError):
  """A model folder's config.json that cannot describe a model: not a JSON object, or a required field missing."""


class ModelConfig(dict):
  """A config.json as a dict that remembers its file, so that `require` can name it."""
  file = "config"


def read_config(path: str, filename: str = "config.json") -> ModelConfig:
  """The JSON config of a model folder (a ModelConfig: a dict with `.file`)."""
  file = os.path.join(path, filename)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"No {filename} in {path!r}: expected a diffusers/Hugging Face model folder.")
  try:
    with open(file, encoding="utf-8") as f:
      config = json.load(f)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
    raise ModelConfigError(f"{file}: not a JSON file ({e}).") from None
  if not isinstance(config, dict):
    raise ModelConfigError(f"{file}: holds a JSON {type(config).__name__}, not an object of config fields.")
  out = ModelConfig(config)
  out.file = file
  return out


def require(config: Mapping[str, Any], fields: Iterable[str], model: str) -> None:
  """Raises ModelConfigError naming the config's file and the first of `fields` it lacks (a field that every config
  `model`'s library writes, so a default would silently build another model)."""
  missing = [k for k in fields if k not in config]
  if missing:
    raise ModelConfigError(f"{getattr(config, 'file', 'config')}: required field {missing[0]!r} is missing (every "
                           f"{model} config.json has it; missing: {missing}).")


def _error(file: str, message: str, tensor: str | None = None) -> SafetensorsError:
  return SafetensorsError(f"{file}: " + (f"tensor {tensor!r}: " if tensor is not None else "") + message)


class _DuplicateKey(ValueError):
  """A name twice in one JSON object."""

  def __init__(self, key: str):
    super().__init__(f"key {key!r} appears twice")
    self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  """json's object_pairs_hook: a name twice is an error (json alone would keep the last)."""
  out: dict[str, Any] = {}
  for key, value in pairs:
    if key in out:
      raise _DuplicateKey(key)
    out[key] = value
  return out


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _entry(file: str, name: str, meta: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
  """(dtype, shape, begin, end) of one header entry, checked against the data region's size."""
  if not isinstance(meta, dict):
    raise _error(file, f"its header entry is a JSON {type(meta).__name__}, not an object.", name)
  for key in ("dtype", "shape", "data_offsets"):
    if key not in meta:
      raise _error(file, f"its header entry has no {key!r} (it has {sorted(meta)}).", name)
  dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
  if not isinstance(dtype, str) or dtype not in DTYPES:
    raise _error(file, f"unknown dtype {dtype!r}; supported: {sorted(DTYPES)}.", name)
  if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
    raise _error(file, f"shape {shape!r} is not a list of non-negative integers.", name)
  if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
    raise _error(file, f"data_offsets {offsets!r} is not a pair [begin, end] of integers.", name)
  begin, end = offsets
  if not 0 <= begin <= end <= data_size:
    raise _error(file, f"data_offsets [{begin}, {end}] are not within the data region of {data_size} bytes "
                 f"(0 <= begin <= end <= {data_size}).", name)
  size = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
  if end - begin != size:
    raise _error(file, f"{dtype} of shape {shape} is {size} bytes but its data_offsets [{begin}, {end}] hold "
                 f"{end - begin}.", name)
  return dtype, tuple(shape), begin, end


def read_header(file: str) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], int]:
  """The checked header of a .safetensors file: ({name: (dtype, shape, begin, end)}, offset of the data region).

  Checks everything before any tensor is read, as the safetensors library does: a header length within the file,
  a UTF-8 JSON object, a known dtype, a shape and [begin, end] offsets per tensor with end - begin the size of that
  dtype and shape, and tensors that tile the data region (no overlap, no gap, no trailing bytes). Raises
  SafetensorsError naming the file and the tensor.
  """
  file_size = os.path.getsize(file)
  with open(file, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise _error(file, f"not a safetensors file ({file_size} bytes, shorter than its 8-byte header length).")
    (size,) = struct.unpack("<Q", raw)
    if size > MAX_HEADER_BYTES:
      raise _error(file, f"not a safetensors file (header length {size} is over {MAX_HEADER_BYTES}).")
    if 8 + size > file_size:
      raise _error(file, f"truncated or not a safetensors file: header length {size}, but {file_size - 8} bytes "
                   "follow.")
    encoded = f.read(size)
  try:
    header = json.loads(encoded.decode("utf-8"), object_pairs_hook=_unique_keys)
  except UnicodeDecodeError as e:
    raise _error(file, f"the header is not UTF-8 (byte {e.start} of {size}).") from None
  except _DuplicateKey as e:
    raise _error(file, "its name appears twice in the header.", e.key) from None
  except ValueError as e:
    raise _error(file, f"the header is not valid JSON ({e}).") from None
  if not isinstance(header, dict):
    raise _error(file, f"the header is a JSON {type(header).__name__}, not an object.")
  metadata = header.pop("__metadata__", {})
  if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
    raise _error(file, f"__metadata__ must map names to strings, got {metadata!r:.200}.")
  data_size = file_size - 8 - size
  entries = {name: _entry(file, name, meta, data_size) for name, meta in header.items()}
  position, previous = 0, None
  for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3], item[0])):
    if begin < position:
      raise _error(file, f"its bytes [{begin}, {end}) overlap those of tensor {previous!r} (up to {position}).",
                   name)
    if begin > position:
      raise _error(file, f"bytes [{position}, {begin}) before it belong to no tensor (a gap in the data).", name)
    position, previous = end, name
  if position != data_size:
    after = f"after tensor {previous!r}" if previous is not None else "with no tensor in the header"
    raise _error(file, f"bytes [{position}, {data_size}) of the data region {after} belong to no tensor "
                 "(truncated header or appended data).")
  return entries, 8 + size


def read_metadata(file: str) -> dict[str, str]:
  """The `__metadata__` strings of a .safetensors file ({} if none), after `read_header` checked the header."""
  _, offset = read_header(file)
  with open(file, "rb") as f:
    f.seek(8)
    return dict(json.loads(f.read(offset - 8).decode("utf-8")).get("__metadata__", {}))


def read_safetensors(file: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as read-only numpy arrays (memory-mapped), after `read_header` checked
  the whole header; raises SafetensorsError naming the file and tensor."""
  entries, offset = read_header(file)
  expected = offset + max((end for _, _, _, end in entries.values()), default=0)
  with open(file, "rb") as f:
    if os.fstat(f.fileno()).st_size != expected:
      raise _error(file, "the file changed while it was read (its size no longer matches its header).")
    buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if expected > offset else b""
  out = {}
  for name, (dtype, shape, begin, _) in entries.items():
    count = math.prod(shape)
    if count == 0:
      out[name] = np.zeros(shape, DTYPES[dtype])
      continue
    out[name] = np.frombuffer(buffer, dtype=DTYPES[dtype], count=count, offset=offset + begin).reshape(shape)
  return out


def write_safetensors(file: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
  """Writes numpy arrays (bf16 included) as a .safetensors file."""
  header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
  offset, blobs = 0, []
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    if array.dtype not in _NAMES:
      raise ValueError(f"Tensor {name!r}: dtype {array.dtype} cannot be stored; supported: {sorted(DTYPES)}.")
    blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
    offset += len(blob)
    blobs.append(blob)
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
  with open(file, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for blob in blobs:
      f.write(blob)


def _shard_file(folder: str, shard: Any, tensor: str, index: str) -> str:
  """The path of `shard` (a weight_map value of `index`), refused unless it stays inside `folder`: relative, no
  `..` out of it and no linked folder leading out. The file itself may be a link (the Hugging Face cache's are)."""
  if not isinstance(shard, str) or not shard:
    raise _error(index, f"its shard is {shard!r}, not a file name.", tensor)
  if os.path.isabs(shard) or os.path.splitdrive(shard)[0]:
    raise _error(index, f"its shard path {shard!r} is absolute; shard paths are relative to the folder.", tensor)
  file = os.path.normpath(os.path.join(folder, shard))
  root = os.path.realpath(folder)
  if os.path.commonpath([root, os.path.realpath(os.path.dirname(file))]) != root:
    raise _error(index, f"its shard path {shard!r} leads outside the folder {folder!r}.", tensor)
  return file


def _weight_map(index: str) -> dict[str, Any]:
  """The weight_map {tensor name: shard} of a `*.safetensors.index.json`."""
  try:
    with open(index, encoding="utf-8") as f:
      weight_map = json.load(f, object_pairs_hook=_unique_keys).get("weight_map")
  except (ValueError, AttributeError) as e:  # not JSON, not UTF-8, or not an object
    raise _error(index, f"not a shard index ({e}).") from None
  if not isinstance(weight_map, dict) or not weight_map:
    raise _error(index, f"its weight_map is {weight_map!r:.100}, not an object {{tensor name: shard file}}.")
  return weight_map


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a model folder: one `*.safetensors` file, or the shards its `*.safetensors.index.json` lists
  (each inside the folder, every tensor the index names present, no tensor in two shards)."""
  if os.path.isfile(path):
    return read_safetensors(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is neither a model folder nor a .safetensors file.")
  files = sorted(os.listdir(path))
  indexes = [f for f in files if f.endswith(".safetensors.index.json")]
  weight_map: dict[str, str] = {}
  if indexes:
    index = os.path.join(path, indexes[0])
    weight_map = {name: _shard_file(path, shard, name, index) for name, shard in _weight_map(index).items()}
    shards = sorted(set(weight_map.values()))
    for name, file in weight_map.items():
      if not os.path.isfile(file):
        raise _error(index, f"its shard {os.path.relpath(file, path)!r} does not exist.", name)
  else:
    shards = [os.path.join(path, f) for f in files if f.endswith(".safetensors")]
  if not shards:
    found = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = f" Found {found}: convert them to safetensors first (pickle files are not loaded)." if found else ""
    raise FileNotFoundError(f"No .safetensors weights in {path!r}.{hint}")
  tensors: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  for file in shards:
    for name, array in read_safetensors(file).items():
      if indexes and name in origin:
        raise _error(file, f"it is also in the shard {origin[name]}.", name)
      tensors[name], origin[name] = array, file
  for name, file in weight_map.items():
    if name not in origin:
      raise _error(os.path.join(path, indexes[0]), f"the index puts it in {file}, which does not hold it.", name)
  return tensors


def linear(weight: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> flax Dense kernel [in, out]."""
  return np.transpose(weight)


def conv(weight: np.ndarray) -> np.ndarray:
  """torch ConvNd weight [out, in, *k] -> flax Conv kernel [*k, in, out]."""
  return np.transpose(weight, tuple(range(2, weight.ndim)) + (1, 0))


def assign(abstract_params: Any, values: Mapping[tuple[str, ...], np.ndarray], *, dtype=None,
           unused: Iterable[str] = (), source: str = "weights") -> Any:
  """Builds the params tree of `abstract_params` (shapes only) from `values`, keyed by flax path tuples.

  Raises WeightsMismatchError naming the first parameter that is missing or has the wrong shape, or the first
  source tensor the converter did not use (`unused`). `dtype` casts every parameter (e.g. jnp.bfloat16).
  """
  unused = sorted(unused)
  if unused:
    raise WeightsMismatchError(f"{source}: tensor {unused[0]!r} does not belong to this model "
                               f"({len(unused)} unexpected tensors); is the config right for these weights?")
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  expected = {tuple(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}
  for path, leaf in expected.items():
    if path not in values:
      raise WeightsMismatchError(f"{source}: no tensor for parameter {'/'.join(path)} (shape {tuple(leaf.shape)}).")
    if tuple(values[path].shape) != tuple(leaf.shape):
      raise WeightsMismatchError(f"{source}: parameter {'/'.join(path)} has shape {tuple(values[path].shape)} in "
                                 f"the file but {tuple(leaf.shape)} in the model.")
  extra = sorted(set(values) - set(expected))
  if extra:
    raise WeightsMismatchError(f"{source}: converted parameter {'/'.join(extra[0])} does not exist in the model.")
  out: dict[str, Any] = {}
  for path, leaf in expected.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.asarray(values[path], dtype=dtype or leaf.dtype)
  return out
