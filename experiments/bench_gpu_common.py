"""What bench_gpu's torch and JAX workers share: the model configs (full and --tiny), the video size, their flags,
the deadline check, the 'step' stage and the JSON line each measurement is printed as. Imports neither framework, so
the driver can import it too; the timer and error text are experiments.bench_common's."""
from __future__ import annotations

import json
import time

from absl import flags

from experiments import bench_common

FLAGS = flags.FLAGS

# diffusers' CogVideoXDDIMScheduler config of CogVideoX-2b/5b (scheduler/scheduler_config.json).
SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                 num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                 set_alpha_to_one=True, snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing")

# diffusers CogVideoXTransformer3DModel config of CogVideoX-2b (transformer/config.json).
TRANSFORMER_2B = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True, freq_shift=0,
    time_embed_dim=512, text_embed_dim=4096, num_layers=30, dropout=0.0, attention_bias=True, sample_width=90,
    sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
    activation_fn="gelu-approximate", timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
    spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=False,
    use_learned_positional_embeddings=False)
# CogVideoX-5b differs in width, depth and positions (3D RoPE instead of sincos).
TRANSFORMER_5B = dict(TRANSFORMER_2B, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)

# diffusers AutoencoderKLCogVideoX config of CogVideoX-2b (vae/config.json; the class defaults).
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 512], layers_per_block=3,
           latent_channels=16, norm_num_groups=32, norm_eps=1e-6, temporal_compression_ratio=4,
           scaling_factor=1.15258426, sample_height=480, sample_width=720)

# T5 v1.1 XXL encoder (text_encoder/config.json of CogVideoX).
T5 = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
          relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
          layer_norm_epsilon=1e-6, model_type="t5")

VIDEO = dict(num_frames=49, height=480, width=720, text_length=226)
PROMPT = "A panda, dressed in a small red jacket and a tiny hat, sits on a wooden stool in a serene bamboo forest."
GUIDANCE = 6.0

# --tiny: the same code paths at sizes a CPU runs in seconds (a dry run of the GPU script).
TINY_TRANSFORMER = dict(num_attention_heads=2, num_layers=2, text_embed_dim=64, sample_frames=9, sample_height=8,
                        sample_width=12, max_text_seq_length=16)
TINY_VAE = dict(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8, sample_height=64,
                sample_width=96)
TINY_T5 = dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
TINY_VIDEO = dict(num_frames=9, height=64, width=96, text_length=16)


def configs(size: str, tiny: bool) -> dict:
  """{'transformer', 'vae', 't5', 'video'} for size '2b' or '5b' (--tiny shrinks both to the same tiny model)."""
  transformer = dict(TRANSFORMER_2B if size == "2b" else TRANSFORMER_5B)
  vae, t5, video = dict(VAE), dict(T5), dict(VIDEO)
  if tiny:
    transformer.update(TINY_TRANSFORMER)
    vae.update(TINY_VAE)
    t5.update(TINY_T5)
    video.update(TINY_VIDEO)
  return {"transformer": transformer, "vae": vae, "t5": t5, "video": video}


def define_worker_flags() -> None:
  """The flags both workers take (the driver passes them)."""
  flags.DEFINE_enum("size", "2b", ["2b", "5b"], "CogVideoX transformer size.")
  flags.DEFINE_list("stages", ["step", "t5", "vae"], "Stages, in order (step, t5, vae, e2e; torch: vae_tiled).")
  flags.DEFINE_integer("lo", 2, "Steps of the shorter timed call (stage step).")
  flags.DEFINE_integer("hi", 6, "Steps of the longer timed call (stage step).")
  flags.DEFINE_integer("e2e_steps", 50, "Denoising steps of stage e2e.")
  flags.DEFINE_integer("repeats", 3, "Timed repeats of the short stages (t5, train).")
  flags.DEFINE_bool("tiny", False, "Tiny models and video (a CPU dry run).")
  flags.DEFINE_float("deadline", 0.0, "Unix time after which remaining stages are skipped (0: none).")


def latent_shape(video: dict) -> tuple[int, int, int]:
  """(T', H', W') of the latents of `video` (4x temporal, 8x spatial compression)."""
  return (video["num_frames"] - 1) // 4 + 1, video["height"] // 8, video["width"] // 8


# The start of every measurement's line; the driver collects the lines that start with it.
RESULT_PREFIX = '{"bench"'


def emit(**fields) -> None:
  """One measurement as a JSON line on stdout (starting with RESULT_PREFIX)."""
  print(json.dumps({"bench": 1, **fields}), flush=True)


def skip_if_late(stage: str, info: dict, needed_s: float) -> bool:
  """True (and a 'skipped' line emitted) when `stage` would end past --deadline, so it is skipped rather than killed
  half-way."""
  if FLAGS.deadline and time.time() + needed_s > FLAGS.deadline:
    emit(**info, stage=stage, skipped=f"deadline: less than {needed_s:.0f} s left")
    return True
  return False


def step_stage(call, sync=bench_common.no_sync) -> dict:
  """Stage 'step': seconds of one denoising step as (time of `call(hi)` - time of `call(lo)`) / (hi - lo), after a
  first (compiling) `call(lo)`; `call(n)` runs the pipeline for n steps up to the latents, so text encoding cancels
  out."""
  first = bench_common.timed(lambda: call(FLAGS.lo), sync)[0]
  t_lo = bench_common.timed(lambda: call(FLAGS.lo), sync)[0]
  t_hi = bench_common.timed(lambda: call(FLAGS.hi), sync)[0]
  return dict(first_call_s=first, lo=FLAGS.lo, hi=FLAGS.hi, call_lo_s=t_lo, call_hi_s=t_hi,
              seconds=(t_hi - t_lo) / (FLAGS.hi - FLAGS.lo))
