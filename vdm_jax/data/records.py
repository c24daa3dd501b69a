"""One array per array_record record, without pickle: `uint32 n | n bytes of JSON header | raw array bytes`.

The header holds the array's shape and dtype (little-endian, C order) plus whatever the writer adds (an index, a
hash of the caption it belongs to, ...). Shared by the text-embedding and latent caches.
"""
from __future__ import annotations

import json
import struct
from typing import Any, Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so np.dtype('bfloat16') resolves)
import numpy as np


def encode_record(array: np.ndarray, header: Mapping[str, Any]) -> bytes:
  """An array and a JSON-able header -> one record's bytes (shape and dtype are added to the header)."""
  array = np.ascontiguousarray(array)
  array = array.astype(array.dtype.newbyteorder("<"), copy=False)
  meta = json.dumps({**header, "shape": list(array.shape), "dtype": array.dtype.name}).encode("utf-8")
  return struct.pack("<I", len(meta)) + meta + array.tobytes()


def decode_record(record: bytes) -> tuple[np.ndarray, dict[str, Any]]:
  """One record's bytes -> (array, header). The array is a read-only view of `record`."""
  (size,) = struct.unpack_from("<I", record)
  header = json.loads(record[4:4 + size].decode("utf-8"))
  dtype = np.dtype(header["dtype"]).newbyteorder("<")
  array = np.frombuffer(record, dtype=dtype, offset=4 + size).reshape(header["shape"])
  return array, header
