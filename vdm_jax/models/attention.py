"""Multi-head attention with backends chosen by name, and the attention layer of the DiT.

Backends (`dot_product_attention(..., backend=NAME)`), all on [B, L, H, D] inputs:
  'xla'      jax.nn.dot_product_attention(implementation='xla'): materialises the [B, H, Lq, Lk] logits.
  'cudnn'    jax.nn.dot_product_attention(implementation='cudnn'): cuDNN flash attention, GPU only (fp16/bf16).
             Elsewhere it raises, unless `fallback=True`, which runs 'xla' instead. Checked on an H100
             (`python -m experiments.check_gpu_attention`): at CogVideoX-2b's 17,776 tokens x 30 heads x 64 in bf16,
             10.9x (forward) and 6.8x (forward+backward) faster than 'xla', which needs 70 GB of temporaries there;
             values and q/k/v gradients within 2.7e-3 to 4e-3 of a float32 reference (fp16: 3.6e-4 to 5.7e-4).
  'chunked'  blockwise attention with an online softmax in pure JAX (lax.scan over query blocks and, inside, over
             key/value blocks) and a recomputing backward (custom_vjp), so neither the forward nor the gradient
             holds more than one [B, H, q_block, kv_block] block of logits: memory grows linearly with length.
  'auto'     GPU with fp16/bf16 inputs and a head dim cuDNN takes (a multiple of 8, <= 128): 'cudnn' (jax's own
             implementation=None still means XLA, which materialises the logits). Otherwise 'chunked' when the key length is above `chunk_threshold` (1024), else 'xla' (on this 2-core
             CPU 'chunked' is as fast as 'xla' from ~2k tokens and needs far less memory, in the backward above all).
  'ulysses', 'ulysses_xla', 'ulysses_chunked', 'ulysses_cudnn'
             context (sequence) parallelism for long videos (`vdm_jax.parallel.context`): under a mesh whose
             `context` axis is > 1, all-to-all from sequence-sharded to head-sharded q/k/v, full-sequence attention
             with the inner backend ('auto' for plain 'ulysses'), all-to-all back. With no mesh or context 1 it is
             the inner backend. Heads per tensor shard must divide by the context size (a ValueError says so).

Packed sequences: `segment_ids` [B, Lq] (and `kv_segment_ids` [B, Lk], default the same) restrict every query to
the keys of its own segment, in every backend: a boolean mask for 'xla' and 'cudnn', a per-block mask inside
'chunked' (blocks without a key of a row's segment add nothing), and the ids gathered along the sequence for
'ulysses'. Each query's segment must have at least one key (true for self-attention).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models.embeddings import apply_rope
from vdm_jax.parallel import context as context_lib
from vdm_jax.models.layers import dense, layer_norm

LOCAL_BACKENDS = ("auto", "xla", "cudnn", "chunked")
ULYSSES = "ulysses"
BACKENDS = LOCAL_BACKENDS + (ULYSSES, "ulysses_xla", "ulysses_chunked", "ulysses_cudnn")


def split_backend(backend: str) -> tuple[bool, str]:
  """(context parallel?, the local backend): 'ulysses' -> (True, 'auto'), 'ulysses_xla' -> (True, 'xla'),
  'chunked' -> (False, 'chunked')."""
  if backend not in BACKENDS:
    raise ValueError(f"attention backend {backend!r}; allowed: {list(BACKENDS)}.")
  if backend.startswith(ULYSSES):
    return True, backend[len(ULYSSES) + 1:] or "auto"
  return False, backend


def resolve_backend(backend: str, kv_length: int, *, dtype=jnp.float32, chunk_threshold: int = 1024,
                    fallback: bool = False, platform: str | None = None, head_dim: int = 64) -> str:
  """The backend that runs for `backend` on this platform: one of 'xla', 'cudnn', 'chunked'."""
  platform = platform or jax.default_backend()
  backend = split_backend(backend)[1]  # the local kernel of 'ulysses_*' (which runs it on the full sequence)
  if backend == "auto":
    if (platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
        and head_dim <= 128):
      return "cudnn"
    return "chunked" if kv_length > chunk_threshold else "xla"
  if backend == "cudnn" and platform != "gpu":
    if not fallback:
      raise ValueError(f"attention backend 'cudnn' needs a GPU, but JAX runs on {platform!r}. Use 'auto', 'xla' or "
                       "'chunked', or allow the fallback (attention_fallback=True) to run 'xla' instead.")
    return "xla"
  return backend


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, backend: str = "auto",
                          scale: float | None = None, q_block: int = 512, kv_block: int = 1024,
                          chunk_threshold: int = 1024, fallback: bool = False,
                          segment_ids: jax.Array | None = None,
                          kv_segment_ids: jax.Array | None = None) -> jax.Array:
  """Softmax(q k^T * scale) v. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D] in q's dtype.

  `scale` defaults to 1/sqrt(D). `q_block`/`kv_block` are the block sizes of 'chunked' (any lengths; the last
  block is padded and masked). `segment_ids` [B, Lq] int (with `kv_segment_ids` [B, Lk], default `segment_ids`):
  a query attends only to keys of its own segment (packed sequences); None: every key.
  """
  scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
  segments = _segments(q, k, segment_ids, kv_segment_ids)
  parallel, local = split_backend(backend)
  if parallel:
    attend = functools.partial(dot_product_attention, backend=local, scale=scale, q_block=q_block,
                               kv_block=kv_block, chunk_threshold=chunk_threshold, fallback=fallback)
    return context_lib.ulysses_attention(q, k, v, attend=attend, segments=segments)
  name = resolve_backend(backend, k.shape[1], dtype=q.dtype, chunk_threshold=chunk_threshold, fallback=fallback,
                         head_dim=q.shape[-1])
  return KERNELS[name](q, k, v, scale=scale, q_block=q_block, kv_block=kv_block, segments=segments)


def _segments(q, k, segment_ids, kv_segment_ids):
  """(query ids [B, Lq], key ids [B, Lk]) int32, or None; shapes checked against q and k."""
  if segment_ids is None:
    if kv_segment_ids is not None:
      raise ValueError("kv_segment_ids given without segment_ids (the queries' segments).")
    return None
  kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
  for name, ids, x in (("segment_ids", segment_ids, q), ("kv_segment_ids", kv_segment_ids, k)):
    if tuple(ids.shape) != tuple(x.shape[:2]):
      raise ValueError(f"{name} has shape {tuple(ids.shape)}; expected [batch, length] = {tuple(x.shape[:2])}.")
  return jnp.asarray(segment_ids, jnp.int32), jnp.asarray(kv_segment_ids, jnp.int32)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, q_block: int = 512,
                      kv_block: int = 1024, segments=None) -> jax.Array:
  """Blockwise (flash-style) attention; q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]. `segments`: (query
  ids [B, Lq], key ids [B, Lk]) or None."""
  b, lq, h, d = q.shape
  lk = k.shape[1]
  (nq, qb), (nk, kb) = _balanced_blocks(lq, q_block), _balanced_blocks(lk, kv_block)

  def blocks(x, n, size):  # [B, L, H, D] -> [n, B, H, size, D], zero-padded to n * size
    x = jnp.pad(x, ((0, 0), (0, n * size - x.shape[1]), (0, 0), (0, 0)))
    return x.reshape(b, n, size, h, d).transpose(1, 0, 3, 2, 4)

  def id_blocks(ids, n, size):  # [B, L] -> [n, B, size]; padded queries repeat the last id so they match a key
    return jnp.pad(ids, ((0, 0), (0, n * size - ids.shape[1])), mode="edge").reshape(b, n, size).transpose(1, 0, 2)

  if segments is not None:
    segments = (id_blocks(segments[0], nq, qb), id_blocks(segments[1], nk, kb))
  out = _flash(blocks(q, nq, qb), blocks(k, nk, kb), blocks(v, nk, kb), segments, scale, lk)
  return out.transpose(1, 0, 3, 2, 4).reshape(b, nq * qb, h, d)[:, :lq]


def _balanced_blocks(length: int, block: int) -> tuple[int, int]:
  """(count, size): as few blocks as `block` allows, of equal size (a multiple of 8) so little padding is wasted.

  E.g. 2176 tokens, block 1024: 3 blocks of 728 (16 padded) rather than 3 of 1024 (896 padded).
  """
  count = -(-length // block)
  size = -(-length // count)
  size = min(-(-size // 8) * 8, max(block, size))
  return -(-length // size), size


def _logits(q_i, k_j, j, scale, kv_length, seg_i=None, seg_j=None):
  """Scaled logits of one block pair, [B, H, qb, kb] float32; padded keys (index >= kv_length) and keys of
  another segment (ids seg_i [B, qb], seg_j [B, kb]) are -inf."""
  s = jnp.einsum("bhqd,bhkd->bhqk", q_i, k_j, preferred_element_type=jnp.float32) * scale
  kb = k_j.shape[2]
  valid = None
  if kv_length % kb:  # only the last block has padding; where() everywhere is cheaper than a branch
    valid = j * kb + jnp.arange(kb) < kv_length
  if seg_i is not None:
    same = seg_i[:, None, :, None] == seg_j[:, None, None, :]
    valid = same if valid is None else same & valid
  if valid is not None:
    s = jnp.where(valid, s, -jnp.inf)
  return s


def _flash_forward(q, k, v, segments, scale, kv_length):
  """Blocked q [nq, B, H, qb, D], k/v [nk, B, H, kb, D] -> out (blocked like q), logsumexp [nq, B, H, qb]."""
  nk = k.shape[0]
  seg_q, seg_k = (None, None) if segments is None else segments  # [nq, B, qb], [nk, B, kb]

  def q_step(_, xs):
    q_i, seg_i = xs

    def kv_step(carry, xs):
      m, l, acc = carry
      k_j, v_j, j, seg_j = xs
      s = _logits(q_i, k_j, j, scale, kv_length, seg_i, seg_j)
      m_new = jnp.maximum(m, s.max(-1))
      # a row with no key of its segment yet stays at m = -inf: subtract 0 there so exp() gives 0, not NaN
      m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
      p = jnp.exp(s - m_safe[..., None])
      correction = jnp.exp(m - m_safe)  # 0 on the first block, where m = -inf
      l = l * correction + p.sum(-1)
      acc = acc * correction[..., None] + jnp.einsum("bhqk,bhkd->bhqd", p.astype(v_j.dtype), v_j,
                                                     preferred_element_type=jnp.float32)
      return (m_new, l, acc), None

    stats = q_i.shape[:-1]
    init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32),
            jnp.zeros(q_i.shape, jnp.float32))
    (m, l, acc), _ = jax.lax.scan(kv_step, init, (k, v, jnp.arange(nk), seg_k))
    return None, ((acc / l[..., None]).astype(q_i.dtype), m + jnp.log(l))

  _, (out, lse) = jax.lax.scan(q_step, None, (q, seg_q))
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, segments, scale, kv_length):
  return _flash_forward(q, k, v, segments, scale, kv_length)[0]


def _flash_fwd(q, k, v, segments, scale, kv_length):
  out, lse = _flash_forward(q, k, v, segments, scale, kv_length)
  return out, (q, k, v, segments, out, lse)


def _flash_bwd(scale, kv_length, residuals, d_out):
  """Recomputes each block's probabilities from the saved logsumexp (no [Lq, Lk] matrix is stored).

  Outer scan over key/value blocks (accumulating dk, dv of that block); inner scan over query blocks (updating
  that query block's dq). dS = P * (dP - rowsum(dO * O)).
  """
  q, k, v, segments, out, lse = residuals
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [nq, B, H, qb]
  nk = k.shape[0]
  seg_q, seg_k = (None, None) if segments is None else segments  # [nq, B, qb], [nk, B, kb]

  def kv_step(dq, xs):
    k_j, v_j, j, seg_j = xs

    def q_step(carry, ys):
      dk_j, dv_j = carry
      q_i, do_i, lse_i, delta_i, dq_i, seg_i = ys
      p = jnp.exp(_logits(q_i, k_j, j, scale, kv_length, seg_i, seg_j) - lse_i[..., None])
      dv_j = dv_j + jnp.einsum("bhqk,bhqd->bhkd", p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhqd,bhkd->bhqk", do_i, v_j, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_i[..., None])).astype(q_i.dtype)
      dq_i = dq_i + scale * jnp.einsum("bhqk,bhkd->bhqd", ds, k_j, preferred_element_type=jnp.float32)
      dk_j = dk_j + scale * jnp.einsum("bhqk,bhqd->bhkd", ds, q_i, preferred_element_type=jnp.float32)
      return (dk_j, dv_j), dq_i

    zeros = jnp.zeros(k_j.shape, jnp.float32)
    (dk_j, dv_j), dq = jax.lax.scan(q_step, (zeros, zeros), (q, d_out, lse, delta, dq, seg_q))
    return dq, (dk_j, dv_j)

  dq, (dk, dv) = jax.lax.scan(kv_step, jnp.zeros(q.shape, jnp.float32), (k, v, jnp.arange(nk), seg_k))
  # integer segment ids have no cotangent (None: zero)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _fused(implementation: str):
  """jax.nn.dot_product_attention with one implementation ('xla', or cuDNN's fused kernel on GPUs); segments
  become its boolean mask [B, 1, Lq, Lk]."""
  def kernel(q, k, v, *, scale, q_block, kv_block, segments=None):
    del q_block, kv_block
    mask = None if segments is None else segments[0][:, None, :, None] == segments[1][:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)
  return kernel


# The local kernels by name: a backend resolves to one of these (`resolve_backend`); configs validate against
# BACKENDS, which adds 'auto' and the context-parallel wrappers of each.
KERNELS = {"xla": _fused("xla"), "cudnn": _fused("cudnn"), "chunked": chunked_attention}


def _rope_span(x: jax.Array, rope, start: int) -> jax.Array:
  """Applies RoPE tables (cos, sin) [N, D] (or [B, N, D]) to the tokens [start, start + N) of x [B, L, H, D]."""
  cos, sin = rope
  end = start + cos.shape[-2]
  parts = [x[:, :start], apply_rope(x[:, start:end], cos, sin), x[:, end:]]
  return jnp.concatenate([p for p in parts if p.shape[1]], axis=1)


class Attention(nn.Module):
  """Multi-head attention with QK LayerNorm and RoPE; self-attention, or cross-attention when `context` is given.

  x [B, Lq, D] (context [B, Lk, D]) -> [B, Lq, D]. Projections `to_q`, `to_k`, `to_v`, `to_out` ([D, H * Dh]);
  QK LayerNorm over the head dim (`norm_q`, `norm_k`, shared by the heads); RoPE tables (cos, sin) [N, Dh] rotate
  q and k of the tokens [rope_start, rope_start + N) (CogVideoX: the video tokens after the text), after QK norm.
  `segment_ids` [B, Lq] (`context_segment_ids` [B, Lk] for cross-attention) keep packed sequences apart.
  """
  num_heads: int
  head_dim: int
  qk_norm: bool = True
  qk_norm_eps: float = 1e-6
  use_bias: bool = True
  out_bias: bool = True
  backend: str = "auto"
  fallback: bool = False
  q_block: int = 512
  kv_block: int = 1024
  chunk_threshold: int = 1024
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, rope=None, rope_start: int = 0,
               segment_ids: jax.Array | None = None, context_segment_ids: jax.Array | None = None) -> jax.Array:
    inner = self.num_heads * self.head_dim
    proj = functools.partial(dense, inner, ("embed", "heads"), use_bias=self.use_bias, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    source = x if context is None else context
    split = lambda y: y.reshape(*y.shape[:2], self.num_heads, self.head_dim)
    q, k, v = (split(proj(name=n)(y)) for n, y in (("to_q", x), ("to_k", source), ("to_v", source)))
    if self.qk_norm:
      norm = functools.partial(layer_norm, self.qk_norm_eps, param_dtype=self.param_dtype)
      q = norm(name="norm_q")(q).astype(self.dtype)
      k = norm(name="norm_k")(k).astype(self.dtype)
    if rope is not None:
      q = _rope_span(q, rope, rope_start)
      if context is None:
        k = _rope_span(k, rope, rope_start)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    out = dot_product_attention(q, k, v, backend=self.backend, fallback=self.fallback, q_block=self.q_block,
                                kv_block=self.kv_block, chunk_threshold=self.chunk_threshold,
                                segment_ids=segment_ids, kv_segment_ids=context_segment_ids)
    out = out.reshape(*out.shape[:2], inner)
    return dense(x.shape[-1], ("heads", "embed"), use_bias=self.out_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="to_out")(out)
