"""The `t2v` experiment: a DiT on VAE latents of Captioned Shapes, conditioned on a byte-level text encoder trained
with it (cross-attention to the text, CogVideoX's SNR shift, text dropout for classifier-free guidance).

    python -m experiments.train --config configs/vae.py --workdir /tmp/vae
    python -m experiments.train --config configs/t2v.py --config.vae.workdir=/tmp/vae --workdir /tmp/t2v
    python -m experiments.train --config configs/t2v.py:dtype=bfloat16 --config.vae.workdir=/tmp/vae --workdir W
    python -m experiments.train --config configs/t2v.py:recipe=v_prediction --config.vae.workdir=/tmp/vae --workdir W
    python -m experiments.sample --workdir /tmp/t2v --prompt "a red circle moving left" --num_samples 4 --seed 0 \\
        --out /tmp/samples

It needs a trained VAE (`configs/vae.py`, or `--config.vae.path=<CogVideoX>/vae`); the first run encodes the
training clips into a latent cache next to the VAE. `python -m experiments.quickstart` runs the whole chain with
this config's default recipe. Recipes at `size=tiny` (results in docs/recipes.md):
- `recipe=flow` (default): a rectified flow with SD3's logit-normal times shifted toward noise by 4.5, sampled with
  25 Euler steps at guidance 2; 4000 steps of 16 clips from the first 4096 training clips. Of the objectives
  measured it is the one whose squares keep their corners.
- `recipe=v_prediction`: CogVideoX's objective (v-prediction, zero terminal SNR, uniform times), sampled with 25
  DDIM steps at guidance 4; 3000 steps of 16 clips from the whole training split.
`dtype=bfloat16`: the DiT computes in bfloat16 (parameters stay float32). Where the CPU multiplies bfloat16 in
hardware (AMX; `vdm_jax.xla_cpu.has_amx_bf16`) its step is faster, so the `flow` recipe trains 5500 steps in the
minutes of 4000 at float32 (the DiT is still learning at 4000).

`conditions=all`: one model for text-to-video and image and video prompts (docs/conditioning.md): each clip draws
a task of Open-Sora's kind of mix (image-to-video most often), extension gives 9 of the 17 frames.

`data=folder`: the kept clips of a curated folder of real videos (`experiments.curate`'s output), at 64x64x17:
`configs/t2v.py:data=folder,folder=OUT` or `--config.input.folder=OUT`, with a VAE trained the same way
(`configs/vae.py:data=folder`); the probe, which reads Captioned Shapes, is skipped.

`sizes=mixed`: one model for several sizes and durations (vdm_jax.data.buckets): Captioned Shapes at 64x64, 48x80
and 80x48, 17 and 33 frames, every batch from one of them; it samples any of them (`experiments.sample --height
--width --num_frames`). With `stage=1|2|3` the same model trains in stages (images at 64, video at 32, then the
full sizes at half the peak learning rate), each run starting from the previous one's parameters:
`--config.init_from=<previous workdir>` (`experiments.quickstart --preset sizes_staged` runs all three).

Evaluators (`config.evals`, vdm_jax/eval/evaluators/): the validation-loss grid and the probe, at the end
(`--config.train.eval_every=N` or `--config.evals.<name>.every_steps=N`); `fvd=N` adds FVD of N samples against N
real clips beside its floor and the VAE's reconstructions
(`experiments.evaluate --config configs/t2v.py:fvd=256 --config.vae.workdir=V --workdir W --evals fvd`).

`lora=R`: fine-tune a trained run with rank-R adapters on the attention projections (docs/lora.md):
`experiments.train --config configs/t2v.py:lora=8 --config.init_from=/tmp/t2v --config.vae.workdir=/tmp/vae ...`.

`runlocal` shrinks everything (the 32x32x9_tiny dataset, a 2-layer DiT, a few steps) for tests; it keeps the
`v_prediction` recipe unless a recipe is named.
"""
from vdm_jax.train.config import ConfigError, base_config, parse_arg, use_folder, use_fvd, use_lora

SIZES = ("tiny",)
RECIPES = ("flow", "v_prediction")
DTYPES = ("float32", "bfloat16")
CONDITIONS = ("", "all")
MIXED_SIZES = ("", "mixed")
STAGES = ("", "1", "2", "3")
# The buckets of `sizes=mixed` (vdm_jax.data.buckets: {resolution: {frames: (keep_probability, batch_size)}}), per
# stage: '' single-stage; 1 images; 2 low-resolution video; 3 the fine-tune at the full size.
ASPECT_RATIOS = ("1:1", "3:5", "5:3")  # height:width: 64x64, 48x80, 80x48 at resolution 64
# Single-stage: the 33-frame buckets at keep 0.25, so each 17-frame bucket gets 2/9 of the steps and each 33-frame
# one 1/9 (at keep 1 the 33-frame ones, at half the batch, took two thirds; their shapes read well with fewer).
BUCKETS = {"": {"64": {"17": (1.0, 16), "33": (0.25, 8)}},
           "1": {"64": {"1": (1.0, 64)}},
           "2": {"32": {"17": (1.0, 16), "33": (1.0, 8)}}}
BUCKETS["3"] = BUCKETS[""]  # the last stage trains the single-stage recipe's sizes and shares
# The three stages take about the single-stage recipe's minutes on a 2-core CPU (docs/native_sizes.md#stages).
STAGE_STEPS = {"": 10000, "1": 2000, "2": 5000, "3": 4500}


def get_config(arg: str | None = None):
  args = parse_arg(arg, size="tiny", recipe="", dtype="float32", conditions="", runlocal=False, data="", folder="",
                   sizes="", stage="", fvd="", lora="")
  if args["size"] not in SIZES:
    raise ConfigError(f"Config argument size={args['size']!r}; allowed: {list(SIZES)}.")
  recipe = args["recipe"] or ("v_prediction" if args["runlocal"] else "flow")
  if recipe not in RECIPES:
    raise ConfigError(f"Config argument recipe={recipe!r}; allowed: {list(RECIPES)}.")
  if args["dtype"] not in DTYPES:
    raise ConfigError(f"Config argument dtype={args['dtype']!r}; allowed: {list(DTYPES)}.")
  if args["conditions"] not in CONDITIONS:
    raise ConfigError(f"Config argument conditions={args['conditions']!r}; allowed: {list(CONDITIONS)}.")
  if args["sizes"] not in MIXED_SIZES or args["stage"] not in STAGES:
    raise ConfigError(f"Config arguments sizes={args['sizes']!r}, stage={args['stage']!r}; allowed: sizes in "
                      f"{list(MIXED_SIZES)}, stage in {list(STAGES)} (stages need sizes=mixed).")
  if args["stage"] and not args["sizes"]:
    raise ConfigError(f"Config argument stage={args['stage']!r} needs sizes=mixed.")
  c = base_config("t2v")
  _tiny(c)
  if recipe == "flow":
    _flow(c, args["dtype"])
  c.train.compute_dtype = args["dtype"]
  if args["runlocal"]:
    _runlocal(c)
  if args["conditions"] == "all":
    _all_conditions(c, runlocal=args["runlocal"])
  if args["sizes"]:
    _mixed_sizes(c, args["stage"], runlocal=args["runlocal"])
  use_folder(c, args)
  use_fvd(c, args["fvd"])
  use_lora(c, args["lora"])
  return c


def _mixed_sizes(c, stage: str, runlocal: bool):
  c.input.builder_config = "{height}x{width}x{frames}" + ("_tiny" if runlocal else "_small")
  c.input.aspect_ratios = ASPECT_RATIOS
  c.input.buckets = BUCKETS[stage]
  # 4,096 clips of each size: with 1,024 the 17-frame sizes over-fit (docs/native_sizes.md); six caches take minutes.
  c.input.split = "train[:4096]"
  c.train.steps = STAGE_STEPS[stage]
  if stage == "3":  # a fine-tune: a short warm-up from the previous stage's parameters, a lower peak
    c.schedule.base_lr /= 2
    c.schedule.warmup_steps = 20
  if runlocal:
    c.input.split = "train"
    if stage in ("1", "2"):  # one bucket each: their compiles and latent caches were most of the staged test's minutes
      c.input.aspect_ratios = ("1:1",)
      c.input.buckets = {"32": {"1": (1.0, 8)} if stage == "1" else {"5": (1.0, 8)}}
    else:
      c.input.aspect_ratios = ("1:1", "1:2")
      c.input.buckets = {"32": {"9": (1.0, 8), "5": (1.0, 8)}}
    c.input.bucket_block = 8
    c.train.steps = 4


def _all_conditions(c, runlocal: bool):
  # Open-Sora's mix (t2v 1, i2v_head 5, i2v_loop 1, i2v_tail 1) with its loop as interpolation and both extensions.
  c.diffusion.condition.mix.update({"t2v": 1.0, "i2v_head": 3.0, "extend_forward": 1.0, "i2v_tail": 1.0,
                                    "interpolate": 1.0, "extend_backward": 1.0})
  # 9 of the 17 frames at the VAE's 4x time compression (runlocal: 5 of 9, leaving one latent frame to generate)
  c.diffusion.condition.extend_frames = 2 if runlocal else 3
  c.input.pp = c.input.pp.replace("keep('latent_moments'", "keep('latent_moments', 'hint_moments'")


def _tiny(c):
  """The model, data and optimizer of both recipes, and the `v_prediction` recipe's objective, sampler and budget."""
  c.input.builder_config = "64x64x17"
  c.input.pp = f"decode_text('caption')|tokenize({c.text.max_length})|keep('latent_moments', 'tokens', 'caption')"
  # Batch 16 at lr 2e-3: twice the updates of 32 at 1e-3 for the same clips, each step much faster on a CPU.
  c.input.batch_size = 16
  c.optimizer.name = "adamw"
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.01
  c.schedule.name = "cosine"
  c.schedule.base_lr = 2e-3
  c.schedule.warmup_steps = 100
  c.schedule.end_lr_factor = 0.1
  c.train.steps = 3000
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.eval_every = 0
  c.train.sample_every = 0
  c.train.ema_decay = 0.995
  # On a CPU, XLA's own reductions beat YNNPACK's for the DiT's sums over tokens (docs/cpu_profile.md).
  c.train.cpu_ynn_reductions = False
  # scan_unroll: the 4 layers unrolled run faster on a CPU (the scan's per-layer slicing dominated). Cross-attention
  # (text as keys/values only: 80 video tokens in the self-attention instead of 80 + 40) scored higher than joint
  # attention on all three attributes and trains faster per step.
  c.model.update({"num_layers": 4, "num_heads": 4, "head_dim": 32, "conditioning": "cross", "scan_unroll": 4})
  # The pooled prompt in adaLN is a global path for color/shape/motion; absolute positions besides RoPE let the
  # model say where an object starts (which depends on its motion). CogVideoX's SNR shift of 3 puts more training
  # where the prompt decides the content.
  c.model.update({"pos_embed": "sincos", "pooled_text": True})
  c.diffusion.snr_shift_scale = 3.0
  c.diffusion.text_dropout = 0.1
  c.diffusion.image_fraction = 0.0
  c.eval.probe_prompts = 64


def _flow(c, dtype):
  # The latents of the first 4096 training clips: encoding all 16,384 costs minutes of the CPU budget.
  c.input.split = "train[:4096]"
  c.train.steps = 5500 if dtype == "bfloat16" else 4000
  # Logit-normal times put most of the training at middle noise, where v-prediction lost the squares' corners; the
  # shift trades shape (low shift) against color (high; color is decided near pure noise).
  c.diffusion.update({"prediction_type": "flow", "timestep_sampling": "logit_normal", "flow_shift": 4.5})
  c.sample.update({"sampler": "euler", "guidance_scale": 2.0})


def _runlocal(c):
  c.input.builder_config = "32x32x9_tiny"
  c.input.batch_size = 8
  c.text.update({"max_length": 16, "d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64, "num_layers": 1})
  c.input.pp = f"decode_text('caption')|tokenize({c.text.max_length})|keep('latent_moments', 'tokens', 'caption')"
  c.model.update({"num_layers": 2, "num_heads": 2, "head_dim": 16, "time_embed_dim": 32})
  c.schedule.warmup_steps = 0
  c.train.steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.train.ema_decay = 0.0
  c.sample.num_steps = 3
  c.sample.prompts = ("a red circle moving left", "a blue square moves up")
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.eval.probe_prompts = 4
  c.eval.loss_timesteps = (100, 900)
  c.vae.encode_batch_size = 16
