"""Packed sequences: several clips (or images) of any size in one row of patch tokens, kept apart by segment ids.

    layout = packing.plan([(5, 4, 4), (9, 4, 4), (1, 4, 4)], length=256, patch_size=2)   # latent shapes (T, H, W)
    tokens, segments = packing.pack(clips, layout)        # [rows, length, C * pt * p * p], Packing
    t = packing.per_slot(times, layout)                     # per clip [N, ...] -> per slot [rows, slots, ...]
    out = dit.apply(params, tokens, t, per_slot(text_embeds, layout), packing=segments)
    clips_out = packing.unpack(out, layout)                 # back to [T, H, W, C] per clip

A row holds clips in slots 0..slots-1 (segment id = slot + 1) one after another, then padding (segment id 0).
Each token carries its (t, h, w) position in its own clip's patch grid, so positions restart with every clip, and
the DiT's attention, timestep and text conditioning stay within a segment: a packed clip's output equals the clip
run alone (tests/test_packing.py). The layout is plain Python, decided on the host from the clips' shapes: one
jitted step per (rows, length, slots), whatever the clips.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models.patchify import patch_grid, patchify, unpatchify


@flax.struct.dataclass
class Packing:
  """What the DiT needs to keep packed clips apart: segment ids [B, L] int32 (slot + 1; 0 = padding) and each
  token's (t, h, w) position in its clip's patch grid [B, L, 3] int32."""
  segment_ids: jax.Array
  positions: jax.Array

  @property
  def slot_index(self) -> jax.Array:
    """[B, L] the slot each token reads its timestep and text from (padding reads slot 0 and is ignored)."""
    return jnp.maximum(self.segment_ids - 1, 0)


def positions_restart(pos_embed: str, use_rope: bool, rope_grid: str) -> bool:
  """Whether a DiT's positions can restart with every packed clip: sincos or none (a learned table is sized for one
  grid) and, with RoPE, the integer 'slice' grid ('linspace' fits each grid into the base grid's crop region)."""
  return pos_embed != "learned" and (not use_rope or rope_grid == "slice")


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where clip i went: row, slot, first token, and its latent shape (T, H, W) and patch grid (gt, gh, gw)."""
  row: int
  slot: int
  start: int
  shape: tuple[int, int, int]
  grid: tuple[int, int, int]

  @property
  def num_tokens(self) -> int:
    return int(np.prod(self.grid))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The arrangement of N clips in `rows` rows of `length` tokens with at most `slots` clips per row."""
  rows: int
  length: int
  slots: int
  patch_size: int
  patch_size_t: int
  placements: tuple[Placement, ...]

  @property
  def fill(self) -> float:
    """Fraction of the rows' tokens that belong to a clip (1 - padding)."""
    return sum(p.num_tokens for p in self.placements) / (self.rows * self.length)


def plan(shapes: Sequence[tuple[int, int, int]], length: int, patch_size: int = 2, patch_size_t: int = 1,
         rows: int | None = None, slots: int | None = None) -> Layout:
  """Places clips of latent shapes (T, H, W) into rows of `length` tokens: first fit, longest clip first (a row
  takes at most `slots` clips). `rows`/`slots` None: as many as needed; given (to keep one compiled step), the clips
  must fit, or the error says how many rows they need. Fails naming a clip that does not fit in one row."""
  grids = []
  for i, shape in enumerate(shapes):
    if len(shape) != 3:
      raise ValueError(f"Clip {i}: latent shape {tuple(shape)}; expected (T, H, W).")
    t, h, w = (int(x) for x in shape)
    try:
      grids.append(patch_grid((1, t, h, w, 1), patch_size, patch_size_t))
    except ValueError as e:
      raise ValueError(f"Clip {i}: latent shape {(t, h, w)} is not divisible by the patch: {e}") from None
    if np.prod(grids[-1]) > length:
      raise ValueError(f"Clip {i}: {int(np.prod(grids[-1]))} tokens (latent {(t, h, w)}) do not fit in a row of "
                       f"length={length}.")
  used, counts, where = [], [], {}
  for i in sorted(range(len(grids)), key=lambda i: -int(np.prod(grids[i]))):
    n = int(np.prod(grids[i]))
    row = next((r for r in range(len(used)) if used[r] + n <= length and (slots is None or counts[r] < slots)),
               None)
    if row is None:
      used.append(0)
      counts.append(0)
      row = len(used) - 1
    where[i] = (row, counts[row], used[row])
    used[row] += n
    counts[row] += 1
  if rows is not None and len(used) > rows:
    raise ValueError(f"{len(grids)} clips need {len(used)} rows of length={length} (slots={slots}); rows={rows}.")
  placements = tuple(Placement(*where[i], tuple(int(x) for x in shapes[i]), grids[i]) for i in range(len(grids)))
  return Layout(rows if rows is not None else len(used), length, slots or max(counts, default=1), patch_size,
                patch_size_t, placements)


def _grid_positions(grid: tuple[int, int, int]) -> np.ndarray:
  """[gt * gh * gw, 3] (t, h, w) of each token, time-major as `patchify` orders them."""
  return np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"), axis=-1).reshape(-1, 3)


def segments(layout: Layout) -> Packing:
  """The layout's segment ids and positions (numpy int32; they depend on the layout alone)."""
  ids = np.zeros((layout.rows, layout.length), np.int32)
  positions = np.zeros((layout.rows, layout.length, 3), np.int32)
  for p in layout.placements:
    ids[p.row, p.start:p.start + p.num_tokens] = p.slot + 1
    positions[p.row, p.start:p.start + p.num_tokens] = _grid_positions(p.grid)
  return Packing(ids, positions)


def pack(clips: Sequence[jax.Array], layout: Layout) -> tuple[jax.Array, Packing]:
  """Clips [T, H, W, C] (the layout's shapes, in its order) -> (patch tokens [rows, length, C * pt * p * p] with
  zeros in the padding, Packing). Works on numpy or jax arrays, inside jit (the layout is static)."""
  if len(clips) != len(layout.placements):
    raise ValueError(f"{len(clips)} clips for a layout of {len(layout.placements)}.")
  row_parts = [[] for _ in range(layout.rows)]
  for clip, p in sorted(zip(clips, layout.placements), key=lambda cp: (cp[1].row, cp[1].start)):
    if tuple(clip.shape[:3]) != p.shape:
      raise ValueError(f"Clip of shape {tuple(clip.shape)} where the layout has latent shape {p.shape}.")
    row_parts[p.row].append(patchify(jnp.asarray(clip)[None], layout.patch_size, layout.patch_size_t)[0])
  width = layout.patch_size_t * layout.patch_size ** 2 * clips[0].shape[-1]
  rows = []
  for parts in row_parts:
    used = sum(x.shape[0] for x in parts)
    rows.append(jnp.concatenate(parts + [jnp.zeros((layout.length - used, width), parts[0].dtype if parts else
                                                   jnp.float32)], axis=0))
  return jnp.stack(rows), segments(layout)


def unpack(tokens: jax.Array, layout: Layout) -> list[jax.Array]:
  """Packed output tokens [rows, length, C * pt * p * p] -> each clip [T, H, W, C], in the layout's order."""
  return [unpatchify(tokens[p.row, p.start:p.start + p.num_tokens][None], p.grid, layout.patch_size,
                     layout.patch_size_t)[0] for p in layout.placements]


def per_slot(values: jax.Array, layout: Layout, fill=0) -> jax.Array:
  """Per-clip values [N, ...] (timesteps, text embeddings) -> per slot [rows, slots, ...]; empty slots `fill`."""
  values = jnp.asarray(values)
  if values.shape[0] != len(layout.placements):
    raise ValueError(f"{values.shape[0]} values for a layout of {len(layout.placements)} clips.")
  out = jnp.full((layout.rows, layout.slots) + values.shape[1:], fill, values.dtype)
  rows = np.array([p.row for p in layout.placements])
  slots = np.array([p.slot for p in layout.placements])
  return out.at[rows, slots].set(values)

