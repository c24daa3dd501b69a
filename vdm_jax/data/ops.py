"""The standard preprocessing ops on single examples, each registered by name for specs (big_vision style).

Video ops (decode_video, temporal_sample, resize, center_crop, random_crop, value_range, to_image), text ops
(decode_text, tokenize) and key ops (keep, rename), used in specs such as
`"decode_video|temporal_sample(17)|resize(64)|center_crop(64)|value_range(-1, 1)"`.

An op is `op(example: dict, rng) -> dict`: it returns a new dict and never changes the one it gets; random ops draw
only from `rng`, the `np.random.Generator` grain passes per element, so a pipeline is reproducible from grain's
seed. Ops compute with numpy/Pillow only (no jax), so they can run in grain worker processes. The spec grammar,
the registry and `build` are in `vdm_jax.data.preprocess`; they are re-exported here, so importing this module both
registers the standard ops and gives the functions that build specs from them.

Videos here are `[T, H, W, C]` per example: uint8 until `value_range`, float32 in [lo, hi] after it.

There is deliberately no horizontal flip: captions say "left" and "right" (Captioned Shapes does), and a flip would
make them wrong.

Adding an op: a factory `get_<name>(*args, **kwargs) -> op` under `@register("<name>")`. Check the arguments in the
factory so that a bad spec fails when it is built, not inside a worker.
"""
from collections.abc import Mapping

import numpy as np
from PIL import Image

# Re-exported, so that `ops.build(spec)` both registers the ops below and builds from them.
from vdm_jax.data.preprocess import Pipeline, build, get, names, parse, register  # noqa: F401  pylint: disable=W0611
from vdm_jax.io import video as video_io
from vdm_jax.text import tokenizers


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by ops.


def _value(example, key, op):
  if not isinstance(example, Mapping):
    raise TypeError(f"{op}: an example is a dict, got {type(example).__name__}")
  if key not in example:
    raise KeyError(f"{op}: example has no key {key!r}; keys: {sorted(example)}")
  return example[key]


def _video(example, key, op, dtype=None):
  """example[key] checked to be an `[T, H, W, C]` array (of `dtype`, if given)."""
  video = _value(example, key, op)
  if not isinstance(video, np.ndarray) or video.ndim != 4:
    shape = getattr(video, "shape", None)
    raise ValueError(f"{op}: example[{key!r}] must be an array [T, H, W, C], got {type(video).__name__} "
                     f"with shape {shape}; run decode_video first")
  if dtype is not None and video.dtype != dtype:
    raise ValueError(f"{op}: example[{key!r}] must have dtype {np.dtype(dtype)}, got {video.dtype}; "
                     f"{op} goes before value_range")
  return video


def _generator(rng, op):
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"{op} is random and needs an np.random.Generator as rng (grain's random_map passes one), "
                     f"got {type(rng).__name__}; or pass random=False where the op has it")
  return rng


def _positive_int(value, what):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{what} must be a positive int, got {value!r}")
  return int(value)


def _size_hw(size, op):
  """int s -> (s, s); (h, w) -> (h, w); both positive ints."""
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    size = (size, size)
  if not isinstance(size, (tuple, list)) or len(size) != 2:
    raise ValueError(f"{op} size must be an int or (height, width), got {size!r}")
  return tuple(_positive_int(s, f"{op} size") for s in size)


def _check_crop(video, height, width, key, op):
  if height > video.shape[1] or width > video.shape[2]:
    raise ValueError(f"{op}: crop {height}x{width} is larger than the frames of example[{key!r}], "
                     f"{video.shape[1]}x{video.shape[2]} (HxW); resize first")


# ----------------------------------------------------------------------------------------------------------------
# Ops.


# Keys that datasets use for where an example's video came from; the first one present names it in decode errors.
_SOURCE_KEYS = ("filename", "file_name", "path", "video_path", "url", "id", "video_id", "seed")


def _example_name(example, key):
  """`example['video']`, with the example's source file (or id) when it has one: the name of a decode error."""
  for source_key in _SOURCE_KEYS:
    value = example.get(source_key)
    if isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    if isinstance(value, (bytes, str, int, np.integer)) and not isinstance(value, bool):
      value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
      return f"example[{key!r}] of the example with {source_key}={value!r}"
  return f"example[{key!r}]"


@register("decode_video")
def get_decode_video(key="video", on_damage="raise"):
  """Makes example[key] a uint8 `[T, H, W, 3]` array.

  An array (uint8 `[T, H, W, 3]`, or grayscale `[T, H, W]` / `[T, H, W, 1]`, made RGB) is validated and passed on;
  `bytes` are an encoded video (mp4, gif, npy, any FFmpeg format) and are decoded. Undecodable bytes, and videos
  that decode only in part, raise `vdm_jax.io.video.VideoReadError` (a ValueError) naming the example by its
  source file or id when it has one (`make_dataset` skips and counts such examples). `on_damage='warn'` keeps the
  frames of a partly decodable video instead, with a warning (`read_video_bytes`).
  """
  if on_damage not in video_io.DAMAGE_POLICIES:
    raise ValueError(f"decode_video on_damage must be one of {video_io.DAMAGE_POLICIES}, got {on_damage!r}")

  def _decode_video(example, rng):
    del rng
    value = _value(example, key, "decode_video")
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "OS":
      value = value.item()  # tfds/grain may hand over bytes as a 0-d array.
    if isinstance(value, (bytes, bytearray, memoryview)):
      video = video_io.read_video_bytes(value, name=_example_name(example, key), on_damage=on_damage)
    else:
      video = video_io.as_video(value, name=f"decode_video: example[{key!r}]")
    return {**example, key: video}
  return _decode_video


@register("decode_text")
def get_decode_text(key="caption"):
  """Makes example[key] a `str`: UTF-8 `bytes` are decoded, `str` passes through."""
  def _decode_text(example, rng):
    del rng
    value = _value(example, key, "decode_text")
    if isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    if isinstance(value, (bytes, bytearray)):
      value = bytes(value).decode("utf-8")
    if not isinstance(value, str):
      raise TypeError(f"decode_text: example[{key!r}] must be bytes or str, got {type(value).__name__}")
    return {**example, key: str(value)}
  return _decode_text


@register("tokenize")
def get_tokenize(max_length, tokenizer="byte", key="caption", out_key="tokens"):
  """Adds `out_key`: int32 [max_length] token ids of the text at `key` (str or bytes), padded/truncated as
  transformers does. `tokenizer`: 'byte' (ByT5 ids, no file) or the path of a T5 tokenizer folder (`spiece.model` or `tokenizer.json`)."""
  max_length = _positive_int(max_length, "tokenize max_length")
  tok = tokenizers.ByteTokenizer() if tokenizer == "byte" else tokenizers.T5Tokenizer.from_pretrained(tokenizer)

  def _tokenize(example, rng):
    del rng
    text = _value(example, key, "tokenize")
    if isinstance(text, np.ndarray) and text.ndim == 0:
      text = text.item()
    text = bytes(text).decode("utf-8") if isinstance(text, (bytes, bytearray)) else str(text)
    return {**example, out_key: np.asarray(tok([text], max_length=max_length)[0], np.int32)}
  return _tokenize


@register("temporal_sample")
def get_temporal_sample(num_frames, stride=1, random=True, pad=False, key="video"):
  """Takes `num_frames` frames `stride` apart: `[T, H, W, C]` -> `[num_frames, H, W, C]`.

  The window starts at a uniform random frame (from `rng`) when `random`, else at frame 0. A clip shorter than the
  window, `(num_frames - 1) * stride + 1` frames, raises ValueError; with `pad=True` it starts at 0 and repeats
  the last frame instead.
  """
  num_frames = _positive_int(num_frames, "temporal_sample num_frames")
  stride = _positive_int(stride, "temporal_sample stride")
  needed = (num_frames - 1) * stride + 1

  def _temporal_sample(example, rng):
    video = _value(example, key, "temporal_sample")
    length = len(video)
    if length < needed and not pad:
      raise ValueError(f"temporal_sample: example[{key!r}] has {length} frames, needs at least {needed} "
                       f"(num_frames={num_frames}, stride={stride}); pass pad=True to repeat the last frame")
    start = 0
    if random and length > needed:
      start = int(_generator(rng, "temporal_sample").integers(0, length - needed + 1))
    indices = np.minimum(start + stride * np.arange(num_frames), length - 1)
    return {**example, key: video[indices]}
  return _temporal_sample


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "area": Image.Resampling.BOX,
             "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


@register("resize")
def get_resize(size, method="bilinear", key="video"):
  """Resizes every frame with Pillow: uint8 `[T, H, W, C]` -> uint8 `[T, h, w, C]`, C in {1, 3}.

  `size` int: the shorter side becomes `size`, keeping the aspect ratio; `(h, w)`: exactly that.
  `method`: 'bilinear' (Pillow's, antialiased when shrinking), 'area', 'bicubic' or 'nearest'.
  """
  if method not in _RESAMPLE:
    raise ValueError(f"resize method must be one of {sorted(_RESAMPLE)}, got {method!r}")
  short_side = size if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else None
  exact = None if short_side is not None else _size_hw(size, "resize")
  if short_side is not None:
    _positive_int(short_side, "resize size")

  def _resize(example, rng):
    del rng
    video = _video(example, key, "resize", dtype=np.uint8)
    height, width, channels = video.shape[1:]
    if channels not in (1, 3):
      raise ValueError(f"resize: example[{key!r}] must have 1 or 3 channels, got shape {video.shape}")
    if exact is not None:
      new_h, new_w = exact
    elif height <= width:
      new_h, new_w = short_side, max(1, int(width * short_side / height + 0.5))
    else:
      new_h, new_w = max(1, int(height * short_side / width + 0.5)), short_side
    if (new_h, new_w) == (height, width):
      return {**example, key: video}
    frames = [Image.fromarray(f[..., 0] if channels == 1 else f).resize((new_w, new_h), _RESAMPLE[method])
              for f in video]
    resized = np.stack([np.asarray(f) for f in frames]).reshape(len(video), new_h, new_w, channels)
    return {**example, key: resized}
  return _resize


@register("center_crop")
def get_center_crop(size, key="video"):
  """Crops the centre of every frame: `[T, H, W, C]` -> `[T, h, w, C]`; `size` is an int (square) or `(h, w)`."""
  height, width = _size_hw(size, "center_crop")

  def _center_crop(example, rng):
    del rng
    video = _video(example, key, "center_crop")
    _check_crop(video, height, width, key, "center_crop")
    top, left = (video.shape[1] - height) // 2, (video.shape[2] - width) // 2
    return {**example, key: video[:, top:top + height, left:left + width]}
  return _center_crop


@register("random_crop")
def get_random_crop(size, key="video"):
  """Crops one random window (from `rng`, the same for all frames): `[T, H, W, C]` -> `[T, h, w, C]`."""
  height, width = _size_hw(size, "random_crop")

  def _random_crop(example, rng):
    video = _video(example, key, "random_crop")
    _check_crop(video, height, width, key, "random_crop")
    rng = _generator(rng, "random_crop")
    top = int(rng.integers(0, video.shape[1] - height + 1))
    left = int(rng.integers(0, video.shape[2] - width + 1))
    return {**example, key: video[:, top:top + height, left:left + width]}
  return _random_crop


@register("value_range")
def get_value_range(lo=-1, hi=1, key="video"):
  """Maps uint8 [0, 255] linearly to float32 [lo, hi]: 0 -> lo, 255 -> hi. Shape unchanged."""
  for name, value in (("lo", lo), ("hi", hi)):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise ValueError(f"value_range {name} must be a number, got {value!r}")
  scale = (hi - lo) / 255.0

  def _value_range(example, rng):
    del rng
    video = _value(example, key, "value_range")
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
      raise ValueError(f"value_range: example[{key!r}] must be a uint8 array, got "
                       f"{getattr(video, 'dtype', type(video).__name__)}; value_range runs once, after decode")
    return {**example, key: (video.astype(np.float32) * np.float32(scale) + np.float32(lo)).astype(np.float32)}
  return _value_range


@register("to_image")
def get_to_image(random=True, key="video"):
  """Keeps one frame and a time axis of 1: `[T, H, W, C]` -> `[1, H, W, C]` (for joint image/video batches).

  The frame is uniform random (from `rng`) when `random`, else frame 0.
  """
  def _to_image(example, rng):
    video = _video(example, key, "to_image")
    t = int(_generator(rng, "to_image").integers(0, len(video))) if random else 0
    return {**example, key: video[t:t + 1]}
  return _to_image


@register("keep")
def get_keep(*keys):
  """Keeps only `keys` (all must be present)."""
  if not keys or not all(isinstance(k, str) for k in keys):
    raise ValueError(f"keep needs one or more key names (strings), got {keys!r}")

  def _keep(example, rng):
    del rng
    missing = [k for k in keys if k not in example]
    if missing:
      raise KeyError(f"keep: example has no keys {missing}; keys: {sorted(example)}")
    return {k: example[k] for k in keys}
  return _keep


@register("rename")
def get_rename(**new_from_old):
  """Renames keys: `rename(video='frames')` moves example['frames'] to example['video']. Swaps work."""
  if not new_from_old or not all(isinstance(v, str) for v in new_from_old.values()):
    raise ValueError(f"rename needs new_name='old_name' pairs, got {new_from_old!r}")

  def _rename(example, rng):
    del rng
    missing = [old for old in new_from_old.values() if old not in example]
    if missing:
      raise KeyError(f"rename: example has no keys {missing}; keys: {sorted(example)}")
    olds = set(new_from_old.values())
    renamed = {k: v for k, v in example.items() if k not in olds}
    renamed.update({new: example[old] for new, old in new_from_old.items()})
    return renamed
  return _rename
