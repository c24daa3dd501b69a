"""The Captioned Shapes probe reads real clips back and rejects videos that are not one object."""
import numpy as np
import pytest

from vdm_jax.data import shapes
from vdm_jax.eval import probe


@pytest.fixture(scope="module")
def clips():
  return [shapes.render_clip(seed) for seed in range(300)]


def _square_video(color=(230, 25, 75), boxes=((20, 30, 20, 30),), num_frames=5, size=64):
  video = np.zeros((num_frames, size, size, 3), np.uint8)
  for row0, row1, col0, col1 in boxes:
    video[:, row0:row1, col0:col1] = color
  return video


def test_probe_reads_real_clips(clips):
  targets = [{key: clip[key] for key in ("color", "shape", "motion")} for clip in clips]
  result = probe.score([clip["video"] for clip in clips], targets)
  assert result["num_videos"] == 300
  for key in ("color", "shape", "motion", "all"):
    assert result[key] >= 0.99, result


def test_score_accepts_prompts_and_a_batched_array(clips):
  videos = np.stack([clip["video"] for clip in clips[:20]])  # [N, T, H, W, 3]
  result = probe.score(videos, [clip["caption"] for clip in clips[:20]])
  assert result["all"] == 1.0
  wrong = probe.score(videos, ["a " + ("blue" if c["color"] != "blue" else "red") + " blob" for c in clips[:20]])
  assert wrong == dict(color=0.0, shape=0.0, motion=0.0, all=0.0, num_videos=20)


def test_probe_reads_small_clips_motion_and_color():
  # At 32 px the still threshold scales to 1 px; shape is spec'd at 64 px (fill ratios blur at low resolution).
  clips = [shapes.render_clip(seed, 9, 32, 32) for seed in range(100)]
  result = probe.score([c["video"] for c in clips], clips)
  assert result["color"] >= 0.99 and result["motion"] >= 0.99 and result["shape"] >= 0.9


def test_synthetic_square():
  assert probe.read(_square_video()) == dict(color="red", shape="square", motion="still")


def test_rejects_float_videos():
  with pytest.raises(ValueError, match="uint8"):
    probe.read(np.zeros((2, 8, 8, 3), np.float32))


def test_empty_video_is_wrong_on_every_attribute():
  empty = np.zeros((17, 64, 64, 3), np.uint8)
  assert probe.read(empty) == dict(color=None, shape=None, motion=None)
  dim = np.full((17, 64, 64, 3), 30, np.uint8)  # below the foreground threshold of 40
  assert probe.read(dim) == dict(color=None, shape=None, motion=None)
  assert probe.score([empty], ["a red square standing still"])["all"] == 0.0


def test_two_blobs_are_wrong_on_every_attribute():
  two = _square_video(boxes=((5, 15, 5, 15), (40, 50, 40, 50)))
  assert probe.read(two) == dict(color=None, shape=None, motion=None)
  result = probe.score([two], [dict(color="red", shape="square", motion="still")])
  assert result == dict(color=0.0, shape=0.0, motion=0.0, all=0.0, num_videos=1)
  # Two real clips side by side: each object stays inside its own half, so they never touch.
  clips = [shapes.render_clip(seed, 17, 32, 32) for seed in (0, 1)]
  left, right = (clip["video"] for clip in clips)
  both = np.concatenate([left, right], axis=2)  # [17, 32, 64, 3]
  assert [probe.read(video)["color"] for video in (left, right)] == [clip["color"] for clip in clips]  # each alone
  assert probe.read(both) == dict(color=None, shape=None, motion=None)


def test_specks_are_ignored_and_object_missing_in_one_frame_is_wrong():
  video = _square_video(color=(0, 130, 200))
  video[:, 60, 60] = 255  # a 1-pixel speck is not a meaningful blob
  assert probe.read(video) == dict(color="blue", shape="square", motion="still")
  video[2] = 0
  assert probe.read(video)["shape"] is None


def test_motion_threshold_scales_with_resolution():
  still = np.zeros((3, 64, 64, 3), np.uint8)
  for frame, shift in enumerate((0, 1, 1)):  # 1 px < 2 px at 64 px: still
    still[frame, 20:30, 20 + shift:30 + shift] = 255
  assert probe.read(still)["motion"] == "still"
  moved = still.copy()
  moved[2] = 0
  moved[2, 20:30, 23:33] = 255  # 3 px right
  assert probe.read(moved)["motion"] == "right"
  small = moved[:, ::2, ::2]  # 1.5 px at 32 px, threshold 1 px
  assert probe.read(small)["motion"] == "right"


def test_diagnose_counts_unreadable_videos_confusions_and_fills():
  square = _square_video(boxes=((20, 30, 20, 30),))
  two = _square_video(boxes=((5, 15, 5, 15), (40, 50, 40, 50)))
  empty = np.zeros_like(square)
  rounded = square.copy()  # a "square" with its four corners cut off: fill 84/100, reads as a circle
  for r, c in ((20, 20), (20, 29), (29, 20), (29, 29)):
    rounded[:, max(r - 1, 20):min(r + 2, 30), max(c - 1, 20):min(c + 2, 30)] = 0
    rounded[:, r, c] = 0
  target = {"color": "red", "shape": "square", "motion": "still"}
  out = probe.diagnose([square, two, empty, rounded], [target] * 4)
  assert out["num_videos"] == 4
  assert out["unreadable"] == {"no_object": 1, "several_objects": 1}
  assert out["confusion"]["shape"] == {"square": {"square": 1, "circle": 1}}
  assert out["confusion"]["color"] == {"red": {"red": 2}} and out["confusion"]["motion"] == {"still": {"still": 2}}
  low, mid, high = out["shape_fill"]["square"]
  assert low < 0.893 < high and low <= mid <= high  # the cut square reads below the square/circle cut
  assert out["shape_fill_cuts"] == [0.643, 0.893]
  # the breakdown is consistent with score(): readable and matched = the score
  assert probe.score([square, two, empty, rounded], [target] * 4)["shape"] == 0.25
