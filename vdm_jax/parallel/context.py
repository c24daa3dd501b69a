"""Context (sequence) parallel attention: DeepSpeed-Ulysses all-to-all over heads inside `jax.shard_map`.

With the tokens of a long video sharded over the mesh axis `context` (logical 'length' -> 'context'), each device
holds q, k, v [B, L / C, H, D] for its slice of the sequence. Ulysses swaps which axis is sharded:

  all-to-all (split heads, gather length):   [B, L / C, H, D] -> [B, L, H / C, D]
  full-sequence attention on H / C heads      (any local kernel: 'xla', 'chunked', ...)
  all-to-all back (split length, gather heads): [B, L, H / C, D] -> [B, L / C, H, D]

Attention is independent per head, so this is exact; each device moves 3 + 1 tensors of its own size, whatever C.
Heads are also sharded over `tensor` (logical 'heads'), so the heads of one tensor shard must divide by C.
Batch stays over ('data', 'fsdp') where those divide it (else replicated, like `sharding._fit_spec`).

    out = ulysses_attention(q, k, v, attend=functools.partial(dot_product_attention, backend='xla'))

Called under `jax.set_mesh(mesh)`; without a mesh, or with context size 1, it is just `attend(q, k, v)`.
"""
from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

CONTEXT_AXIS = "context"
TENSOR_AXIS = "tensor"
BATCH_AXES = ("data", "fsdp")


def context_size(mesh=None) -> int:
  """Size of the `context` axis of `mesh` (default: the current mesh from `jax.set_mesh`); 1 when there is none."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if mesh is None or mesh.empty or CONTEXT_AXIS not in mesh.axis_names:
    return 1
  return int(mesh.shape[CONTEXT_AXIS])


def _dividing_axes(dim: int, axes, mesh) -> tuple[str, ...] | str | None:
  """The prefix of `axes` (those in the mesh) whose product divides `dim`, as a PartitionSpec entry."""
  kept, size = [], 1
  for name in axes:
    if name in mesh.axis_names and dim % (size * mesh.shape[name]) == 0:
      kept.append(name)
      size *= mesh.shape[name]
  return tuple(kept) if len(kept) > 1 else (kept[0] if kept else None)


def check_divisible(num_heads: int, q_length: int, mesh) -> None:
  """Raises ValueError naming the numbers when Ulysses cannot split heads or sequence over `context`."""
  c = context_size(mesh)
  tensor = mesh.shape[TENSOR_AXIS] if TENSOR_AXIS in mesh.axis_names else 1
  local_heads = num_heads // tensor if num_heads % tensor == 0 else num_heads
  if local_heads % c:
    per = f"{num_heads} heads / tensor {tensor} = {local_heads} heads per tensor shard" if local_heads != num_heads \
        else f"{num_heads} heads"
    raise ValueError(f"Ulysses context parallelism: {per}, which does not divide by the context axis size {c} "
                     f"(mesh {dict(mesh.shape)}). Use a context size that divides {local_heads}, or the "
                     "attention backend 'xla'/'chunked' (GSPMD then gathers the sequence instead).")
  if q_length % c:
    raise ValueError(f"Ulysses context parallelism: the sequence of {q_length} tokens does not divide by the "
                     f"context axis size {c} (mesh {dict(mesh.shape)}).")


def _segment_kwargs(segments) -> dict:
  """`attend`'s keyword arguments for (query ids, key ids), or none without segments."""
  return {} if segments is None else {"segment_ids": segments[0], "kv_segment_ids": segments[1]}


def ulysses_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, attend: Callable[..., jax.Array],
                      segments: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """attend(q, k, v) with the sequence sharded over `context` and heads all-to-all'd to full sequences.

  q [B, Lq, H, D], k/v [B, Lk, H, D] (global shapes) -> [B, Lq, H, D], sharded like q: batch over data x fsdp,
  length over context, heads over tensor. Self-attention (Lk % C == 0) all-to-alls k and v like q; when Lk does
  not divide by C (e.g. cross-attention to 226 text tokens), k and v enter replicated on `context` and each device
  takes its own heads. `segments` (query ids [B, Lq], key ids [B, Lk]) of packed sequences are gathered to the
  full sequence on each device and passed to `attend` as `segment_ids` / `kv_segment_ids`.
  """
  mesh = jax.sharding.get_abstract_mesh()
  c = context_size(mesh)
  if c == 1:
    return attend(q, k, v, **_segment_kwargs(segments))
  b, lq, h, _ = q.shape
  check_divisible(h, lq, mesh)
  batch = _dividing_axes(b, BATCH_AXES, mesh)
  heads = _dividing_axes(h, (TENSOR_AXIS,), mesh)
  kv_sharded = k.shape[1] % c == 0
  q_spec = P(batch, CONTEXT_AXIS, heads, None)
  kv_spec = q_spec if kv_sharded else P(batch, None, heads, None)

  def local(q, k, v, *ids):
    # [b, L / C, h, D] -> [b, L, h / C, D]: scatter heads, gather the sequence (tiled: chunk i from device i).
    to_heads = lambda x: jax.lax.all_to_all(x, CONTEXT_AXIS, split_axis=2, concat_axis=1, tiled=True)
    q = to_heads(q)
    if kv_sharded:
      k, v = to_heads(k), to_heads(v)
    else:  # full sequence already here: keep this device's block of heads
      per = q.shape[2]
      start = jax.lax.axis_index(CONTEXT_AXIS) * per
      k, v = (jax.lax.dynamic_slice_in_dim(x, start, per, axis=2) for x in (k, v))
    if ids:  # the full sequence's segment ids, in the order the all-to-all gathered the tokens
      ids = (jax.lax.all_gather(ids[0], CONTEXT_AXIS, axis=1, tiled=True),
             jax.lax.all_gather(ids[1], CONTEXT_AXIS, axis=1, tiled=True) if kv_sharded else ids[1])
    out = attend(q, k, v, **_segment_kwargs(ids or None))
    return jax.lax.all_to_all(out, CONTEXT_AXIS, split_axis=1, concat_axis=2, tiled=True)

  ids, id_specs = (), ()
  if segments is not None:
    ids, id_specs = segments, (P(batch, CONTEXT_AXIS), P(batch, CONTEXT_AXIS) if kv_sharded else P(batch, None))
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec) + id_specs, out_specs=q_spec,
                       check_vma=False)(q, k, v, *ids)
