"""Captions from a local image-to-text model: a transformers folder the user has on disk (BLIP, GIT, ...), read
with `local_files_only` and safetensors only (nothing is downloaded, no pickle, no remote code).

    captioner = ModelCaptioner("/models/blip-image-captioning-base")
    captions = captioner(frames)   # uint8 [T, H, W, 3] -> one caption per frame of `num_captions` spread over it

Stable Video Diffusion writes three captions per clip; here `num_captions` frames spread over the clip (first,
middle, last for 3) are captioned greedily in one batch. The curation (`config.captioner.model`) stores them as a
clip's `captions` and the middle one as its `caption` when the clip has no sidecar or manifest caption. Needs torch
and transformers (`pip install torch==2.13.0 transformers`), imported only when a model is named.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from vdm_jax.data.curation import motion


class ModelCaptioner:
  """Greedy captions of a few frames of a clip from the image-to-text model in `folder`."""

  def __init__(self, folder: str, num_captions: int = 3, max_new_tokens: int = 30):
    if not os.path.isfile(os.path.join(folder, "config.json")):
      raise FileNotFoundError(f"captioner.model={folder!r} is not a transformers model folder (no config.json): "
                              "save one with `save_pretrained`; nothing is downloaded.")
    if num_captions < 1 or max_new_tokens < 1:
      raise ValueError(f"num_captions={num_captions}, max_new_tokens={max_new_tokens}: both must be >= 1.")
    try:
      import torch  # pylint: disable=g-import-not-at-top
      import transformers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("Captioning with a model needs torch and transformers: pip install torch==2.13.0 "
                        "transformers") from e
    self._torch = torch
    self.processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    self.model = transformers.AutoModelForImageTextToText.from_pretrained(
        folder, local_files_only=True, use_safetensors=True).eval()
    self.num_captions = num_captions
    self.max_new_tokens = max_new_tokens

  def __call__(self, frames: np.ndarray) -> list[str]:
    """Captions of `num_captions` frames spread over `frames` (uint8 [T, H, W, 3]), in frame order."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
      raise ValueError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [T, H, W, 3], T >= 1.")
    images = [frames[t] for t in motion.pair_indices(len(frames), self.num_captions, gap=0)]
    inputs = self.processor(images=images, return_tensors="pt")
    with self._torch.no_grad():
      ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
    return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


@functools.lru_cache(maxsize=2)
def cached(folder: str, num_captions: int, max_new_tokens: int) -> ModelCaptioner:
  """One loaded model per process and setting (a curation calls it for every clip; Beam workers each load once)."""
  return ModelCaptioner(folder, num_captions, max_new_tokens)
