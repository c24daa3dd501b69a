"""Scores a t2v run trained with frame conditions on every task of image and video prompts, on new clips.

    python -m experiments.eval_tasks --workdir /tmp/quickstart/t2v --num 64 --out /tmp/tasks.json

Renders `--num` Captioned Shapes clips per task from seeds no split uses (`--seed_base`, default 5e9), runs
image-to-video, interpolation, extension forward and backward, video-to-video (SDEdit) and text-to-video through the
run's pipeline with its sampling settings, and writes the scores (`vdm_jax.eval.tasks`) as JSON and prints them.
"""
import json
import os

from absl import app, flags, logging

from vdm_jax.eval import tasks as tasks_lib
from vdm_jax.pipelines import t2v
from vdm_jax.train import loop, metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "A t2v run trained with frame conditions.")
_NUM = flags.DEFINE_integer("num", 64, "Clips per task.", lower_bound=1)
_SEED_BASE = flags.DEFINE_integer("seed_base", 5_000_000_000, "The first clip's seed (the splits use seeds below "
                                  "3e9).")
_TASKS = flags.DEFINE_list("tasks", list(tasks_lib.TASKS), f"Tasks to score, of {list(tasks_lib.TASKS)}.")
_EXTEND = flags.DEFINE_integer("extend_frames", 3, "Latent frames given to the extension tasks (9 pixel frames at "
                               "r = 4).", lower_bound=1)
_STRENGTH = flags.DEFINE_float("strength", 0.7, "SDEdit strength of the v2v task.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Videos generated at once.")
_OUT = flags.DEFINE_string("out", None, "The JSON report (default: W/eval/tasks.json).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  metrics.quiet_library_logs()
  config = loop.load_config_json(_WORKDIR.value)
  pipe = t2v.TextToVideoPipeline.from_workdir(_WORKDIR.value)
  if not pipe.conditioned:
    raise app.UsageError(f"--workdir {_WORKDIR.value!r} was trained for text-to-video only (its "
                         "diffusion.condition.mix is t2v).")
  s = config.sample
  report = tasks_lib.evaluate_tasks(
      pipe, num=_NUM.value, seed_base=_SEED_BASE.value, tasks=_TASKS.value, extend_frames=_EXTEND.value,
      strength=_STRENGTH.value, sampler=s.sampler, num_steps=s.num_steps, guidance_scale=s.guidance_scale,
      use_dynamic_cfg=s.use_dynamic_cfg, guidance_rescale=s.get("guidance_rescale", 0.0), batch_size=_BATCH.value)
  out = _OUT.value or os.path.join(_WORKDIR.value, "eval", "tasks.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"workdir": _WORKDIR.value, "num": _NUM.value, "seed_base": _SEED_BASE.value, "tasks": report}, f,
              indent=1)
  for task, scores in report.items():
    logging.info("%s: %s", task, " ".join(f"{k}={v:.4g}" for k, v in scores.items()))
  logging.info("Wrote %s", out)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
