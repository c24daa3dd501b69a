"""Text-to-video training at CogVideoX scale: the 2b / 5b transformer (trained from scratch or fine-tuned) on
latents of the CogVideoX VAE, conditioned on a frozen T5-XXL (its embeddings cached once per split, so the train
step neither runs nor holds the 4.8B-parameter encoder), with the CogVideoX recipe (v-prediction, zero
terminal SNR with SNR shift 3.0 (2b) / 1.0 (5b), 10% text dropout, explicit uniform timestep sampling).

Video 480x720x49 -> latents 13x60x90x16 -> 2x2 patches: 17550 video + 226 text tokens per clip. bf16 compute,
float32 params and AdamW state sharded FSDP (ZeRO-3) over every device, full remat of each block. `size=1.5` is
CogVideoX 1.5-5B at its 768x1360x81: latents 22x96x170x16 (21 frames padded to 22) -> 2x2x2 patches: 44,880 video
tokens per clip.

    # Train: `path` is a diffusers CogVideoX folder (vae/, text_encoder/, tokenizer/); `dataset` a tfds dataset of
    # captioned 480x720x49 clips ('video' uint8 [49, 480, 720, 3], 'caption'). The first run writes the latent and
    # text-embedding caches (W/latent_cache, W/text_cache; `encode_text` runs T5 in every step instead).
    python -m experiments.train --config configs/cogvideox.py:size=2b,path=/data/CogVideoX-2b,dataset=my_videos \\
        --workdir /ckpt/cogvideox_2b --config.distributed.enabled=True
    # Fine-tune the released transformer instead of training from scratch (its architecture must be the size's):
    python -m experiments.train --config configs/cogvideox.py:size=2b,path=/data/CogVideoX-2b,dataset=my_videos \
        --config.init_from=/data/CogVideoX-2b --workdir /ckpt/cogvideox_2b_ft
    # ... or train rank-64 LoRA adapters over it, frozen in bfloat16 (docs/lora.md):
    python -m experiments.train \
        --config configs/cogvideox.py:size=5b,path=/data/CogVideoX-5b,dataset=my_videos,lora=64 \
        --config.init_from=/data/CogVideoX-5b --workdir /ckpt/cogvideox_5b_lora

    # Plan it without any file on disk (abstract params only, see `abstract` below):
    python -m experiments.plan --config configs/cogvideox.py:size=2b,abstract --mesh fsdp=64 --batch_sizes 64,128
    python -m experiments.plan --config configs/cogvideox.py:size=2b,abstract --mesh data=2,fsdp=128

`abstract`: for planning only: the latent shape comes from the config, and T5-XXL is described by a byte-vocabulary
encoder with T5-XXL widths (d_model 4096, d_ff 10240, 64 heads x 64, 24 layers) because building a 't5' encoder
reads config.json and the tokenizer (spiece.model or tokenizer.json) from disk. With cached embeddings (the default) the step only sees their shape
[226, 4096] bf16, so this changes nothing; with `encode_text` the plan holds 259 instead of 32128 embedding rows.
`encode_text`: run the frozen T5-XXL inside every train step on tokenized captions instead of caching its
embeddings (no cache to write, but the step all-gathers the encoder's weights, which costs memory per device).
`lora=R`: LoRA fine-tuning (rank R on the attention projections) over a frozen bfloat16 base, a diffusers CogVideoX
folder or a vdm_jax run given as `--config.init_from` (docs/lora.md).
The plans' memory per device for each size, mesh and batch: docs/scaling.md.
"""
from vdm_jax.train.config import ConfigError, base_config, parse_arg, use_lora

# diffusers CogVideoXTransformer3DModel configs (vdm_jax/convert/cogvideox_transformer.py maps them to DiT fields).
SIZES = {
    "2b": dict(num_layers=30, num_heads=30, head_dim=64, time_embed_dim=512, pos_embed="sincos", use_rope=False,
               rope_grid="linspace"),
    "5b": dict(num_layers=42, num_heads=48, head_dim=64, time_embed_dim=512, pos_embed="none", use_rope=True,
               rope_grid="linspace"),
    # CogVideoX 1.5-5B: 2x2x2 spacetime patches through a Linear (with bias, the DiT default), RoPE on integer
    # positions ('slice').
    "1.5": dict(num_layers=42, num_heads=48, head_dim=64, time_embed_dim=512, pos_embed="none", use_rope=True,
                rope_grid="slice", patch_size_t=2),
}
SCALING_FACTOR = {"2b": 1.15258426, "5b": 0.7, "1.5": 0.7}  # the VAE folders' scaling_factor
SNR_SHIFT = {"2b": 3.0, "5b": 1.0, "1.5": 1.0}  # the schedulers' snr_shift_scale
T5_XXL = dict(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24)
MAX_TEXT_LENGTH = 226
LATENT_SHAPE = {"2b": (13, 60, 90, 16),  # 480x720x49: (49 - 1) / 4 + 1 frames; 480 / 8, 720 / 8; 16 channels
                "5b": (13, 60, 90, 16),
                # 1.5 at 768x1360x81: 21 latent frames, padded to 22 for patch_size_t 2 as its pipeline pads them
                "1.5": (22, 96, 170, 16)}


def get_config(arg: str | None = None):
  args = parse_arg(arg, size="2b", path="CogVideoX-2b", dataset="captioned_videos", abstract=False,
                   encode_text=False, lora="")
  size = args["size"]
  if size not in SIZES:
    raise ConfigError(f"Config argument size={size!r}; allowed: {sorted(SIZES)}.")
  c = base_config("t2v")
  c.mesh.update({"data": 1, "fsdp": -1, "tensor": 1, "context": 1})

  c.vae.path = f"{args['path']}/vae"
  c.vae.scaling_factor = SCALING_FACTOR[size]
  c.vae.sample_posterior = True
  c.vae.encode_batch_size = 1

  c.text.update({"type": "t5", "path": args["path"], "trainable": False, "max_length": MAX_TEXT_LENGTH,
                 "use_attention_mask": False, "dtype": "bfloat16", "cached": not args["encode_text"]})
  tokenizer = f"'{args['path']}/tokenizer'"
  if args["abstract"]:
    c.text.update({"type": "byte", "path": "", **T5_XXL})
    c.vae.latent_shape = LATENT_SHAPE[size]
    tokenizer = "'byte'"

  c.input.dataset = args["dataset"]
  c.input.builder_config = ""
  c.input.pp = "decode_text('caption')|keep('latent_moments', 'text_embeds', 'caption')"
  if args["encode_text"]:
    c.input.pp = (f"decode_text('caption')|tokenize({MAX_TEXT_LENGTH}, tokenizer={tokenizer})|"
                  "keep('latent_moments', 'tokens', 'caption')")
  c.input.batch_size = 64

  c.model.update({
      "patch_size_t": 1, **SIZES[size], "conditioning": "joint", "activation": "gelu_tanh", "mlp_ratio": 4.0,
      "patch_size": 2, "qk_norm": True, "attention_backend": "auto", "remat_policy": "full",
  })
  c.train.compute_dtype = "bfloat16"
  c.train.param_dtype = "float32"
  c.train.steps = 100_000
  c.train.ema_decay = 0.0  # an EMA copy would add a float32 params' worth of memory per device
  c.train.log_every = 10
  c.train.checkpoint_every = 1000
  c.train.eval_every = 5000
  c.train.sample_every = 5000

  c.optimizer.name = "adamw"
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.95, 1e-8
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "cosine"
  c.schedule.base_lr = 1e-4
  c.schedule.warmup_steps = 1000
  c.schedule.end_lr_factor = 0.1

  c.diffusion.update({
      "prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      "num_train_timesteps": 1000, "snr_shift_scale": SNR_SHIFT[size], "rescale_betas_zero_snr": True,
      "timestep_sampling": "explicit_uniform", "loss_weighting": "none", "text_dropout": 0.1, "image_fraction": 0.0,
  })
  c.sample.update({"sampler": "ddim", "num_steps": 50, "guidance_scale": 6.0, "use_dynamic_cfg": True,
                   "batch_size": 1})
  c.eval.update({"num_examples": 64, "batch_size": 8, "probe_prompts": 0})
  if args["lora"]:
    _lora(c, args["lora"])
  return c


def _lora(c, rank: str) -> None:
  """`lora=R`: rank-R adapters on the attention projections over a frozen bfloat16 base, applied inside each layer
  (no merged float32 copy of the stacked kernels: 11.8 GiB less per device at one clip, docs/lora.md), at diffusers'
  CogVideoX LoRA learning rate (1e-4, constant after a warm-up)."""
  use_lora(c, rank, base_dtype="bfloat16")
  c.lora.mode = "inline"
  c.schedule.update({"name": "constant", "base_lr": 1e-4, "warmup_steps": 100})
