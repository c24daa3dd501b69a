"""Curates a folder of videos into scored clips (docs/curation.md): `OUT/clips.jsonl` and `OUT/report.json`.

    python -m experiments.curate --input DIR --output OUT [--config configs/curate.py[:strict]] [--manifest M]

Captions come from a sidecar next to each video (`<stem>.txt`, or `<stem>.json` with "caption") or from
`--manifest` (a CSV with columns path, caption, or a JSONL of such objects; paths relative to DIR). Rerunning over
the same OUT continues where an interrupted run stopped; the result is the same as one uninterrupted run.
"""
import json

from absl import app, flags, logging
from ml_collections import config_flags

from vdm_jax.data.curation import curate

_INPUT = flags.DEFINE_string("input", None, "The folder of videos (searched recursively).")
_OUTPUT = flags.DEFINE_string("output", None, "Where clips.jsonl and report.json go.")
_MANIFEST = flags.DEFINE_string("manifest", None, "Captions for the whole folder (.csv or .jsonl).")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/curate.py", "Clip lengths and thresholds.")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  del argv
  report = curate.curate_folder(_INPUT.value, _OUTPUT.value, _CONFIG.value, manifest=_MANIFEST.value,
                                on_source=lambda source: logging.info("curating %s", source))
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
