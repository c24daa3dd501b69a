"""Packed attention: with segment ids, every backend gives each segment exactly the attention it gets alone
(values and q/k/v gradients within 1e-5, float32), for self-attention and for cross-attention to per-segment
keys; 'chunked' with blocks smaller than the segments (rows whose block holds no key of their segment), and
Ulysses on a context-parallel mesh of 8 virtual CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models import attention
from vdm_jax.parallel.mesh import create_mesh

# Per batch row, the lengths of its segments (each row sums to the packed length). Row 1 ends in a run of
# padding tokens that form a segment of their own, as a packer pads a row.
SELF_SEGMENTS = ([3, 11, 2, 8], [5, 15, 4])
CROSS_SEGMENTS = ([3, 11, 2, 8], [5, 15, 4])  # queries
CROSS_KEYS = ([4, 2, 3, 1], [6, 3, 1])  # each query segment's own keys (e.g. its caption's tokens)
BACKENDS = ["xla", "chunked", "ulysses_xla", "ulysses_chunked"] + (["cudnn"] if jax.default_backend() == "gpu"
                                                                    else [])


def _ids(lengths) -> np.ndarray:
  return np.stack([np.repeat(np.arange(len(row)), row) for row in lengths]).astype(np.int32)


def _arrays(lq, lk, seed=0, b=2, h=4, d=16):
  rng = np.random.default_rng(seed)
  q, k, v, w = (rng.normal(size=(b, n, h, d)).astype(np.float32) for n in (lq, lk, lk, lq))
  return q, k, v, w


def _loss(backend, ids=None, kv_ids=None):
  def loss(q, k, v, w):
    out = attention.dot_product_attention(q, k, v, backend=backend, q_block=8, kv_block=8, segment_ids=ids,
                                          kv_segment_ids=kv_ids)
    return jnp.sum(out * w), out
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def _per_segment(q, k, v, w, q_lengths, k_lengths):
  """Each segment attended on its own (unmasked 'xla'), values and gradients placed back in packed order."""
  out, grads = np.zeros_like(q), [np.zeros_like(x) for x in (q, k, v)]
  for row, (q_row, k_row) in enumerate(zip(q_lengths, k_lengths)):
    q_starts, k_starts = np.cumsum([0] + q_row), np.cumsum([0] + k_row)
    for s in range(len(q_row)):
      qs, ks = slice(q_starts[s], q_starts[s + 1]), slice(k_starts[s], k_starts[s + 1])
      (gq, gk, gv), o = _loss("xla")(q[row:row + 1, qs], k[row:row + 1, ks], v[row:row + 1, ks],
                                     w[row:row + 1, qs])
      out[row, qs] = o[0]
      grads[0][row, qs], grads[1][row, ks], grads[2][row, ks] = gq[0], gk[0], gv[0]
  return out, grads


def _run(backend, arrays, ids, kv_ids):
  fn = _loss(backend, ids, kv_ids)
  if backend.startswith("ulysses"):
    with jax.set_mesh(create_mesh({"data": 2, "context": 4})):
      grads, out = fn(*arrays)
  else:
    grads, out = fn(*arrays)
  return np.asarray(out), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_self_attention_equals_each_segment_alone(backend):
  arrays = _arrays(24, 24)
  ref_out, ref_grads = _per_segment(*arrays, SELF_SEGMENTS, SELF_SEGMENTS)
  out, grads = _run(backend, arrays, _ids(SELF_SEGMENTS), None)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_cross_attention_equals_each_segment_alone(backend):
  arrays = _arrays(24, 10)
  ref_out, ref_grads = _per_segment(*arrays, CROSS_SEGMENTS, CROSS_KEYS)
  out, grads = _run(backend, arrays, _ids(CROSS_SEGMENTS), _ids(CROSS_KEYS))
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_one_segment_is_unpacked_attention_and_bad_ids_are_refused():
  q, k, v, _ = _arrays(20, 20)
  plain = attention.dot_product_attention(q, k, v, backend="chunked", q_block=8, kv_block=8)
  one = attention.dot_product_attention(q, k, v, backend="chunked", q_block=8, kv_block=8,
                                        segment_ids=np.zeros((2, 20), np.int32))
  np.testing.assert_allclose(np.asarray(one), np.asarray(plain), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"segment_ids has shape \(2, 19\); expected \[batch, length\] = \(2, 20\)"):
    attention.dot_product_attention(q, k, v, segment_ids=np.zeros((2, 19), np.int32))
  with pytest.raises(ValueError, match="kv_segment_ids given without segment_ids"):
    attention.dot_product_attention(q, k, v, kv_segment_ids=np.zeros((2, 20), np.int32))
