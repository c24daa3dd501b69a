"""The causal 3D VAE on its own: frame chunking, shapes, which chunked/whole-clip equalities hold, causality,
the posterior, and streaming memory (the compiled decode's peak does not grow with the number of latent frames)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models import vae as vae_lib

TINY = dict(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)  # 4x4x4


def _rel(a, b):
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def test_frame_chunks_follow_diffusers_batching():
  assert vae_lib.frame_chunks(49, 8) == [(0, 9), (9, 17), (17, 25), (25, 33), (33, 41), (41, 49)]
  assert vae_lib.frame_chunks(13, 2) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
  assert vae_lib.frame_chunks(17, 8) == [(0, 9), (9, 17)]
  assert vae_lib.frame_chunks(16, 8) == [(0, 8), (8, 16)]
  assert vae_lib.frame_chunks(1, 8) == [(0, 1)] and vae_lib.frame_chunks(5, 8) == [(0, 5)]
  assert vae_lib.frame_chunks(12, 8) == [(0, 12)]
  with pytest.raises(ValueError, match="must be >= 1"):
    vae_lib.frame_chunks(0, 8)


@pytest.fixture(scope="module")
def models():
  """CogVideoX-style (GroupNorm over time) and per-frame-GroupNorm tiny VAEs sharing one set of random params."""
  cog = vae_lib.AutoencoderKL(**TINY)
  per_frame = vae_lib.AutoencoderKL(**TINY, group_norm_over_time=False)
  params = jax.jit(lambda: cog.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 16, 16, 3)), chunked=False))()
  rng = np.random.default_rng(1)  # non-trivial norms and biases: perturb everything
  params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params["params"])
  fns = {}
  for name, model in (("cog", cog), ("frame", per_frame)):
    for chunked in (True, False):
      fns[name, "encode", chunked] = jax.jit(
          lambda p, x, m=model, c=chunked: m.apply({"params": p}, x, chunked=c, method="encode").mean)
      fns[name, "decode", chunked] = jax.jit(
          lambda p, z, m=model, c=chunked: m.apply({"params": p}, z, chunked=c, method="decode"))
  return params, fns


def _video(t, seed=0, size=16):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (2, t, size, size, 3)).astype(np.float32))


def test_shapes_and_images(models):
  params, fns = models
  for t, t_latent in ((1, 1), (17, 5)):
    z = fns["cog", "encode", True](params, _video(t))
    assert z.shape == (2, t_latent, 4, 4, 4)
    assert fns["cog", "decode", True](params, z).shape == (2, t, 16, 16, 3)
  # An image is a 1-frame video: chunking is irrelevant and GroupNorm over T = 1 is per-frame.
  image = _video(1)
  np.testing.assert_array_equal(fns["cog", "encode", True](params, image), fns["cog", "encode", False](params, image))
  np.testing.assert_allclose(fns["cog", "encode", True](params, image), fns["frame", "encode", True](params, image),
                             rtol=1e-5, atol=1e-6)


def test_chunked_vs_whole_clip(models):
  """Chunked encode/decode carries only the causal convs' caches across chunks; time pooling and nearest time
  upsampling are chunk-aligned (frame 0 apart, then pairs), and so is SpatialNorm's latent resize. So the two modes
  are the same function up to GroupNorm, whose statistics pool over the frames of a chunk: with per-frame GroupNorm
  (`group_norm_over_time=False`) chunked == whole clip to float rounding; with CogVideoX's GroupNorm over
  (C/G, T, H, W) they differ by design (diffusers' frame batching; both modes match diffusers, see
  tests/test_cogvideox_vae.py)."""
  params, fns = models
  video = _video(17)  # encode: chunks of 9 and 8 frames; decode: chunks of 3 and 2 latent frames
  for kind in ("frame", "cog"):
    z_chunked, z_whole = fns[kind, "encode", True](params, video), fns[kind, "encode", False](params, video)
    x_chunked, x_whole = fns[kind, "decode", True](params, z_whole), fns[kind, "decode", False](params, z_whole)
    if kind == "frame":
      assert _rel(z_chunked, z_whole) < 1e-5
      assert _rel(x_chunked, x_whole) < 1e-5
    else:
      assert _rel(z_chunked, z_whole) > 1e-3
      assert _rel(x_chunked, x_whole) > 1e-3


def test_causality(models):
  """With per-frame norms the VAE is causal: later frames never change earlier latents or outputs (streamed)."""
  params, fns = models
  video = _video(17)
  changed = video.at[:, 9:].set(-video[:, 9:])
  z, z_changed = fns["frame", "encode", True](params, video), fns["frame", "encode", True](params, changed)
  np.testing.assert_array_equal(z[:, :3], z_changed[:, :3])  # latents 0..2 see pixel frames 0..8
  assert _rel(z_changed[:, 3:], z[:, 3:]) > 1e-2
  x, x_changed = fns["frame", "decode", True](params, z), fns["frame", "decode", True](params, z_changed)
  np.testing.assert_array_equal(x[:, :9], x_changed[:, :9])  # pixel frames 0..8 come from latents 0..2


@pytest.mark.slow(55)
def test_patch_size_folds_pixels_around_the_network():
  """`patch_size=p`: space_to_depth before the encoder and depth_to_space after the decoder, exactly. A patch-2 VAE
  is the plain VAE (same params) run on folded frames with p * p times the output channels; it streams like one."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 8, 12, 3)).astype(np.float32))
  folded = vae_lib.space_to_depth(x, 2)
  assert folded.shape == (2, 3, 4, 6, 12)
  np.testing.assert_array_equal(folded[1, 2, 3, 4], x[1, 2, 6:8, 8:10].transpose(2, 0, 1).reshape(-1))  # (C, ph, pw)
  np.testing.assert_array_equal(vae_lib.depth_to_space(folded, 2), x)
  with pytest.raises(ValueError, match="height H=7 is not divisible by its patch size 2"):
    vae_lib.space_to_depth(x[:, :, :7], 2)

  kw = dict(TINY, group_norm_over_time=False)
  patched = vae_lib.AutoencoderKL(**kw, patch_size=2)
  plain = vae_lib.AutoencoderKL(**kw, out_channels=12)
  assert patched.spatial_compression == 8
  video = _video(9, size=32)
  params = patched.init(jax.random.PRNGKey(0), video[:, :1], chunked=False)["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), params)
  encode = lambda m, v, c=True: m.apply({"params": params}, v, chunked=c, method="encode").mean
  decode = lambda m, z, c=True: m.apply({"params": params}, z, chunked=c, method="decode")
  z = encode(patched, video)
  assert z.shape == (2, 3, 4, 4, 4)
  np.testing.assert_array_equal(z, encode(plain, vae_lib.space_to_depth(video, 2)))
  out = decode(patched, z)
  assert out.shape == video.shape
  np.testing.assert_array_equal(out, vae_lib.depth_to_space(decode(plain, z), 2))
  assert _rel(encode(patched, video, False), z) < 1e-5 and _rel(decode(patched, z, False), out) < 1e-5


def test_posterior():
  rng = np.random.default_rng(0)
  moments = jnp.asarray(rng.normal(size=(3, 2, 2, 2, 8)).astype(np.float32)).at[0, 0, 0, 0, 4].set(50.0)
  post = vae_lib.DiagonalGaussian.from_moments(moments)
  np.testing.assert_array_equal(post.mean, moments[..., :4])
  assert float(post.logvar[0, 0, 0, 0, 0]) == 20.0  # clamped to [-30, 20]
  np.testing.assert_array_equal(post.mode(), post.mean)
  mu, logvar = np.asarray(post.mean, np.float64), np.asarray(post.logvar, np.float64)
  expected = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3, 4))
  np.testing.assert_allclose(post.kl(), expected, rtol=1e-5)
  standard = vae_lib.DiagonalGaussian(mean=jnp.zeros((2, 3)), logvar=jnp.zeros((2, 3)))
  np.testing.assert_array_equal(standard.kl(), [0.0, 0.0])
  samples = vae_lib.DiagonalGaussian(mean=jnp.full((4000, 2), 3.0), logvar=jnp.full((4000, 2), np.log(4.0))).sample(
      jax.random.PRNGKey(0))
  assert abs(float(samples.mean()) - 3.0) < 0.05 and abs(float(samples.std()) - 2.0) < 0.05


@pytest.mark.parametrize("channels", [4, 24])
def test_conv3d_implementations_agree(channels):
  """'frames' (kt 2D convs summed) and 'xla' (one 3D conv) are the same convolution, forward and backward
  (float32)."""
  from vdm_jax.models.vae import Conv3d  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8, 6, channels)), jnp.float32)
  outs = {}
  for impl in ("frames", "xla"):
    conv = Conv3d(7, (3, 3, 3), (1, 1), impl=impl)
    params = conv.init(jax.random.PRNGKey(0), x)
    y, grads = jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x))), argnums=(0, 1))(params, x)
    outs[impl] = (y, jax.tree.leaves(grads))
  for impl in ("xla",):
    np.testing.assert_allclose(outs[impl][0], outs["frames"][0], rtol=1e-5)
    for a, b in zip(outs[impl][1], outs["frames"][1]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  assert Conv3d(7, (3, 3, 3), (1, 1)).apply(params, x).shape == (2, 3, 8, 6, 7)
  with pytest.raises(ValueError, match="allowed: 'auto', 'frames', 'xla'"):
    Conv3d(7, (3, 3, 3), (1, 1), impl="winograd").init(jax.random.PRNGKey(0), x)


def test_causal_padding_skips_the_copies_exactly():
  """Conv3d(x, pad_first=p) on the 'frames' path convolves frame 0 once per output with the summed taps instead of
  convolving its p copies: the same function and gradients as padding with the copies and running the 3D conv
  (float32, rtol 1e-5 / grads 1e-4), for images, clips shorter than the kernel and longer ones."""
  rng = np.random.default_rng(0)
  for t, p in ((1, 2), (2, 2), (3, 2), (9, 2), (2, 1), (5, 1), (5, 0)):
    x = jnp.asarray(rng.normal(size=(2, t, 6, 5, 4)), jnp.float32)
    conv = vae_lib.Conv3d(3, (3, 3, 3), (1, 1), impl="frames")
    params = conv.init(jax.random.PRNGKey(t), x, p)
    padded = lambda x, p=p: jnp.concatenate([jnp.repeat(x[:, :1], p, axis=1), x], axis=1)
    loss = lambda params, x, p=p: jnp.sum(jnp.sin(conv.apply(params, x, p)))
    ref = lambda params, x, p=p: jnp.sum(jnp.sin(conv.clone(impl="xla").apply(params, padded(x))))
    y = conv.apply(params, x, p)
    assert y.shape == (2, t + p - 2, 6, 5, 3)
    np.testing.assert_allclose(y, conv.clone(impl="xla").apply(params, padded(x)), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(jax.grad(loss, argnums=(0, 1))(params, x)),
                    jax.tree.leaves(jax.grad(ref, argnums=(0, 1))(params, x))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="allowed: 0 <= pad_first < kernel_size"):
    conv.apply(params, x, 3)


def test_per_tap_kernels_is_the_same_vae(models):
  """The CPU inference layout (each temporal conv kernel stored per tap) is a relayout, not a new model: encode and
  decode give the same floats, both Conv3d impls read it, and 1x1x1 kernels and the rest of the tree are untouched."""
  params, fns = models
  params = nn.unbox(params)
  per_tap = vae_lib.per_tap_kernels(params)
  conv = per_tap["encoder"]["down_blocks_0"]["resnets_0"]["conv1"]["conv"]
  stacked = params["encoder"]["down_blocks_0"]["resnets_0"]["conv1"]["conv"]["kernel"]
  assert "kernel" not in conv and [conv[f"kernel_{i}"].shape for i in range(3)] == [stacked.shape[1:]] * 3
  np.testing.assert_array_equal(conv["kernel_2"], stacked[2])
  shortcut = params["encoder"]["down_blocks_1"]["resnets_0"]["conv_shortcut"]["kernel"]  # 1x1x1: kept
  np.testing.assert_array_equal(per_tap["encoder"]["down_blocks_1"]["resnets_0"]["conv_shortcut"]["kernel"], shortcut)
  assert len(jax.tree.leaves(per_tap)) > len(jax.tree.leaves(params))
  video = _video(17)
  z = fns["cog", "encode", True](params, video)
  np.testing.assert_array_equal(fns["cog", "encode", True](per_tap, video), z)
  np.testing.assert_array_equal(fns["cog", "decode", True](per_tap, z), fns["cog", "decode", True](params, z))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 6, 6, 8)), jnp.float32)
  conv3d = vae_lib.Conv3d(5, (3, 3, 3), (1, 1), impl="xla")
  p = conv3d.init(jax.random.PRNGKey(0), x)["params"]
  p_tap = vae_lib.per_tap_kernels({"conv": p})["conv"]
  np.testing.assert_allclose(conv3d.apply({"params": p_tap}, x), conv3d.apply({"params": p}, x), rtol=1e-6)
  assert vae_lib.inference_params(params)["decoder"]["conv_out"]["conv"].keys() == {"kernel_0", "kernel_1",
                                                                                      "kernel_2", "bias"}


def test_resize_nearest_index_rule():
  x = jnp.arange(5.0).reshape(1, 5, 1, 1, 1)
  # PyTorch nearest with size=12 from 5: src = floor(dst * 5 / 12).
  np.testing.assert_array_equal(np.asarray(vae_lib.resize_nearest(x, (12, 1, 1)))[0, :, 0, 0, 0],
                                np.floor(np.arange(12) * np.float32(5 / 12)))
  np.testing.assert_array_equal(np.asarray(vae_lib.resize_nearest(x, (10, 1, 1)))[0, :, 0, 0, 0],
                                np.repeat(np.arange(5.0), 2))


def test_build_from_a_model_config_section():
  """`build` sets the fields named by a `vae` experiment's model section (lists become tuples, the call option
  `chunked` is skipped, dtypes come apart) and names an unknown key with the allowed ones."""
  section = dict(TINY, block_out_channels=[8, 16, 16], patch_size=2, chunked=False)
  model = vae_lib.build(section, "bfloat16")
  assert model == vae_lib.AutoencoderKL(**dict(TINY, patch_size=2), dtype=jnp.bfloat16, param_dtype=jnp.float32)
  with pytest.raises(ValueError, match=r"'latent_dim' is unknown; allowed keys: \[.*'latent_channels'"):
    vae_lib.build(dict(TINY, latent_dim=4))
  with pytest.raises(ValueError, match="'dtype' is unknown"):
    vae_lib.build(dict(TINY, dtype="float32"))


# --- Streaming memory: XLA's buffer assignment of the compiled decode for N vs 4N latent frames.

MEMORY_MODEL = dict(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=4)


def test_streaming_decode_memory_does_not_grow_with_length():
  """Peak memory of the compiled decode (XLA's memory analysis: temporaries + output) for 5 latent frames (17 output
  frames at 64x64) and 4x as many, 20 (80 frames: an even count has no separate frame 0): chunked, the longer
  video needs at most 10% more (the chunks after the first run in one scan, whose working set is one chunk's);
  decoded as one whole clip, the same 20 frames need several times more (the control: the measure sees growth).
  Peak RSS of separate processes shows the same: `python -m experiments.bench_vae --stream_memory`."""
  model = vae_lib.AutoencoderKL(**MEMORY_MODEL)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 8, 8, 3)), chunked=False))

  def peak_mb(frames, chunked):
    latents = jax.ShapeDtypeStruct((1, frames, 16, 16, 4), jnp.float32)
    fn = jax.jit(lambda p, z: model.apply(p, z, chunked=chunked, method="decode"))
    stats = fn.lower(params, latents).compile().memory_analysis()
    return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2 ** 20

  short, long, whole = peak_mb(5, True), peak_mb(20, True), peak_mb(20, False)
  assert long <= 1.10 * short, (short, long, whole)
  assert whole > 3 * long, (short, long, whole)
