"""Malformed weights and configs, written by hand: the reader checks the whole safetensors header before reading a
tensor and names the file and the tensor (or config field) at fault; the safetensors library refuses the same
files. The table of these faults is docs/faults_weights.md."""
import json
import os
import re
import struct

import numpy as np
import pytest

from vdm_jax.convert import cogvideox_transformer, cogvideox_vae, t5
from vdm_jax.convert import safetensors_io as st


def write_raw(path, header, data: bytes = b"", *, length: int | None = None) -> str:
  """A file laid out as safetensors: 8-byte little-endian header length, the header (a dict as JSON, or raw bytes),
  then `data`."""
  encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
  return str(path)


def f32(shape, begin, end):
  return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, end]}


def truncated(path):
  st.write_safetensors(str(path), {"a": np.ones(2, np.float32), "b": np.arange(4, dtype=np.float32)})
  data = path.read_bytes()
  path.write_bytes(data[:-4])
  return str(path)


# name -> (builder(path) -> file, the tensor the message names (None: the file as a whole), message pattern)
FAULTS = {
    "negative offsets": (lambda p: write_raw(p, {"w": f32([2], -8, 0)}, bytes(8)), "w",
                         r"data_offsets \[-8, 0\] are not within the data region of 8 bytes"),
    "offsets past the data": (lambda p: write_raw(p, {"w": f32([4], 0, 16)}, bytes(8)), "w",
                              r"data_offsets \[0, 16\] are not within the data region of 8 bytes"),
    "begin after end": (lambda p: write_raw(p, {"w": f32([0], 8, 4)}, bytes(8)), "w", "not within"),
    "overlap": (lambda p: write_raw(p, {"x": f32([2], 0, 8), "y": f32([2], 4, 12)}, bytes(12)), "y",
                r"overlap those of tensor 'x'"),
    "gap": (lambda p: write_raw(p, {"x": f32([1], 0, 4), "y": f32([1], 8, 12)}, bytes(12)), "y",
            r"bytes \[4, 8\) before it belong to no tensor"),
    "trailing bytes": (lambda p: write_raw(p, {"x": f32([1], 0, 4)}, bytes(8)), None,
                       r"bytes \[4, 8\) of the data region after tensor 'x' belong to no tensor"),
    "float16 declared, float32 bytes": (
        lambda p: write_raw(p, {"h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "h",
        r"F16 of shape \[2\] is 4 bytes but its data_offsets \[0, 8\] hold 8"),
    "truncated data": (truncated, "b", r"data_offsets \[8, 24\] are not within the data region of 20 bytes"),
    "truncated header": (lambda p: write_raw(p, b'{"w": {"dtype"', length=400), None,
                         r"truncated or not a safetensors file: header length 400, but 14 bytes follow"),
    "shorter than the header length": (lambda p: (p.write_bytes(b"\x01\x02"), str(p))[1], None,
                                       "shorter than its 8-byte header length"),
    "huge header length": (lambda p: write_raw(p, b"{}", length=2 ** 40), None, "header length 1099511627776 is over"),
    "header not UTF-8": (lambda p: write_raw(p, b'{"w\xff": 1}'), None, r"the header is not UTF-8 \(byte 3 of 9\)"),
    "header not JSON": (lambda p: write_raw(p, b"{'w': 1}"), None, "the header is not valid JSON"),
    "header not an object": (lambda p: write_raw(p, [1, 2]), None, "the header is a JSON list, not an object"),
    "duplicate tensor name": (lambda p: write_raw(p, b'{"w": %s, "w": %s}' % (
        json.dumps(f32([1], 0, 4)).encode(), json.dumps(f32([2], 4, 12)).encode()), bytes(12)), "w",
                              "its name appears twice in the header"),
    "entry not an object": (lambda p: write_raw(p, {"w": [0, 4]}), "w", "its header entry is a JSON list"),
    "missing dtype": (lambda p: write_raw(p, {"w": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "w",
                      r"its header entry has no 'dtype'"),
    "missing data_offsets": (lambda p: write_raw(p, {"w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "w",
                             r"no 'data_offsets'"),
    "unknown dtype": (lambda p: write_raw(p, {"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}},
                                          bytes(8)), "w", r"unknown dtype 'Q7'; supported: \["),
    "negative shape": (lambda p: write_raw(p, {"w": f32([-2], 0, 8)}, bytes(8)), "w",
                       r"shape \[-2\] is not a list of non-negative integers"),
    "float shape": (lambda p: write_raw(p, {"w": f32([2.0], 0, 8)}, bytes(8)), "w", "not a list of non-negative"),
    "offsets not a pair": (lambda p: write_raw(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}},
                                               bytes(8)), "w", r"data_offsets \[0\] is not a pair"),
    "metadata not strings": (lambda p: write_raw(p, {"__metadata__": {"format": 1}, "w": f32([2], 0, 8)},
                                                 bytes(8)), None, "__metadata__ must map names to strings"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_malformed_file_fails_naming_file_and_tensor(tmp_path, fault):
  build, tensor, pattern = FAULTS[fault]
  file = build(tmp_path / "model.safetensors")
  with pytest.raises(st.SafetensorsError, match=pattern) as error:
    st.read_safetensors(file)
  message = str(error.value)
  assert message.startswith(f"{file}: "), message
  if tensor is not None:
    assert f"tensor {tensor!r}" in message, message
  assert isinstance(error.value, ValueError)
  with pytest.raises(st.SafetensorsError, match=re.escape(file)):  # the same error from a folder
    st.read_tensors(str(tmp_path))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_safetensors_library_refuses_the_same_files(tmp_path, fault):
  """A test-only comparison: the faults refused here are faults for the reference reader too."""
  numpy_api = pytest.importorskip("safetensors.numpy")
  file = FAULTS[fault][0](tmp_path / "model.safetensors")
  with pytest.raises(Exception) as error:  # safetensors_rust.SafetensorError, whose module moves between versions
    numpy_api.load_file(file)
  assert type(error.value).__name__ == "SafetensorError"


def test_well_formed_edge_cases_still_load(tmp_path):
  """Zero-size tensors (alone or between others), metadata, no tensors at all, extra keys in an entry."""
  only_empty = write_raw(tmp_path / "empty.safetensors", {"__metadata__": {"format": "pt"}, "e": f32([0, 3], 0, 0)})
  assert st.read_safetensors(only_empty)["e"].shape == (0, 3)
  assert st.read_safetensors(write_raw(tmp_path / "none.safetensors", {})) == {}
  data = np.arange(3, dtype=np.float32).tobytes()
  mixed = write_raw(tmp_path / "mixed.safetensors", {"a": f32([1], 0, 4), "z": f32([0], 4, 4),
                                                     "b": {**f32([2], 4, 12), "extra": "kept by the library too"}},
                    data)
  out = st.read_safetensors(mixed)
  np.testing.assert_array_equal(out["a"], [0])
  np.testing.assert_array_equal(out["b"], [1, 2])
  assert out["z"].shape == (0,)
  f8 = write_raw(tmp_path / "f8.safetensors", {"q": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}},
                 bytes([0x38, 0x40]))
  np.testing.assert_array_equal(st.read_safetensors(f8)["q"].astype(np.float32), [1.0, 2.0])


def _sharded(folder, weight_map, shards=None):
  """A folder with shards {file: {name: array}} and an index whose weight_map is `weight_map`."""
  folder.mkdir(parents=True, exist_ok=True)
  for name, tensors in (shards or {}).items():
    st.write_safetensors(str(folder / name), tensors)
  with open(folder / "model.safetensors.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return str(folder)


def test_index_shard_paths_stay_inside_the_folder(tmp_path):
  index = re.escape(str(tmp_path / "m" / "model.safetensors.index.json"))
  st.write_safetensors(str(tmp_path / "outside.safetensors"), {"x": np.ones(2, np.float32)})
  escaping = _sharded(tmp_path / "m", {"x": "../outside.safetensors"})
  with pytest.raises(st.SafetensorsError, match=index + r": tensor 'x': its shard path '../outside.safetensors' "
                     "leads outside the folder"):
    st.read_tensors(escaping)
  absolute = _sharded(tmp_path / "m", {"x": str(tmp_path / "outside.safetensors")})
  with pytest.raises(st.SafetensorsError, match=index + r": tensor 'x': its shard path .* is absolute"):
    st.read_tensors(absolute)
  inner = _sharded(tmp_path / "m", {"x": "sub/../../outside.safetensors"})
  with pytest.raises(st.SafetensorsError, match="leads outside the folder"):
    st.read_tensors(inner)
  os.symlink(tmp_path, tmp_path / "m" / "link")  # a linked folder that leads out
  linked = _sharded(tmp_path / "m", {"x": "link/outside.safetensors"})
  with pytest.raises(st.SafetensorsError, match="leads outside the folder"):
    st.read_tensors(linked)


def test_index_linked_shard_file_inside_the_folder_loads(tmp_path):
  """The Hugging Face cache's layout: the shard files of a snapshot folder are links to blobs elsewhere."""
  blobs = tmp_path / "blobs"
  blobs.mkdir()
  st.write_safetensors(str(blobs / "abc123"), {"x": np.full(2, 3, np.float32)})
  folder = tmp_path / "snapshot"
  folder.mkdir()
  os.symlink(blobs / "abc123", folder / "model-00001-of-00001.safetensors")
  _sharded(folder, {"x": "model-00001-of-00001.safetensors"})
  np.testing.assert_array_equal(st.read_tensors(str(folder))["x"], [3, 3])


def test_index_and_shards_disagree(tmp_path):
  x, y = np.ones(2, np.float32), np.zeros(3, np.float32)
  missing_shard = _sharded(tmp_path / "a", {"x": "s1.safetensors"})
  with pytest.raises(st.SafetensorsError, match=r"tensor 'x': its shard 's1.safetensors' does not exist"):
    st.read_tensors(missing_shard)
  missing_tensor = _sharded(tmp_path / "b", {"x": "s1.safetensors", "y": "s1.safetensors"},
                            {"s1.safetensors": {"x": x}})
  with pytest.raises(st.SafetensorsError, match=r"tensor 'y': the index puts it in .*s1.safetensors, which does not"):
    st.read_tensors(missing_tensor)
  twice = _sharded(tmp_path / "c", {"x": "s1.safetensors", "y": "s2.safetensors"},
                   {"s1.safetensors": {"x": x}, "s2.safetensors": {"x": x, "y": y}})
  with pytest.raises(st.SafetensorsError, match=r"s2.safetensors: tensor 'x': it is also in the shard .*s1"):
    st.read_tensors(twice)
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "model.safetensors.index.json").write_text("{not json")
  with pytest.raises(st.SafetensorsError, match=r"model.safetensors.index.json: not a shard index"):
    st.read_tensors(str(tmp_path / "d"))
  bad_map = _sharded(tmp_path / "e", ["s1.safetensors"])
  with pytest.raises(st.SafetensorsError, match=r"its weight_map is \['s1.safetensors'\], not an object"):
    st.read_tensors(bad_map)
  not_a_name = _sharded(tmp_path / "f", {"x": 3})
  with pytest.raises(st.SafetensorsError, match=r"tensor 'x': its shard is 3, not a file name"):
    st.read_tensors(not_a_name)


# A CogVideoX-2b transformer config as diffusers writes it, at toy sizes (the loaders refuse it before any weight).
TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, flip_sin_to_cos=True,
                   freq_shift=0, time_embed_dim=16, text_embed_dim=8, num_layers=2, dropout=0.0, attention_bias=True,
                   sample_width=4, sample_height=4, sample_frames=5, patch_size=2, temporal_compression_ratio=4,
                   max_text_seq_length=4, activation_fn="gelu-approximate", timestep_activation_fn="silu",
                   norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
                   temporal_interpolation_scale=1.0)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[8, 8, 8, 8], layers_per_block=1, latent_channels=4,
           norm_num_groups=4, norm_eps=1e-6, temporal_compression_ratio=4, scaling_factor=1.15258426)
T5 = dict(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)


def _folder(tmp_path, name, config, drop):
  folder = tmp_path / name
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != drop}))
  return str(folder)


@pytest.mark.parametrize("load,config,field", [
    (cogvideox_transformer.load_transformer, TRANSFORMER, "num_layers"),
    (cogvideox_transformer.load_transformer, TRANSFORMER, "num_attention_heads"),
    (cogvideox_transformer.load_transformer, TRANSFORMER, "sample_frames"),
    (cogvideox_vae.load_vae, VAE, "latent_channels"),
    (cogvideox_vae.load_vae, VAE, "block_out_channels"),
    (t5.load_encoder, T5, "d_model"),
])
def test_config_missing_a_required_field_names_file_and_field(tmp_path, load, config, field):
  folder = _folder(tmp_path, "model", config, drop=field)
  file = re.escape(os.path.join(folder, "config.json"))
  with pytest.raises(st.ModelConfigError, match=f"{file}: required field '{field}' is missing"):
    load(folder)


def test_config_fields_every_diffusers_version_wrote_are_the_required_ones():
  """The full configs above build modules; fields added by later diffusers releases are not required."""
  assert set(cogvideox_transformer.REQUIRED) <= set(TRANSFORMER)
  module = cogvideox_transformer.module_from_config(
      {k: v for k, v in TRANSFORMER.items() if k not in ("dropout", "activation_fn", "timestep_activation_fn")})
  assert module.num_layers == 2 and module.pos_embed == "sincos" and module.patch_size_t == 1
  assert cogvideox_vae.module_from_config(VAE).latent_channels == 4
  assert t5.encoder_from_config(T5).feed_forward_proj == "relu"


def test_config_not_json_names_the_file(tmp_path):
  (tmp_path / "config.json").write_text('{"num_layers": 2,')
  with pytest.raises(st.ModelConfigError, match=re.escape(str(tmp_path / "config.json")) + ": not a JSON file"):
    st.read_config(str(tmp_path))
  (tmp_path / "config.json").write_text("[1]")
  with pytest.raises(st.ModelConfigError, match="holds a JSON list, not an object"):
    st.read_config(str(tmp_path))
