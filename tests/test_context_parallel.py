"""Ulysses context parallelism on 8 virtual CPU devices: the same values and gradients as unsharded 'xla' attention
(fp32, assert_allclose rtol/atol 1e-5) for context 2 and 4, with tensor parallel heads, for cross-attention to a
sequence that does not divide, inside the DiT; the compiled program really all-to-alls; bad head counts fail
naming the numbers."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models import attention
from vdm_jax.models.dit import DiT
from vdm_jax.parallel import context
from vdm_jax.parallel.mesh import create_mesh
from vdm_jax.parallel.sharding import DEFAULT_RULES

MESHES = {
    "context2": {"data": 2, "fsdp": 2, "context": 2},
    "context4": {"data": 2, "context": 4},
    "tensor2_context2": {"fsdp": 2, "tensor": 2, "context": 2},
}


def qkv(b=2, lq=24, lk=24, h=8, d=16, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, lq, h, d)).astype(np.float32), rng.normal(size=(b, lk, h, d)).astype(np.float32),
          rng.normal(size=(b, lk, h, d)).astype(np.float32))


def value_and_grads(backend, q, k, v, mesh=None):
  """(out, d loss / d (q, k, v)) of a fixed random projection of the attention output, jitted under `mesh`."""
  w = np.random.default_rng(1).normal(size=q.shape).astype(np.float32)

  def loss(q, k, v):
    out = attention.dot_product_attention(q, k, v, backend=backend, q_block=8, kv_block=8)
    return jnp.sum(out * w), out

  fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
  if mesh is None:
    grads, out = fn(q, k, v)
    return out, grads, None
  with jax.set_mesh(mesh):
    grads, out = fn(q, k, v)
    hlo = fn.lower(q, k, v).compile().as_text()
  return out, grads, hlo


@pytest.fixture(scope="module")
def reference():
  """Unsharded 'xla' attention for self-attention (24 tokens) and cross-attention (24 queries, 10 keys)."""
  return {kind: value_and_grads("xla", *qkv(lk=lk)) for kind, lk in (("self", 24), ("cross", 10))}


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("backend", ["ulysses", "ulysses_chunked"])
def test_ulysses_equals_xla_in_values_and_gradients(reference, mesh_name, backend):
  mesh = create_mesh(MESHES[mesh_name])
  out, grads, hlo = value_and_grads(backend, *qkv(), mesh=mesh)
  ref_out, ref_grads, _ = reference["self"]
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  assert "all-to-all" in hlo  # the sequence is re-sharded by all-to-all, not all-gathered by GSPMD


def test_ulysses_cross_attention_to_a_sequence_that_does_not_divide(reference):
  mesh = create_mesh(MESHES["context4"])
  out, grads, _ = value_and_grads("ulysses_xla", *qkv(lk=10), mesh=mesh)
  ref_out, ref_grads, _ = reference["cross"]
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_ulysses_without_a_context_axis_is_the_inner_backend(reference):
  out, grads, _ = value_and_grads("ulysses_xla", *qkv())  # no mesh
  np.testing.assert_allclose(out, reference["self"][0], rtol=1e-6, atol=1e-6)
  mesh = create_mesh({"data": 8})
  with jax.set_mesh(mesh):
    assert context.context_size() == 1
    hlo = jax.jit(functools.partial(attention.dot_product_attention, backend="ulysses")).lower(*qkv()).as_text()
  assert "all_to_all" not in hlo and "all-to-all" not in hlo


def test_heads_that_do_not_divide_by_context_fail_naming_the_numbers():
  mesh = create_mesh({"fsdp": 2, "tensor": 2, "context": 2})  # 6 heads / tensor 2 = 3 per shard; context 2
  with jax.set_mesh(mesh), pytest.raises(ValueError, match=r"6 heads / tensor 2 = 3 heads per tensor shard.*"
                                                            r"context axis size 2"):
    jax.jit(functools.partial(attention.dot_product_attention, backend="ulysses")).lower(*qkv(h=6))
  mesh = create_mesh({"data": 2, "context": 4})
  with jax.set_mesh(mesh), pytest.raises(ValueError, match=r"sequence of 22 tokens does not divide by the context "
                                                            r"axis size 4"):
    jax.jit(functools.partial(attention.dot_product_attention, backend="ulysses")).lower(*qkv(lq=22, lk=22))


def test_unknown_backend_names_the_allowed_ones():
  with pytest.raises(ValueError, match="ulysses_chunked"):
    attention.dot_product_attention(*qkv(), backend="ring")


# The DiT: 8 text + 2 x (8 / 2)^2 = 32 video tokens = 40, which divides by 2, 4 and 8; 4 heads.
DIT = dict(in_channels=4, patch_size=2, num_layers=2, num_heads=4, head_dim=16, text_dim=8, time_embed_dim=16,
           sample_frames=2, sample_height=8, sample_width=8, max_text_length=8, pos_embed="none", use_rope=True,
           rope_grid="slice", zero_init=False)


@pytest.mark.parametrize("mesh_name", ["context4", "tensor2_context2"])
def test_dit_forward_with_ulysses_equals_the_unsharded_forward(mesh_name):
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(2, 2, 8, 8, 4)).astype(np.float32)
  timesteps = np.asarray([10.0, 900.0], np.float32)
  text = rng.normal(size=(2, 8, 8)).astype(np.float32)
  reference_model = DiT(**DIT, attention_backend="xla")
  params = jax.jit(lambda: nn.meta.unbox(reference_model.init(jax.random.PRNGKey(0), latents, timesteps, text)
                                         ["params"]))()
  expected = jax.jit(reference_model.apply)({"params": params}, latents, timesteps, text)
  model = DiT(**DIT, attention_backend="ulysses_xla")
  mesh = create_mesh(MESHES[mesh_name])
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    fn = jax.jit(model.apply)
    got = fn({"params": params}, latents, timesteps, text)
    assert "all-to-all" in fn.lower({"params": params}, latents, timesteps, text).compile().as_text()
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
