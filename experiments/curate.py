"""Curates a folder of videos into scored clips (docs/curation.md): `OUT/clips.jsonl` and `OUT/report.json`, then
optionally builds the `video_folder` training dataset of the kept clips.

    python -m experiments.curate --input DIR --output OUT [--config configs/curate.py[:strict]] [--manifest M]
    python -m experiments.curate --input DIR --output OUT --build=64x64x17 --build=64x64x17_8fps
    python -m experiments.curate --input DIR --output OUT --runner=DirectRunner --workers=2 --build=64x64x17
    python -m experiments.curate ... --runner=DataflowRunner --beam_option=--project=P --beam_option=--region=R

Captions come from a sidecar next to each video (`<stem>.txt`, or `<stem>.json` with "caption") or from
`--manifest` (a CSV with columns path, caption, or a JSONL of such objects; paths relative to DIR). Rerunning over
the same OUT continues where an interrupted run stopped; the result is the same as one uninterrupted run.
`--runner` runs the curation and the dataset builds as Apache Beam pipelines (one element per source) instead of in
this process; the output is the same.
"""
import json

from absl import app, flags, logging
from ml_collections import config_flags

from vdm_jax.data.curation import curate

_INPUT = flags.DEFINE_string("input", None, "The folder of videos (searched recursively).")
_OUTPUT = flags.DEFINE_string("output", None, "Where clips.jsonl and report.json go.")
_MANIFEST = flags.DEFINE_string("manifest", None, "Captions for the whole folder (.csv or .jsonl).")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/curate.py", "Clip lengths and thresholds.")
_BUILD = flags.DEFINE_multi_string("build", [], "Builds the video_folder dataset at this spec (HxWxT[_Nfps]) "
                                   "under OUT/tfds after curating; repeat for several.")
_RUNNER = flags.DEFINE_string("runner", "", "An Apache Beam runner (DirectRunner, DataflowRunner, FlinkRunner, "
                              "SparkRunner, ...) to run on; '' runs in this process.")
_WORKERS = flags.DEFINE_integer("workers", 2, "DirectRunner worker processes (0: one per CPU core).")
_BEAM_OPTIONS = flags.DEFINE_multi_string("beam_option", [], "A Beam pipeline option, e.g. --beam_option=--project=P.")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  del argv
  options = list(_BEAM_OPTIONS.value)
  if _RUNNER.value:
    from vdm_jax.data.curation import on_beam  # pylint: disable=g-import-not-at-top  (apache-beam is optional)
    if _RUNNER.value == "DirectRunner":
      options = on_beam.direct_options(_WORKERS.value) + options
    report = on_beam.curate_folder(_INPUT.value, _OUTPUT.value, _CONFIG.value, manifest=_MANIFEST.value,
                                   runner=_RUNNER.value, options=options)
  else:
    report = curate.curate_folder(_INPUT.value, _OUTPUT.value, _CONFIG.value, manifest=_MANIFEST.value,
                                  on_source=lambda source: logging.info("curating %s", source))
  print(json.dumps(report, indent=1))
  if _BUILD.value:
    from vdm_jax.data import video_folder  # pylint: disable=g-import-not-at-top  (tfds: seconds to import)
  for spec in _BUILD.value:
    built = video_folder.build(_OUTPUT.value, spec, beam_runner=_RUNNER.value, beam_options=options)
    counts = {split: info.num_examples for split, info in built.info.splits.items()}
    print(json.dumps({"dataset": f"video_folder/{built.builder_config.name}", "data_dir": built.data_dir,
                      "examples": counts}))


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
