"""Pictures of videos for people: contact sheets, PNG images, and HTML players for notebooks.

`contact_sheet` lays videos out as rows of frames under their captions, `write_image` saves such a picture as PNG,
and `video_html` embeds videos (base64 mp4 or gif, with captions) in one HTML snippet:
`IPython.display.HTML(video_html(videos, captions))`. Files and codecs are in `vdm_jax.io.video`.
"""
import base64
import html
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vdm_jax.io.video import HTML_FORMATS, _extension, _make_parent, as_video, encode_video


def contact_sheet(videos, captions=None, ncols=1, frames=4, pad=2):
  """Lays videos out as one image: each video is a row of `frames` evenly spaced frames under its caption.

  Args:
    videos: uint8 `[B, T, H, W, 3]`, or a sequence of uint8 `[T, H, W, 3]` videos with the same H and W.
    captions: optional sequence of B strings, drawn above each video with PIL's default font (cut to fit).
    ncols: videos per row of the sheet.
    frames: frames shown per video (all of them when the video is shorter).
    pad: white pixels between tiles.

  Returns:
    uint8 `[H', W', 3]` image.
  """
  videos = [as_video(v, name=f"videos[{i}]") for i, v in enumerate(videos)]
  if not videos:
    raise ValueError("contact_sheet needs at least one video, got none")
  if len({v.shape[1:] for v in videos}) != 1:
    raise ValueError(f"contact_sheet needs videos of one frame size, got {sorted({v.shape[1:3] for v in videos})}")
  if captions is not None and len(captions) != len(videos):
    raise ValueError(f"got {len(captions)} captions for {len(videos)} videos")
  if ncols < 1 or frames < 1:
    raise ValueError(f"ncols and frames must be >= 1, got ncols={ncols}, frames={frames}")
  height, width = videos[0].shape[1:3]
  font = ImageFont.load_default()
  text_height = 0 if captions is None else font.getbbox("Ag")[3] + 2
  tile_w = frames * width + (frames - 1) * pad
  tile_h = text_height + height
  nrows = -(-len(videos) // ncols)
  sheet = Image.new("RGB", (ncols * tile_w + (ncols + 1) * pad, nrows * tile_h + (nrows + 1) * pad), "white")
  draw = ImageDraw.Draw(sheet)
  for i, video in enumerate(videos):
    x0 = pad + (i % ncols) * (tile_w + pad)
    y0 = pad + (i // ncols) * (tile_h + pad)
    if captions is not None:
      draw.text((x0, y0), _fit_text(str(captions[i]), font, tile_w), fill="black", font=font)
    indices = np.linspace(0, len(video) - 1, min(frames, len(video))).round().astype(int)
    for j, t in enumerate(indices):
      sheet.paste(Image.fromarray(video[t]), (x0 + j * (width + pad), y0 + text_height))
  return np.asarray(sheet)


def _fit_text(text, font, max_width):
  """Cuts `text` (adding '...') until it is at most `max_width` pixels wide."""
  if font.getlength(text) <= max_width:
    return text
  while text and font.getlength(text + "...") > max_width:
    text = text[:-1]
  return text + "..."


def write_image(path, image):
  """Writes uint8 `[H, W, 3]` (or `[H, W]`, `[H, W, 1]`) as a PNG. Creates parent folders. Returns `path`."""
  if _extension(path) != ".png":
    raise ValueError(f"write_image writes PNG only; {os.fspath(path)!r} does not end in '.png'")
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise ValueError(f"image must have shape [H, W, 3], [H, W, 1] or [H, W], got shape {image.shape}")
  image = as_video(image[None], name="image")[0]
  _make_parent(path)
  Image.fromarray(image).save(path, format="PNG")
  return path



def video_html(videos, captions=None, fps=8, scale=1, fmt="mp4"):
  """Videos as one HTML snippet for a notebook: a row of looping, autoplaying players with captions.

  Args:
    videos: uint8 `[B, T, H, W, 3]`, a sequence of uint8 `[T, H, W, 3]`, or one `[T, H, W, 3]` video.
    captions: optional sequence of B strings (HTML-escaped), shown under each video.
    fps: frames per second.
    scale: integer upscaling by pixel repetition (small clips, e.g. 32x32, stay sharp when shown larger).
    fmt: 'mp4' (H.264, small; a <video> element) or 'gif' (exact for few colours; an <img> element).

  Returns:
    an HTML string with the videos embedded as base64 data URLs (no files needed).
  """
  if isinstance(videos, np.ndarray) and videos.ndim == 4 and videos.shape[-1] == 3:
    videos = videos[None]
  videos = [as_video(v, name=f"videos[{i}]") for i, v in enumerate(videos)]
  if not videos:
    raise ValueError("video_html needs at least one video, got none")
  if captions is not None and len(captions) != len(videos):
    raise ValueError(f"got {len(captions)} captions for {len(videos)} videos")
  if fmt not in HTML_FORMATS:
    raise ValueError(f"fmt must be one of {HTML_FORMATS}, got {fmt!r}")
  if not isinstance(scale, int) or scale < 1:
    raise ValueError(f"scale must be an int >= 1, got {scale!r}")
  figures = []
  for i, video in enumerate(videos):
    if scale > 1:
      video = np.repeat(np.repeat(video, scale, axis=1), scale, axis=2)
    data = base64.b64encode(encode_video(video, fmt, fps)).decode("ascii")
    width = video.shape[2]
    if fmt == "mp4":
      player = (f'<video width="{width}" autoplay loop muted playsinline controls '
                f'src="data:video/mp4;base64,{data}"></video>')
    else:
      player = f'<img width="{width}" src="data:image/gif;base64,{data}"/>'
    caption = ""
    if captions is not None:
      caption = f'<figcaption style="max-width:{max(width, 96)}px">{html.escape(str(captions[i]))}</figcaption>'
    figures.append(f'<figure style="margin:4px;text-align:center">{player}{caption}</figure>')
  return f'<div style="display:flex;flex-wrap:wrap;align-items:flex-start">{"".join(figures)}</div>'
