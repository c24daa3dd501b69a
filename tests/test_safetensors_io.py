"""The torch-free safetensors reader: exact round trips (bf16 included), shards, parity with the safetensors
library, and mismatch errors that name the parameter."""
import json

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vdm_jax.convert import safetensors_io as st


def test_round_trip_all_dtypes(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.normal(size=(3, 4)).astype(np.float32),
             "b": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
             "c": rng.normal(size=(2, 2, 2)).astype(np.float16),
             "d": np.arange(6, dtype=np.int64).reshape(2, 3), "empty": np.zeros((0, 3), np.float32)}
  file = str(tmp_path / "m.safetensors")
  st.write_safetensors(file, tensors, metadata={"format": "pt"})
  back = st.read_safetensors(file)
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k].astype(np.float64), v.astype(np.float64))
  # The safetensors library (numpy API, which has no bf16) reads what we write, and we read what it writes.
  plain = {k: v for k, v in tensors.items() if k != "b"}
  save_file(plain, str(tmp_path / "lib.safetensors"))
  ours = st.read_safetensors(str(tmp_path / "lib.safetensors"))
  for k, v in plain.items():
    np.testing.assert_array_equal(ours[k], v)
  st.write_safetensors(str(tmp_path / "ours.safetensors"), plain)
  for k, v in load_file(str(tmp_path / "ours.safetensors")).items():
    np.testing.assert_array_equal(v, plain[k])


def test_sharded_folder_and_errors(tmp_path):
  st.write_safetensors(str(tmp_path / "model-00001-of-00002.safetensors"), {"x": np.ones(2, np.float32)})
  st.write_safetensors(str(tmp_path / "model-00002-of-00002.safetensors"), {"y": np.zeros(3, np.float32)})
  with open(tmp_path / "model.safetensors.index.json", "w") as f:
    json.dump({"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}, f)
  assert sorted(st.read_tensors(str(tmp_path))) == ["x", "y"]
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "pytorch_model.bin").write_bytes(b"\0")
  with pytest.raises(FileNotFoundError, match="pickle files are not loaded"):
    st.read_tensors(str(empty))
  with pytest.raises(FileNotFoundError, match="No config.json"):
    st.read_config(str(empty))
  (empty / "bad.safetensors").write_bytes(b"\xff" * 16)
  with pytest.raises(ValueError, match="not a safetensors file"):
    st.read_safetensors(str(empty / "bad.safetensors"))


def test_layout_transforms_and_assign():
  w = np.arange(6, dtype=np.float32).reshape(2, 3)  # torch Linear [out=2, in=3]
  np.testing.assert_array_equal(st.linear(w), w.T)
  k = np.zeros((8, 4, 3, 5, 7))  # torch Conv3d [out, in, kt, kh, kw]
  assert st.conv(k).shape == (3, 5, 7, 4, 8)
  abstract = {"dense": {"kernel": jax.ShapeDtypeStruct((3, 2), np.float32), "bias": jax.ShapeDtypeStruct((2,),
                                                                                                           np.float32)}}
  values = {("dense", "kernel"): st.linear(w), ("dense", "bias"): np.ones(2, np.float32)}
  params = st.assign(abstract, values)
  np.testing.assert_array_equal(params["dense"]["kernel"], w.T)
  with pytest.raises(st.WeightsMismatchError, match=r"dense/kernel has shape \(2, 3\) in the file but \(3, 2\)"):
    st.assign(abstract, {**values, ("dense", "kernel"): w})
  with pytest.raises(st.WeightsMismatchError, match="no tensor for parameter dense/bias"):
    st.assign(abstract, {("dense", "kernel"): w.T})
  with pytest.raises(st.WeightsMismatchError, match="tensor 'extra.weight' does not belong"):
    st.assign(abstract, values, unused=["extra.weight"])
  assert st.assign(abstract, values, dtype=ml_dtypes.bfloat16)["dense"]["bias"].dtype == ml_dtypes.bfloat16
