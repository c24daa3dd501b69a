"""`probe`: the Captioned Shapes probe's accuracy (`probe_color`, `probe_shape`, `probe_motion`, `probe_all`) on
the experiment's videos: samples for `probe_prompts` prompts with seeds from `probe_seed` (a text-to-video model),
or reconstructions of the eval batches with their captions (a VAE: the most a model drawing in its latent space can
score). `source`: 'auto' (samples where the experiment generates), 'samples' or 'reconstructions'. On other datasets
it reports nothing (the probe reads Captioned Shapes only)."""
from __future__ import annotations

from absl import logging

from vdm_jax.eval import probe
from vdm_jax.eval.evaluators import _videos

DEFAULTS = {"source": "auto", "split": "validation", "num_examples": 64, "batch_size": 8, "probe_prompts": 64,
            "probe_seed": 1000}
NEEDS = (("generate_videos", "reconstruct_videos"),)


def run(ctx, *, source, split, num_examples, batch_size, probe_prompts, probe_seed) -> dict[str, float]:
  if not _videos.on_shapes(ctx):
    logging.info("probe: skipped, the dataset is not Captioned Shapes.")
    return {}
  if _videos.resolve_source(ctx, source, "probe") == "samples" and probe_prompts <= 0:
    return {}
  videos, captions = _videos.videos(ctx, source, "probe", split=split, num_examples=num_examples,
                                    batch_size=batch_size, probe_prompts=probe_prompts, probe_seed=probe_seed)
  if not len(videos):
    return {}
  scores = probe.score(videos, captions)
  return {f"probe_{k}": v for k, v in scores.items() if k != "num_videos"}
