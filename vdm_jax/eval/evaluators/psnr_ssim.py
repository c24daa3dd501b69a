"""`psnr_ssim`: PSNR and SSIM (vdm_jax.eval.metrics, pixels in [-1, 1]) of the experiment's reconstructions of its
eval batches. Metrics `psnr`, `ssim`, `num_examples`."""
from __future__ import annotations

import numpy as np

from vdm_jax.eval import metrics
from vdm_jax.eval.evaluators import _videos

DEFAULTS = {"split": "validation", "num_examples": 64, "batch_size": 8, "ssim": True}
NEEDS = ("reconstruct_videos",)


def run(ctx, *, split, num_examples, batch_size, ssim) -> dict[str, float]:
  originals, recons, _ = _videos.reconstructions(ctx, split, num_examples, batch_size)
  if not originals:
    return {}
  out = {"psnr": float(np.mean(np.concatenate([metrics.psnr(r, o) for o, r in zip(originals, recons)]))),
         "num_examples": float(sum(len(o) for o in originals))}
  if ssim:
    out["ssim"] = float(np.mean(np.concatenate([metrics.ssim(r, o) for o, r in zip(originals, recons)])))
  return out
