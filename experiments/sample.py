"""Samples videos from prompts with a trained `t2v` workdir or a diffusers CogVideoX folder.

    python -m experiments.sample --workdir W --prompt "a red circle moving left" --prompt "a blue square moves up" \\
        --num_samples 4 --seed 0 --out /tmp/samples
    python -m experiments.sample --pretrained /path/CogVideoX-2b --prompt "..." --num_frames 49 --height 480 \\
        --width 720 --num_steps 50 --guidance_scale 6 --use_dynamic_cfg --out /tmp/cogvideox
    python -m experiments.sample --pretrained /path/CogVideoX-2b --lora adapter/ --lora_scale 0.8 --prompt "..." ...
    python -m experiments.sample --workdir W_lora --lora_scale 0.5 --prompt "..."   # a LoRA run over its base

A t2v run trained with frame conditions (`diffusion.condition.mix`) also takes frames:
    python -m experiments.sample --workdir W --prompt P --image first.png --out DIR              # image-to-video
    python -m experiments.sample --workdir W --prompt P --image first.png --last_image last.png --out DIR
    python -m experiments.sample --workdir W --prompt P --image first.png --loop --out DIR
    python -m experiments.sample --workdir W --prompt P --video in.npy --task extend --num_frames N --out DIR
    python -m experiments.sample --workdir W --prompt P --video in.npy --task extend_backward --num_frames N --out DIR
    python -m experiments.sample --workdir W --prompt P --video in.mp4 --task v2v --strength 0.7 --out DIR # any run
`--image` reads PNG or JPEG, `--video` mp4 or an exact .npy (uint8 [T, H, W, 3]), at the run's frame size; each is
given once (for every prompt) or once per --prompt (paired in order). `--last_image` (interpolation) and `--loop`
(the first image also last) end the video at an image. `extend` writes videos of `num_frames` frames that begin
with the given ones (1 + r k of them; r: the VAE's temporal compression), generated window by window;
`extend_backward` videos that end with them;
`v2v` (SDEdit, any t2v run) re-generates videos of the run's length from the prompt, starting from their latents
noised `strength` of the way.

For each prompt and each of `num_samples` seeds (seed, seed + 1, ...) it writes `<out>/<prompt#>_<seed>.mp4`, the
exact frames as `.npy` (uint8 [T, H, W, 3]) and one line in `<out>/samples.jsonl` with prompt, seed, mp4, npy, and
with frames the task and the condition's file.
`--out` is checked before any work: a file there, or any of the files to write already there, stops the command
unless `--overwrite` (then `samples.jsonl` drops its lines for the replaced files), so `samples.jsonl` lists each
file once, with the prompt and seed it was made from. Sampling a run stopped before its `train.steps` says so.
"""
import json
import os
import warnings

# Before jax (and its C++ logging) is imported: only warnings and errors from native code.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import jax.numpy as jnp  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from vdm_jax import io, runs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.diffusion import samplers  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.pipelines import cogvideox, t2v  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.train import loop, metrics  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

TASKS = ("extend", "extend_backward", "v2v")

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained t2v workdir.")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "A diffusers CogVideoX folder (instead of --workdir).")
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for several.")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "The unconditional prompt of classifier-free guidance.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (seeds seed, seed + 1, ...).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "The first seed.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace samples already in --out with the same names (else the "
                               "command stops before generating).")
_SAMPLER = flags.DEFINE_enum("sampler", None, list(samplers.SAMPLERS),
                             "Sampler (default: the run's config / DDIM for CogVideoX).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Sampling steps (default: the run's config; 50 for CogVideoX).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "CFG scale (default: the run's config; 6 for CogVideoX).")
_DYNAMIC = flags.DEFINE_bool("use_dynamic_cfg", None, "CogVideoX's dynamic CFG schedule.")
_RESCALE = flags.DEFINE_float("guidance_rescale", None, "t2v workdirs: rescale of the guided output in [0, 1] (Lin et "
                              "al. 2023; default: the run's config).")
_FRAMES = flags.DEFINE_integer("num_frames", 49, "Frames (1 + 4k; default: a t2v run's training size, 49 for "
                               "CogVideoX); --task extend: the output's frames.")
_HEIGHT = flags.DEFINE_integer("height", 480, "Height (default: a t2v run's training size, 480 for CogVideoX).")
_WIDTH = flags.DEFINE_integer("width", 720, "Width (default: a t2v run's training size, 720 for CogVideoX).")
_FPS = flags.DEFINE_integer("fps", 8, "Frame rate of the mp4s.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Videos generated at once (t2v workdirs).")
_IMAGE = flags.DEFINE_multi_string("image", None, "t2v workdirs: the first frame (PNG or JPEG), once or once per "
                                   "--prompt: image-to-video.")
_LAST_IMAGE = flags.DEFINE_multi_string("last_image", None, "With --image: the last frame (PNG or JPEG), once or "
                                        "once per --prompt: interpolation.")
_LOOP = flags.DEFINE_bool("loop", False, "With --image: end the video at its first image (a loop).")
_VIDEO = flags.DEFINE_multi_string("video", None, "t2v workdirs: a video (mp4 or .npy) to go on from, once or once "
                                   "per --prompt; with --task.")
_TASK = flags.DEFINE_enum("task", None, list(TASKS), "What to do with --video: 'extend' it forward to --num_frames "
                          "(or 'extend_backward'); 'v2v': re-generate it from the prompt (SDEdit at --strength).")
_STRENGTH = flags.DEFINE_float("strength", 0.7, "--task v2v: how far toward noise the video is taken before "
                               "sampling, in (0, 1] (the share of the steps run).")
_IMAGE_GUIDANCE = flags.DEFINE_float("image_guidance_scale", None, "With --image or --video: guide the frames "
                                     "separately from the text at this scale (Open-Sora's two scales).")
_LORA = flags.DEFINE_string("lora", None, "--pretrained: a diffusers LoRA file (pytorch_lora_weights.safetensors, "
                            "or its folder) merged into the transformer.")
_LORA_SCALE = flags.DEFINE_float("lora_scale", 1.0, "The adapter's weight: of --lora, or of a LoRA run's adapters "
                                 "(a t2v workdir trained with lora.targets).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "CogVideoX: the weights' and computation's dtype (bfloat16 on accelerators).")
flags.mark_flags_as_required(["prompt", "out"])
FLAGS = flags.FLAGS


class _ActionableLogs(logging.logging.Filter):
  """Drops orbax's warnings that items this command does not restore (the checkpoint's config and data iterator)
  "could not be restored": nothing to act on."""

  def filter(self, record):
    return "could not be restored" not in record.getMessage()


def _quiet_logs():
  """Third-party lines a user cannot act on: libraries' INFO lines (orbax's restore details, jax's backend probing,
  e.g. libtpu), orbax's unrestored-item warnings, and the os.fork warning of the ffmpeg subprocess that writes each
  mp4 (a fork followed by exec, which the warning's deadlock does not apply to)."""
  metrics.quiet_library_logs()
  logging.get_absl_handler().addFilter(_ActionableLogs())
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)


def _t2v_pipeline(workdir):
  """(the run's config, its pipeline), warning in one line when its checkpoint is before its `train.steps`."""
  config = loop.load_config_json(workdir)
  if config.get("experiment") != "t2v":
    raise app.UsageError(f"--workdir {workdir!r} holds a {config.get('experiment')!r} run; sampling needs a 't2v' run.")
  try:
    params, step = runs.load_model_params(workdir, lora_scale=_LORA_SCALE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if step < config.train.steps:
    logging.warning("Sampling an unfinished run: %s is at step %d of train.steps=%d.", workdir, step,
                    config.train.steps)
  return config, t2v.TextToVideoPipeline.from_config(config, params, workdir)


def _per_sample(paths, num_prompts):
  """A flag's files, one per sample: given once (every prompt) or once per prompt; None when not given."""
  if not paths:
    return None
  if len(paths) not in (1, num_prompts):
    raise app.UsageError(f"Got {len(paths)} condition files for {num_prompts} prompts: give one (for every prompt) "
                         "or one per --prompt.")
  per_prompt = paths * num_prompts if len(paths) == 1 else paths
  return [p for p in per_prompt for _ in range(_NUM_SAMPLES.value)]


def _read_frames(paths, pipe, images):
  """uint8 [N, F, H, W, 3] from the condition files (`images`: PNG/JPEG, F = 1), checked against the run's frame
  size (naming the file)."""
  t, h, w, _ = pipe.latent_shape
  size = (h * pipe.vae.spatial_compression, w * pipe.vae.spatial_compression)
  frames = []
  for path in paths:
    try:
      x = io.read_image(path)[None] if images else io.read_video(path)
    except (ValueError, FileNotFoundError) as e:
      raise app.UsageError(str(e)) from None
    if x.shape[1:3] != size:
      raise app.UsageError(f"{path!r} is {x.shape[1]}x{x.shape[2]}; this run generates {size[0]}x{size[1]} frames.")
    frames.append(x)
  counts = sorted({len(x) for x in frames})
  if len(counts) > 1:
    raise app.UsageError(f"--video files have {counts} frames; one command extends videos of one length.")
  return np.stack(frames)


def _sized(pipe):
  """The pipeline at --height / --width / --num_frames where given (--num_frames of --task extend is the output's
  length, not the model's)."""
  frames = _FRAMES.value if FLAGS["num_frames"].present and _TASK.value not in ("extend", "extend_backward") else None
  height = _HEIGHT.value if FLAGS["height"].present else None
  width = _WIDTH.value if FLAGS["width"].present else None
  try:
    return pipe.at_size(height, width, frames)
  except ValueError as e:
    raise app.UsageError(f"--workdir {_WORKDIR.value!r}: {e}") from None


def _generate_t2v(prompts, seeds, conditions, last):
  config, pipe = _t2v_pipeline(_WORKDIR.value)
  pipe = _sized(pipe)
  sample = config.sample
  pick = lambda flag, default: default if flag.value is None else flag.value
  kwargs = dict(sampler=pick(_SAMPLER, sample.sampler), num_steps=pick(_STEPS, sample.num_steps),
                guidance_scale=pick(_GUIDANCE, sample.guidance_scale),
                use_dynamic_cfg=pick(_DYNAMIC, sample.use_dynamic_cfg),
                guidance_rescale=pick(_RESCALE, sample.get("guidance_rescale", 0.0)),
                negative_prompt=_NEGATIVE.value, batch_size=_BATCH.value, progress=True)
  if conditions is None:
    return pipe.generate(prompts, seeds, **kwargs)
  frames = _read_frames(conditions, pipe, images=bool(_IMAGE.value))
  if _TASK.value == "v2v":
    try:
      return pipe.generate(prompts, seeds, videos=frames, strength=_STRENGTH.value, **kwargs)
    except ValueError as e:
      raise app.UsageError(f"{conditions[0]!r}: {e}") from None
  if not pipe.conditioned:
    raise app.UsageError(f"--workdir {_WORKDIR.value!r} was trained for text-to-video only (its "
                         "diffusion.condition.mix is t2v): it takes no --image, and --video only with --task v2v.")
  kwargs["image_guidance_scale"] = _IMAGE_GUIDANCE.value
  try:
    if _TASK.value in ("extend", "extend_backward"):
      return pipe.extend(prompts, seeds, frames, _FRAMES.value, backward=_TASK.value == "extend_backward", **kwargs)
    last_frames = _read_frames(last, pipe, images=True) if last else (frames if _LOOP.value else None)
    return pipe.generate(prompts, seeds, frames=frames, last_frames=last_frames, **kwargs)
  except ValueError as e:
    raise app.UsageError(f"{conditions[0]!r}: {e}") from None


def _generate_cogvideox(prompts, seeds, conditions):
  pipe = cogvideox.load(_PRETRAINED.value, dtype=jnp.dtype(_DTYPE.value), lora=_LORA.value,
                        lora_scale=_LORA_SCALE.value)
  if pipe.image_to_video != bool(conditions):
    raise app.UsageError(f"--pretrained {_PRETRAINED.value!r} is an image-to-video folder: give --image." if
                         pipe.image_to_video else f"--pretrained {_PRETRAINED.value!r} is text-to-video: it takes "
                         "no --image.")
  videos = []
  for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
    image = None
    if conditions:
      try:
        image = io.read_image(conditions[i])
      except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
      if image.shape[:2] != (_HEIGHT.value, _WIDTH.value):
        raise app.UsageError(f"{conditions[i]!r} is {image.shape[0]}x{image.shape[1]}; the videos are "
                             f"{_HEIGHT.value}x{_WIDTH.value} (--height, --width).")
    video = pipe(prompt=prompt, negative_prompt=_NEGATIVE.value, num_frames=_FRAMES.value, height=_HEIGHT.value,
                 width=_WIDTH.value, num_inference_steps=_STEPS.value or 50,
                 guidance_scale=6.0 if _GUIDANCE.value is None else _GUIDANCE.value,
                 use_dynamic_cfg=bool(_DYNAMIC.value), seed=seed, sampler=_SAMPLER.value, image=image)
    videos.append(np.clip(np.round(np.asarray(video[0]) * 255.0), 0, 255).astype(np.uint8))
  return np.stack(videos)


def _check_out(out: str, stems: list[str]) -> None:
  """Fails before any work if `out` is not a folder or (without --overwrite) already holds a file to be written."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise app.UsageError(f"--out {out!r} is a file, not a folder: give a folder for the samples.")
  taken = [p for stem in stems for p in (stem + ".mp4", stem + ".npy") if os.path.exists(p)]
  if taken and not _OVERWRITE.value:
    raise app.UsageError(f"--out {out!r} already holds {len(taken)} of the files to write ({taken[0]}, ...): give "
                         "another --out or --seed, or --overwrite to replace them.")


def _drop_lines(jsonl: str, replaced: set[str]) -> None:
  """Rewrites `jsonl` without its lines for the mp4 names in `replaced` (their new lines are appended as they are
  written), so no line keeps the old prompt of a replaced file. Names, not paths: every line is about a file in
  the folder, whatever path (relative or not) the command that wrote it was given."""
  if not os.path.isfile(jsonl):
    return
  with open(jsonl) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if os.path.basename(json.loads(line).get("mp4", "")) not in replaced]
  with open(jsonl + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(jsonl + ".tmp", jsonl)


def _conditions():
  """(the condition file of each sample or None, its last image or None, the task name) from --image /
  --last_image / --loop / --video / --task, checked."""
  if _IMAGE.value and _VIDEO.value:
    raise app.UsageError("Give --image (image-to-video) or --video (with --task), not both.")
  if _VIDEO.value and not _TASK.value:
    raise app.UsageError(f"--video needs --task; allowed: {list(TASKS)}.")
  if _TASK.value and not _VIDEO.value:
    raise app.UsageError(f"--task {_TASK.value} needs --video.")
  if _TASK.value in ("extend", "extend_backward") and not FLAGS["num_frames"].present:
    raise app.UsageError(f"--task {_TASK.value} needs --num_frames: the length of the extended videos.")
  if _IMAGE_GUIDANCE.value is not None and not (_IMAGE.value or _TASK.value in ("extend", "extend_backward")):
    raise app.UsageError("--image_guidance_scale guides the frames of --image or --video --task extend(_backward).")
  if (_LAST_IMAGE.value or _LOOP.value) and not _IMAGE.value:
    raise app.UsageError("--last_image and --loop end a video that --image begins: give --image.")
  if _LAST_IMAGE.value and _LOOP.value:
    raise app.UsageError("Give --last_image or --loop (the first image also last), not both.")
  if _IMAGE_GUIDANCE.value is not None and _PRETRAINED.value:
    raise app.UsageError("--image_guidance_scale is for t2v workdirs; CogVideoX folders guide the text only.")
  if (_VIDEO.value or _LAST_IMAGE.value or _LOOP.value) and _PRETRAINED.value:
    raise app.UsageError("--video, --last_image and --loop need --workdir (a t2v run trained with frame "
                         "conditions); a CogVideoX image-to-video folder (--pretrained) takes --image only.")
  conditions = _per_sample(_IMAGE.value or _VIDEO.value, len(_PROMPTS.value))
  last = _per_sample(_LAST_IMAGE.value, len(_PROMPTS.value))
  task = _TASK.value
  if _IMAGE.value:
    task = "interpolate" if last else ("loop" if _LOOP.value else "i2v")
  return conditions, last, task


def main(argv):
  del argv
  _quiet_logs()
  if bool(_WORKDIR.value) == bool(_PRETRAINED.value):
    raise app.UsageError("Give exactly one of --workdir (a trained t2v run) and --pretrained (a CogVideoX folder).")
  if _LORA.value and not _PRETRAINED.value:
    raise app.UsageError("--lora is a diffusers adapter for --pretrained; a t2v LoRA run is its own --workdir.")
  conditions, last, task = _conditions()
  prompts = [p for p in _PROMPTS.value for _ in range(_NUM_SAMPLES.value)]
  seeds = [_SEED.value + i for _ in _PROMPTS.value for i in range(_NUM_SAMPLES.value)]
  stems = [os.path.join(_OUT.value, f"{k // _NUM_SAMPLES.value:02d}_{seed}") for k, seed in enumerate(seeds)]
  _check_out(_OUT.value, stems)
  if _WORKDIR.value:
    videos = _generate_t2v(prompts, seeds, conditions, last)
  else:
    videos = _generate_cogvideox(prompts, seeds, conditions)
  os.makedirs(_OUT.value, exist_ok=True)
  jsonl = os.path.join(_OUT.value, "samples.jsonl")
  _drop_lines(jsonl, {os.path.basename(stem + ".mp4") for stem in stems})
  with open(jsonl, "a") as f:
    for i, (prompt, seed, stem, video) in enumerate(zip(prompts, seeds, stems, videos)):
      io.write_video(stem + ".mp4", video, fps=_FPS.value)
      io.write_video(stem + ".npy", np.asarray(video, np.uint8))
      row = {"prompt": prompt, "seed": seed, "mp4": stem + ".mp4", "npy": stem + ".npy"}
      if conditions is not None:
        row.update(task=task, condition=conditions[i])
        if last:
          row["last_condition"] = last[i]
      f.write(json.dumps(row) + "\n")
      f.flush()  # a line per finished sample, as its files are written
  logging.info("Wrote %d samples to %s", len(videos), _OUT.value)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
