"""Still images at the edges of the library: a PNG or JPEG file -> uint8 `[H, W, 3]` (image prompts)."""
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

READ_FORMATS = ("PNG", "JPEG")


def read_image(path) -> np.ndarray:
  """Reads a PNG or JPEG file into uint8 `[H, W, 3]` (RGB; a grey or palette image is converted, an alpha channel
  dropped). Raises FileNotFoundError if `path` does not exist and ValueError, naming the file, for other formats or
  bytes that are not an image."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no image file at {path!r}")
  try:
    with Image.open(path) as image:
      if image.format not in READ_FORMATS:
        raise ValueError(f"{path!r} is a {image.format} image; allowed formats: {list(READ_FORMATS)}.")
      return np.asarray(image.convert("RGB"), np.uint8)
  except UnidentifiedImageError:
    raise ValueError(f"{path!r} is not an image file (allowed formats: {list(READ_FORMATS)}).") from None
