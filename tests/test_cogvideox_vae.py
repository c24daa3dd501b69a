"""Parity of `load_vae` + AutoencoderKL with diffusers' AutoencoderKLCogVideoX (fp32, random perturbed weights).

Errors are max relative errors, max|jax - torch| / max|torch|, bound 1e-4:
  - a tiny config on 9 and 17 frames: encode (posterior mean and logvar, diffusers' frame batching: 17 frames are
    two chunks), decode (17 frames: latent chunks of 3 and 2), the whole-clip modes against diffusers' encoder and
    decoder called on the whole clip, and spatial tiling against `enable_tiling`;
  - the real CogVideoX channel configuration (128/256/256/512, 3 layers per block, 16 latents, 32 groups) on one
    9x64x64 clip (one compile each for encode and decode, shared);
  - mismatched weight files fail naming the first wrong parameter.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_extra import need

torch = need("torch")
diffusers = need("diffusers")

from vdm_jax.convert import cogvideox  # noqa: E402
from vdm_jax.convert import safetensors_io as st  # noqa: E402

TINY = dict(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,  # 4x4x4
            down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3)
REAL = dict(block_out_channels=(128, 256, 256, 512), layers_per_block=3, latent_channels=16, norm_num_groups=32)
TOLERANCE = 1e-4


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _reference(config, path, seed=0):
  """A diffusers VAE with random weights, every parameter perturbed by 10% of its spread (0.1 for constant ones:
  non-identity norms, non-zero biases), saved as a diffusers folder (config.json + safetensors)."""
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKLCogVideoX(**config).eval()
  with torch.no_grad():
    for p in model.parameters():
      spread = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0
      p.add_(0.1 * spread * torch.randn_like(p))
  model.save_pretrained(str(path))
  return model


def _to_torch(video):  # [B, T, H, W, C] -> [B, C, T, H, W]
  return torch.from_numpy(np.ascontiguousarray(np.asarray(video).transpose(0, 4, 1, 2, 3)))


def _to_jax(tensor):  # [B, C, T, H, W] -> [B, T, H, W, C]
  return tensor.detach().numpy().transpose(0, 2, 3, 4, 1)


def _jitted(module):
  """Jitted encode (posterior) and decode of `module`, by `chunked`."""
  encode = {c: jax.jit(lambda p, x, c=c: module.apply({"params": p}, x, chunked=c, method="encode")) for c in (0, 1)}
  decode = {c: jax.jit(lambda p, z, c=c: module.apply({"params": p}, z, chunked=c, method="decode")) for c in (0, 1)}
  return encode, decode


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = tmp_path_factory.mktemp("vae_tiny")
  ref = _reference(TINY, path)
  module, params = cogvideox.load_vae(str(path))
  return ref, module, params, path, _jitted(module)


@pytest.mark.parametrize("frames", [9, 17])
def test_tiny_encode_decode_parity(tiny, frames):
  ref, _, params, _, (encode, decode) = tiny
  video = np.random.default_rng(frames).uniform(-1, 1, (2, frames, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    posterior = ref.encode(_to_torch(video)).latent_dist
    decoded = ref.decode(posterior.mean).sample
    whole_moments = ref.encoder(_to_torch(video))[0]
    whole_decoded = ref.decoder(posterior.mean)[0]
  ours = encode[1](params, jnp.asarray(video))
  assert ours.mean.shape == (2, 1 + (frames - 1) // 4, 8, 8, 4)
  assert _rel(ours.mean, _to_jax(posterior.mean)) <= TOLERANCE
  assert _rel(ours.logvar, _to_jax(posterior.logvar)) <= TOLERANCE
  latents = jnp.asarray(_to_jax(posterior.mean))
  assert _rel(decode[1](params, latents), _to_jax(decoded)) <= TOLERANCE
  if frames == 17:  # 9 frames are one chunk: there the two modes are the same computation
    # Whole-clip modes equal diffusers' encoder/decoder run on the whole clip (one GroupNorm over all frames); the
    # reference's two modes differ here, so the check tells them apart.
    assert _rel(encode[0](params, jnp.asarray(video)).mean, _to_jax(whole_moments[:, :4])) <= TOLERANCE
    assert _rel(decode[0](params, latents), _to_jax(whole_decoded)) <= TOLERANCE
    assert _rel(_to_jax(whole_moments[:, :4]), _to_jax(posterior.mean)) > 10 * TOLERANCE


def test_tiny_tiled_parity(tiny):
  """Spatial tiling: 40x40 frames in 32x32 tiles with 1/4 overlap (2x2 tiles, blended), against enable_tiling."""
  ref, _, params, path, _ = tiny
  module, _ = cogvideox.load_vae(str(path), tile_sample_size=(32, 32), tile_overlap=(0.25, 0.25))
  encode, decode = _jitted(module)
  video = np.random.default_rng(3).uniform(-1, 1, (1, 9, 40, 40, 3)).astype(np.float32)
  ref.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor_height=0.25,
                    tile_overlap_factor_width=0.25)
  try:
    with torch.no_grad():
      mean = ref.encode(_to_torch(video)).latent_dist.mean
      decoded = ref.decode(mean).sample
  finally:
    ref.disable_tiling()
  ours = encode[1](params, jnp.asarray(video)).mean
  assert ours.shape == (1, 3, 10, 10, 4)
  assert _rel(ours, _to_jax(mean)) <= TOLERANCE
  out = decode[1](params, jnp.asarray(_to_jax(mean)))
  assert out.shape == (1, 9, 40, 40, 3)
  assert _rel(out, _to_jax(decoded)) <= TOLERANCE


def test_config_and_mismatch_errors(tiny, tmp_path):
  _, module, _, path, _ = tiny
  assert module.scaling_factor == pytest.approx(1.15258426)
  assert tuple(module.block_out_channels) == TINY["block_out_channels"] and module.latent_channels == 4
  tensors = {k: np.array(v) for k, v in st.read_tensors(str(path)).items()}
  config = st.read_config(str(path))

  def write(name, tensors, config=config):
    folder = tmp_path / name
    folder.mkdir()
    st.write_safetensors(str(folder / "diffusion_pytorch_model.safetensors"), tensors)
    with open(folder / "config.json", "w") as f:
      json.dump(config, f)
    return str(folder)

  name = "decoder.up_blocks.1.resnets.0.conv1.conv.weight"
  wrong = dict(tensors, **{name: tensors[name][:, :-1]})
  with pytest.raises(st.WeightsMismatchError, match="decoder/up_blocks_1/resnets_0/conv1/conv/kernel has shape"):
    cogvideox.load_vae(write("wrong_shape", wrong))
  missing = {k: v for k, v in tensors.items() if k != "encoder.norm_out.bias"}
  with pytest.raises(st.WeightsMismatchError, match="no tensor for parameter encoder/norm_out/bias"):
    cogvideox.load_vae(write("missing", missing))
  extra = dict(tensors, **{"encoder.extra_layer.weight": np.zeros(3, np.float32)})
  with pytest.raises(st.WeightsMismatchError, match="tensor 'encoder.extra_layer.weight' does not belong"):
    cogvideox.load_vae(write("extra", extra))
  with pytest.raises(ValueError, match="use_quant_conv=True is not supported"):
    cogvideox.load_vae(write("quant", tensors, dict(config, use_quant_conv=True)))
  # bf16 loading casts every parameter.
  _, bf16 = cogvideox.load_vae(str(path), dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.slow(90)
def test_real_channel_configuration_parity(tmp_path):
  """CogVideoX's channel configuration on one 9x64x64 clip (one compile each for encode and decode)."""
  ref = _reference(REAL, tmp_path)
  module, params = cogvideox.load_vae(str(tmp_path))
  assert sum(x.size for x in jax.tree.leaves(params)) == sum(p.numel() for p in ref.parameters())
  video = np.random.default_rng(0).uniform(-1, 1, (1, 9, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    mean = ref.encode(_to_torch(video)).latent_dist.mean
    decoded = ref.decode(mean).sample
  del ref
  ours = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode").mean)(params, jnp.asarray(video))
  assert ours.shape == (1, 3, 8, 8, 16)
  assert _rel(ours, _to_jax(mean)) <= TOLERANCE
  out = jax.jit(lambda p, z: module.apply({"params": p}, z, method="decode"))(params, jnp.asarray(_to_jax(mean)))
  assert _rel(out, _to_jax(decoded)) <= TOLERANCE
