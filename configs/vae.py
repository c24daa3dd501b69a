"""The `vae` experiment: the causal 3D VAE (KL, optional 3D patch GAN) on Captioned Shapes.

    python -m experiments.train --config configs/vae.py:size=tiny --workdir /tmp/vae_tiny
    python -m experiments.evaluate --config configs/vae.py:size=tiny --workdir /tmp/vae_tiny
    python -m experiments.train --config configs/vae.py:size=cogvideox --workdir /tmp/vae_cogvideox   # accelerators

`size=tiny` (default): a small VAE with CogVideoX's structure (4 blocks: 8x spatial and 4x temporal compression,
64x64x17 clips -> 5x8x8x16 latents; 1.9M params) trained on Captioned Shapes 64x64x17 on a CPU: L2 + 1e-6 KL,
batches of 2 random 9-frame windows + 4 single frames, 1700 steps at lr 1e-3 (cosine). The final eval reports PSNR
and SSIM of 256 validation clips (all 17 frames, streamed decode) and the probe's accuracy on their reconstructions;
experiments.evaluate with --config.eval.num_examples=100000 scores the whole split (1024 clips).
Measured alone on a 2-core AMD EPYC (AVX2), the default command above: 17 min 53 s wall-clock (1.5 min of it
compiling, 1.81-1.90 steps/s), validation PSNR 30.70 dB / SSIM 0.943 (256 clips).
Batches of 3 windows + 1 frame (the default before, and what the quickstart trains): 27 min 19 s on that machine
before Conv3d's causal padding stopped convolving copies of frame 0 (its step, timed alone, is 0.664 s now, against
0.51 s for 2 + 4), for 30.70 dB / SSIM 0.947; on a faster 2-core machine 17 min 30 s for 30.83 dB. The two recipes
differ in stray blobs: reconstructions of 96 validation clips with a second blob (>= 8 px) in some frame, 3 for 3 +
1 and 24 for 2 + 4 (mostly in frames 9-16, decoded from the latents past the training windows' 3); the final evals'
probe ceilings (256 clips) 0.96 / 0.91 / 0.97 against 0.75 / 0.71 / 0.77 (color / shape / motion); a second 2 + 4
run (before the padding change, same math) had 30.46 dB and 0.89 / 0.84 / 0.92. Whole 17-frame clips (1 + 4 images,
`loss.train_frames=0`, `model.chunked=False`, the same time per step) gave 29.89 dB, 0.89 / 0.83 / 0.93 in 17 min 28 s.
A higher learning rate does not buy steps back: 1200 steps of 3 + 1 at lr 2e-3 gave 27.98 dB and at 3e-3 25.36 dB.
Random 32x32 crops (`--config.loss.train_size=32`, LDM's way of training a convolutional VAE cheaply) run 3.2x the
steps/s (2.9 vs 0.89 on a 2-core Xeon) but do not pay here: 1500 steps gave 26.7 dB / SSIM 0.905 and a probe
ceiling of 0.48 / 0.38 / 0.50 (color / shape / motion, 256 validation clips), where whole frames gave 30.3 dB /
0.944 and 0.91 / 0.85 / 0.93 for the same 1500 steps (35 min on that Xeon). A quarter of those crops hold no
object pixel (measured on 200 clips); why whole frames then decode so much worse was not diagnosed.

For a VAE that a text-to-video model will sample into, add `--config.loss.decoder_noise=0.5` (the quickstart
does): the decoder then also learns from latents up to 0.5 per-channel stds off the encoder's. Without it, latents
0.2 stds off decoded to a stray second blob in 11 of 48 clips (0.3: 38); with it 6 of 48 even at 0.5, for 29.8
against 30.1 dB (README, "The 3D causal VAE"). The quickstart also folds 2x2 pixel patches into channels
(`model.patch_size=2`, `model.block_out_channels=(16, 32, 64)`: the same 8x compression without the 64x64 level),
which trains 2.3-2.5 steps/s against 1.05-1.24 for 3 + 1 on one machine: 28.8 against 29.8 dB after 1500 steps,
the same probe ceiling (0.89 / 0.79 / 0.98 against 0.90 / 0.79 / 0.93), and a better text-to-video model on its
latents (README).

`size=cogvideox`: CogVideoX's VAE configuration (block_out_channels 128/256/256/512, 3 layers per block, 16 latent
channels, 32 groups; 215.6M params) with L1 + KL and the 3D patch discriminator. Sized for accelerators (bf16 compute,
rematerialised ResNet blocks); on Captioned Shapes it is only a smoke test of the recipe.

`runlocal` shrinks everything (the 32x32x9_tiny dataset, a 2-block model, a few steps) for tests.
"""
from vdm_jax.train.config import ConfigError, base_config, parse_arg

SIZES = ("tiny", "cogvideox")


def get_config(arg: str | None = None):
  args = parse_arg(arg, size="tiny", runlocal=False)
  if args["size"] not in SIZES:
    raise ConfigError(f"Config argument size={args['size']!r}; allowed: {list(SIZES)}.")
  c = base_config("vae")
  c.input.builder_config = "64x64x17"
  c.input.pp = "decode_video|value_range(-1, 1)|decode_text('caption')|keep('video', 'caption')"
  c.optimizer.name = "adamw"
  c.optimizer.b2 = 0.99
  c.schedule.name = "cosine"

  if args["size"] == "tiny":
    # Cost is about equal per level (channels double as the resolution halves): 8 channels at 64x64.
    c.model.block_out_channels = (8, 16, 32, 64)
    c.model.layers_per_block = 1
    c.model.latent_channels = 16
    c.model.norm_num_groups = 4
    # Per-frame GroupNorm statistics: the VAE is then exactly causal and chunk-invariant, so training on 9-frame
    # windows transfers to streamed 17-frame (or any-length) decoding; with CogVideoX's GroupNorm over each chunk's
    # frames the eval chunks (9 + 8 frames, 3 + 2 latents) differ from the training windows (measured: 28.0 vs
    # 26.1 dB validation PSNR after 800 steps).
    c.model.group_norm_over_time = False
    # L2 (what PSNR measures) learns the shapes much faster than L1 on mostly-black frames (measured: 25 vs 19 dB
    # after 400 image steps at the same lr).
    c.loss.l1_weight = 0.0
    c.loss.l2_weight = 1.0
    c.loss.kl_weight = 1e-6
    # 2 clips + 4 images per batch: an image costs about a tenth of a 9-frame clip in the step, and 3 clips + 1 image
    # take 1.3x the time per step for the same PSNR at 1700 steps (30.70 dB both), with fewer stray blobs in the
    # reconstructions (see the docstring); the quickstart trains that one.
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
  else:
    c.model.block_out_channels = (128, 256, 256, 512)
    c.model.layers_per_block = 3
    c.model.latent_channels = 16
    c.model.norm_num_groups = 32
    c.model.scaling_factor = 1.15258426
    c.model.remat = True
    c.loss.l1_weight = 1.0
    c.loss.kl_weight = 1e-6
    c.loss.disc_weight = 0.5
    c.loss.disc_start_step = 0  # the generic loop does not pass the step to the loss yet (see vdm_jax/train/vae.py)
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

  if args["runlocal"]:
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
  return c
