r"""Packing vs padding vs buckets: the t2v DiT's training step on one set of clips of mixed sizes, three ways.

    python -m experiments.bench_packing                       # the sizes=mixed buckets plus images, 48 clips
    python -m experiments.bench_packing --image_fraction 0 --length 288

The clips are latent shapes of `configs/t2v.py:sizes=mixed`'s buckets (64x64, 48x80, 80x48 at 17 and 33 frames:
5 or 9 latent frames at 8x8, 6x10, 10x6) and, for `--image_fraction` of them, single 64x64 frames (stage 1's
images), drawn at random. Each way trains on all of them with the same loss (vdm_jax.diffusion.objectives), the
DiT of that config (float32, random weights):
  - padded: one batch, every clip padded to the longest (a row per clip, the padding masked out);
  - packed: rows of `--length` tokens holding several clips each (vdm_jax.models.packing, first fit);
  - buckets: one batch per size (what a bucketed run does, over as many steps).
It reports each way's time for the whole set (jitted value and gradient, median of `--repeats` after a warm-up),
the share of the rows' tokens that are real, and clip tokens per second. Compile times are left out: a run
compiles each signature once.
"""
from __future__ import annotations

import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import t2v as t2v_configs
from experiments import bench_common
from vdm_jax.diffusion import objectives
from vdm_jax.models import packing
from vdm_jax.models.dit import DiT

FLAGS = flags.FLAGS
flags.DEFINE_integer("clips", 48, "Clips in the set.")
flags.DEFINE_float("image_fraction", 0.25, "Share of the clips that are single frames.")
flags.DEFINE_integer("length", 144, "Tokens per packed row (at least the longest clip: 144 at 64x64x33).")
flags.DEFINE_integer("repeats", 5, "Timed repetitions of each way (after one warm-up).")
flags.DEFINE_integer("seed", 0, "Draws the clips.")
flags.DEFINE_string("out", "", "Also write the result as JSON here.")

# Latent (T, H, W) of the sizes=mixed buckets (VAE: 4x time, 8x space) and of a 64x64 image.
VIDEO_SHAPES = [(5, 8, 8), (5, 6, 10), (5, 10, 6), (9, 8, 8), (9, 6, 10), (9, 10, 6)]
IMAGE_SHAPE = (1, 8, 8)
CHANNELS = 16


def _model() -> tuple[DiT, int, int]:
  c = t2v_configs.get_config("sizes=mixed")
  model = DiT(**c.model.to_dict(), in_channels=CHANNELS, text_dim=c.text.d_model,
              max_text_length=c.text.max_length, sample_frames=5, sample_height=8, sample_width=8)
  return model, c.text.max_length, c.text.d_model


def _shapes(rng) -> list[tuple[int, int, int]]:
  images = int(round(FLAGS.image_fraction * FLAGS.clips))
  videos = [VIDEO_SHAPES[i] for i in rng.integers(0, len(VIDEO_SHAPES), FLAGS.clips - images)]
  return [IMAGE_SHAPE] * images + videos


def _loss_fn(model, layout):
  """Flow-matching loss of the packed rows of `layout` (a row per clip when padding)."""
  def loss(params, x0, noise, t, text, seg):
    x_t, model_t, target, weight = objectives.noised_packed("flow", x0, noise, t, seg.slot_index, None)
    out = model.apply({"params": params}, x_t, model_t, text, packing=seg)
    return objectives.packed_loss(out, target, weight, seg.segment_ids)
  return jax.jit(jax.value_and_grad(loss))


def _packed_inputs(clips, noise, text, t, layout):
  x0, seg = packing.pack(clips, layout)
  eps, _ = packing.pack(noise, layout)
  return x0, eps, packing.per_slot(t, layout), packing.per_slot(text, layout), seg


def _time(fn, args) -> float:
  return bench_common.median_time(lambda: fn(*args), FLAGS.repeats, warmup=1, sync=jax.block_until_ready)


def main(_):
  rng = np.random.default_rng(FLAGS.seed)
  model, text_len, text_dim = _model()
  shapes = _shapes(rng)
  clips = [rng.standard_normal(s + (CHANNELS,)).astype(np.float32) for s in shapes]
  noise = [rng.standard_normal(s + (CHANNELS,)).astype(np.float32) for s in shapes]
  text = rng.standard_normal((len(shapes), text_len, text_dim)).astype(np.float32)
  t = rng.uniform(0.0, 1.0, len(shapes)).astype(np.float32)
  params = model.init(jax.random.key(0), clips[-1][None], t[:1], text[:1])["params"]
  tokens = sum(int(np.prod(s)) // 4 for s in shapes)
  longest = max(int(np.prod(s)) // 4 for s in shapes)

  ways = {"padded": packing.plan(shapes, length=longest, slots=1),
          "packed": packing.plan(shapes, length=FLAGS.length)}
  result = {"clips": len(shapes), "clip_tokens": tokens, "shapes": dict(collections.Counter(map(str, shapes))),
            "devices": jax.device_count(), "backend": jax.default_backend()}
  for name, layout in ways.items():
    seconds = _time(_loss_fn(model, layout), (params,) + _packed_inputs(clips, noise, text, t, layout))
    result[name] = {"seconds": seconds, "rows": layout.rows, "length": layout.length, "fill": layout.fill,
                    "clip_tokens_per_s": tokens / seconds}

  # Buckets: one unpacked step per size, on the clips of that size.
  def bucket_loss(p, x0, eps, tt, tx):
    x_t, model_t, target, _ = objectives.noised("flow", x0, eps, tt, None)
    return jnp.mean(objectives.mse_per_example(model.apply({"params": p}, x_t, model_t, tx), target))
  grad = jax.jit(jax.value_and_grad(bucket_loss))
  seconds = 0.0
  for shape in sorted(set(shapes)):
    idx = [i for i, s in enumerate(shapes) if s == shape]
    args = (params, np.stack([clips[i] for i in idx]), np.stack([noise[i] for i in idx]), t[idx], text[idx])
    seconds += _time(grad, args)
  result["buckets"] = {"seconds": seconds, "steps": len(set(shapes)), "fill": 1.0,
                       "clip_tokens_per_s": tokens / seconds}

  print(f"{len(shapes)} clips, {tokens} clip tokens ({result['shapes']}), on {jax.default_backend()}:")
  print("| way | rows x length | real tokens | seconds | clip tokens/s |\n|---|---|---|---|---|")
  for name in ("padded", "packed", "buckets"):
    r = result[name]
    rows = f"{r['rows']} x {r['length']}" if "rows" in r else f"{r['steps']} steps"
    print(f"| {name} | {rows} | {r['fill']:.0%} | {r['seconds']:.3f} | {r['clip_tokens_per_s']:.0f} |")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
