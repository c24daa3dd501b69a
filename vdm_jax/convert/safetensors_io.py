"""Reading Hugging Face / diffusers model folders without torch: `config.json` + safetensors (single or sharded).

safetensors files are parsed directly (an 8-byte header length, a JSON header, raw little-endian bytes) and
memory-mapped, so bf16/fp16 checkpoints load into numpy (bf16 via ml_dtypes) with no framework and no code execution.

Converters build a flat `{flax_path: array}` dict from the torch tensors and hand it to `assign`, which checks it
against the module's abstract params and fails naming the first parameter whose name or shape is wrong.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any, Iterable, Mapping

import jax
import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class WeightsMismatchError(ValueError):
  """A weights file does not match the module: a missing, unexpected or wrongly shaped parameter."""


def read_config(path: str, filename: str = "config.json") -> dict[str, Any]:
  """The JSON config of a model folder."""
  file = os.path.join(path, filename)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"No {filename} in {path!r}: expected a diffusers/Hugging Face model folder.")
  with open(file) as f:
    return json.load(f)


def _header(f) -> tuple[dict[str, Any], int]:
  raw = f.read(8)
  if len(raw) != 8:
    raise ValueError(f"{f.name}: not a safetensors file (shorter than its header).")
  (size,) = struct.unpack("<Q", raw)
  if size > 100_000_000:
    raise ValueError(f"{f.name}: not a safetensors file (header length {size}).")
  return json.loads(f.read(size)), 8 + size


def read_safetensors(file: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as read-only numpy arrays (memory-mapped)."""
  with open(file, "rb") as f:
    header, offset = _header(f)
    buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(file) > offset else b""
  out = {}
  for name, meta in header.items():
    if name == "__metadata__":
      continue
    if meta["dtype"] not in DTYPES:
      raise ValueError(f"{file}: tensor {name!r} has dtype {meta['dtype']}; supported: {sorted(DTYPES)}.")
    start, end = meta["data_offsets"]
    dtype = np.dtype(DTYPES[meta["dtype"]])
    count = (end - start) // dtype.itemsize
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset + start)
    out[name] = array.reshape(meta["shape"])
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


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a model folder: one `*.safetensors` file, or the shards its `*.safetensors.index.json` lists."""
  if os.path.isfile(path):
    return read_safetensors(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is neither a model folder nor a .safetensors file.")
  files = sorted(os.listdir(path))
  indexes = [f for f in files if f.endswith(".safetensors.index.json")]
  if indexes:
    with open(os.path.join(path, indexes[0])) as f:
      weight_map = json.load(f)["weight_map"]
    shards = sorted(set(weight_map.values()))
  else:
    shards = [f for f in files if f.endswith(".safetensors")]
  if not shards:
    found = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = f" Found {found}: convert them to safetensors first (pickle files are not loaded)." if found else ""
    raise FileNotFoundError(f"No .safetensors weights in {path!r}.{hint}")
  tensors: dict[str, np.ndarray] = {}
  for shard in shards:
    tensors.update(read_safetensors(os.path.join(path, shard)))
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
