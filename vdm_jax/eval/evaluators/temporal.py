"""`temporal`: flicker and warping error (vdm_jax.eval.temporal, Farneback flow) of the experiment's videos, and on
Captioned Shapes the probe's per-frame consistency. Videos as for `probe`: samples for `probe_prompts` prompts
(seeds from `probe_seed`), or reconstructions of the eval batches. Metrics `flicker`, `warping_error`,
`probe_consistency`."""
from __future__ import annotations

from vdm_jax.eval import temporal
from vdm_jax.eval.evaluators import _videos

DEFAULTS = {"source": "auto", "split": "validation", "num_examples": 64, "batch_size": 8, "probe_prompts": 64,
            "probe_seed": 1000}
NEEDS = (("generate_videos", "reconstruct_videos"),)


def run(ctx, *, source, split, num_examples, batch_size, probe_prompts, probe_seed) -> dict[str, float]:
  videos, _ = _videos.videos(ctx, source, "temporal", split=split, num_examples=num_examples,
                             batch_size=batch_size, probe_prompts=probe_prompts, probe_seed=probe_seed)
  return temporal.metrics(videos, shapes=_videos.on_shapes(ctx)) if len(videos) else {}
