"""Scores a t2v run trained with frame conditions on every task of image and video prompts, on new clips.

    python -m experiments.eval_tasks --workdir /tmp/quickstart/t2v --num 64 --out /tmp/tasks.json

Renders `--num` Captioned Shapes clips per task from seeds no split uses (`--seed_base`, default 5e9), runs
image-to-video, interpolation, extension forward and backward, video-to-video (SDEdit) and text-to-video with the
run's sampling settings, and writes the scores (`vdm_jax.eval.tasks`) as JSON and prints them.

`--through=cli` (default) runs each task as a user would: the given frames are written as PNG (images) and exact
.npy (videos) under `W/eval/tasks/<task>/inputs`, one `python -m experiments.sample` command per task generates
from them (`--image`/`--last_image`/`--video` once per `--prompt`; every video from `--seed`'s noise, as the
command does for one sample per prompt), and its `.npy` outputs are scored. `--through=pipeline` calls the
pipeline in this process instead, each clip's video from its own seed.
"""
import json
import os
import subprocess
import sys

from absl import app, flags, logging
import numpy as np

from vdm_jax import io
from vdm_jax.eval import tasks as tasks_lib
from vdm_jax.pipelines import t2v, t2v_config
from vdm_jax.train import loop, metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "A t2v run trained with frame conditions.")
_NUM = flags.DEFINE_integer("num", 64, "Clips per task.", lower_bound=1)
_SEED_BASE = flags.DEFINE_integer("seed_base", 5_000_000_000, "The first clip's seed (the splits use seeds below "
                                  "3e9).")
_TASKS = flags.DEFINE_list("tasks", list(tasks_lib.TASKS), f"Tasks to score, of {list(tasks_lib.TASKS)}.")
_EXTEND = flags.DEFINE_integer("extend_frames", None, "Latent frames given to the extension tasks (default: the "
                               "run's diffusion.condition.extend_frames).", lower_bound=1)
_STRENGTH = flags.DEFINE_float("strength", 0.7, "SDEdit strength of the v2v task.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Videos generated at once.")
_THROUGH = flags.DEFINE_enum("through", "cli", ["cli", "pipeline"], "Generate with the experiments.sample command "
                             "line or the pipeline in this process.")
_SEED = flags.DEFINE_integer("seed", 0, "--through=cli: the sample command's --seed.")
_OUT = flags.DEFINE_string("out", None, "The JSON report (default: W/eval/tasks.json).")
flags.mark_flags_as_required(["workdir"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample_command(workdir: str, inputs: tasks_lib.TaskSet, folder: str, num_frames: int, strength: float,
                   batch_size: int, seed: int) -> list[str]:
  """The experiments.sample command that runs `inputs` from files it writes under `folder`/inputs, into
  `folder`/videos."""
  given = os.path.join(folder, "inputs")
  os.makedirs(given, exist_ok=True)
  cmd = [sys.executable, "-m", "experiments.sample", f"--workdir={workdir}", f"--out={folder}/videos",
         f"--seed={seed}", f"--batch_size={batch_size}", "--overwrite"]
  for i, prompt in enumerate(inputs.prompts):
    cmd.append(f"--prompt={prompt}")
    if inputs.task in ("i2v", "interpolate"):
      io.write_image(os.path.join(given, f"{i:03d}_first.png"), inputs.frames[i, 0])
      cmd.append(f"--image={given}/{i:03d}_first.png")
    if inputs.task == "interpolate":
      io.write_image(os.path.join(given, f"{i:03d}_last.png"), inputs.last_frames[i, 0])
      cmd.append(f"--last_image={given}/{i:03d}_last.png")
    if inputs.task in ("extend", "extend_backward", "v2v"):
      np.save(os.path.join(given, f"{i:03d}.npy"), inputs.frames[i])
      cmd.append(f"--video={given}/{i:03d}.npy")
  if inputs.task in ("extend", "extend_backward", "v2v"):
    cmd += [f"--task={inputs.task}", f"--num_frames={num_frames}", f"--strength={strength}"]
  return cmd


def run_cli(workdir: str, inputs: tasks_lib.TaskSet, folder: str, num_frames: int, strength: float,
            batch_size: int, seed: int) -> np.ndarray:
  """Generates `inputs` with the sample command: uint8 [num, T, H, W, 3] in the order of the prompts."""
  cmd = sample_command(workdir, inputs, folder, num_frames, strength, batch_size, seed)
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"experiments.sample failed on task {inputs.task} ({result.returncode}):\n"
                       f"{result.stderr[-3000:]}")
  with open(os.path.join(folder, "videos", "samples.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  if len(rows) != len(inputs.prompts) or [r["prompt"] for r in rows] != inputs.prompts:
    raise RuntimeError(f"{folder}/videos/samples.jsonl does not list the {len(inputs.prompts)} prompts in order.")
  return np.stack([np.load(r["npy"]) for r in rows])


def main(argv):
  del argv
  metrics.quiet_library_logs()
  workdir = os.path.abspath(_WORKDIR.value)
  config = loop.load_config_json(workdir)
  pipe = t2v.TextToVideoPipeline.from_workdir(workdir)
  if not pipe.conditioned:
    raise app.UsageError(f"--workdir {workdir!r} was trained for text-to-video only (its "
                         "diffusion.condition.mix is t2v).")
  unknown = sorted(set(_TASKS.value) - set(tasks_lib.TASKS))
  if unknown:
    raise app.UsageError(f"--tasks {unknown}: allowed {list(tasks_lib.TASKS)}.")
  extend_frames = _EXTEND.value or config.diffusion.condition.extend_frames
  through_cli = None
  if _THROUGH.value == "cli":
    through_cli = lambda inputs, frames: run_cli(workdir, inputs, os.path.join(workdir, "eval", "tasks", inputs.task),
                                                 frames, _STRENGTH.value, _BATCH.value, _SEED.value)
  report = tasks_lib.evaluate_tasks(pipe, num=_NUM.value, seed_base=_SEED_BASE.value, tasks=_TASKS.value,
                                    extend_frames=extend_frames, strength=_STRENGTH.value, generate=through_cli,
                                    **t2v_config.sample_kwargs(config, batch_size=_BATCH.value))
  for task, scores in report.items():
    logging.info("%s: %s", task, " ".join(f"{k}={v:.4g}" for k, v in scores.items()))
  out = _OUT.value or os.path.join(workdir, "eval", "tasks.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"workdir": workdir, "num": _NUM.value, "seed_base": _SEED_BASE.value, "through": _THROUGH.value,
               "extend_frames": extend_frames, "strength": _STRENGTH.value, "tasks": report}, f, indent=1)
  logging.info("Wrote %s", out)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
