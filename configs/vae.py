"""The `vae` experiment: the causal 3D VAE (KL, optional 3D patch GAN) on Captioned Shapes.

    python -m experiments.train --config configs/vae.py --workdir /tmp/vae
    python -m experiments.train --config configs/vae.py:recipe=reconstruction --workdir /tmp/vae_reconstruction
    python -m experiments.evaluate --config configs/vae.py --workdir /tmp/vae --config.eval.num_examples=100000
    python -m experiments.train --config configs/vae.py:size=cogvideox --workdir /tmp/vae_cogvideox   # accelerators

`size=tiny` (default): CogVideoX's VAE structure at small widths (8x spatial and 4x temporal compression, 64x64x17
clips -> 5x8x8x16 latents), trained on a CPU with L2 + 1e-6 KL. Two recipes (results in docs/recipes.md):
- `recipe=diffusion` (default; what `experiments.quickstart` trains): a VAE for a text-to-video model to sample
  into. 2x2 pixel patches folded into channels (the slow 64x64 level is skipped), a decoder that also learns from
  latents with noise added (so the DiT's small errors do not decode to stray blobs), 3 clips + 1 frame per batch.
- `recipe=reconstruction`: the highest validation PSNR, but a decoder that is fragile to latents off the encoder's;
  2 clips + 4 frames per batch at full resolution.

The final eval reports PSNR, SSIM and the probe's accuracy on reconstructions of 256 validation clips (all 17 frames,
streamed decode); `experiments.evaluate` with `eval.num_examples` above 1024 scores the whole validation split.

`size=cogvideox`: CogVideoX's VAE configuration (215.6M params) with L1 + KL and the 3D patch discriminator, sized for
accelerators; on Captioned Shapes it is only a smoke test of the recipe.

`data=folder`: train on the kept clips of a curated folder of real videos (`experiments.curate`'s output) at
64x64x17, every source frame: `configs/vae.py:data=folder,folder=OUT` or `--config.input.folder=OUT`;
`--config.input.builder_config=64x64x17_8fps` takes frames at 8 fps (docs/curation.md).

Evaluators (`config.evals`, vdm_jax/eval/evaluators/): PSNR/SSIM and the probe on the reconstructions, at the end
(`--config.train.eval_every=N` or `--config.evals.recon.every_steps=N`); `fvd=N` adds FVD of N reconstructions
against N real clips, with its floor (`experiments.evaluate --config configs/vae.py:fvd=256 --workdir W --evals fvd`).

`runlocal` shrinks everything (the 32x32x9_tiny dataset, a 2-block model, a few steps) for tests; at `size=tiny` it
keeps the `reconstruction` recipe's unpatched layout unless a recipe is named.
"""
from vdm_jax.train.config import ConfigError, base_config, parse_arg, use_folder, use_fvd

SIZES = ("tiny", "cogvideox")
RECIPES = {"tiny": ("diffusion", "reconstruction"), "cogvideox": ("cogvideox",)}


def get_config(arg: str | None = None):
  args = parse_arg(arg, size="tiny", recipe="", runlocal=False, data="", folder="", fvd="")
  size = args["size"]
  if size not in SIZES:
    raise ConfigError(f"Config argument size={size!r}; allowed: {list(SIZES)}.")
  recipe = args["recipe"] or ("reconstruction" if args["runlocal"] and size == "tiny" else RECIPES[size][0])
  if recipe not in RECIPES[size]:
    raise ConfigError(f"Config argument recipe={recipe!r} for size={size}; allowed: {list(RECIPES[size])}.")
  c = base_config("vae")
  c.input.builder_config = "64x64x17"
  c.input.pp = "decode_video|value_range(-1, 1)|decode_text('caption')|keep('video', 'caption')"
  c.optimizer.name = "adamw"
  c.optimizer.b2 = 0.99
  c.schedule.name = "cosine"
  if size == "tiny":
    _tiny(c)
    if recipe == "diffusion":
      _diffusion(c)
  else:
    _cogvideox(c)
  if args["runlocal"]:
    _runlocal(c)
  use_folder(c, args)
  use_fvd(c, args["fvd"])
  return c


def _tiny(c):
  """The `reconstruction` recipe; `diffusion` changes its layout, batch and budget."""
  # Cost is about equal per level (channels double as the resolution halves): 8 channels at 64x64.
  c.model.block_out_channels = (8, 16, 32, 64)
  c.model.layers_per_block = 1
  c.model.latent_channels = 16
  c.model.norm_num_groups = 4
  # Per-frame GroupNorm statistics make the VAE exactly causal and chunk-invariant, so training on 9-frame windows
  # transfers to streamed 17-frame (or any-length) decoding.
  c.model.group_norm_over_time = False
  # L2 (what PSNR measures) learns the shapes much faster than L1 on mostly-black frames.
  c.loss.l1_weight = 0.0
  c.loss.l2_weight = 1.0
  c.loss.kl_weight = 1e-6
  # 2 clips + 4 images per batch: an image costs about a tenth of a 9-frame clip in the step.
  c.loss.image_fraction = 4 / 6
  c.loss.train_frames = 9  # random 9-frame windows: 3 latent frames
  c.input.batch_size = 6
  c.schedule.base_lr = 1e-3
  c.schedule.warmup_steps = 50
  c.schedule.end_lr_factor = 0.02
  c.train.steps = 1700
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.eval_every = 0  # only at the end (an eval of 256 clips costs about 40 training steps)
  c.train.sample_every = 0
  c.train.ema_decay = 0.0
  c.eval.num_examples = 256
  c.eval.batch_size = 8


def _diffusion(c):
  # 2x2 pixel patches into channels: the same 8x compression without the 8-channel 64x64 level, which is slow on a
  # CPU for its FLOPs.
  c.model.block_out_channels = (16, 32, 64)
  c.model.patch_size = 2
  # The decoder also decodes latents up to 0.5 per-channel stds off the encoder's, as a DiT's samples are.
  c.loss.decoder_noise = 0.5
  # 3 clips + 1 image: fewer reconstructions with a stray second blob than 2 + 4, where the DiT's score is lost.
  c.loss.image_fraction = 0.25
  c.input.batch_size = 4
  c.train.steps = 1500


def _cogvideox(c):
  c.model.block_out_channels = (128, 256, 256, 512)
  c.model.layers_per_block = 3
  c.model.latent_channels = 16
  c.model.norm_num_groups = 32
  c.model.scaling_factor = 1.15258426
  c.model.remat = True
  c.loss.l1_weight = 1.0
  c.loss.kl_weight = 1e-6
  c.loss.disc_weight = 0.5
  c.loss.disc_start_step = 0  # the discriminator from the first step
  c.loss.disc_channels = (64, 128, 256)
  c.input.batch_size = 8
  c.train.compute_dtype = "bfloat16"
  c.schedule.base_lr = 1e-4
  c.schedule.warmup_steps = 1000
  c.train.steps = 100_000
  c.train.log_every = 50
  c.train.checkpoint_every = 2000
  c.train.eval_every = 5000
  c.train.ema_decay = 0.999


def _runlocal(c):
  c.input.builder_config = "32x32x9_tiny"
  c.input.batch_size = 8
  c.model.block_out_channels = (8, 16)
  c.model.layers_per_block = 1
  c.model.latent_channels = 4
  c.model.norm_num_groups = 4
  c.model.temporal_compression_ratio = 2
  c.model.remat = False
  c.loss.train_frames = 0
  c.loss.disc_channels = (8, 16)
  c.train.compute_dtype = "float32"
  c.train.steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.train.eval_every = 0
  c.train.ema_decay = 0.0
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.eval.num_samples = 2
