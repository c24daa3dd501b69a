"""The whole system on the built-in data, in one command: VAE -> text-to-video DiT -> samples -> probe scores.

    python -m experiments.quickstart --workdir /tmp/quickstart

1. trains the tiny VAE on Captioned Shapes 64x64x17 (`configs/vae.py` in `W/vae`; reused if it has finished),
2. trains the tiny text-to-video model on its latents with the frame-condition mix, so the same model also takes
   image and video prompts (`configs/t2v.py:conditions=all`, with `dtype=bfloat16` on a CPU with AMX; in `W/t2v`,
   resumed if interrupted; `--conditions=none` trains text-to-video only),
3. samples prompts it never sampled during training (new seeds), scores them with the probe, and scores each image
   and video prompt task on clips rendered from new seeds (`vdm_jax.eval.tasks`),
4. writes `W/videos/*.mp4`, `W/contact_sheet.png`, `W/tasks_contact_sheet.png`, `W/loss_curves.png` and
   `W/report.json`.
`--profile` also traces a few steps of each training stage and puts where their time goes in the report.
`--preset=sizes` trains one text-to-video model on several sizes and durations at once (`configs/t2v.py:sizes=mixed`,
text-to-video only) and scores it at each of SIZES (64 new prompts each), with a contact sheet per size.
`--preset=sizes_staged` trains the same model in SVD's stages instead (`configs/t2v.py:sizes=mixed,stage=1|2|3`:
images, low-resolution video, then the full sizes; `W/t2v_stage1`, `W/t2v_stage2`, then `W/t2v`), each stage starting
from the previous one's parameters, and scores it the same way.

The recipes, budgets and dtypes are the configs' defaults (docs/recipes.md has their results); this file only runs
the stages. Every stage is an ordinary run, so rerunning the command after an interruption continues where it
stopped. `--preset=runlocal` trains the configs' `runlocal` variants, for tests.
"""
import json
import os
import sys
import time

from absl import app, flags, logging
import jax

from configs import t2v as t2v_configs
from configs import vae as vae_configs
from experiments import job_clock
from vdm_jax import io, xla_cpu
from vdm_jax import runs as runs_lib
from vdm_jax.data import buckets
from vdm_jax.eval import fvd_report, probe
from vdm_jax.eval import tasks as tasks_lib
from vdm_jax.pipelines import t2v_config as t2v_inference
from vdm_jax.pipelines.latents import LatentSpace
from vdm_jax.pipelines.t2v import TextToVideoPipeline
from vdm_jax.train import loop, metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "Where everything goes.")
_PRESET = flags.DEFINE_enum("preset", "default", ["default", "runlocal", "sizes", "sizes_runlocal", "sizes_staged",
                                                "sizes_staged_runlocal"],
                            "'sizes': one model for several sizes (configs/t2v.py:sizes=mixed); 'sizes_staged': the "
                            "same model trained in stages (images, low-resolution video, full sizes); '*runlocal': "
                            "tiny, for tests.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data_dir for Captioned Shapes ('' = tfds' default).")
_VAE_STEPS = flags.DEFINE_integer("vae_steps", None, "Override the VAE's training steps.")
_T2V_STEPS = flags.DEFINE_integer("t2v_steps", None, "Override the text-to-video model's training steps.")
_NUM_PROBE = flags.DEFINE_integer("num_probe", None, "Videos to score with the probe (default 96; runlocal 4).")
_DIT_DTYPE = flags.DEFINE_enum(
    "dit_dtype", "auto", ["auto", "float32", "bfloat16"],
    "The text-to-video model's compute dtype (parameters stay float32). 'auto': bfloat16, with more steps for the "
    "same minutes, on a CPU with AMX (vdm_jax.xla_cpu.has_amx_bf16), else float32; runlocal: float32.")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Trace 5 steps of each training stage (after 20 warm ones) into W/<stage>/profile and add "
    "their breakdown by XLA operation to report.json (docs/cpu_profile.md reads them).")
_CONDITIONS = flags.DEFINE_enum(
    "conditions", "all", ["all", "none"], "'all': the DiT trains with the frame-condition mix "
    "(configs/t2v.py:conditions=all) and the report scores every image and video prompt task; 'none': "
    "text-to-video only.")
_NUM_TASK_VIDEOS = flags.DEFINE_integer("num_task_videos", None, "Videos per image/video prompt task in the report "
                                        "(default 16; runlocal 2).")
_FVD = flags.DEFINE_integer("fvd", 0, "> 0: also FVD of this many samples beside its floor and the VAE's "
                            "reconstructions, against validation clips (docs/fvd.md; 256 take about 15 minutes).")
PROBE_SEED = 10_000  # probe videos use seeds far from anything sampled during training
_PROBE_SEED = flags.DEFINE_integer("probe_seed", PROBE_SEED, "The first probe video's seed; on a finished workdir, "
                                   "another value rescores the same models on new seeds (report.json is "
                                   "rewritten).", lower_bound=0)
flags.mark_flags_as_required(["workdir"])

# By preset; a `*_staged*` preset is scored as the same preset without `_staged` (scored_as).
NUM_PROBE = {"default": 96, "runlocal": 4, "sizes": 64, "sizes_runlocal": 2}  # sizes: per size
NUM_TASK_VIDEOS = {"default": 16, "runlocal": 2, "sizes": 0, "sizes_runlocal": 0}
# (height, width, frames) the sizes preset scores: three aspect ratios, and twice the frames.
SIZES = {"sizes": ((64, 64, 17), (48, 80, 17), (80, 48, 17), (64, 64, 33)),
         "sizes_runlocal": ((32, 32, 9), (16, 48, 9), (32, 32, 5))}
STAGES = ("1", "2", "3")  # a staged preset's DiT runs: configs/t2v.py's stage=
TASKS = ("i2v", "interpolate", "extend", "extend_backward", "v2v")  # text-to-video is the probe set's


def vae_config(preset: str, data_dir: str = "", steps: int | None = None):
  """The VAE stage's config: configs/vae.py's default recipe (`runlocal` for the runlocal preset)."""
  c = vae_configs.get_config("runlocal" if preset.endswith("runlocal") else "")
  if steps:
    c.train.steps = steps
  c.input.data_dir = data_dir
  return c


def t2v_config(preset: str, dtype: str, vae_dir: str, data_dir: str = "", steps: int | None = None,
               conditions: str = "all", stage: str = ""):
  """The text-to-video stage's config: configs/t2v.py's default recipe at the DiT's compute dtype, on `vae_dir`,
  with the frame-condition mix unless `conditions` is 'none'; `stage`: one of a staged preset's stages."""
  arg = ("runlocal," if preset.endswith("runlocal") else "") + f"dtype={dtype}"
  if preset.startswith("sizes"):
    arg += ",sizes=mixed"  # text-to-video only: its image-free buckets would take the mix, but it is not scored
    arg += f",stage={stage}" if stage else ""
  elif conditions == "all":
    arg += ",conditions=all"
  c = t2v_configs.get_config(arg)
  if steps:
    c.train.steps = steps
  c.input.data_dir = data_dir
  c.vae.workdir = vae_dir
  c.eval.probe_prompts = 0  # the quickstart scores its own, larger set after training
  return c


def scored_as(preset: str) -> str:
  """The preset whose probe set, task videos and sizes `preset` is scored with (a staged preset: its single-stage
  one)."""
  return preset.replace("_staged", "")


def t2v_stages(preset: str, dtype: str, vae_dir: str, t2v_dir: str, data_dir: str = "",
               steps: int | None = None, conditions: str = "all") -> list[tuple[str, str, object]]:
  """(job clock stage, workdir, config) of each text-to-video training run in order: one, in `t2v_dir`, or a
  staged preset's stages, each from the previous one's parameters, the last in `t2v_dir`."""
  if "_staged" not in preset:
    return [("t2v", t2v_dir, t2v_config(preset, dtype, vae_dir, data_dir, steps, conditions))]
  if steps:
    raise ValueError(f"--t2v_steps={steps}: the {preset} preset trains each stage for its own steps "
                     "(configs/t2v.py's STAGE_STEPS); leave --t2v_steps out.")
  runs, previous = [], ""
  for stage in STAGES:
    last = stage == STAGES[-1]
    workdir = t2v_dir if last else f"{t2v_dir}_stage{stage}"
    config = t2v_config(preset, dtype, vae_dir, data_dir, None, conditions, stage=stage)
    config.init_from = previous
    runs.append(("t2v" if last else f"t2v_stage{stage}", workdir, config))
    previous = workdir
  return runs


def profile(config, preset: str):
  """`config` with its training stage's profile on: 5 steps after 20 (runlocal: 2 after 1)."""
  config.train.profile_steps, config.train.profile_start = (2, 1) if preset == "runlocal" else (5, 20)
  return config


def profile_report(workdirs: dict[str, str], top: int = 10) -> dict:
  """Each training stage's trace summary (`vdm_jax.train.profiler`), its `top` operations only; a stage that
  recorded none (reused from an earlier run) is left out."""
  report = {}
  for name, workdir in workdirs.items():
    path = os.path.join(workdir, "profile", "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        summary = json.load(f)
      report[name] = {**summary, "top_ops": summary["top_ops"][:top]}
  return report


def dit_dtype(choice: str, preset: str) -> str:
  """--dit_dtype with 'auto' resolved: bfloat16 for the default preset on a CPU with AMX, else float32."""
  if choice != "auto":
    return choice
  on_amx = jax.default_backend() == "cpu" and xla_cpu.has_amx_bf16()
  return "bfloat16" if preset == "default" and on_amx else "float32"


def probe_set(n: int, seed: int = PROBE_SEED) -> tuple[list[str], list[int]]:
  """The n prompts the quickstart scores (cycling over every color, shape and motion) and their seeds."""
  return probe.prompts(n), [seed + i for i in range(n)]


sample_kwargs = t2v_inference.sample_kwargs  # the notebook samples with the quickstart's settings through this name


def clock_for(vae_steps: int, t2v_steps: dict[str, int], num_probe: int) -> job_clock.JobClock:
  """The job's clock, with the stage times expected on this kind of CPU (with AMX bfloat16 tiles or without);
  `t2v_steps`: each DiT stage's steps, by its clock stage ('t2v' the last); `num_probe`: every video the last stage
  generates."""
  amx = jax.default_backend() == "cpu" and xla_cpu.has_amx_bf16()
  return job_clock.JobClock({"vae": vae_steps, **t2v_steps, "sample": num_probe}, "amx" if amx else "no_amx")


def _vae_config():
  return vae_config(_PRESET.value, _DATA_DIR.value, _VAE_STEPS.value)


def _t2v_stages(vae_dir, t2v_dir):
  dtype = dit_dtype(_DIT_DTYPE.value, _PRESET.value)
  try:
    return t2v_stages(_PRESET.value, dtype, vae_dir, t2v_dir, _DATA_DIR.value, _T2V_STEPS.value, _CONDITIONS.value)
  except ValueError as e:  # a flag that does not fit the preset: say so before anything trains
    raise app.UsageError(str(e)) from e


def load_pipeline(t2v_dir: str):
  """(pipeline, DiT step, VAE identity) of the trained t2v run: the report names the checkpoints it sampled."""
  config = buckets.one_size(runs_lib.read_config(t2v_dir, t2v_inference.inference_defaults()))
  params, step = runs_lib.load_params(t2v_dir)
  space = LatentSpace(config, t2v_dir)
  return TextToVideoPipeline.from_config(config, params, t2v_dir, space=space), step, space.vae_identity()


def task_report(pipe, config, num: int, workdir: str) -> dict:
  """Scores of every image and video prompt task on `num` new clips each, and `W/tasks_contact_sheet.png` with two
  videos per task."""
  samples = {}
  report = tasks_lib.evaluate_tasks(pipe, num=num, tasks=TASKS, samples=samples,
                                    extend_frames=config.diffusion.condition.extend_frames, **sample_kwargs(config))
  videos, captions = [], []
  for task, (prompts, out) in samples.items():
    videos += list(out[:2])
    captions += [f"{task}: {p}" for p in prompts[:2]]
  io.write_image(os.path.join(workdir, "tasks_contact_sheet.png"), io.contact_sheet(videos, captions=captions))
  return report


def size_report(pipe, sizes, num: int, kwargs, workdir: str, seed: int = PROBE_SEED) -> tuple[dict, list]:
  """(probe scores of `num` new prompts at each (height, width, frames), the videos of each), and
  `W/contact_sheet_<size>.png` each."""
  prompts, seeds = probe_set(num, seed)
  report, outputs = {}, []
  for height, width, frames in sizes:
    name = f"{height}x{width}x{frames}"
    videos = pipe.at_size(height, width, frames).generate(prompts, seeds, progress=True, **kwargs)
    report[name] = probe.score(videos, prompts)
    io.write_image(os.path.join(workdir, f"contact_sheet_{name}.png"),
                   io.contact_sheet(videos[:8], captions=prompts[:8]))
    outputs.append(videos)
  return report, outputs


def plot_losses(runs: dict[str, str], path: str) -> None:
  """One panel per run: training loss (and eval metrics named *loss*) from its metrics.jsonl."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (the Agg backend is chosen before pyplot is imported)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5))
  for ax, (name, workdir) in zip(list(axes) if len(runs) > 1 else [axes], runs.items()):
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
    train = [(m["step"], m["loss"]) for m in lines if "loss" in m]
    ax.plot(*zip(*train), label="train loss")
    ax.set_yscale("log")
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  metrics.quiet_library_logs()
  workdir = os.path.abspath(_WORKDIR.value)
  vae_dir, t2v_dir = os.path.join(workdir, "vae"), os.path.join(workdir, "t2v")
  start = time.time()
  minutes = {}
  vae_cfg, t2v_runs = _vae_config(), _t2v_stages(vae_dir, t2v_dir)
  if _PROFILE.value:
    vae_cfg = profile(vae_cfg, _PRESET.value)
    t2v_runs = [(name, run_dir, profile(config, _PRESET.value)) for name, run_dir, config in t2v_runs]
  t2v_config = t2v_runs[-1][2]  # the model the report samples
  scored = scored_as(_PRESET.value)
  num_probe = _NUM_PROBE.value or NUM_PROBE[scored]
  num_task_videos = _NUM_TASK_VIDEOS.value or NUM_TASK_VIDEOS[scored]
  sizes = SIZES.get(scored)
  num_videos = num_probe * (len(sizes) if sizes else 1) + (
      len(TASKS) * num_task_videos if _CONDITIONS.value == "all" and not sizes else 0)
  clock = clock_for(vae_cfg.train.steps, {name: config.train.steps for name, _, config in t2v_runs}, num_videos)
  logging.info("Expected from an empty workdir on this kind of CPU: about %s (the progress lines' 'job' "
               "estimate follows the actual pace).", metrics.duration(clock.total()))

  logging.info("1/3: the VAE in %s", vae_dir)
  clock.start("vae")
  try:  # a stage stopped by SIGTERM/SIGINT is not finished: stop here, not train the DiT on a half-trained VAE
    loop.train(vae_cfg, vae_dir, job_eta=clock.remaining)
  except loop.RunStopped as stopped:
    sys.exit(stopped.exit_code)
  minutes["vae"] = (time.time() - start) / 60

  for name, run_dir, config in t2v_runs:
    clock.start(name)
    logging.info("2/3: the text-to-video model in %s (job: about %s left)", run_dir,
                 metrics.duration(clock.remaining_before(name)))
    try:  # a stopped stage is not finished: the next one never starts from its parameters
      loop.train(config, run_dir, job_eta=clock.remaining)
    except loop.RunStopped as stopped:
      sys.exit(stopped.exit_code)
    minutes[name] = (time.time() - start) / 60 - sum(minutes.values())

  clock.start("sample")
  logging.info("3/3: sampling and scoring (job: about %s left)", metrics.duration(clock.remaining_before("sample")))
  pipe, dit_step, vae_identity = load_pipeline(t2v_dir)
  prompts, seeds = probe_set(num_probe, _PROBE_SEED.value)
  tasks = by_size = None
  if sizes:  # the first size is the one the model's evals and its other readers default to
    by_size, outputs = size_report(pipe, sizes, num_probe, sample_kwargs(t2v_config), workdir, _PROBE_SEED.value)
    videos = outputs[0]
  else:
    videos = pipe.generate(prompts, seeds, progress=True, **sample_kwargs(t2v_config))
  scores = probe.score(videos, prompts)
  if pipe.conditioned:
    tasks = task_report(pipe, t2v_config, num_task_videos, workdir)
  fvd = fvd_report.for_pipeline(pipe, t2v_config.input, _FVD.value, sample_kwargs(t2v_config)) if _FVD.value else None
  minutes["sample_and_score"] = (time.time() - start) / 60 - sum(minutes.values())

  os.makedirs(os.path.join(workdir, "videos"), exist_ok=True)
  for i, (prompt, video) in enumerate(zip(prompts[:16], videos[:16])):
    io.write_video(os.path.join(workdir, "videos", f"{i:02d}_{prompt.replace(' ', '_')}.mp4"), video)
  io.write_image(os.path.join(workdir, "contact_sheet.png"), io.contact_sheet(videos[:12], captions=prompts[:12]))
  runs = {"vae": vae_dir, **{name: run_dir for name, run_dir, _ in t2v_runs}}
  plot_losses(runs, os.path.join(workdir, "loss_curves.png"))
  vae_evals = [json.loads(line) for line in open(os.path.join(vae_dir, "metrics.jsonl")) if "eval/psnr" in line]
  report = {"probe": scores, "probe_diagnosis": probe.diagnose(videos, prompts),  # where the score is lost
            "tasks": tasks, "sizes": by_size, "fvd": fvd,
            "num_videos": num_probe, "probe_seeds": [seeds[0], seeds[-1]],
            "vae_psnr": vae_evals[-1]["eval/psnr"] if vae_evals else None,
            "vae": {"step": vae_identity.step, "weights_sha256": vae_identity.weights_sha256},
            "t2v": {"step": dit_step, "steps": t2v_config.train.steps,
                    "compute_dtype": t2v_config.train.compute_dtype},
            "minutes": {k: round(v, 2) for k, v in minutes.items()},
            "total_minutes": round((time.time() - start) / 60, 2),
            "workdirs": runs}
  if _PROFILE.value:
    report["profile"] = profile_report(runs)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
