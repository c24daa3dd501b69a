"""Samples videos from prompts with a trained `t2v` workdir or a diffusers CogVideoX folder.

    python -m experiments.sample --workdir W --prompt "a red circle moving left" --prompt "a blue square moves up" \\
        --num_samples 4 --seed 0 --out /tmp/samples
    python -m experiments.sample --pretrained /path/CogVideoX-2b --prompt "..." --num_frames 49 --height 480 \\
        --width 720 --num_steps 50 --guidance_scale 6 --use_dynamic_cfg --out /tmp/cogvideox

For each prompt and each of `num_samples` seeds (seed, seed + 1, ...) it writes `<out>/<prompt#>_<seed>.mp4`, the
exact frames as `.npy` (uint8 [T, H, W, 3]) and one line in `<out>/samples.jsonl` with prompt, seed, mp4, npy.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from vdm_jax import io
from vdm_jax.diffusion import samplers
from vdm_jax.pipelines import cogvideox, t2v
from vdm_jax.train import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained t2v workdir.")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "A diffusers CogVideoX folder (instead of --workdir).")
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for several.")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "The unconditional prompt of classifier-free guidance.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (seeds seed, seed + 1, ...).")
_SEED = flags.DEFINE_integer("seed", 0, "The first seed.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_SAMPLER = flags.DEFINE_enum("sampler", None, list(samplers.SAMPLERS),
                             "Sampler (default: the run's config / DDIM for CogVideoX).")
_STEPS = flags.DEFINE_integer("num_steps", None, "Sampling steps (default: the run's config; 50 for CogVideoX).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "CFG scale (default: the run's config; 6 for CogVideoX).")
_DYNAMIC = flags.DEFINE_bool("use_dynamic_cfg", None, "CogVideoX's dynamic CFG schedule.")
_RESCALE = flags.DEFINE_float("guidance_rescale", None, "t2v workdirs: rescale of the guided output in [0, 1] (Lin et "
                              "al. 2023; default: the run's config).")
_FRAMES = flags.DEFINE_integer("num_frames", 49, "CogVideoX: frames (4k + 1).")
_HEIGHT = flags.DEFINE_integer("height", 480, "CogVideoX: height.")
_WIDTH = flags.DEFINE_integer("width", 720, "CogVideoX: width.")
_FPS = flags.DEFINE_integer("fps", 8, "Frame rate of the mp4s.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Videos generated at once (t2v workdirs).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "CogVideoX: the weights' and computation's dtype (bfloat16 on accelerators).")
flags.mark_flags_as_required(["prompt", "out"])


def _generate_t2v(prompts, seeds):
  sample = loop.load_config_json(_WORKDIR.value).sample
  pipe = t2v.TextToVideoPipeline.from_workdir(_WORKDIR.value)
  pick = lambda flag, default: default if flag.value is None else flag.value
  return pipe.generate(prompts, seeds, sampler=pick(_SAMPLER, sample.sampler), num_steps=pick(_STEPS, sample.num_steps),
                       guidance_scale=pick(_GUIDANCE, sample.guidance_scale),
                       use_dynamic_cfg=pick(_DYNAMIC, sample.use_dynamic_cfg),
                       guidance_rescale=pick(_RESCALE, sample.get("guidance_rescale", 0.0)),
                       negative_prompt=_NEGATIVE.value,
                       batch_size=_BATCH.value, progress=True)


def _generate_cogvideox(prompts, seeds):
  pipe = cogvideox.load(_PRETRAINED.value, dtype=jnp.dtype(_DTYPE.value))
  videos = []
  for prompt, seed in zip(prompts, seeds):
    video = pipe(prompt=prompt, negative_prompt=_NEGATIVE.value, num_frames=_FRAMES.value, height=_HEIGHT.value,
                 width=_WIDTH.value, num_inference_steps=_STEPS.value or 50,
                 guidance_scale=6.0 if _GUIDANCE.value is None else _GUIDANCE.value,
                 use_dynamic_cfg=bool(_DYNAMIC.value), seed=seed, sampler=_SAMPLER.value)
    videos.append(np.clip(np.round(np.asarray(video[0]) * 255.0), 0, 255).astype(np.uint8))
  return np.stack(videos)


def main(argv):
  del argv
  if bool(_WORKDIR.value) == bool(_PRETRAINED.value):
    raise app.UsageError("Give exactly one of --workdir (a trained t2v run) and --pretrained (a CogVideoX folder).")
  prompts = [p for p in _PROMPTS.value for _ in range(_NUM_SAMPLES.value)]
  seeds = [_SEED.value + i for _ in _PROMPTS.value for i in range(_NUM_SAMPLES.value)]
  videos = (_generate_t2v if _WORKDIR.value else _generate_cogvideox)(prompts, seeds)
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "samples.jsonl"), "a") as f:
    for k, (prompt, seed, video) in enumerate(zip(prompts, seeds, videos)):
      stem = os.path.join(_OUT.value, f"{k // _NUM_SAMPLES.value:02d}_{seed}")
      io.write_video(stem + ".mp4", video, fps=_FPS.value)
      io.write_video(stem + ".npy", np.asarray(video, np.uint8))
      f.write(json.dumps({"prompt": prompt, "seed": seed, "mp4": stem + ".mp4", "npy": stem + ".npy"}) + "\n")
  logging.info("Wrote %d samples to %s", len(videos), _OUT.value)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
