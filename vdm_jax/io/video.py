"""Video files at the edges of the library: uint8 `[T, H, W, 3]` in, uint8 `[T, H, W, 3]` out.

Formats, chosen by the file extension:
  .npy  exact; written with `np.save`, read with `allow_pickle=False`.
  .gif  Pillow, one palette per frame; exact when a frame has at most 256 colours, else median-cut quantised.
        Every frame is written (Pillow's own writer would merge identical consecutive frames). GIF delays are
        whole centiseconds, so the stored frame rate is approximate (fps=8 plays at 1/0.12 s).
  .mp4  H.264 (libx264, yuv420p, CRF 15 by default) through the ffmpeg binary of imageio-ffmpeg. yuv420p needs even
        sizes, so an odd height or width is padded by repeating the last row/column; the original size is stored in
        the file's `comment` tag and `read_video` crops back to it. Other players show the padded frames (one extra
        row/column at most). Sizes that are even but not multiples of 16 are encoded as they are (H.264 cropping).
        Near-lossless at the default CRF (tests/test_video_io.py bounds the round trip's PSNR).

`read_video` decodes .mp4 and any other format FFmpeg reads through PyAV (FFmpeg's libraries, in process), with the
swscale flags and autorotation of the ffmpeg command line, so frames are the ones the ffmpeg binary gives. A missing
file raises `FileNotFoundError`; a file that exists but cannot be decoded (not a video), or decodes only in part
(truncated: fewer frames than the container declares; damaged bytes: decoder errors or corrupt packets, which
FFmpeg conceals by repeating or smearing frames) raises `VideoReadError`, a `ValueError`, so dataset code can catch
it, skip the file and count it; `on_damage="warn"` returns the frames that decoded, with a `VideoDamageWarning`.
`encode_video` gives a file's bytes without a file. Pictures and notebook players made from videos are in
`vdm_jax.io.visualize`.
"""
import fractions
import io
import os
import re
import subprocess
import tempfile
import warnings

import numpy as np
from PIL import Image, ImageSequence

WRITE_FORMATS = (".mp4", ".gif", ".npy")
HTML_FORMATS = ("mp4", "gif")  # the formats `encode_video` makes (and browsers play)
_SIZE_TAG = "vdm_jax_size"
# RGB <-> yuv420p conversion with exact rounding and full-resolution chroma interpolation: a round trip several dB
# closer than with ffmpeg's default flags (tests/test_video_io.py).
_SWS_FLAGS = ["-sws_flags", "bicubic+accurate_rnd+full_chroma_int"]


DAMAGE_POLICIES = ("raise", "warn")  # what `read_video` does with a file that decodes only in part


class VideoReadError(ValueError):
  """A video file exists but cannot be decoded into uint8 `[T, H, W, 3]` (corrupt, truncated, not a video)."""


class VideoDamageWarning(UserWarning):
  """A video decoded only in part (`on_damage="warn"`): decoder errors, corrupt packets or missing frames."""


def to_uint8(video) -> np.ndarray:
  """A float video in [-1, 1] (any shape) -> uint8 0..255: `(x + 1) * 127.5`, rounded and clipped."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def as_video(video, name="video"):
  """Validates and returns a video as a C-contiguous uint8 `[T, H, W, 3]` array.

  Accepts uint8 `[T, H, W, 3]`, `[T, H, W]` or `[T, H, W, 1]` (grayscale, repeated to RGB). Anything else raises a
  ValueError that names the shape and dtype received.
  """
  video = np.asarray(video)
  if video.dtype != np.uint8:
    raise ValueError(f"{name} must have dtype uint8 (values 0..255), got dtype {video.dtype} with shape "
                     f"{video.shape}; convert float video in [-1, 1] with vdm_jax.io.to_uint8")
  if video.ndim == 3:
    video = video[..., None]
  if video.ndim != 4 or video.shape[-1] not in (1, 3) or min(video.shape[:3]) == 0:
    raise ValueError(f"{name} must have shape [T, H, W, 3], [T, H, W, 1] or [T, H, W] with T, H, W > 0, "
                     f"got shape {video.shape}")
  if video.shape[-1] == 1:
    video = np.repeat(video, 3, axis=-1)
  return np.ascontiguousarray(video)


def _extension(path):
  return os.path.splitext(os.fspath(path))[1].lower()


def _make_parent(path):
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)


def _check_fps(fps):
  if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
    raise ValueError(f"fps must be a positive number, got {fps!r}")


def write_video(path, video, fps=8):
  """Writes uint8 `[T, H, W, 3]` (or grayscale `[T, H, W]`, `[T, H, W, 1]`) to `path`, by extension.

  Extensions: .mp4 (`write_mp4`), .gif (`write_gif`), .npy (`write_npy`, exact; `fps` unused). Creates parent
  folders. Returns `path`.
  """
  ext = _extension(path)
  writers = {".mp4": write_mp4, ".gif": write_gif, ".npy": write_npy}
  if ext not in writers:
    raise ValueError(f"cannot write video to {os.fspath(path)!r}: extension {ext!r} is not one of {WRITE_FORMATS}")
  if ext == ".npy":
    return write_npy(path, video)
  return writers[ext](path, video, fps=fps)


def write_npy(path, video):
  """Writes uint8 `[T, H, W, 3]` exactly with `np.save` (no pickle). Returns `path`."""
  video = as_video(video)
  _make_parent(path)
  with open(path, "wb") as f:
    np.save(f, video, allow_pickle=False)
  return path


def write_mp4(path, video, fps=8, crf=15):
  """Writes uint8 `[T, H, W, 3]` as H.264 (libx264, yuv420p) mp4. Returns `path`.

  `crf`: x264 constant rate factor, 0 (best, largest) .. 51 (worst); 15 is visually lossless. Odd sizes are
  padded to even by edge replication; `read_video` crops back using the size stored in the `comment` tag.
  """
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top

  video = as_video(video)
  _check_fps(fps)
  if not isinstance(crf, int) or not 0 <= crf <= 51:
    raise ValueError(f"crf must be an int in 0..51 (lower is better), got {crf!r}")
  _, height, width, _ = video.shape
  padded = np.pad(video, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
  _make_parent(path)
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo",
         "-s", f"{padded.shape[2]}x{padded.shape[1]}", "-pix_fmt", "rgb24",
         "-r", str(fractions.Fraction(fps).limit_denominator()), "-i", "-", "-an", "-vcodec", "libx264",
         "-pix_fmt", "yuv420p", "-crf", str(crf), *_SWS_FLAGS, "-metadata", f"comment={_SIZE_TAG}={width}x{height}",
         "-v", "error", os.fspath(path)]
  # ffmpeg in its own session, so a Ctrl-C meant for training does not cut the file; set between fork and exec in
  # C (imageio-ffmpeg's writer uses a Python preexec_fn, which can hang the fork in a multithreaded JAX process).
  proc = subprocess.run(cmd, input=np.ascontiguousarray(padded).tobytes(), stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, start_new_session=True, check=False)
  if proc.returncode:
    raise OSError(f"ffmpeg could not write {os.fspath(path)!r}: {proc.stderr.decode(errors='replace')[-2000:]}")
  return path


def _palette_frame(frame):
  """uint8 `[H, W, 3]` -> Pillow 'P' image; exact when the frame has at most 256 colours."""
  flat = frame.reshape(-1, 3)
  colours, index = np.unique(flat, axis=0, return_inverse=True)
  if len(colours) > 256:
    return Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT)
  image = Image.fromarray(index.reshape(frame.shape[:2]).astype(np.uint8), mode="P")
  image.putpalette(colours.astype(np.uint8).tobytes())
  return image


def write_gif(path, video, fps=8):
  """Writes uint8 `[T, H, W, 3]` as a looping GIF, every frame with its own palette. Returns `path`.

  Uses Pillow's frame-level GIF writer so that identical consecutive frames stay separate frames.
  """
  from PIL import GifImagePlugin  # pylint: disable=g-import-not-at-top

  video = as_video(video)
  _check_fps(fps)
  frames = [_palette_frame(frame) for frame in video]
  header, _ = GifImagePlugin.getheader(frames[0], info={"loop": 0})
  _make_parent(path)
  with open(path, "wb") as f:
    f.write(b"".join(header))
    for frame in frames:
      f.write(b"".join(GifImagePlugin.getdata(frame, duration=1000.0 / fps, include_color_table=True)))
    f.write(b";")
  return path


def read_video(path, on_damage="raise"):
  """Reads a video file into uint8 `[T, H, W, 3]`.

  .npy (allow_pickle=False), .gif (Pillow), anything else through FFmpeg (.mp4, .webm, .avi, ...).
  Raises FileNotFoundError if `path` does not exist, VideoReadError (a ValueError) if it cannot be decoded. A file
  that decodes only in part (truncated, damaged bytes: see `_read_av`) raises VideoReadError too; with
  `on_damage="warn"` it gives a `VideoDamageWarning` and returns the frames that did decode.
  """
  path = os.fspath(path)
  _check_on_damage(on_damage)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no video file at {path!r}")
  ext = _extension(path)
  if ext == ".npy":
    with open(path, "rb") as f:
      return _read_npy(f, path)
  if ext == ".gif":
    with open(path, "rb") as f:
      return _read_gif(f, path)
  return _read_av(path, path, on_damage)


def iter_video(path, on_damage="raise"):
  """Yields the frames of a video file one at a time (uint8 [H, W, 3]), the same frames as `read_video(path)`, so a
  long file is read in bounded memory. Errors as `read_video`'s; a damaged file raises (or warns, with
  `on_damage="warn"`) after the frames that decoded."""
  path = os.fspath(path)
  _check_on_damage(on_damage)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no video file at {path!r}")
  if _extension(path) in (".npy", ".gif"):  # small by nature: read whole
    yield from read_video(path, on_damage)
    return
  yield from iter_av_frames(path, path, on_damage)


def read_video_bytes(data, name="<bytes>", on_damage="raise"):
  """Decodes an encoded video held in memory (npy, gif, or anything FFmpeg reads) into uint8 `[T, H, W, 3]`.

  The format is sniffed from the leading bytes. `name` says in errors where the bytes came from (a dataset example,
  a URL). Raises VideoReadError if the bytes cannot be decoded, or decode only in part (`on_damage` as in
  `read_video`).
  """
  _check_on_damage(on_damage)
  data = bytes(data)
  if data.startswith(b"\x93NUMPY"):
    return _read_npy(io.BytesIO(data), name)
  if data.startswith((b"GIF87a", b"GIF89a")):
    return _read_gif(io.BytesIO(data), name)
  return _read_av(io.BytesIO(data), name, on_damage)


def _check_on_damage(on_damage):
  if on_damage not in DAMAGE_POLICIES:
    raise ValueError(f"on_damage must be one of {DAMAGE_POLICIES}, got {on_damage!r}")


def _read_npy(f, name):
  try:
    video = np.load(f, allow_pickle=False)
  except Exception as e:  # np.load raises ValueError, EOFError, OSError, ... depending on the damage.
    raise VideoReadError(f"cannot read .npy video {name!r}: {type(e).__name__}: {e}") from e
  try:
    return as_video(video)
  except ValueError as e:
    raise VideoReadError(f"{name!r} holds no video: {e}") from e


def _read_gif(f, name):
  try:
    with Image.open(f) as image:
      frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
  except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ... for broken files.
    raise VideoReadError(f"cannot read GIF {name!r}: {type(e).__name__}: {e}") from e
  return np.stack(frames)


def _stored_size(container):
  """`(width, height)` from the `comment` tag that `write_mp4` writes, or None."""
  match = re.fullmatch(rf"{_SIZE_TAG}=(\d+)x(\d+)", container.metadata.get("comment", ""))
  return (int(match.group(1)), int(match.group(2))) if match else None


def _rgb_graph(stream, frame):
  """FFmpeg filters from a decoded frame to rgb24, as the ffmpeg command line builds them: the same swscale flags
  and the same autorotation (transposes for a display matrix of +-90 degrees, flips for 180), so frames are those
  the ffmpeg binary gives (tests/test_video_io.py compares them)."""
  import av  # pylint: disable=g-import-not-at-top

  graph = av.filter.Graph()
  chain = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                            time_base=stream.time_base)]
  theta = round(-frame.rotation) % 360  # the ffmpeg CLI's angle: clockwise degrees
  chain += {90: [("transpose", "clock")], 180: [("hflip", ""), ("vflip", "")],
            270: [("transpose", "cclock")]}.get(theta, [])
  chain += [("scale", "flags=" + _SWS_FLAGS[1]), ("format", "rgb24"), ("buffersink", "")]
  chain = chain[:1] + [graph.add(name, args or None) for name, args in chain[1:]]
  for a, b in zip(chain, chain[1:]):
    a.link_to(b)
  graph.configure()
  return graph


def _pull(graph, frames):
  import av  # pylint: disable=g-import-not-at-top

  while True:
    try:
      frames.append(graph.pull().to_ndarray())
    except (av.error.BlockingIOError, av.error.EOFError):
      return


def _decode(container, stream, problems):
  """Yields the frames of `stream` as rgb24 arrays, appending to `problems` what goes wrong: corrupt packets and
  decoder errors (FFmpeg's command line conceals both and carries on, which is how damaged files used to read
  without a word)."""
  import av  # pylint: disable=g-import-not-at-top

  frames, graph = [], None
  try:
    for packet in container.demux(stream):
      if packet.is_corrupt:
        problems.append(f"corrupt packet at {_seconds(packet, stream)}")
      try:
        decoded = packet.decode()
      except av.error.FFmpegError as e:
        problems.append(f"decoder error at {_seconds(packet, stream)}: {e.strerror}")
        continue
      for frame in decoded:
        graph = graph or _rgb_graph(stream, frame)
        graph.push(frame)
        _pull(graph, frames)
        yield from frames
        frames.clear()
  except av.error.FFmpegError as e:  # the demuxer itself failed (bytes cut inside a packet header, I/O error)
    problems.append(f"demuxer error: {e.strerror}")
  if graph is not None:
    graph.push(None)
    _pull(graph, frames)
    yield from frames


def _seconds(packet, stream):
  if packet.pts is None or stream.time_base is None:
    return "an unknown time"
  return f"{float(packet.pts * stream.time_base):.3f} s"


def _declared_frames(stream):
  """The number of frames the container declares for `stream`, or None when it declares neither a frame count
  nor a duration. The smaller of the two when both are known: an mp4 cut with an edit list keeps every sample
  (its frame count) but plays, and decodes, only the edited duration."""
  counts = [stream.frames] if stream.frames else []
  if stream.duration and stream.time_base and stream.average_rate:
    counts.append(round(float(stream.duration * stream.time_base * stream.average_rate)))
  return min(counts) if counts else None


def _read_av(source, name, on_damage):
  """Decodes with PyAV (FFmpeg's libraries) and checks the result against the container: decoder errors, corrupt
  packets or fewer frames than the stream declares mean a damaged or truncated file."""
  # The generator's checks run after its last frame, so nothing is returned from a file that fails them.
  return np.ascontiguousarray(np.stack(list(iter_av_frames(source, name, on_damage, threads=False))))


def iter_av_frames(source, name, on_damage="raise", threads=True):
  """Yields the frames of a video FFmpeg reads, one uint8 [H, W, 3] array at a time, as `read_video` would return
  them. The checks of `_read_av` run at the end, after the last frame: a damaged file raises VideoReadError (or
  warns) once its decodable frames have been yielded. `threads`: FFmpeg's frame and slice threads (same frames)."""
  import av  # pylint: disable=g-import-not-at-top

  _check_on_damage(on_damage)
  try:
    container = av.open(source)
  except (av.error.FFmpegError, UnicodeDecodeError) as e:
    raise VideoReadError(f"cannot open video {name!r}: {getattr(e, 'strerror', None) or e}") from None
  problems, count = [], 0
  with container:
    stream = container.streams.best("video")
    if stream is None:
      raise VideoReadError(f"FFmpeg finds no video stream in {name!r} (streams: "
                           f"{[s.type for s in container.streams] or 'none'})")
    if threads:
      stream.thread_type = "AUTO"
    size, declared = _stored_size(container), _declared_frames(stream)
    padded = None if size is None else (size[1] + size[1] % 2, size[0] + size[0] % 2)
    for frame in _decode(container, stream, problems):
      count += 1
      if padded is not None and frame.shape[:2] == padded:
        frame = np.ascontiguousarray(frame[:size[1], :size[0]])  # undo write_mp4's padding
      yield frame
  if not count:
    raise VideoReadError(f"video {name!r} has no decodable frames" + (f": {problems[0]}" if problems else ""))
  if declared is not None and count < declared:
    problems.insert(0, f"decoded {count} of the {declared} frames the container declares")
  if problems:
    message = (f"video {name!r} is damaged or truncated: {'; '.join(problems[:2])}"
               + (f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""))
    if on_damage == "raise":
      raise VideoReadError(message + "; pass on_damage='warn' to get the frames that decoded")
    warnings.warn(message, VideoDamageWarning, stacklevel=3)


def encode_video(video, fmt="mp4", fps=8):
  """uint8 `[T, H, W, 3]` -> the bytes of an .mp4 (`write_mp4`) or .gif (`write_gif`) file."""
  if fmt not in HTML_FORMATS:
    raise ValueError(f"fmt must be one of {HTML_FORMATS}, got {fmt!r}")
  with tempfile.TemporaryDirectory() as folder:
    path = write_video(os.path.join(folder, f"video.{fmt}"), video, fps=fps)
    with open(path, "rb") as f:
      return f.read()
