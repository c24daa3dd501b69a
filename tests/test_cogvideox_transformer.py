"""load_transformer against diffusers' CogVideoXTransformer3DModel (random, perturbed weights, float32): tiny
configs in every position mode (2b sincos, 5b RoPE, 5b-I2V learned + RoPE, 1.5 RoPE with patch_size_t 2 + ofs) and
the 2b width with 2 layers; max relative error max|a - b| / max|b| <= 1e-4. Plus parameter counts of the released
configs and errors that name the bad tensor."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_extra import need

from vdm_jax.convert import safetensors_io as st
from vdm_jax.convert.cogvideox import load_transformer
from vdm_jax.convert.cogvideox_transformer import abstract_params, convert, module_from_config

torch = need("torch")
need("diffusers")
from diffusers import CogVideoXTransformer3DModel  # noqa: E402  pylint: disable=g-import-not-at-top
from diffusers.models.embeddings import get_3d_rotary_pos_embed  # noqa: E402  pylint: disable=g-import-not-at-top
from diffusers.pipelines.cogvideo.pipeline_cogvideox import (  # noqa: E402  pylint: disable=g-import-not-at-top
    get_resize_crop_region_for_grid)

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=12, num_layers=2, sample_width=12, sample_height=8, sample_frames=9, patch_size=2,
            max_text_seq_length=5)
MODES = {
    "sincos_2b": dict(TINY),
    "rope_5b": dict(TINY, use_rotary_positional_embeddings=True),
    "learned_5b_i2v": dict(TINY, in_channels=8, use_rotary_positional_embeddings=True,
                           use_learned_positional_embeddings=True),
    "rope_15_i2v": dict(TINY, patch_size_t=2, use_rotary_positional_embeddings=True, ofs_embed_dim=8, patch_bias=False),
}
# latent [T, H, W] per mode: not the sample size where RoPE's crop region matters; learned positions need it.
SIZES = {"sincos_2b": (2, 6, 10), "rope_5b": (2, 6, 10), "learned_5b_i2v": (3, 8, 12), "rope_15_i2v": (4, 6, 10)}


def relative_error(ours, ref):
  return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def make_model(config, seed=0, scale=0.1):
  """A diffusers model whose weights are all perturbed (norm scales/biases and adaLN included)."""
  torch.manual_seed(seed)
  model = CogVideoXTransformer3DModel(**config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))
  return model


def pipeline_rope(config, t, h, w):
  """The rotary tables the diffusers pipeline passes for latents of [t, h, w] (its _prepare_rotary_... logic)."""
  if not config.get("use_rotary_positional_embeddings"):
    return None
  p, pt = config["patch_size"], config.get("patch_size_t")
  base_h, base_w = config["sample_height"] // p, config["sample_width"] // p
  if pt is None:
    crops = get_resize_crop_region_for_grid((h // p, w // p), base_w, base_h)
    return get_3d_rotary_pos_embed(config["attention_head_dim"], crops, (h // p, w // p), t)
  return get_3d_rotary_pos_embed(config["attention_head_dim"], None, (h // p, w // p), (t + pt - 1) // pt,
                                 grid_type="slice", max_size=(base_h, base_w))


def run_both(model, config, folder, size, text_length, seed=0, backend="xla"):
  t, h, w = size
  rng = np.random.default_rng(seed)
  latents = rng.normal(size=(2, t, h, w, config["in_channels"])).astype(np.float32)
  timesteps = np.array([3.0, 721.0], np.float32)
  text = rng.normal(size=(2, text_length, config["text_embed_dim"])).astype(np.float32)
  ofs = torch.full((1,), 2.0) if config.get("ofs_embed_dim") else None
  with torch.no_grad():
    ref = model(torch.from_numpy(latents.transpose(0, 1, 4, 2, 3).copy()), torch.from_numpy(text),
                torch.from_numpy(timesteps), ofs=ofs, image_rotary_emb=pipeline_rope(config, t, h, w),
                return_dict=False)[0].numpy().transpose(0, 1, 3, 4, 2)
  module, params = load_transformer(folder, attention_backend=backend)
  out = jax.jit(lambda p, x, s, c: module.apply({"params": p}, x, s, c))(params, latents, timesteps, text)
  return np.asarray(out), ref


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  out = {}
  for name, config in MODES.items():
    folder = str(tmp_path_factory.mktemp(name))
    make_model(config).save_pretrained(folder)
    out[name] = folder
  return out


@pytest.mark.parametrize("mode", list(MODES))
def test_tiny_parity(folders, mode):
  config = MODES[mode]
  model = CogVideoXTransformer3DModel.from_pretrained(folders[mode]).eval()
  out, ref = run_both(model, config, folders[mode], SIZES[mode], config["max_text_seq_length"])
  assert out.shape == ref.shape == (2, *SIZES[mode], config["out_channels"])
  assert relative_error(out, ref) <= 1e-4


def test_tiny_parity_chunked_backend_and_sincos_fallback_of_learned(folders):
  """The chunked backend inside the DiT; learned positions at another frame count fall back to sincos (diffusers)."""
  model = CogVideoXTransformer3DModel.from_pretrained(folders["rope_5b"]).eval()
  out, ref = run_both(model, MODES["rope_5b"], folders["rope_5b"], (3, 4, 6), 5, seed=1, backend="chunked")
  assert relative_error(out, ref) <= 1e-4
  model = CogVideoXTransformer3DModel.from_pretrained(folders["learned_5b_i2v"]).eval()
  out, ref = run_both(model, MODES["learned_5b_i2v"], folders["learned_5b_i2v"], (2, 8, 12), 5, seed=2)
  assert relative_error(out, ref) <= 1e-4


def test_2b_width_two_layers(tmp_path):
  """1920 wide (30 heads x 64), 2 layers, 226 text tokens, 2x4x6 latents (12 video tokens), sincos positions."""
  config = dict(num_attention_heads=30, attention_head_dim=64, num_layers=2, max_text_seq_length=226)
  make_model(config, scale=0.02).save_pretrained(str(tmp_path))
  model = CogVideoXTransformer3DModel.from_pretrained(str(tmp_path)).eval()
  full = dict(model.config)
  out, ref = run_both(model, full, str(tmp_path), (2, 4, 6), 226)
  assert relative_error(out, ref) <= 1e-4


def test_bfloat16_load(folders):
  module, params = load_transformer(folders["rope_5b"], dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  model = CogVideoXTransformer3DModel.from_pretrained(folders["rope_5b"]).eval()
  x = np.random.default_rng(0).normal(size=(1, 2, 6, 10, 4)).astype(np.float32)
  out = module.apply({"params": params}, x, np.array([10.0]), np.ones((1, 5, 12), np.float32))
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy()), torch.ones(1, 5, 12), torch.tensor([10.0]),
                image_rotary_emb=pipeline_rope(MODES["rope_5b"], 2, 6, 10), return_dict=False)[0]
  assert out.dtype == jnp.float32
  assert relative_error(out, ref.numpy().transpose(0, 1, 3, 4, 2)) < 0.05


def _rewrite(src, dst, edit_tensors=None, edit_config=None):
  os.makedirs(dst)
  tensors = dict(st.read_tensors(src))
  config = st.read_config(src)
  if edit_tensors:
    edit_tensors(tensors)
  if edit_config:
    edit_config(config)
  st.write_safetensors(os.path.join(dst, "diffusion_pytorch_model.safetensors"), tensors)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f)
  return dst


def test_mismatched_files_name_the_parameter(folders, tmp_path):
  src = folders["rope_5b"]
  missing = _rewrite(src, str(tmp_path / "missing"), lambda t: t.pop("transformer_blocks.1.attn1.to_k.bias"))
  with pytest.raises(st.WeightsMismatchError, match=r"transformer_blocks\.1\.attn1\.to_k\.bias"):
    load_transformer(missing)
  reshaped = _rewrite(src, str(tmp_path / "shape"), lambda t: t.update({"proj_out.weight": np.zeros((5, 32),
                                                                                                       np.float32)}))
  with pytest.raises(st.WeightsMismatchError, match=r"proj_out/kernel has shape \(32, 5\)"):
    load_transformer(reshaped)
  extra = _rewrite(src, str(tmp_path / "extra"), lambda t: t.update({"patch_embed.pos_embedding": np.zeros((1, 3))}))
  with pytest.raises(st.WeightsMismatchError, match="'patch_embed.pos_embedding' does not belong"):
    load_transformer(extra)
  deeper = _rewrite(src, str(tmp_path / "layers"), edit_config=lambda c: c.update(num_layers=3))
  with pytest.raises(st.WeightsMismatchError, match=r"no tensor 'transformer_blocks\.2\."):
    load_transformer(deeper)


RELEASED = {  # the transformer config.json values that differ from diffusers' defaults
    "CogVideoX-2b": {},
    "CogVideoX-5b": dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
    "CogVideoX-5b-I2V": dict(num_attention_heads=48, num_layers=42, in_channels=32,
                             use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "CogVideoX1.5-5B-I2V": dict(num_attention_heads=48, num_layers=42, in_channels=32, patch_size_t=2,
                                patch_bias=False, sample_height=300, sample_width=300, sample_frames=81,
                                ofs_embed_dim=512, use_rotary_positional_embeddings=True),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_configs_map_every_tensor(name):
  """Full-size models without memory: diffusers on the meta device, zero-stride stand-ins for its tensors, and the
  DiT's abstract params: every tensor maps to a parameter of the same shape and every parameter is covered."""
  with torch.device("meta"):
    model = CogVideoXTransformer3DModel(**RELEASED[name])
  tensors = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()}
  module = module_from_config(dict(model.config))
  expected = abstract_params(module)
  values, unused = convert(tensors, module.num_layers, expected)
  assert unused == []
  flat = jax.tree_util.tree_flatten_with_path(expected)[0]
  shapes = {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}
  assert {path: tuple(v.shape) for path, v in values.items()} == shapes
  if name == "CogVideoX-2b":
    assert round(sum(int(np.prod(s)) for s in shapes.values()) / 1e9, 3) == 1.694
