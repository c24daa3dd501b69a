"""vdm_jax.pipelines.cogvideox against diffusers' CogVideoXPipeline on a tiny folder written here with
`save_pretrained` (random perturbed CogVideoXTransformer3DModel, AutoencoderKLCogVideoX, T5EncoderModel; a
sentencepiece model trained here; CogVideoX-2b's DDIM scheduler config).

Parity: the same initial latents, 2 prompts, 9 frames at 16x32 (latents 3x2x4), 3 DDIM steps with CFG 6 (static,
dynamic, and with negative prompts): max |ours - diffusers| over the [0, 1] video <= 1e-3 (fp32); the same for a
CogVideoX 1.5 transformer (patch_size_t 2, RoPE: latent frames padded 3 -> 4, the leading one dropped before
decoding); and against CogVideoXImageToVideoPipeline for the 5b-I2V layout (the image's latents from the same
posterior noise, concatenated on channels; 1.5-I2V divides them by the scaling factor, adds the ofs embedding and
puts the image on the padding frame); and with a LoRA file (save_lora, loaded by diffusers' load_lora_weights) at
scales 1 and 0.5. The DPM scheduler path runs (no parity: its noise is drawn differently), bfloat16 runs near float32,
scheduler configs map onto the samplers, the denoiser/T5/VAE compile once per shape, a folder with a missing part
fails naming it, and `python -m experiments.sample --pretrained` writes samples.jsonl / .npy / .mp4.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from reference_extra import need

from vdm_jax.diffusion import samplers
from vdm_jax.pipelines import cogvideox

torch = need("torch")
diffusers = need("diffusers")
transformers = need("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle moving left", "a blue square moving up and a green triangle moving right"]
FRAMES, HEIGHT, WIDTH = 9, 16, 32  # latents [3, 2, 4]: VAE factor 8, patch 2 -> 1x2 tokens per latent frame
# scheduler/scheduler_config.json of THUDM/CogVideoX-2b (CogVideoX-5b: CogVideoXDPMScheduler, snr_shift_scale 1).
SCHEDULER_2B = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                    clip_sample_range=1.0, num_train_timesteps=1000, prediction_type="v_prediction",
                    rescale_betas_zero_snr=True, sample_max_value=1.0, set_alpha_to_one=True, snr_shift_scale=3.0,
                    steps_offset=0, timestep_spacing="trailing", trained_betas=None)
TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
                   text_embed_dim=32, num_layers=2, sample_frames=FRAMES, sample_height=HEIGHT // 8,
                   sample_width=WIDTH // 8, patch_size=2, max_text_seq_length=226)
TRANSFORMER_15 = dict(TRANSFORMER, patch_size_t=2, use_rotary_positional_embeddings=True, patch_bias=False)
# The image-to-video layouts: 5b-I2V (RoPE and learned positions) and 1.5-I2V (patch_size_t 2, ofs).
TRANSFORMER_I2V = dict(TRANSFORMER, in_channels=8, use_rotary_positional_embeddings=True,
                       use_learned_positional_embeddings=True)
TRANSFORMER_15_I2V = dict(TRANSFORMER_15, in_channels=8, ofs_embed_dim=16)
CORPUS = ["a red circle moving left", "a blue square moving up and a green triangle moving right",
          "the quick brown fox jumps over the lazy dog"]


def perturb(model, seed, scale):
  """Adds scale * N(0, 1) to every weight (norm scales and biases are not left at 1 and 0)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=generator))
  return model.eval()


def write_folder(root):
  """A tiny diffusers CogVideoX folder at `root` via CogVideoXPipeline.save_pretrained."""
  raw = os.path.join(root, "_spm")
  os.makedirs(raw)
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_prefix=os.path.join(raw, "spiece"),
                                 vocab_size=40, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 hard_vocab_limit=False, minloglevel=2)
  tokenizer = transformers.T5Tokenizer.from_pretrained(raw)
  torch.manual_seed(0)
  t5_config = transformers.T5Config(vocab_size=160, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                    feed_forward_proj="gated-gelu", dropout_rate=0.0)  # 40 pieces + 100 sentinels
  text_encoder = perturb(transformers.T5EncoderModel(t5_config), 1, 0.1)
  transformer = perturb(diffusers.CogVideoXTransformer3DModel(**TRANSFORMER), 2, 0.1)
  vae = perturb(diffusers.AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4,
                                                 layers_per_block=1, norm_num_groups=4), 3, 0.05)
  scheduler = diffusers.CogVideoXDDIMScheduler(**SCHEDULER_2B)
  diffusers.CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler).save_pretrained(root)
  # transformers 5 saves tokenizer.json; the released folders (and vdm_jax's tokenizer) have spiece.model too.
  shutil.copy(os.path.join(raw, "spiece.model"), os.path.join(root, "tokenizer", "spiece.model"))
  shutil.rmtree(raw)
  return root


def variant(src, root, transformer_config=None, scheduler=None, vae_config=None):
  """A folder at `root` with src's parts (symlinked) except a new transformer, scheduler and/or VAE config (the
  same weights)."""
  os.makedirs(root)
  os.symlink(os.path.join(src, "model_index.json"), os.path.join(root, "model_index.json"))  # for diffusers
  for part in cogvideox.PARTS:
    if part == "transformer" and transformer_config:
      perturb(diffusers.CogVideoXTransformer3DModel(**transformer_config), 2, 0.1).save_pretrained(
          os.path.join(root, part))
    elif part == "vae" and vae_config:
      vae = diffusers.AutoencoderKLCogVideoX.from_pretrained(os.path.join(src, part))
      vae.register_to_config(**vae_config)
      vae.save_pretrained(os.path.join(root, part))
    elif part == "scheduler" and scheduler:
      scheduler.save_pretrained(os.path.join(root, part))
    else:
      os.symlink(os.path.join(src, part), os.path.join(root, part))
  return root


def reference(root, latents, **kwargs):
  """diffusers' video [B, T, H, W, 3] for channel-last initial latents [B, T', H', W', C]."""
  pipe = diffusers.CogVideoXPipeline.from_pretrained(root)
  pipe.set_progress_bar_config(disable=True)
  with torch.no_grad():
    return pipe(latents=torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 1, 4, 2, 3))), output_type="np",
                **kwargs).frames


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_folder(str(tmp_path_factory.mktemp("cogvideox_2b")))


@pytest.fixture(scope="module")
def pipe(folder):
  return cogvideox.load(folder)


CALL = dict(prompt=PROMPTS, negative_prompt="", num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=3,
            guidance_scale=6.0)


def test_ddim_cfg_parity_static_dynamic_and_negative_prompts(folder, pipe):
  # the same initial noise for both prompts, so their videos differ only through the text
  latents = np.random.default_rng(0).normal(size=pipe.latent_shape(1, FRAMES, HEIGHT, WIDTH)).astype(np.float32)
  latents = np.concatenate([latents, latents])
  assert latents.shape == (2, 3, 2, 4, 4)
  cases = {"static": dict(use_dynamic_cfg=False), "dynamic": dict(use_dynamic_cfg=True),
           "negative": dict(use_dynamic_cfg=False, negative_prompt=["blurry", "static frames"])}
  videos = {}
  for name, change in cases.items():
    call = dict(CALL, **change)
    want = reference(folder, latents, **call)
    got = pipe(**call, latents=latents, progress=False)
    assert got.shape == want.shape == (2, FRAMES, HEIGHT, WIDTH, 3) and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= 1e-3, name
    # the comparison is not decided by the clip to [0, 1]
    assert np.mean((want > 0) & (want < 1)) > 0.5
    videos[name] = got
  # dynamic CFG, the negative prompts and the prompt all change the video (the parity above exercises them)
  assert float(np.abs(videos["dynamic"] - videos["static"]).max()) > 1e-2
  assert float(np.abs(videos["negative"] - videos["static"]).max()) > 1e-2
  assert float(np.abs(videos["static"][0] - videos["static"][1]).max()) > 1e-2


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_lora_parity(folder, pipe, tmp_path, scale):
  """load(folder, lora=file, lora_scale=s) against diffusers' pipeline with the same file from load_lora_weights
  (PEFT), at the adapter's full and half weight: the same video within 1e-3 (fp32, 3 DDIM steps with CFG)."""
  need("peft")
  from vdm_jax.convert.cogvideox import save_lora  # pylint: disable=g-import-not-at-top
  from vdm_jax.models import lora  # pylint: disable=g-import-not-at-top
  spec = lora.Spec.of([("attn/to_(q|k|v|out)$", 4, 8.0)])
  adapters = lora.init(jax.random.PRNGKey(3), pipe.transformer_params, spec)
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(4), x.shape), adapters)
  adapter_dir = str(tmp_path / "adapter")
  save_lora(adapters, adapter_dir, spec)
  latents = np.random.default_rng(1).normal(size=pipe.latent_shape(2, FRAMES, HEIGHT, WIDTH)).astype(np.float32)
  call = dict(CALL, use_dynamic_cfg=False)
  ours = cogvideox.load(folder, lora=adapter_dir, lora_scale=scale)(**call, latents=latents, progress=False)
  reference_pipe = diffusers.CogVideoXPipeline.from_pretrained(folder)
  reference_pipe.load_lora_weights(adapter_dir)
  reference_pipe.set_progress_bar_config(disable=True)
  with torch.no_grad():
    want = reference_pipe(latents=torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 1, 4, 2, 3))),
                          output_type="np", attention_kwargs={"scale": scale}, **call).frames
  assert float(np.abs(ours - want).max()) <= 1e-3
  assert np.mean((want > 0) & (want < 1)) > 0.5  # not decided by the clip to [0, 1]
  # the adapter matters: without it the video is another one
  assert float(np.abs(pipe(**call, latents=latents, progress=False) - want).max()) > 1e-2


def test_cogvideox15_pads_and_drops_latent_frames(folder, tmp_path):
  root = variant(folder, str(tmp_path / "cogvideox_15"), transformer_config=TRANSFORMER_15)
  pipe = cogvideox.load(root)
  shape = pipe.latent_shape(1, FRAMES, HEIGHT, WIDTH)
  assert shape == (1, 4, 2, 4, 4)  # 3 latent frames padded to a multiple of patch_size_t 2
  latents = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  call = dict(CALL, prompt=PROMPTS[:1])
  want = reference(root, latents, **call)
  got = pipe(**call, latents=latents, progress=False)
  assert got.shape == want.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
  assert float(np.abs(got - want).max()) <= 1e-3
  with pytest.raises(ValueError, match=r"\(1, 4, 2, 4, 4\)"):  # unpadded latents are refused
    pipe(**call, latents=latents[:, 1:], progress=False)


@pytest.mark.parametrize("layout", ["5b_i2v", "15_i2v"])
def test_image_to_video_parity(folder, tmp_path, layout):
  """CogVideoXImageToVideoPipeline and ours from the same latents and image noise: 3 DDIM steps with CFG 6, fp32.
  1.5: the image latents divided by the scaling factor (invert_scale_latents), ofs, the image on the leading padding
  frame (3 latent frames padded to 4, as diffusers lays it out)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  config = TRANSFORMER_I2V if layout == "5b_i2v" else TRANSFORMER_15_I2V
  vae_config = {"invert_scale_latents": True} if layout == "15_i2v" else None
  root = variant(folder, str(tmp_path / layout), transformer_config=config, vae_config=vae_config)
  pipe = cogvideox.load(root)
  assert pipe.image_to_video and pipe.invert_scale_latents == (layout == "15_i2v")
  shape = pipe.latent_shape(1, FRAMES, HEIGHT, WIDTH)
  latents = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  image = np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
  generator = torch.Generator().manual_seed(0)
  noise = torch.randn((1, 4, 1, HEIGHT // 8, WIDTH // 8), generator=generator)  # the posterior sample's draw
  call = dict(CALL, prompt=PROMPTS[:1])
  reference_pipe = diffusers.CogVideoXImageToVideoPipeline.from_pretrained(root)
  reference_pipe.set_progress_bar_config(disable=True)
  with torch.no_grad():
    want = reference_pipe(image=Image.fromarray(image), latents=torch.from_numpy(
        np.ascontiguousarray(latents.transpose(0, 1, 4, 2, 3))), generator=torch.Generator().manual_seed(0),
        output_type="np", **call).frames
  got = pipe(**call, latents=latents, image=image, image_noise=noise.numpy().transpose(0, 2, 3, 4, 1),
             progress=False)
  assert got.shape == want.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
  assert float(np.abs(got - want).max()) <= 1e-3
  assert np.mean((want > 0) & (want < 1)) > 0.5
  # the image matters, and the layouts' arguments are checked
  other = pipe(**call, latents=latents, image=255 - image, image_noise=noise.numpy().transpose(0, 2, 3, 4, 1),
               progress=False)
  assert float(np.abs(other - got).max()) > 1e-2
  with pytest.raises(ValueError, match="image-to-video folder: give image="):
    pipe(**call, latents=latents, progress=False)
  with pytest.raises(ValueError, match=r"image float64 with values in \[2.0, 2.0\]"):
    pipe(**call, latents=latents, image=np.full((HEIGHT, WIDTH, 3), 2.0), progress=False)


def test_text_to_video_folders_take_no_image(pipe):
  with pytest.raises(ValueError, match="image= needs an image-to-video folder"):
    pipe(**dict(CALL, prompt=PROMPTS[:1]), image=np.zeros((HEIGHT, WIDTH, 3), np.uint8), progress=False)


def test_dpm_scheduler_runs(folder, tmp_path):
  """A folder whose scheduler is CogVideoXDPMScheduler (5b's shift) samples with 'dpmpp_2m_sde'."""
  scheduler = diffusers.CogVideoXDPMScheduler(**dict(SCHEDULER_2B, snr_shift_scale=1.0))
  root = variant(folder, str(tmp_path / "cogvideox_dpm"), scheduler=scheduler)
  pipe = cogvideox.load(root)
  assert pipe.scheduler.sampler == "dpmpp_2m_sde"
  call = dict(CALL, prompt=PROMPTS[:1], progress=False)
  video = pipe(**call, seed=3)
  assert video.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
  assert np.isfinite(video).all() and video.min() >= 0.0 and video.max() <= 1.0
  np.testing.assert_array_equal(pipe(**call, seed=3), video)  # the seed fixes the initial and the SDE noise
  assert float(np.abs(pipe(**call, seed=4) - video).max()) > 1e-3
  # same initial latents, other SDE noise: still a different video
  latents = np.random.default_rng(2).normal(size=pipe.latent_shape(1, FRAMES, HEIGHT, WIDTH)).astype(np.float32)
  assert float(np.abs(pipe(**call, latents=latents, seed=5) - pipe(**call, latents=latents, seed=6)).max()) > 1e-3


def test_scheduler_configs_map_onto_samplers():
  ddim = diffusers.CogVideoXDDIMScheduler(**SCHEDULER_2B)
  settings = cogvideox.scheduler_settings(dict(ddim.config, _class_name="CogVideoXDDIMScheduler"))
  assert (settings.sampler, settings.prediction_type, settings.timestep_spacing) == ("ddim", "v_prediction",
                                                                                     "trailing")
  np.testing.assert_allclose(settings.schedule.alphas_cumprod, ddim.alphas_cumprod.numpy(), rtol=1e-12, atol=0)
  assert settings.schedule.final_alpha_cumprod == 1.0
  cosine = dict(SCHEDULER_2B, _class_name="CogVideoXDPMScheduler", beta_schedule="squaredcos_cap_v2",
                set_alpha_to_one=False, rescale_betas_zero_snr=False)
  settings = cogvideox.scheduler_settings(cosine)
  dpm = diffusers.CogVideoXDPMScheduler(**{k: v for k, v in cosine.items() if k != "_class_name"})
  assert settings.sampler == "dpmpp_2m_sde"
  # diffusers computes the cosine betas in float32
  np.testing.assert_allclose(settings.schedule.alphas_cumprod, dpm.alphas_cumprod.numpy(), rtol=1e-4)
  assert settings.schedule.final_alpha_cumprod == pytest.approx(float(dpm.final_alpha_cumprod))
  for change, message in ((dict(_class_name="DDIMScheduler"), "_class_name"),
                          (dict(timestep_spacing="leading", steps_offset=1), "steps_offset"),
                          (dict(timestep_spacing="karras"), "timestep_spacing"),
                          (dict(beta_schedule="sigmoid"), "beta_schedule"),
                          (dict(trained_betas=[0.1] * 1000), "trained_betas")):
    with pytest.raises(ValueError, match=message):
      cogvideox.scheduler_settings({**SCHEDULER_2B, "_class_name": "CogVideoXDDIMScheduler", **change})


def test_bfloat16_runs_close_to_float32(folder, pipe):
  """dtype=bfloat16: params, T5 output and latents in bf16 (diffusers' casts); the video stays near fp32's."""
  bf16 = cogvideox.load(folder, dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(bf16.transformer_params)} == {jnp.dtype(jnp.bfloat16)}
  call = dict(CALL, prompt=PROMPTS[0], progress=False)
  latents = bf16(**call, seed=1, output_type="latent")
  assert latents.dtype == jnp.bfloat16
  video = bf16.decode_latents(latents)
  assert video.dtype == np.float32
  # measured: max 0.066, mean 0.004 (3 steps of a random model amplify bf16 rounding); a wrong cast is far off
  error = np.abs(video - pipe(**call, seed=1))
  assert float(error.max()) <= 0.15 and float(error.mean()) <= 0.02


def test_shard_over_a_mesh_gives_the_same_video(pipe):
  """The params placed on a 4 fsdp x 2 tensor mesh by their logical axes: sharded weights, the same video."""
  from vdm_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  sharded = pipe.shard(mesh_lib.create_mesh({"fsdp": 4, "tensor": 2}))
  specs = {tuple(leaf.sharding.spec) for part in (sharded.transformer_params, sharded.text_params)
           for leaf in jax.tree.leaves(part)}
  assert any("fsdp" in str(spec) for spec in specs) and any("tensor" in str(spec) for spec in specs)
  assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(sharded.vae_params))
  call = dict(CALL, prompt=PROMPTS[0], num_inference_steps=2, progress=False)
  np.testing.assert_allclose(sharded(**call, seed=3), pipe(**call, seed=3), atol=1e-5)


def test_missing_part_fails_naming_it(folder, tmp_path):
  for part in ("vae", "tokenizer"):
    root = tmp_path / f"no_{part}"
    root.mkdir()
    for name in cogvideox.PARTS:
      if name != part:
        os.symlink(os.path.join(folder, name), root / name)
    with pytest.raises(FileNotFoundError, match=rf"missing \['{part}'\]"):
      cogvideox.load(str(root))
  with pytest.raises(FileNotFoundError, match="not a folder"):
    cogvideox.load(str(tmp_path / "nowhere"))


def test_seed_compile_once_and_argument_errors(pipe):
  call = dict(CALL, prompt=PROMPTS[0], num_inference_steps=2, progress=False)
  video = pipe(**call, seed=7)
  assert video.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
  step = samplers._discrete_step_fn(pipe._denoise, "text", "v_prediction", "float32", False)  # pylint: disable=protected-access
  compiled = [f._cache_size() for f in (step, pipe._encode, pipe._decode)]  # pylint: disable=protected-access
  np.testing.assert_array_equal(pipe(**call, seed=7), video)
  # another prompt, seed, step count and guidance schedule: no new compilation
  other = pipe(**dict(call, prompt=PROMPTS[1], num_inference_steps=3, use_dynamic_cfg=True), seed=8)
  assert float(np.abs(other - video).max()) > 1e-2
  assert [f._cache_size() for f in (step, pipe._encode, pipe._decode)] == compiled  # pylint: disable=protected-access
  for change, message in ((dict(num_frames=10), "num_frames"), (dict(height=24), "height"),
                          (dict(sampler="euler"), "sampler"), (dict(negative_prompt=["", ""]), "negative_prompt"),
                          (dict(latents=np.zeros((1, 3, 2, 4, 16), np.float32)), "latents")):
    with pytest.raises(ValueError, match=message):
      pipe(**dict(call, **change))


def test_sample_command(folder, pipe, tmp_path):
  out = str(tmp_path / "samples")
  cmd = [sys.executable, "-m", "experiments.sample", f"--pretrained={folder}", "--prompt", PROMPTS[0],
         "--num_samples", "2", "--seed", "5", f"--out={out}", f"--num_frames={FRAMES}", f"--height={HEIGHT}",
         f"--width={WIDTH}", "--num_steps=2"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl"))]
  assert [(r["prompt"], r["seed"]) for r in rows] == [(PROMPTS[0], 5), (PROMPTS[0], 6)]
  video = np.load(rows[0]["npy"], allow_pickle=False)
  assert video.dtype == np.uint8 and video.shape == (FRAMES, HEIGHT, WIDTH, 3)
  assert os.path.getsize(rows[0]["mp4"]) > 0
  # the same prompt and seed in-process give the same frames (defaults: guidance 6, the folder's DDIM)
  again = pipe(prompt=PROMPTS[0], num_frames=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=2, seed=5,
               progress=False)
  # Up to one uint8 level apart: XLA's own CPU convolutions (vdm_jax.xla_cpu) round differently with the process's
  # device/thread split (measured: a decode with 1 vs 8 virtual CPU devices differs by 9.5e-7, where YNNPACK's
  # convolutions gave equal bits), and a value on a rounding edge then lands one level off (seen: 1 of 13,824).
  mine = np.clip(np.round(again[0] * 255.0), 0, 255).astype(np.int32)
  np.testing.assert_allclose(mine, video.astype(np.int32), rtol=0, atol=1)
  assert np.mean(mine == video) > 0.999
  assert not np.array_equal(np.load(rows[1]["npy"], allow_pickle=False), video)
