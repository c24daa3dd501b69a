"""`curate.curate_folder` as an Apache Beam pipeline: one element per source, so the same code runs on the
DirectRunner with several local worker processes or on Dataflow, Flink or Spark.

    report = on_beam.curate_folder(input_dir, output_dir, config, runner="DirectRunner", options=["--direct_num_workers=2"])
    python -m experiments.curate --input DIR --output OUT --runner=DirectRunner --workers=2

Each worker curates its sources with `curate.curate_one` and writes their parts (`OUT/.parts/`); the driver then
assembles clips.jsonl and the reports with `curate.finish`. The output equals the single-process run's (same parts,
assembled in the sources' order), an interrupted run resumes the same way, and a source a worker did not finish is
never consumed: its part is written only when complete. `input_dir` and `output_dir` must be paths every worker
sees (local with the DirectRunner; a shared mount on a cluster).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import apache_beam as beam
import ml_collections
from apache_beam.options import pipeline_options

from vdm_jax.data.curation import curate


def direct_options(workers: int) -> list[str]:
  """DirectRunner options for `workers` local processes (0: one per CPU core)."""
  if workers < 0:
    raise ValueError(f"workers={workers}: must be >= 0 (0: one per CPU core).")
  return [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]


class _CurateOne(beam.DoFn):
  """Curates one source per element; the config travels as a plain dict (any runner can pickle it)."""

  def __init__(self, input_dir: str, output_dir: str, listed: dict[str, str] | None, config: dict[str, Any]):
    super().__init__()
    self._args = (input_dir, output_dir, listed, config)

  def process(self, source: str):
    input_dir, output_dir, listed, config = self._args
    curate.curate_one(input_dir, output_dir, source, listed, ml_collections.ConfigDict(config))
    yield source


def curate_folder(input_dir: str, output_dir: str, config, manifest: str | None = None,
                  runner: str = "DirectRunner", options: Sequence[str] = ()) -> dict[str, Any]:
  """`curate.curate_folder` run by Beam's `runner` with `options` (Beam's command-line options, e.g.
  `direct_options(2)` or `["--project=...", "--region=..."]`); returns the same report."""
  start_time = time.time()
  sources, todo, listed = curate.start(input_dir, output_dir, config, manifest)
  if todo:
    with beam.Pipeline(runner=runner, options=pipeline_options.PipelineOptions(list(options))) as p:
      _ = (p | "Sources" >> beam.Create(todo)
           | "Spread" >> beam.Reshuffle()  # one source per bundle: workers share the sources, not just the first
           | "Curate" >> beam.ParDo(_CurateOne(input_dir, output_dir, listed, config.to_dict())))
  return curate.finish(input_dir, output_dir, sources, time.time() - start_time, config)
