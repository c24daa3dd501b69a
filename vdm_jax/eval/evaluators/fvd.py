"""`fvd`: Fréchet Video Distance on the Kinetics-400 I3D (vdm_jax.eval.fvd) between real clips A (records
0..n-1 of `split`, as stored) and the experiment's videos for clips B (records n..2n-1): samples for B's captions
with seeds from `seed` (a text-to-video model) or B's reconstructions (a VAE). Metric `fvd`; with
`reference_points`, also `fvd_floor` = FVD(A, B), what n clips can resolve, and for samples `fvd_reconstruction` =
FVD(A, B through the VAE), the best the latent space allows (docs/fvd.md).

`builder_config` reads another config of the dataset (e.g. the full-size '64x64x17' for a '64x64x17_small' run,
whose validation split is small); `batch_size` clips per reconstruction call, `i3d_batch_size` per I3D call (a
multiple of the mesh's data axis: the I3D batch is split over it)."""
from __future__ import annotations

import numpy as np

from vdm_jax import io
from vdm_jax.eval import fvd, fvd_report
from vdm_jax.eval.evaluators import _videos

DEFAULTS = {"source": "auto", "split": "validation", "num_clips": 64, "builder_config": "", "seed": 0,
            "reference_points": False, "batch_size": 8, "i3d_batch_size": 16}
NEEDS = (("generate_videos", "reconstruct_videos"),)


def _reconstruct(ctx, videos: np.ndarray, batch_size: int) -> np.ndarray:
  """uint8 clips through the experiment's `reconstruct`, `batch_size` at a time (the last batch padded)."""
  return io.to_uint8(fvd.map_batches(
      lambda batch: ctx.experiment.reconstruct_videos(ctx.params, batch.astype(np.float32) / 127.5 - 1.0), videos,
      batch_size))


def run(ctx, *, source, split, num_clips, builder_config, seed, reference_points, batch_size,
        i3d_batch_size) -> dict[str, float]:
  source = _videos.resolve_source(ctx, source, "fvd")
  real_a, _ = _videos.real_clips(ctx, split, 0, num_clips, builder_config)
  real_b, captions_b = _videos.real_clips(ctx, split, num_clips, num_clips, builder_config)
  reconstruct = lambda videos: _reconstruct(ctx, videos, batch_size)
  if source == "samples":
    generate = lambda: _videos.samples(ctx, captions_b, [seed + i for i in range(num_clips)])
  else:
    generate = lambda: reconstruct(real_b)
  if not reference_points:
    return {"fvd": fvd.fvd(real_a, generate(), i3d_batch_size, mesh=ctx.experiment.mesh)}
  can_reconstruct = source == "samples" and callable(getattr(ctx.experiment, "reconstruct_videos", None))
  result = fvd_report.reference_points(real_a, real_b, reconstruct=reconstruct if can_reconstruct else None,
                                       generate=generate, batch_size=i3d_batch_size, mesh=ctx.experiment.mesh)
  return {"fvd": result["fvd_samples"], **{k: result[k] for k in ("fvd_floor", "fvd_reconstruction") if k in result}}
