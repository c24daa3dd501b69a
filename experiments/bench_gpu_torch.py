r"""bench_gpu's diffusers worker (one job per process; see experiments/bench_gpu.py, which starts it).

    python -m experiments.bench_gpu_torch --size 2b --stages step,t5,vae,vae_tiled,e2e --deadline 0

diffusers' CogVideoXPipeline built in memory from randomly initialised bf16 models of the same configs as the JAX
worker (transformers' T5EncoderModel, AutoencoderKLCogVideoX, CogVideoXTransformer3DModel with its default SDPA
attention, CogVideoXDDIMScheduler), on CUDA when torch sees a GPU. A byte tokenizer stands in for T5's sentencepiece
(no vocab file here); the pipeline tokenizes, encodes and denoises exactly as with the real one. Stages as in
bench_gpu_jax ('vae_tiled' is the decode after `vae.enable_tiling()`); peak memory is
`torch.cuda.max_memory_allocated()` over each stage (weights included), reset before it.
"""
from __future__ import annotations

import functools
import time
import types

from absl import app, flags
import numpy as np
import torch

from experiments import bench_common
from experiments import bench_gpu_common as common

FLAGS = flags.FLAGS
common.define_worker_flags()


class BytesTokenizer:
  """The slice of transformers' tokenizer interface that diffusers' CogVideoXPipeline calls, over UTF-8 bytes with
  ByT5's ids (byte + 3, EOS 1, pad 0), the ids vdm_jax's ByteTokenizer gives."""

  def __call__(self, text, padding="max_length", max_length=None, truncation=False, add_special_tokens=True,
               return_tensors="pt"):
    del return_tensors
    texts = [text] if isinstance(text, str) else list(text)
    ids = [[b + 3 for b in t.encode("utf-8")] for t in texts]
    if truncation and max_length:
      ids = [i[:max_length - 1] for i in ids]
    if add_special_tokens:
      ids = [i + [1] for i in ids]
    length = max_length if padding == "max_length" else max(map(len, ids))
    return types.SimpleNamespace(input_ids=torch.tensor([i + [0] * (length - len(i)) for i in ids]))

  def batch_decode(self, ids):
    return [bytes(max(int(i) - 3, 0) for i in row if int(i) > 2).decode("utf-8", "replace") for row in ids]


def build_pipeline(cfg: dict, device: str, dtype):
  """diffusers' CogVideoXPipeline with randomly initialised models (built directly on `device` in `dtype`)."""
  from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler,  # pylint: disable=g-import-not-at-top
                         CogVideoXPipeline, CogVideoXTransformer3DModel)
  from transformers import T5Config, T5EncoderModel  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    with torch.device(device):
      transformer = CogVideoXTransformer3DModel(**cfg["transformer"]).eval()
      vae = AutoencoderKLCogVideoX(**cfg["vae"]).eval()
      t5_config = {k: v for k, v in cfg["t5"].items() if k != "model_type"}
      text_encoder = T5EncoderModel(T5Config(**t5_config)).eval()
  finally:
    torch.set_default_dtype(default_dtype)
  pipe = CogVideoXPipeline(tokenizer=BytesTokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                           scheduler=CogVideoXDDIMScheduler(**common.SCHEDULER))
  pipe.set_progress_bar_config(disable=True)
  return pipe.to(device, dtype)


def main(argv):
  del argv
  device = "cuda" if torch.cuda.is_available() else "cpu"
  gpu = device == "cuda"
  import diffusers  # pylint: disable=g-import-not-at-top
  info = {"framework": "torch", "job": "pipeline", "size": FLAGS.size, "backend": "sdpa",
          "device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
          "diffusers": diffusers.__version__}
  sync = lambda _: torch.cuda.synchronize() if gpu else None
  peak = lambda: torch.cuda.max_memory_allocated() / 2 ** 30 if gpu else None
  reset = lambda: torch.cuda.reset_peak_memory_stats() if gpu else None
  cfg = common.configs(FLAGS.size, FLAGS.tiny)
  video = cfg["video"]
  dtype = torch.bfloat16
  start = time.perf_counter()
  pipe = build_pipeline(cfg, device, dtype)
  sync(None)
  common.emit(**info, stage="build", seconds=time.perf_counter() - start, peak_gb=peak())
  generator = lambda: torch.Generator(device).manual_seed(0)
  call = functools.partial(pipe, common.PROMPT, "", num_frames=video["num_frames"], height=video["height"],
                           width=video["width"], guidance_scale=common.GUIDANCE,
                           max_sequence_length=video["text_length"])
  needs = {"step": 30, "t5": 10, "vae": 30, "vae_tiled": 30, "e2e": 60} if not FLAGS.tiny else {}
  for stage in FLAGS.stages:
    if common.skip_if_late(stage, info, needs.get(stage, 5)):
      continue
    try:
      row = {}
      reset()
      with torch.no_grad():
        if stage == "step":
          row.update(common.step_stage(
              lambda steps: call(num_inference_steps=steps, output_type="latent", generator=generator()), sync))
        elif stage == "t5":
          encode = lambda: pipe.encode_prompt(common.PROMPT, "", do_classifier_free_guidance=True,
                                              max_sequence_length=video["text_length"], device=device, dtype=dtype)
          row["first_call_s"] = bench_common.timed(encode, sync)[0]
          row["seconds"] = bench_common.median_time(encode, FLAGS.repeats, sync=sync)
        elif stage in ("vae", "vae_tiled"):
          if stage == "vae_tiled":
            pipe.vae.enable_tiling()
          shape = (1, cfg["vae"]["latent_channels"], *common.latent_shape(video))
          latents = torch.randn(shape, generator=generator(), device=device).to(dtype)

          def decode():  # as the pipeline decodes, plus the video processor's [0, 1] frames moved to the host
            frames = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            return (frames.float() * 0.5 + 0.5).clamp(0, 1).cpu()

          row["first_call_s"] = bench_common.timed(decode, sync)[0]
          reset()
          row["seconds"], frames = bench_common.timed(decode, sync)
          row["frames_shape"] = list(frames.shape)
          pipe.vae.disable_tiling()
        elif stage == "e2e":
          row["first_call_s"] = bench_common.timed(lambda: call(num_inference_steps=1, output_type="np",
                                                                generator=generator()), sync)[0]
          reset()
          row["seconds"], out = bench_common.timed(lambda: call(num_inference_steps=FLAGS.e2e_steps,
                                                                output_type="np", generator=generator()), sync)
          frames = np.asarray(out.frames)
          row.update(steps=FLAGS.e2e_steps, frames_shape=list(frames.shape), finite=bool(np.isfinite(frames).all()))
        else:
          raise ValueError(f"unknown stage {stage!r}")
      common.emit(**info, stage=stage, **row, peak_gb=peak())
    except Exception as e:  # pylint: disable=broad-except  # one stage failing must not lose the others
      common.emit(**info, stage=stage, error=bench_common.short_error(e), peak_gb=peak())
      pipe.vae.disable_tiling()


if __name__ == "__main__":
  app.run(main)
