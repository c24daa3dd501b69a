"""Captioned Shapes: one coloured shape moving on black, rendered in numpy (spec: docs/captioned_shapes.md).

A clip is a pure function of its seed: `render_clip(seed)` draws every random quantity from
`np.random.default_rng(seed)` in a fixed order (color, shape, motion, template, radius, travel, start), so fixing one
attribute with an override leaves every other draw unchanged. Geometry is in continuous pixel coordinates (pixel
`(i, j)` covers `[i, i+1) x [j, j+1)`); centres are `(row, col)`.
"""
from __future__ import annotations

import itertools
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

COLORS = {
    "red": (230, 25, 75),
    "green": (60, 180, 75),
    "blue": (0, 130, 200),
    "yellow": (255, 225, 25),
    "orange": (245, 130, 48),
    "purple": (145, 30, 180),
    "cyan": (70, 240, 240),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")
ATTRIBUTES = {"color": tuple(COLORS), "shape": SHAPES, "motion": MOTIONS}

# (moving, still) phrasings; a clip draws one index. Every caption contains the exact color, shape and motion words.
TEMPLATES = (
    ("a {color} {shape} moving {motion}", "a {color} {shape} standing still"),
    ("a {color} {shape} moves {motion}", "a {color} {shape} stays still"),
    ("{color} {shape} sliding {motion}", "{color} {shape} staying still"),
    ("the {color} {shape} is moving {motion}", "the {color} {shape} is still"),
    ("a {color} {shape} drifting {motion}", "a {color} {shape} holding still"),
    ("one {color} {shape} travels {motion}", "one {color} {shape}, perfectly still"),
)

SUPERSAMPLE = 4  # anti-aliasing: render at 4x and box-downsample
MARGIN = 1.0  # pixels kept free between the object and the border, so edge pixels never clip
RADIUS_RANGE = (1 / 8, 1 / 5)  # radius as a fraction of min(height, width)
TRAVEL_RANGE = (0.35, 0.60)  # centre travel as a fraction of the free span along the motion axis
_OVERRIDES = ("color", "shape", "motion", "radius", "template")
_DIRECTIONS = {"left": (1, -1), "right": (1, 1), "up": (0, -1), "down": (0, 1)}  # motion -> (axis, sign)


def _check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise ValueError(f"Invalid {key}={value!r}; allowed values: {list(allowed)}.")


def caption_for(color: str, shape: str, motion: str, template: int = 0) -> str:
  """The caption of template `template` for the given attributes, e.g. 'a red circle moving left'."""
  moving, still = TEMPLATES[template]
  return (still if motion == "still" else moving).format(color=color, shape=shape, motion=motion)


def clip_params(seed: int, height: int = 64, width: int = 64, **overrides) -> dict[str, Any]:
  """Draws the attributes and geometry of clip `seed` (no pixels).

  Returns a dict with `color`, `shape`, `motion` (str), `template` (int), `radius` (float, pixels),
  `start` and `end` (float [2], centre `(row, col)` at the first and last frame).
  Overrides: any of `color`, `shape`, `motion`, `radius`, `template`; unknown keys or values raise ValueError.
  """
  unknown = sorted(set(overrides) - set(_OVERRIDES))
  if unknown:
    raise ValueError(f"Unknown override(s) {unknown}; allowed keys: {list(_OVERRIDES)}.")
  if height < 8 or width < 8:
    raise ValueError(f"height and width must be >= 8, got {height}x{width}.")
  rng = np.random.default_rng(seed)
  drawn = {key: values[rng.integers(len(values))] for key, values in ATTRIBUTES.items()}
  drawn["template"] = int(rng.integers(len(TEMPLATES)))
  u_radius, u_travel, u_row, u_col = rng.random(4)
  for key in ("color", "shape", "motion"):
    if key in overrides:
      _check_choice(key, overrides[key], ATTRIBUTES[key])
      drawn[key] = overrides[key]
  if "template" in overrides:
    _check_choice("template", overrides["template"], range(len(TEMPLATES)))
    drawn["template"] = int(overrides["template"])
  size = min(height, width)
  radius = size * (RADIUS_RANGE[0] + u_radius * (RADIUS_RANGE[1] - RADIUS_RANGE[0]))
  if "radius" in overrides:
    radius = float(overrides["radius"])
    if not 0 < radius <= size / 2 - MARGIN:
      raise ValueError(f"Invalid radius={radius!r}; allowed values: (0, {size / 2 - MARGIN}] for {height}x{width}.")
  start, end = _path(drawn["motion"], radius, height, width, u_travel, (u_row, u_col))
  return dict(drawn, radius=float(radius), start=start, end=end)


def _path(motion: str, radius: float, height: int, width: int, u_travel: float,
          u_start: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
  """Start and end centres `(row, col)` such that the whole path keeps the object `MARGIN` px inside the canvas."""
  low = radius + MARGIN
  spans = (height - 2 * low, width - 2 * low)  # free span of the centre along each axis
  start = np.array([low + u * span for u, span in zip(u_start, spans)])
  if motion == "still":
    return start, start.copy()
  axis, sign = _DIRECTIONS[motion]
  travel = (TRAVEL_RANGE[0] + u_travel * (TRAVEL_RANGE[1] - TRAVEL_RANGE[0])) * spans[axis]
  lowest = low + u_start[axis] * (spans[axis] - travel)
  start[axis] = lowest + travel if sign < 0 else lowest
  end = start.copy()
  end[axis] = start[axis] + sign * travel
  return start, end


def centers(params: Mapping[str, Any], num_frames: int) -> np.ndarray:
  """Centre `(row, col)` per frame, constant velocity from `start` to `end`: float64 [T, 2]."""
  fraction = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
  return params["start"] + fraction[:, None] * (params["end"] - params["start"])


def _inside(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
  """Whether offsets from the centre lie inside the shape; dy [T, h, 1], dx [T, 1, w] -> bool [T, h, w]."""
  if shape == "circle":
    return dy * dy + dx * dx <= radius * radius
  if shape == "square":
    return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
  # Equilateral, pointing up, centred on its centroid: apex at dy = -r, base at dy = r/2.
  return (dy <= radius / 2) & (math.sqrt(3) * np.abs(dx) - dy <= radius)


def coverage(params: Mapping[str, Any], num_frames: int, height: int, width: int) -> np.ndarray:
  """Anti-aliased fraction of each pixel covered by the object: float32 [T, H, W] in [0, 1]."""
  path = centers(params, num_frames)
  radius, s = params["radius"], SUPERSAMPLE
  # Only the window the object sweeps is rasterised; the rest of the canvas stays 0.
  row0, col0 = (max(0, math.floor(path[:, a].min() - radius)) for a in (0, 1))
  row1 = min(height, math.ceil(path[:, 0].max() + radius))
  col1 = min(width, math.ceil(path[:, 1].max() + radius))
  rows = row0 + (np.arange((row1 - row0) * s, dtype=np.float32) + 0.5) / s
  cols = col0 + (np.arange((col1 - col0) * s, dtype=np.float32) + 0.5) / s
  dy = rows[None, :, None] - path[:, 0, None, None].astype(np.float32)
  dx = cols[None, None, :] - path[:, 1, None, None].astype(np.float32)
  mask = _inside(params["shape"], dy, dx, np.float32(radius))
  window = mask.reshape(num_frames, row1 - row0, s, col1 - col0, s).mean(axis=(2, 4), dtype=np.float32)
  out = np.zeros((num_frames, height, width), np.float32)
  out[:, row0:row1, col0:col1] = window
  return out


def render_video(params: Mapping[str, Any], num_frames: int = 17, height: int = 64, width: int = 64) -> np.ndarray:
  """Pixels of a clip from `clip_params(...)`: uint8 [T, H, W, 3], object colour blended over black by coverage."""
  color = np.asarray(COLORS[params["color"]], np.float32)
  alpha = coverage(params, num_frames, height, width)
  return np.rint(alpha[..., None] * color).astype(np.uint8)


def render_clip(seed: int, num_frames: int = 17, height: int = 64, width: int = 64, **overrides) -> dict[str, Any]:
  """Renders clip `seed`.

  Returns a dict with `video` (uint8 [T, H, W, 3]), `caption` (str), `color`, `shape`, `motion` (str),
  and, for analysis, `radius` (float, pixels) and `centers` (float64 [T, 2], `(row, col)` per frame).
  Overrides fix attributes without changing the other draws: `color`, `shape`, `motion`, `radius`, `template`
  (index into TEMPLATES).
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
  params = clip_params(seed, height, width, **overrides)
  return dict(
      video=render_video(params, num_frames, height, width),
      caption=caption_for(params["color"], params["shape"], params["motion"], params["template"]),
      color=params["color"],
      shape=params["shape"],
      motion=params["motion"],
      radius=params["radius"],
      centers=centers(params, num_frames),
  )


def parse_caption(text: str) -> dict[str, str | None]:
  """Reads the attribute words out of a caption or prompt: {'color', 'shape', 'motion'} -> word or None.

  Whole words only, case-insensitive; the first word of each kind wins ('a Red circle moving left' ->
  red/circle/left).
  """
  words = re.findall(r"[a-z]+", text.lower())
  return {key: next((w for w in words if w in values), None) for key, values in ATTRIBUTES.items()}


def validate_heldout(heldout: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
  """Checks held-out pairs such as ('red', 'circle') or ('blue', 'left'): two known values of different attributes."""
  kind = {value: key for key, values in ATTRIBUTES.items() for value in values}
  pairs = []
  for pair in heldout:
    pair = tuple(pair)
    if len(pair) != 2 or any(v not in kind for v in pair) or kind[pair[0]] == kind[pair[1]]:
      raise ValueError(f"Invalid held-out pair {pair!r}: want two values of different attributes from {ATTRIBUTES}.")
    pairs.append(pair)
  return tuple(pairs)


def is_heldout(attributes: Mapping[str, str], heldout: Iterable[Sequence[str]]) -> bool:
  """Whether a (color, shape, motion) combination contains any held-out pair."""
  values = {attributes["color"], attributes["shape"], attributes["motion"]}
  return any(a in values and b in values for a, b in heldout)


def all_combinations() -> list[dict[str, str]]:
  """Every (color, shape, motion) combination, 8 x 3 x 5 = 120, in a fixed order."""
  return [dict(zip(ATTRIBUTES, combo)) for combo in itertools.product(*ATTRIBUTES.values())]


def sample_attributes(rng: np.random.Generator, heldout: Iterable[Sequence[str]] = (),
                      only_heldout: bool = False) -> dict[str, str]:
  """Draws a combination uniformly among those not held out (or, with `only_heldout`, among the held-out ones)."""
  heldout = validate_heldout(heldout)
  pool = [c for c in all_combinations() if is_heldout(c, heldout) == only_heldout]
  if not pool:
    raise ValueError(f"No combination to draw from: heldout={heldout}, only_heldout={only_heldout}.")
  return pool[int(rng.integers(len(pool)))]
