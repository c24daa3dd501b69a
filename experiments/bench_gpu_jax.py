r"""bench_gpu's JAX worker (one job per process; see experiments/bench_gpu.py, which starts it).

    python -m experiments.bench_gpu_jax --job pipeline --size 2b --stages step,t5,vae,e2e --deadline 0
    python -m experiments.bench_gpu_jax --job train --batch 1 --remat none

'pipeline': vdm_jax's CogVideoXPipeline built in memory from random bf16 weights (the byte tokenizer stands in for
T5's sentencepiece, which needs a vocab file; T5 runs on the same 226 ids either way). Stages:
  step  one CFG denoising step (DiT on batch 2 + the DDIM update): (time of a call with `hi` steps - time with `lo`
        steps) / (hi - lo), both output_type='latent' after a compiling call, so text encoding cancels out;
  t5    the prompt + negative prompt through T5 (jitted, as the pipeline calls it);
  vae   decode of one video's latents (13 x 60 x 90 at full size) to float32 frames on the host;
  e2e   the whole call at `e2e_steps` steps (text, denoising, decode, frames to the host), after a 1-step call.
'train': one training step of the DiT: v-prediction MSE at a random timestep, grads, AdamW, float32 master params,
  bf16 compute, params and optimizer state donated; seconds, model TFLOP/s (vdm_jax.train.flops.transformer_flops,
  x3 for forward + backward) and MFU against the chip's dense bf16 peak and against a measured 8192^3 matmul.
Peak memory is the device allocator's `peak_bytes_in_use` since the process started (JAX cannot reset it), after
each stage.
"""
from __future__ import annotations

import functools
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common
from experiments import bench_gpu_common as common

FLAGS = flags.FLAGS
common.define_worker_flags()
flags.DEFINE_enum("job", "pipeline", ["pipeline", "train"], "What to measure.")
flags.DEFINE_string("backend", "cudnn", "DiT attention backend.")
flags.DEFINE_integer("batch", 1, "Train batch size.")
flags.DEFINE_string("remat", "none", "DiT remat policy of the train step.")


def _peak_gb() -> float | None:
  return bench_common.device_peak_gb(jax.devices()[0])


def random_params(abstract, dtype, seed: int = 0):
  """Random params shaped like `abstract` (ShapeDtypeStructs), made on the device: LayerNorm/RMSNorm scales 1,
  biases 0, everything else N(0, 0.02^2) in `dtype` (floating leaves).

  The normal leaves are windows at different offsets into one random vector: one random draw compiles in a second
  where a draw per leaf took 40 s to compile for the VAE's 240 leaves (on a CPU); the timings do not care that the
  leaves overlap."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  spread = 1_000_000
  pool_size = max(int(np.prod(leaf.shape)) for _, leaf in flat) + spread

  def make(key):
    pool = 0.02 * jax.random.normal(key, (pool_size,), jnp.float32)
    leaves = []
    for i, (path, leaf) in enumerate(flat):
      name = str(getattr(path[-1], "key", path[-1]))
      d = dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.dtype
      if name == "scale":
        leaves.append(jnp.ones(leaf.shape, d))
      elif name == "bias":
        leaves.append(jnp.zeros(leaf.shape, d))
      else:
        offset = (i * 7919) % spread
        leaves.append(pool[offset:offset + int(np.prod(leaf.shape))].reshape(leaf.shape).astype(d))
    return jax.tree_util.tree_unflatten(treedef, leaves)

  return jax.jit(make)(jax.random.PRNGKey(seed))


def build_pipeline(cfg: dict, dtype):
  """vdm_jax's CogVideoXPipeline from the configs, with random weights."""
  from vdm_jax.convert import cogvideox_transformer, cogvideox_vae, t5  # pylint: disable=g-import-not-at-top
  from vdm_jax.models.vae import inference_params  # pylint: disable=g-import-not-at-top
  from vdm_jax.parallel.sharding import strip_boxes  # pylint: disable=g-import-not-at-top
  from vdm_jax.pipelines import cogvideox  # pylint: disable=g-import-not-at-top
  from vdm_jax.text.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  transformer = cogvideox_transformer.module_from_config(cfg["transformer"], dtype=dtype,
                                                         attention_backend=FLAGS.backend)
  vae = cogvideox_vae.module_from_config(cfg["vae"], dtype=dtype)
  text_encoder = t5.encoder_from_config(cfg["t5"], dtype=dtype)
  ids = jnp.zeros((1, 8), jnp.int32)
  text_abstract = strip_boxes(jax.eval_shape(lambda: text_encoder.init(jax.random.PRNGKey(0), ids))["params"])
  return cogvideox.CogVideoXPipeline(
      tokenizer=ByteTokenizer(), text_encoder=text_encoder, text_params=random_params(text_abstract, dtype, 1),
      transformer=transformer,
      transformer_params=random_params(cogvideox_transformer.abstract_params(transformer), dtype, 2), vae=vae,
      vae_params=inference_params(random_params(cogvideox_vae.abstract_params(vae), dtype, 3)),
      scheduler=cogvideox.scheduler_settings({"_class_name": "CogVideoXDDIMScheduler", **common.SCHEDULER}),
      dtype=dtype)


def pipeline_job(info: dict) -> None:
  cfg = common.configs(FLAGS.size, FLAGS.tiny)
  video = cfg["video"]
  dtype = jnp.bfloat16
  start = time.perf_counter()
  pipe = build_pipeline(cfg, dtype)
  jax.block_until_ready(pipe.transformer_params)
  common.emit(**info, stage="build", seconds=time.perf_counter() - start, peak_gb=_peak_gb())
  call = functools.partial(pipe, common.PROMPT, "", num_frames=video["num_frames"], height=video["height"],
                           width=video["width"], guidance_scale=common.GUIDANCE,
                           max_sequence_length=video["text_length"],
                           progress=False)
  # Rough seconds each stage needs at full size, compile included, to skip it rather than be killed mid-way.
  needs = {"step": 60, "t5": 20, "vae": 60, "e2e": 60} if not FLAGS.tiny else {}
  for stage in FLAGS.stages:
    if common.skip_if_late(stage, info, needs.get(stage, 5)):
      continue
    try:
      row = {}
      if stage == "step":
        row = common.step_stage(lambda steps: call(num_inference_steps=steps, output_type="latent"))
      elif stage == "t5":
        encode = lambda: pipe.encode_prompt(["", common.PROMPT], video["text_length"])
        row["first_call_s"] = bench_common.timed(encode, jax.block_until_ready)[0]
        row["seconds"] = bench_common.median_time(encode, FLAGS.repeats, sync=jax.block_until_ready)
      elif stage == "vae":
        shape = (1, *common.latent_shape(video), cfg["vae"]["latent_channels"])
        latents = jax.random.normal(jax.random.PRNGKey(4), shape, jnp.float32).astype(dtype)
        row["first_call_s"], frames = bench_common.timed(lambda: pipe.decode_latents(latents))
        row["seconds"] = bench_common.timed(lambda: pipe.decode_latents(latents))[0]
        row["frames_shape"] = list(frames.shape)
        del frames
      elif stage == "e2e":
        row["first_call_s"] = bench_common.timed(lambda: call(num_inference_steps=1))[0]
        row["seconds"], frames = bench_common.timed(lambda: call(num_inference_steps=FLAGS.e2e_steps))
        row.update(steps=FLAGS.e2e_steps, frames_shape=list(frames.shape),
                   finite=bool(np.isfinite(frames).all()))
        del frames
      else:
        raise ValueError(f"unknown stage {stage!r}")
      common.emit(**info, stage=stage, **row, peak_gb=_peak_gb())
    except Exception as e:  # pylint: disable=broad-except  # one stage failing must not lose the others
      common.emit(**info, stage=stage, error=bench_common.short_error(e), peak_gb=_peak_gb())


def train_job(info: dict) -> None:
  import optax  # pylint: disable=g-import-not-at-top
  from vdm_jax.convert import cogvideox_transformer  # pylint: disable=g-import-not-at-top
  from vdm_jax.diffusion import objectives  # pylint: disable=g-import-not-at-top
  from vdm_jax.pipelines.cogvideox import scheduler_settings  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import flops  # pylint: disable=g-import-not-at-top
  cfg = common.configs(FLAGS.size, FLAGS.tiny)
  t, h, w = common.latent_shape(cfg["video"])
  batch, text_length = FLAGS.batch, cfg["video"]["text_length"]
  matmul = bench_common.matmul_flops_per_s(1024 if FLAGS.tiny else 8192, jnp.bfloat16, repeats=10) / 1e12
  common.emit(**info, stage="matmul", tflops=matmul)
  module = cogvideox_transformer.module_from_config(cfg["transformer"], dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                                    attention_backend=FLAGS.backend, remat_policy=FLAGS.remat)
  params = random_params(cogvideox_transformer.abstract_params(module), jnp.float32)
  tx = optax.adamw(1e-5)
  opt_state = tx.init(params)
  schedule = scheduler_settings({"_class_name": "CogVideoXDDIMScheduler", **common.SCHEDULER}).schedule
  abar_table = jnp.asarray(schedule.alphas_cumprod, jnp.float32)

  def step(params, opt_state, x0, text, key):
    t_key, noise_key = jax.random.split(key)
    timesteps = jax.random.randint(t_key, (x0.shape[0],), 0, abar_table.shape[0])
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    abar = abar_table[timesteps]
    x_t, target = objectives.add_noise(x0, noise, abar), objectives.velocity(x0, noise, abar)

    def loss_fn(p):
      pred = module.apply({"params": p}, x_t.astype(jnp.bfloat16), timesteps, text)
      return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  x0 = jax.random.normal(jax.random.PRNGKey(1), (batch, t, h, w, 16), jnp.float32)
  text = jax.random.normal(jax.random.PRNGKey(2), (batch, text_length, cfg["transformer"]["text_embed_dim"]),
                           jnp.bfloat16)
  key = jax.random.PRNGKey(3)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x0, text, key).compile()
  row = {"batch": batch, "remat": FLAGS.remat, "compile_s": time.perf_counter() - start,
         "xla_peak_estimate_gb": flops.memory_summary(compiled).get("peak_estimate", float("nan")) / 2 ** 30}
  params, opt_state, loss = compiled(params, opt_state, x0, text, key)
  loss.block_until_ready()
  keys = (jax.random.fold_in(key, i) for i in range(FLAGS.repeats))

  def train_step():  # params and optimizer state are donated: each step takes the previous one's
    nonlocal params, opt_state, loss
    params, opt_state, loss = compiled(params, opt_state, x0, text, next(keys))
    return loss

  times = bench_common.wall_times(train_step, FLAGS.repeats, sync=jax.block_until_ready)
  seconds = float(np.median(times))
  width = cfg["transformer"]["num_attention_heads"] * cfg["transformer"]["attention_head_dim"]
  tokens = t * h * w // 4 + text_length
  model_flops = 3 * batch * flops.transformer_flops(tokens, width, 4 * width, cfg["transformer"]["num_layers"])
  peak = flops.peak_tflops(jax.devices()[0], "bfloat16")
  row.update(seconds=seconds, times=times, loss=float(loss), tokens=tokens, model_tflop=model_flops / 1e12,
             **flops.utilisation(model_flops, 1.0 / seconds, peak), peak_tflops=peak,
             vs_measured_matmul=model_flops / seconds / 1e12 / matmul, peak_gb=_peak_gb())
  common.emit(**info, stage="train", **row)


def main(argv):
  del argv
  info = {"framework": "jax", "job": FLAGS.job, "size": FLAGS.size, "backend": FLAGS.backend,
          "device": jax.devices()[0].device_kind, "jax": jax.__version__}
  if FLAGS.job == "pipeline":
    pipeline_job(info)
  else:
    try:
      train_job(info)
    except Exception as e:  # pylint: disable=broad-except
      common.emit(**info, stage="train", batch=FLAGS.batch, remat=FLAGS.remat, error=bench_common.short_error(e),
                  peak_gb=_peak_gb())


if __name__ == "__main__":
  app.run(main)
