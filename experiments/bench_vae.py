"""Times VAE encode and decode: vdm_jax (jit, CPU) against diffusers' AutoencoderKLCogVideoX (torch, CPU), with
identical random weights and input, at the real CogVideoX channel configuration.

    python -m experiments.bench_vae                                   # 9x64x64 and 17x128x128
    python -m experiments.bench_vae --sizes 9x64x64 --repeats 3
    python -m experiments.bench_vae --stream_memory                   # JAX decode peak RSS: 5 vs 20 latent frames
    python -m experiments.bench_vae --convs                           # one 3x3x3 conv: Conv3d impls vs torch

Random weights are created once with diffusers (seeded, perturbed so norms/biases are not trivial) and saved as a
diffusers folder; each framework then runs in its own subprocess, which loads that folder (vdm_jax through
`load_vae`, without torch), warms up (jit compile / first call), times `repeats` calls of encode and of decode
(both with their default frame batching) and reports the best time, and its peak RSS (`ru_maxrss`, which includes
the weights and, for JAX, compilation). The JAX latents and reconstructions are also compared with diffusers' (max
relative error, end to end).
Prints one line per size and framework and the JAX/diffusers time ratios (< 1: JAX faster).

`--stream_memory` instead decodes 5 and 20 latent frames (17 and 80 frames at 64x64) with the streamed (chunked)
decoder, and 20 as one whole clip, each in a fresh process, and prints the three peak RSS values.
`--convs` times one 3x3x3 convolution at the tiny VAE's and CogVideoX's widths, forward and forward + backward
(float32), with each of vdm_jax's Conv3d implementations ('frames', 'xla'), each compiled as vdm_jax compiles it
(`vdm_jax.xla_cpu`: XLA's own convolutions) and with jaxlib's defaults ('+ynn': YNNPACK's), and torch's conv3d:
what Conv3d's choice on CPU ('frames') and `vdm_jax.xla_cpu` rest on, and where XLA:CPU's convolutions lose to
torch's.
Timings depend on what else runs on the machine: note the load average printed at the start.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from experiments import bench_common

REAL = dict(block_out_channels=(128, 256, 256, 512), layers_per_block=3, latent_channels=16, norm_num_groups=32)


def _worker_jax(model_dir: str, video_file: str, out_dir: str, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vdm_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  from vdm_jax.convert.cogvideox_vae import load_vae  # pylint: disable=g-import-not-at-top
  from vdm_jax.models.vae import inference_params  # pylint: disable=g-import-not-at-top

  module, params = load_vae(model_dir)
  params = jax.device_put(inference_params(params))  # per-tap kernels on the CPU, as the pipelines use them
  loaded = bench_common.peak_rss("MiB")
  video = jnp.asarray(np.load(video_file).transpose(0, 2, 3, 4, 1))  # [B, C, T, H, W] -> [B, T, H, W, C]
  encode = xla_cpu.jit(lambda p, x: module.apply({"params": p}, x, method="encode").mean)
  decode = xla_cpu.jit(lambda p, z: module.apply({"params": p}, z, method="decode"))
  start = time.perf_counter()
  latents = encode(params, video).block_until_ready()
  sample = decode(params, latents).block_until_ready()
  first = time.perf_counter() - start
  t_enc = bench_common.best_time(lambda: encode(params, video), repeats, sync=jax.block_until_ready)
  t_dec = bench_common.best_time(lambda: decode(params, latents), repeats, sync=jax.block_until_ready)
  np.save(os.path.join(out_dir, "jax_latents.npy"), np.asarray(latents).transpose(0, 4, 1, 2, 3))
  np.save(os.path.join(out_dir, "jax_sample.npy"), np.asarray(sample).transpose(0, 4, 1, 2, 3))
  return {"encode_s": t_enc, "decode_s": t_dec, "first_call_s": first, "rss_after_load_mb": loaded,
          "peak_rss_mb": bench_common.peak_rss("MiB")}


def _worker_torch(model_dir: str, video_file: str, out_dir: str, repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import AutoencoderKLCogVideoX  # pylint: disable=g-import-not-at-top

  torch.set_grad_enabled(False)
  model = AutoencoderKLCogVideoX.from_pretrained(model_dir).eval()
  loaded = bench_common.peak_rss("MiB")
  video = torch.from_numpy(np.load(video_file))
  start = time.perf_counter()
  latents = model.encode(video).latent_dist.mean
  model.decode(latents)
  first = time.perf_counter() - start
  t_enc = bench_common.best_time(lambda: model.encode(video).latent_dist.mean, repeats)
  t_dec = bench_common.best_time(lambda: model.decode(latents).sample, repeats)
  np.save(os.path.join(out_dir, "torch_latents.npy"), latents.numpy())
  np.save(os.path.join(out_dir, "torch_sample.npy"), model.decode(latents).sample.numpy())
  return {"encode_s": t_enc, "decode_s": t_dec, "first_call_s": first, "rss_after_load_mb": loaded,
          "peak_rss_mb": bench_common.peak_rss("MiB"), "threads": torch.get_num_threads()}


def _worker_stream(model_dir: str, frames: int, chunked: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from vdm_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  from vdm_jax.convert.cogvideox_vae import load_vae  # pylint: disable=g-import-not-at-top
  from vdm_jax.models.vae import inference_params  # pylint: disable=g-import-not-at-top

  module, params = load_vae(model_dir)
  params = jax.device_put(inference_params(params))  # per-tap kernels on the CPU, as the pipelines use them
  loaded = bench_common.peak_rss("MiB")
  latents = jax.random.normal(jax.random.PRNGKey(0), (1, frames, 8, 8, module.latent_channels))
  decode = xla_cpu.jit(lambda p, z: module.apply({"params": p}, z, chunked=chunked, method="decode"))
  start = time.perf_counter()
  video = decode(params, latents).block_until_ready()
  return {"frames": int(video.shape[1]), "seconds": time.perf_counter() - start, "rss_after_load_mb": loaded,
          "peak_rss_mb": bench_common.peak_rss("MiB")}


CONV_SHAPES = ((3, 11, 64, 8), (3, 11, 64, 16), (3, 7, 32, 32), (3, 5, 8, 64), (1, 11, 64, 128))  # B, T+2, H=W, C


def bench_convs(repeats: int) -> None:
  """Prints ms per forward and per forward + backward of one 3x3x3 conv (C -> C, 'same' in H, W, valid in time):
  each Conv3d impl compiled as vdm_jax compiles it (`vdm_jax.xla_cpu`: XLA's own convolutions) and with jaxlib's
  defaults ('+ynn': convolutions by YNNPACK), and torch's conv3d."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from vdm_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  from vdm_jax.models.vae import Conv3d  # pylint: disable=g-import-not-at-top
  for b, t, size, c in CONV_SHAPES:
    x = np.random.default_rng(0).normal(size=(b, t, size, size, c)).astype(np.float32)
    xj = jnp.asarray(x)
    cells = []
    for impl in ("frames", "xla"):
      conv = Conv3d(c, (3, 3, 3), (1, 1), impl=impl)
      params = conv.init(jax.random.PRNGKey(0), xj)
      loss = lambda p, v, conv=conv: jnp.sum(jnp.square(conv.apply(p, v)))
      for label, jit in ((impl, xla_cpu.jit), (impl + "+ynn", jax.jit)):
        forward, grad = jit(conv.apply), jit(jax.grad(loss, argnums=(0, 1)))
        fwd = bench_common.best_time(lambda f=forward, p=params: f(p, xj), repeats, sync=jax.block_until_ready)
        both = bench_common.best_time(lambda g=grad, p=params: g(p, xj), repeats, sync=jax.block_until_ready)
        cells.append((label, fwd, both))
    tconv = torch.nn.Conv3d(c, c, 3, padding=(0, 1, 1))
    tx = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()).requires_grad_(True)

    def torch_forward():
      with torch.no_grad():
        tconv(tx)

    def torch_step():
      tconv.zero_grad()
      torch.square(tconv(tx)).sum().backward()

    cells.append(("torch", bench_common.best_time(torch_forward, repeats), bench_common.best_time(torch_step, repeats)))
    text = "  ".join(f"{name} {f * 1e3:.1f} / {g * 1e3:.1f} ms" for name, f, g in cells)
    print(f"[{b}, {t}, {size}, {size}, {c}]  forward / forward+backward:  {text}")


def make_model(model_dir: str, seed: int = 0) -> None:
  """Random real-configuration AutoencoderKLCogVideoX saved as a diffusers folder (safetensors)."""
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import AutoencoderKLCogVideoX  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  model = AutoencoderKLCogVideoX(**REAL).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(model_dir)


def _run_worker(framework: str, model_dir: str, video_file: str = "", out_dir: str = "", repeats: int = 1,
                extra: tuple[str, ...] = ()) -> dict:
  args = ["--worker", framework, "--model_dir", model_dir, "--video", video_file, "--out_dir", out_dir, "--repeats",
          str(repeats), *extra]
  # A CPU benchmark: JAX on the CPU even where it sees an accelerator.
  return bench_common.run_worker("experiments.bench_vae", args, name=framework,
                                 env={"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="9x64x64,17x128x128", help="comma-separated TxHxW")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--stream_memory", action="store_true", help="peak RSS of streamed vs whole-clip decode")
  parser.add_argument("--convs", action="store_true", help="one 3x3x3 conv per Conv3d implementation vs torch")
  parser.add_argument("--worker", choices=("jax", "torch", "stream"), help=argparse.SUPPRESS)
  parser.add_argument("--frames", type=int, default=5, help=argparse.SUPPRESS)
  parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", help=argparse.SUPPRESS)
  parser.add_argument("--video", help=argparse.SUPPRESS)
  parser.add_argument("--out_dir", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker == "stream":
    bench_common.print_result(_worker_stream(args.model_dir, args.frames, not args.whole))
    return
  if args.worker:
    fn = _worker_jax if args.worker == "jax" else _worker_torch
    bench_common.print_result(fn(args.model_dir, args.video, args.out_dir, args.repeats))
    return

  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
  if args.convs:
    bench_convs(args.repeats)
    return
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = os.path.join(tmp, "vae")
    make_model(model_dir)
    if args.stream_memory:
      for frames, whole in ((5, False), (20, False), (20, True)):
        r = _run_worker("stream", model_dir, extra=("--frames", str(frames)) + (("--whole",) if whole else ()))
        print(f"decode {frames} latent frames -> {r['frames']} frames at 64x64, "
              f"{'whole clip' if whole else 'streamed'}: "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (after loading weights {r['rss_after_load_mb']:.0f} MB), "
              f"{r['seconds']:.1f} s with compile")
      return
    for size in args.sizes.split(","):
      t, h, w = (int(v) for v in size.split("x"))
      video = np.random.default_rng(0).uniform(-1, 1, (1, 3, t, h, w)).astype(np.float32)
      video_file = os.path.join(tmp, "video.npy")
      np.save(video_file, video)
      results = {fw: _run_worker(fw, model_dir, video_file, tmp, args.repeats) for fw in ("torch", "jax")}
      errors = {}
      for name in ("latents", "sample"):
        a, b = np.load(os.path.join(tmp, f"jax_{name}.npy")), np.load(os.path.join(tmp, f"torch_{name}.npy"))
        errors[name] = bench_common.errors(a, b)["max_rel"]
      for fw, r in results.items():
        print(f"{size} {fw:5s} encode {r['encode_s']:.3f} s  decode {r['decode_s']:.3f} s  first call "
              f"{r['first_call_s']:.1f} s  RSS after load {r['rss_after_load_mb']:.0f} MB  peak RSS "
              f"{r['peak_rss_mb']:.0f} MB")
      ratio_enc = results["jax"]["encode_s"] / results["torch"]["encode_s"]
      ratio_dec = results["jax"]["decode_s"] / results["torch"]["decode_s"]
      print(f"{size} JAX/diffusers time ratio: encode {ratio_enc:.2f}  decode {ratio_dec:.2f}  "
            f"(max rel err latents {errors['latents']:.1e}, decoded {errors['sample']:.1e})")


if __name__ == "__main__":
  main()
