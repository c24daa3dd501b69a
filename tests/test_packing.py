"""Packed sequences in the DiT and the loss: clips of several sizes (and an image) packed into rows give each clip
exactly its output alone (float32, 1e-5 of the output's scale), for joint and cross conditioning and the 'xla' and
'chunked' attention backends, with sincos positions, 'slice' RoPE and pooled text restarting per clip; the packed
loss equals the mean of the per-clip losses, in value and parameter gradients (1e-5 relative)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import objectives
from vdm_jax.models import packing
from vdm_jax.models.dit import DiT

# Latent shapes (T, H, W) of the clips: videos of three aspects and lengths, and a single frame (an image).
SHAPES = [(3, 4, 4), (2, 4, 6), (1, 4, 4), (3, 2, 8), (2, 2, 2)]
C, TEXT_LEN, TEXT_DIM = 4, 5, 8


def _model(conditioning="cross", backend="xla"):
  return DiT(in_channels=C, patch_size=2, num_layers=2, num_heads=2, head_dim=16, text_dim=TEXT_DIM,
             time_embed_dim=32, conditioning=conditioning, pos_embed="sincos", use_rope=True, rope_grid="slice",
             pooled_text=True, zero_init=False, attention_backend=backend, attention_q_block=8,
             attention_kv_block=8, attention_chunk_threshold=0, sample_frames=3, sample_height=8, sample_width=8)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  clips = [rng.standard_normal(s + (C,)).astype(np.float32) for s in SHAPES]
  noise = [rng.standard_normal(s + (C,)).astype(np.float32) for s in SHAPES]
  text = rng.standard_normal((len(SHAPES), TEXT_LEN, TEXT_DIM)).astype(np.float32)
  t = rng.uniform(0.05, 0.95, len(SHAPES)).astype(np.float32)
  return clips, noise, text, t


def _params(model):
  clips, _, text, t = _data()
  return model.init(jax.random.key(0), clips[0][None], t[:1], text[:1])["params"]


def test_plan_places_clips_first_fit_and_pack_unpack_are_inverse():
  layout = packing.plan(SHAPES, length=24)
  # tokens 12, 12, 4, 12, 2: longest first, first fit -> rows [12 + 12], [12 + 4 + 2]
  assert layout.rows == 2 and layout.slots == 3
  assert [(p.row, p.slot, p.start) for p in layout.placements] == [(0, 0, 0), (0, 1, 12), (1, 1, 12), (1, 0, 0),
                                                                   (1, 2, 16)]
  assert layout.fill == pytest.approx(42 / 48)
  clips = _data()[0]
  tokens, seg = packing.pack(clips, layout)
  assert tokens.shape == (2, 24, C * 4)
  np.testing.assert_array_equal(seg.segment_ids[1], [1] * 12 + [2] * 4 + [3] * 2 + [0] * 6)
  np.testing.assert_array_equal(seg.positions[1, 12:16], [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(tokens[1, 18:], 0.0)
  for clip, back in zip(clips, packing.unpack(tokens, layout)):
    np.testing.assert_array_equal(np.asarray(back), clip)
  values = packing.per_slot(np.arange(5) + 1, layout)
  np.testing.assert_array_equal(values, [[1, 2, 0], [4, 3, 5]])


def test_plan_errors_name_the_clip_and_the_rows():
  with pytest.raises(ValueError, match=r"Clip 1: 48 tokens .* length=24"):
    packing.plan([(1, 4, 4), (3, 8, 8)], length=24)
  with pytest.raises(ValueError, match=r"Clip 0: latent shape \(3, 5, 4\) is not divisible"):
    packing.plan([(3, 5, 4)], length=24)
  with pytest.raises(ValueError, match="5 clips need 2 rows of length=24 .*; rows=1"):
    packing.plan(SHAPES, length=24, rows=1)
  assert packing.plan(SHAPES, length=24, rows=3, slots=4).rows == 3


@pytest.mark.slow(50)
@pytest.mark.parametrize("conditioning,backend", [("cross", "xla"), ("cross", "chunked"), ("joint", "xla")])
def test_packed_dit_gives_each_clip_its_output_alone(conditioning, backend):
  model = _model(conditioning, backend)
  params = _params(model)
  clips, _, text, t = _data()
  layout = packing.plan(SHAPES, length=24, rows=3)  # a third row of padding only
  tokens, seg = packing.pack(clips, layout)
  out = model.apply({"params": params}, tokens, packing.per_slot(t * 1000, layout),
                    packing.per_slot(text, layout), packing=seg)
  np.testing.assert_array_equal(out[2], 0.0)  # padding gives zero
  for i, (clip, packed) in enumerate(zip(clips, packing.unpack(out, layout))):
    alone = model.apply({"params": params}, clip[None], t[i:i + 1] * 1000, text[i:i + 1])[0]
    scale = float(jnp.max(jnp.abs(alone)))
    assert scale > 0.1
    np.testing.assert_allclose(packed, alone, atol=1e-5 * scale, rtol=0, err_msg=f"clip {i} {SHAPES[i]}")


def _unpacked_loss(model, params, prediction_type, alphas, weighting, t):
  clips, noise, text, _ = _data()
  losses = []
  for i, (x0, eps) in enumerate(zip(clips, noise)):
    x_t, model_t, target, weight = objectives.noised(prediction_type, x0[None], eps[None], t[i:i + 1], alphas,
                                                     weighting)
    out = model.apply({"params": params}, x_t, model_t, text[i:i + 1])
    losses.append(weight * objectives.mse_per_example(out, target))
  return jnp.mean(jnp.concatenate(losses))


def _packed_loss(model, params, prediction_type, alphas, weighting, t):
  clips, noise, text, _ = _data()
  layout = packing.plan(SHAPES, length=24, rows=3, slots=4)  # an empty row and empty slots count for nothing
  x0, seg = packing.pack(clips, layout)
  eps, _ = packing.pack(noise, layout)
  x_t, model_t, target, weight = objectives.noised_packed(prediction_type, x0, eps, packing.per_slot(t, layout),
                                                          seg.slot_index, alphas, weighting)
  out = model.apply({"params": params}, x_t, model_t, packing.per_slot(text, layout), packing=seg)
  return objectives.packed_loss(out, target, weight, seg.segment_ids)


@pytest.mark.slow(45)
@pytest.mark.parametrize("prediction_type,weighting", [("flow", "none"), ("v_prediction", "min_snr")])
def test_packed_loss_is_the_mean_of_the_clips_losses(prediction_type, weighting):
  model = _model("cross")
  params = _params(model)
  t = _data()[3]
  alphas = None
  if prediction_type != "flow":
    alphas = jnp.linspace(0.999, 0.01, 1000)
    t = jnp.asarray(t * 999, jnp.int32)
  args = (model, params, prediction_type, alphas, weighting, t)
  unpacked, g_unpacked = jax.value_and_grad(lambda p: _unpacked_loss(model, p, *args[2:]))(params)
  packed, g_packed = jax.value_and_grad(lambda p: _packed_loss(model, p, *args[2:]))(params)
  np.testing.assert_allclose(packed, unpacked, rtol=1e-5)
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g_packed), jax.tree.leaves(g_packed),
                        jax.tree.leaves(g_unpacked)):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-8, rtol=0,
                               err_msg=jax.tree_util.keystr(path[0]))


def test_packing_refuses_positions_that_do_not_restart_per_clip():
  clips, _, text, t = _data()
  layout = packing.plan(SHAPES, length=24)
  tokens, seg = packing.pack(clips, layout)
  model = DiT(in_channels=C, num_layers=1, num_heads=2, head_dim=16, text_dim=TEXT_DIM, time_embed_dim=32,
              conditioning="cross", use_rope=True, rope_grid="linspace")
  with pytest.raises(ValueError, match="rope_grid 'slice'.*rope_grid='linspace'"):
    model.init(jax.random.key(0), tokens, packing.per_slot(t, layout), packing.per_slot(text, layout),
               packing=seg)
