"""Attention backends: 'chunked' equals 'xla' (values and gradients, lengths that are not block multiples,
cross-attention lengths), its memory grows linearly with length, 'cudnn' refuses to run on CPU unless the fallback
is allowed, and the Attention layer applies RoPE to the right tokens."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models import attention
from vdm_jax.models.embeddings import apply_rope


def _qkv(lq, lk, heads=3, dim=16, seed=0):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (2.0 * jax.random.normal(kq, (2, lq, heads, dim)), 2.0 * jax.random.normal(kk, (2, lk, heads, dim)),
          jax.random.normal(kv, (2, lk, heads, dim)))


@pytest.mark.parametrize("lq,lk,q_block,kv_block", [(50, 50, 16, 32), (37, 91, 8, 16),
                                                    (226 + 24, 226 + 24, 64, 100), (5, 3, 16, 32)])
def test_chunked_equals_xla_values_and_gradients(lq, lk, q_block, kv_block):
  q, k, v = _qkv(lq, lk)
  cot = jax.random.normal(jax.random.PRNGKey(1), q.shape)

  def loss(backend):
    fn = lambda q, k, v: jnp.sum(cot * attention.dot_product_attention(q, k, v, backend=backend, q_block=q_block,
                                                                         kv_block=kv_block))
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(q, k, v)

  (ref_value, ref_grads), (value, grads) = loss("xla"), loss("chunked")
  out_ref = attention.dot_product_attention(q, k, v, backend="xla")
  out = attention.dot_product_attention(q, k, v, backend="chunked", q_block=q_block, kv_block=kv_block)
  np.testing.assert_allclose(np.asarray(out), np.asarray(out_ref), rtol=1e-5, atol=1e-5)
  # a float32 sum of 2 x lq x heads x dim products that cancel: its rounding error scales with their magnitudes
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-7 * float(jnp.sum(jnp.abs(cot * out_ref))))
  for g, g_ref in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5)


def test_chunked_bfloat16_close_to_float32():
  q, k, v = _qkv(40, 40)
  ref = attention.dot_product_attention(q, k, v, backend="xla")
  bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = attention.dot_product_attention(*bf, backend="chunked", q_block=16, kv_block=16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.05)


def test_chunked_memory_grows_linearly():
  """Compiled temporary memory of forward and gradient: 'xla' grows as length^2, 'chunked' about linearly."""
  def temp_bytes(backend, length, grad):
    fn = lambda q, k, v: attention.dot_product_attention(q, k, v, backend=backend, q_block=256, kv_block=512)
    if grad:
      fn = jax.grad(lambda q, k, v, f=fn: f(q, k, v).sum(), argnums=(0, 1, 2))
    x = jax.ShapeDtypeStruct((1, length, 2, 32), jnp.float32)
    return jax.jit(fn).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  for grad in (False, True):
    small, large = temp_bytes("chunked", 2048, grad), temp_bytes("chunked", 4096, grad)
    assert large < 2 * small, (grad, small, large)
    assert large < temp_bytes("xla", 4096, grad) / 20


def test_backend_selection_and_cudnn_on_cpu():
  assert attention.resolve_backend("auto", 1024, platform="cpu") == "xla"
  assert attention.resolve_backend("auto", 1025, platform="cpu") == "chunked"
  assert attention.resolve_backend("auto", 100, dtype=jnp.bfloat16, platform="gpu") == "cudnn"
  assert attention.resolve_backend("auto", 20000, dtype=jnp.float16, platform="gpu", head_dim=128) == "cudnn"
  assert attention.resolve_backend("auto", 100, dtype=jnp.bfloat16, platform="gpu", head_dim=160) == "xla"
  assert attention.resolve_backend("auto", 20000, dtype=jnp.bfloat16, platform="gpu", head_dim=20) == "chunked"
  assert attention.resolve_backend("auto", 20000, dtype=jnp.float32, platform="gpu") == "chunked"
  assert attention.resolve_backend("cudnn", 100, platform="gpu") == "cudnn"
  assert attention.resolve_backend("cudnn", 100, fallback=True, platform="cpu") == "xla"
  with pytest.raises(ValueError, match="allowed"):
    attention.resolve_backend("flash", 10)
  q, k, v = _qkv(8, 8)
  if jax.default_backend() == "cpu":
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
      attention.dot_product_attention(q, k, v, backend="cudnn")
    np.testing.assert_array_equal(attention.dot_product_attention(q, k, v, backend="cudnn", fallback=True),
                                  attention.dot_product_attention(q, k, v, backend="xla"))


def test_attention_layer_rope_span_and_cross():
  """RoPE rotates q and k of tokens [rope_start, end) only; equals a hand-written reference."""
  heads, dim, lt, lv = 2, 16, 3, 4
  x = jax.random.normal(jax.random.PRNGKey(0), (1, lt + lv, 24))
  angles = np.linspace(0, 3, lv * dim // 2, dtype=np.float32).reshape(lv, dim // 2).repeat(2, axis=1)
  rope = (jnp.cos(angles), jnp.sin(angles))
  layer = attention.Attention(heads, dim, backend="xla")
  params = nn.meta.unbox(layer.init(jax.random.PRNGKey(1), x)["params"])
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  out = layer.apply({"params": params}, x, rope=rope, rope_start=lt)

  def proj(name, y):
    return (y @ params[name]["kernel"] + params[name]["bias"]).reshape(1, -1, heads, dim)

  def norm(name, y):
    mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    return (y - mean) / jnp.sqrt(var + 1e-6) * params[name]["scale"] + params[name]["bias"]

  q, k, v = norm("norm_q", proj("to_q", x)), norm("norm_k", proj("to_k", x)), proj("to_v", x)
  q = jnp.concatenate([q[:, :lt], apply_rope(q[:, lt:], *rope)], axis=1)
  k = jnp.concatenate([k[:, :lt], apply_rope(k[:, lt:], *rope)], axis=1)
  weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dim), axis=-1)
  expected = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(1, -1, heads * dim)
  expected = expected @ params["to_out"]["kernel"] + params["to_out"]["bias"]
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-5)
  # cross-attention: keys/values from the context, any context length
  context = jax.random.normal(jax.random.PRNGKey(3), (1, 5, 24))
  assert layer.apply({"params": params}, x, context=context).shape == x.shape
