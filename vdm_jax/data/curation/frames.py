"""One source's frames for curation, in memory bounded by a budget instead of by the file's length.

    source = SourceFrames(path, max_bytes=2 << 30)
    cut_list = cuts.detect_cuts(source.small)                # every frame at the cut detector's 48-px short side
    for frames in source.spans([(0, 30), (30, 76)]):          # full-size frames of each span, in order
      ...

The first decode keeps a small copy of every frame (what cut detection reads: 12 KB a frame for 720p) and the
full frames while they fit in `max_bytes`. A file that fits (most clips) is then served from memory; a longer one
is decoded a second time, holding one span (a clip: at most `clip.max_frames` frames) at a time. Both give the
same frames, so the curation's output does not depend on the budget.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from vdm_jax import io
from vdm_jax.data.curation import motion

CUT_SHORT_SIDE = 48  # cuts.detect_cuts' default short side: resizing its copies again changes nothing


class SourceFrames:
  """The first decode of `path`: `small` (uint8 [T, h, w, 3]) and `num_frames`; `in_memory` tells whether the full
  frames fit in `max_bytes`."""

  def __init__(self, path: str, max_bytes: int):
    self.path = path
    small, held, size = [], [], 0
    for frame in io.iter_video(path):
      small.append(motion.resize_short_side(frame, CUT_SHORT_SIDE))
      if held is not None:
        size += frame.nbytes
        held.append(frame)
        if size > max_bytes:
          held = None  # too long to hold: the spans come from a second decode
    if not small:
      raise io.VideoReadError(f"{path!r}: no decodable frames")
    self.small = np.stack(small)
    self.num_frames = len(small)
    self._frames = held  # a list: stacking it whole would hold every frame twice

  @property
  def in_memory(self) -> bool:
    return self._frames is not None

  def spans(self, spans: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    """uint8 [end - start, H, W, 3] for each `(start, end)` of `spans` (sorted, disjoint, within the video)."""
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])) or any(s >= e for s, e in spans):
      raise ValueError(f"spans {list(spans)[:4]}...: must be non-empty, sorted and disjoint.")
    if self._frames is not None:
      for start, end in spans:
        yield np.stack(self._frames[start:end])
      return
    index, held = 0, None
    for t, frame in enumerate(io.iter_video(self.path)):
      if index == len(spans):
        return
      start, end = spans[index]
      if t == start:
        held = np.empty((end - start, *frame.shape), frame.dtype)
      if t >= start:
        held[t - start] = frame
      if t == end - 1:
        yield held
        index, held = index + 1, None
    if index < len(spans):
      raise io.VideoReadError(f"{self.path!r}: the second decode gave fewer frames than the first "
                              f"({self.num_frames}); the file changed while it was curated?")
