r"""DiT vs diffusers' CogVideoXTransformer3DModel (CPU or GPU): forward and training-step time, peak memory, FLOP/s.

    python -m experiments.bench_dit                       # 2b width (1920, 30 x 64), 2 layers, 13x20x30 + 226 text
    python -m experiments.bench_dit --frames 13 --height 60 --width 90 --skip_torch --skip_train \
        --backend chunked                                 # the full CogVideoX latent (~17,800 tokens): memory
    python -m experiments.bench_dit --dtype bfloat16 --backend cudnn --height 60 --width 90 --rounds 1 \
        --repeats 5                                       # on a GPU (torch on 'cuda' when it sees one)

On a GPU name `--backend cudnn`: 'auto' there is jax.nn.dot_product_attention(implementation=None), which in jax
0.10-0.11 is XLA's attention; it materialises the [B, H, L, L] float32 logits, and the training step on the full
latent asks for 168 GiB (measured on an H100).

Both models get identical random weights: a torch subprocess builds the diffusers model (seeded, perturbed so that
norms and biases are not trivial), saves it with `save_pretrained`, and times it; a JAX subprocess loads that folder
with `load_transformer` and times the same inputs. Each framework runs in its own process so that its peak RSS
(`ru_maxrss`, weights included) is its own; on a GPU the device's peak allocated memory is reported too. Training
step = forward + backward of an MSE loss w.r.t. all params (and, for JAX, jitted; compile time is reported
separately). FLOP/s use an analytic count (matmuls only, backward = 2x forward) against this machine's measured matmul
peak in `--dtype` (a jitted 4096^3 matmul on a CPU, 8192^3 on a GPU). Times are medians of `repeats` within a worker
(torch synchronises the GPU before reading the clock; JAX blocks until ready); the workers alternate for `rounds`
rounds and the best round's numbers are reported (the machine is shared: every round's numbers and the load average
are printed too).

`--dtype` (float32, bfloat16, float16) is the weights' and compute dtype of both models: the float32 weights are
saved once, torch casts its model with `.to(dtype)` and JAX loads them with `load_transformer(dtype=...)`. Outside
float32, torch also runs the float32 model once on the same device, and the errors of both low-precision outputs
against that float32 output are reported beside their difference to each other.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

from experiments import bench_common

FLAGS = flags.FLAGS
flags.DEFINE_integer("frames", 13, "Latent frames.")
flags.DEFINE_integer("height", 20, "Latent height.")
flags.DEFINE_integer("width", 30, "Latent width.")
flags.DEFINE_integer("layers", 2, "Transformer layers.")
flags.DEFINE_integer("heads", 30, "Attention heads (x 64 channels).")
flags.DEFINE_integer("text_length", 226, "Text tokens.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up).")
flags.DEFINE_integer("rounds", 2, "Alternating torch/jax worker rounds (the machine is shared: the best round counts).")
flags.DEFINE_string("backend", "auto", "DiT attention backend: auto, xla, chunked, cudnn (GPU; see above).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Weights and compute dtype of both models.")
flags.DEFINE_string("torch_device", "auto", "Torch device: 'auto' (cuda when torch sees a GPU, else cpu), 'cpu', "
                    "'cuda'.")
flags.DEFINE_string("remat", "none", "DiT remat policy for the training step.")
flags.DEFINE_bool("ynn_reductions", False, "On a CPU, compile with YNNPACK's reductions (XLA's default; the t2v "
                  "trainer's DiT turns them off: train.cpu_ynn_reductions).")
flags.DEFINE_bool("skip_torch", False, "Only run JAX (diffusers weights are still created, in a subprocess).")
flags.DEFINE_bool("skip_train", False, "Only time the forward pass.")
flags.DEFINE_string("worker", "", "Internal: run as the 'torch' or 'jax' worker.")
flags.DEFINE_string("folder", "", "Internal: the model folder shared by the workers.")


def _config() -> dict:
  return dict(num_attention_heads=FLAGS.heads, attention_head_dim=64, num_layers=FLAGS.layers, in_channels=16,
              out_channels=16, text_embed_dim=4096, time_embed_dim=512, max_text_seq_length=FLAGS.text_length)


def _inputs():
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(1, FLAGS.frames, FLAGS.height, FLAGS.width, 16)).astype(np.float32)
  text = rng.normal(size=(1, FLAGS.text_length, 4096)).astype(np.float32)
  return latents, np.array([500.0], np.float32), text


def torch_worker() -> dict:
  """Builds and saves the diffusers model (if the folder is empty) and times it."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import CogVideoXTransformer3DModel  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = CogVideoXTransformer3DModel(**_config()).eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn(p.shape, generator=generator))
  model.save_pretrained(FLAGS.folder)
  if FLAGS.skip_torch:
    return {}
  device = FLAGS.torch_device
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  gpu = device.startswith("cuda")
  sync = torch.cuda.synchronize if gpu else lambda: None
  latents, t, text = _inputs()
  x = torch.from_numpy(latents.transpose(0, 1, 4, 2, 3).copy()).to(device)
  t, text = torch.from_numpy(t).to(device), torch.from_numpy(text).to(device)
  model = model.to(device)
  to_numpy = lambda y: y.float().cpu().numpy().transpose(0, 1, 3, 4, 2)
  forward = lambda: model(x, text, t, return_dict=False)[0]
  result = {"threads": torch.get_num_threads(), "device": device, "dtype": FLAGS.dtype}
  if FLAGS.dtype != "float32":
    with torch.no_grad():
      reference = to_numpy(forward())
    np.save(os.path.join(FLAGS.folder, "torch_out_float32.npy"), reference)
    dtype = getattr(torch, FLAGS.dtype)
    model, x, text = model.to(dtype), x.to(dtype), text.to(dtype)
  if gpu:
    torch.cuda.reset_peak_memory_stats()
  baseline = bench_common.peak_rss("GiB")

  def timed_forward():
    with torch.no_grad():
      out = forward()
    sync()
    return out

  out_tensor = timed_forward()
  result.update(rss_before_gb=baseline, forward_s=bench_common.median_time(timed_forward, FLAGS.repeats))
  result["forward_peak_rss_gb"] = bench_common.peak_rss("GiB")
  if gpu:
    result["forward_peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
  out = to_numpy(out_tensor)
  np.save(os.path.join(FLAGS.folder, "torch_out.npy"), out)
  if FLAGS.dtype != "float32":
    errors = bench_common.errors(out, reference)
    result.update(max_abs_err_vs_float32=errors["max_abs"], max_rel_err_vs_float32=errors["max_rel"])
  if not FLAGS.skip_train:
    target = torch.zeros_like(out_tensor)

    def train_step():
      model.zero_grad(set_to_none=True)
      loss = torch.mean((forward().float() - target.float()) ** 2)
      loss.backward()
      sync()

    result["train_step_s"] = bench_common.median_time(train_step, FLAGS.repeats, warmup=1)
    result["train_peak_rss_gb"] = bench_common.peak_rss("GiB")
    if gpu:
      result["train_peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
  return result


def flops(tokens: int, video_tokens: int, width: int, layers: int, text_length: int) -> float:
  """Analytic matmul FLOPs of one forward (multiply-add = 2)."""
  per_layer = 2 * tokens * width * width * (4 + 8) + 2 * 2 * tokens * tokens * width
  embed = 2 * video_tokens * 64 * width + 2 * text_length * 4096 * width + 2 * video_tokens * width * 64
  return layers * per_layer + embed


def jax_worker() -> dict:
  """Loads the saved folder with load_transformer and times the jitted forward and training step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  from vdm_jax.convert.cogvideox_transformer import load_transformer  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(FLAGS.dtype)
  gpu = jax.default_backend() == "gpu"
  size = 8192 if gpu else 4096  # a GPU needs a larger product to reach its peak
  peak = bench_common.matmul_flops_per_s(size, dtype, repeats=5)
  peak_gpu_gb = lambda: bench_common.device_peak_gb(jax.devices()[0], missing=float("nan"))

  module, params = load_transformer(FLAGS.folder, dtype=dtype, attention_backend=FLAGS.backend,
                                    remat_policy=FLAGS.remat)
  latents, t, text = (jnp.asarray(v) for v in _inputs())
  baseline = bench_common.peak_rss("GiB")
  options = xla_cpu.compiler_options(ynn_reductions=FLAGS.ynn_reductions)  # None off the CPU
  forward = jax.jit(lambda p, x, t, c: module.apply({"params": p}, x, t, c), compiler_options=options)
  start = time.perf_counter()
  out = forward(params, latents, t, text).block_until_ready()
  result = {"devices": str(jax.devices()), "dtype": FLAGS.dtype, "rss_before_gb": baseline,
            "matmul_peak_gflops": peak / 1e9, "forward_compile_and_first_s": time.perf_counter() - start,
            "forward_s": bench_common.median_time(lambda: forward(params, latents, t, text), FLAGS.repeats,
                                                  sync=jax.block_until_ready)}
  result["forward_peak_rss_gb"] = bench_common.peak_rss("GiB")
  if gpu:
    result["forward_peak_gpu_gb"] = peak_gpu_gb()
  out = np.asarray(out, np.float32)
  for name, suffix in (("torch_out.npy", "vs_torch"), ("torch_out_float32.npy", "vs_torch_float32")):
    if os.path.exists(path := os.path.join(FLAGS.folder, name)):
      errors = bench_common.errors(out, np.load(path))
      result.update({f"max_rel_err_{suffix}": errors["max_rel"], f"max_abs_err_{suffix}": errors["max_abs"]})
  video_tokens = FLAGS.frames * FLAGS.height * FLAGS.width // 4
  tokens = video_tokens + FLAGS.text_length
  fwd_flops = flops(tokens, video_tokens, FLAGS.heads * 64, FLAGS.layers, FLAGS.text_length)
  result.update(tokens=tokens, forward_gflop=fwd_flops / 1e9,
                forward_gflops_per_s=fwd_flops / result["forward_s"] / 1e9)
  if not FLAGS.skip_train:
    def loss(p):
      return jnp.mean(jnp.square(module.apply({"params": p}, latents, t, text).astype(jnp.float32)))

    grad = jax.jit(jax.grad(loss), compiler_options=options)
    start = time.perf_counter()
    jax.block_until_ready(grad(params))
    result["train_compile_and_first_s"] = time.perf_counter() - start
    result["train_step_s"] = bench_common.median_time(lambda: grad(params), FLAGS.repeats,
                                                      sync=jax.block_until_ready)
    result["train_peak_rss_gb"] = bench_common.peak_rss("GiB")
    if gpu:
      result["train_peak_gpu_gb"] = peak_gpu_gb()
    result["train_gflops_per_s"] = 3 * fwd_flops / result["train_step_s"] / 1e9
  return result


def _run_worker(name: str, folder: str) -> dict:
  args = [f"--worker={name}", f"--folder={folder}"]
  args += [f"--{k}={getattr(FLAGS, k)}" for k in ("frames", "height", "width", "layers", "heads", "text_length",
                                                   "repeats", "backend", "dtype", "torch_device", "remat",
                                                   "ynn_reductions", "skip_torch", "skip_train")]
  return bench_common.run_worker("experiments.bench_dit", args, name=name)


def _best(results: list[dict]) -> dict:
  """Per key, the best value over rounds (least time and memory, most FLOP/s): a busy moment of the machine does
  not count."""
  best = lambda k: max if "gflops" in k else min
  return {k: best(k)(r[k] for r in results) if isinstance(results[0][k], float) else results[0][k]
          for k in results[0]}


def main(_):
  if FLAGS.worker:
    bench_common.print_result(torch_worker() if FLAGS.worker == "torch" else jax_worker())
    return
  print(f"load average at start: {os.getloadavg()}")
  torch_results, jax_results = [], []
  with tempfile.TemporaryDirectory() as folder:
    for i in range(FLAGS.rounds):
      torch_results.append(_run_worker("torch", folder))
      jax_results.append(_run_worker("jax", folder))
      if torch_results[-1]:
        print(f"round {i}: forward torch {torch_results[-1]['forward_s']:.4g} s jax {jax_results[-1]['forward_s']:.4g}"
              f" s; train step torch {torch_results[-1].get('train_step_s', float('nan')):.4g} s jax "
              f"{jax_results[-1].get('train_step_s', float('nan')):.4g} s; load {os.getloadavg()}")
  torch_result, jax_result = (_best(torch_results) if torch_results[0] else {}), _best(jax_results)
  jax_result["matmul_utilisation_forward"] = jax_result["forward_gflops_per_s"] / jax_result["matmul_peak_gflops"]
  if "train_gflops_per_s" in jax_result:
    jax_result["matmul_utilisation_train"] = jax_result["train_gflops_per_s"] / jax_result["matmul_peak_gflops"]
  print("diffusers (best of rounds):", json.dumps(torch_result, indent=1))
  print("vdm_jax (best of rounds):", json.dumps(jax_result, indent=1))
  if torch_result:
    print(f"forward: jax {jax_result['forward_s']:.4g} s, torch {torch_result['forward_s']:.4g} s, "
          f"torch/jax time ratio {torch_result['forward_s'] / jax_result['forward_s']:.2f}")
    if "train_step_s" in torch_result:
      print(f"train step: jax {jax_result['train_step_s']:.4g} s, torch {torch_result['train_step_s']:.4g} s, "
            f"torch/jax time ratio {torch_result['train_step_s'] / jax_result['train_step_s']:.2f}")
    line = (f"outputs ({FLAGS.dtype}): jax vs torch max abs {jax_result['max_abs_err_vs_torch']:.3g} "
            f"(rel {jax_result['max_rel_err_vs_torch']:.3g})")
    if "max_abs_err_vs_torch_float32" in jax_result:
      line += (f"; vs torch float32: jax max abs {jax_result['max_abs_err_vs_torch_float32']:.3g} "
               f"(rel {jax_result['max_rel_err_vs_torch_float32']:.3g}), torch max abs "
               f"{torch_result['max_abs_err_vs_float32']:.3g} (rel {torch_result['max_rel_err_vs_float32']:.3g})")
    print(line)
  print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
