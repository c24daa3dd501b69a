"""Text -> video with a trained `t2v` workdir: encode the prompt, sample latents with the DiT, decode with the VAE.

    pipe = TextToVideoPipeline.from_workdir("/tmp/quickstart/t2v")
    videos = pipe.generate(["a red circle moving left"], seeds=[0])      # uint8 [N, T, H, W, 3]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import io, runs, xla_cpu
from vdm_jax import text as text_lib
from vdm_jax.data import buckets
from vdm_jax.diffusion import conditioning, samplers
from vdm_jax.diffusion.schedules import NoiseSchedule
from vdm_jax.models.dit import DiT
from vdm_jax.pipelines import t2v_config
from vdm_jax.pipelines.latents import LatentSpace


def build_dit(config, latent_shape: tuple[int, ...], text) -> DiT:
  """The DiT of a `t2v` config for latents [T', h, w, C] and a text encoder (`vdm_jax.text.TextEncoder`); fails on
  `model.*` keys that are not DiT fields. A run with frame conditions takes them on extra input channels
  (`vdm_jax.diffusion.conditioning.model_input`)."""
  t, h, w, c = latent_shape
  fields = {f.name for f in dataclasses.fields(DiT)}
  model = config.model.to_dict()
  unknown = sorted(set(model) - fields)
  if unknown:
    raise config_lib.ConfigError(f"Config keys {['model.' + k for k in unknown]} are not DiT fields; "
                                 f"allowed: {sorted(fields)}.")
  extra = conditioning.extra_channels(c) if t2v_config.is_conditioned(config) else 0
  kwargs = {**model, "in_channels": c + extra, "out_channels": c, "text_dim": text.d_model, "max_text_length": text.max_length,
            "sample_frames": t, "sample_height": h, "sample_width": w,
            "dtype": jnp.dtype(config.train.compute_dtype)}
  return DiT(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def frozen_text_params(config, text) -> Any:
  """A frozen encoder's params: its weights, or the fixed random init a run with an untrained encoder used."""
  return text.init(jax.random.PRNGKey(config.seed + 1))


def _guidance_branches(keep, embeds, shape, guidance_scale: float, image_guidance_scale: float | None):
  """(text embeddings, condition) of every guidance branch, stacked on the batch as `samplers._guided` splits
  them: one branch unguided; [keep; keep] under text guidance ([uncond; cond] text); [no frames; keep; keep] under
  image guidance ([uncond; uncond; cond] text). `embeds` holds [uncond; cond] when guided, `shape` the latents'."""
  if image_guidance_scale is not None:
    branches = [conditioning.empty(shape), keep, keep]
    embeds = jnp.concatenate([embeds[:shape[0]], embeds])
  elif guidance_scale > 1.0:
    branches = [keep, keep]
  else:
    branches = [keep]
  return embeds, jax.tree.map(lambda *xs: jnp.concatenate(xs), *branches)


def _padded(x: jax.Array, pad: int) -> jax.Array:
  """x [n, ...] with its last row repeated `pad` times (a batch padded to the compiled size)."""
  return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])


@dataclasses.dataclass(eq=False)
class TextToVideoPipeline:
  """The three models and what sampling needs; `generate` turns prompts and seeds into uint8 videos."""
  dit: Any
  dit_params: Any
  text: Any  # vdm_jax.text.encoders.TextEncoder
  text_params: Any
  vae: Any
  vae_params: Any
  scaling_factor: Any  # float, or float32 [C]: the DiT's latents are (VAE latents - latent_shift) * scaling_factor
  latent_shape: tuple[int, ...]  # [T', h, w, C]
  schedule: NoiseSchedule
  prediction_type: str = "v_prediction"
  flow_shift: float = 1.0
  latent_shift: Any = 0.0  # float, or float32 [C]
  conditioned: bool = False  # the DiT takes frame conditions (vdm_jax.diffusion.conditioning)

  def __post_init__(self):
    self._decode = xla_cpu.jit(lambda p, z: self.vae.apply({"params": p}, z, method="decode"))
    self._encode = xla_cpu.jit(lambda p, v: self.vae.apply({"params": p}, v, method="encode").mean)

  def denormalize(self, latents: jax.Array) -> jax.Array:
    """The DiT's latents -> VAE latents (the inverse of the training normalisation)."""
    return latents / jnp.asarray(self.scaling_factor, jnp.float32) + jnp.asarray(self.latent_shift, jnp.float32)

  def normalize(self, latents: jax.Array) -> jax.Array:
    """VAE latents -> the DiT's latents."""
    return (latents - jnp.asarray(self.latent_shift, jnp.float32)) * jnp.asarray(self.scaling_factor, jnp.float32)

  def _model_fn(self, x, t, dit_params, embeds, condition=None):
    if condition is not None:
      x = conditioning.model_input(x, condition)
    return self.dit.apply({"params": dit_params}, x, t, embeds)

  @property
  def temporal_ratio(self) -> int:
    return int(self.vae.temporal_compression_ratio)

  @property
  def size(self) -> tuple[int, int, int]:
    """(height, width, num_frames) of the videos this pipeline generates."""
    t, h, w, _ = self.latent_shape
    s = self.vae.spatial_compression
    return h * s, w * s, conditioning.pixel_frames(t, self.temporal_ratio)

  def at_size(self, height: int | None = None, width: int | None = None,
              num_frames: int | None = None) -> "TextToVideoPipeline":
    """This pipeline generating videos of another size (None: this one's): the DiT's positions are computed from
    the latent grid, so any grid runs; how well depends on the sizes it trained on (`input.buckets`). Heights and
    widths are multiples of the VAE's spatial compression times the DiT's patch size; frame counts are 1 + r k,
    with the latent frames a multiple of the DiT's temporal patch. Other values fail naming the allowed ones."""
    old_h, old_w, old_t = self.size
    height, width, num_frames = height or old_h, width or old_w, num_frames or old_t
    if (height, width, num_frames) == (old_h, old_w, old_t):
      return self
    s, r = self.vae.spatial_compression, self.temporal_ratio
    step, pt = s * self.dit.patch_size, self.dit.patch_size_t
    problems = [f"{name}={value} (allowed: multiples of {step}: {step}, {2 * step}, {3 * step}, ...)"
                for name, value in (("height", height), ("width", width)) if value < step or value % step]
    t = (num_frames - 1) // r + 1
    if num_frames < 1 or (num_frames - 1) % r or t % pt:
      allowed = [1 + r * (k * pt - 1) for k in range(1, 4)] if pt > 1 else [1, 1 + r, 1 + 2 * r, 1 + 3 * r]
      problems.append(f"num_frames={num_frames} (allowed: 1 + {r} k{' with 1 + k a multiple of ' + str(pt) if pt > 1 else ''}: "
                      f"{', '.join(map(str, allowed))}, ...)")
    if not problems and self.dit.pos_embed == "learned" and (height, width) != (old_h, old_w):
      problems.append(f"height x width = {height}x{width}: this DiT's learned positions take only {old_h}x{old_w}")
    if problems:
      raise ValueError(f"Cannot generate {height}x{width}x{num_frames}: {'; '.join(problems)}.")
    return dataclasses.replace(self, latent_shape=(t, height // s, width // s, self.latent_shape[3]))

  def _checked(self, frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    _, h, w, _ = self.latent_shape
    s = self.vae.spatial_compression
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[2:] != (h * s, w * s, 3):
      raise ValueError(f"frames {frames.dtype} {list(frames.shape)}: expected uint8 [N, F, {h * s}, {w * s}, 3] "
                       "(this run's frame size).")
    return frames

  def encode_frames(self, frames: np.ndarray, whole: bool = False) -> jax.Array:
    """uint8 frames [N, F, H, W, 3] (F = 1 + r k, the first frames of a video) -> the DiT's latents of their
    1 + k latent frames (posterior means), which are the first latent frames of any video that begins with them
    (the causal VAE; `vdm_jax.diffusion.conditioning`). `whole`: also a whole video of the model's length."""
    frames = self._checked(frames)
    t = self.latent_shape[0]
    k = conditioning.latent_frames(frames.shape[1], self.temporal_ratio)
    if k > t or (k == t and not whole):
      raise ValueError(f"{frames.shape[1]} given frames fill all {t} latent frames of the video "
                       f"({conditioning.pixel_frames(t, self.temporal_ratio)} frames): give at most "
                       f"{conditioning.pixel_frames(t - 1, self.temporal_ratio)} so at least one is generated.")
    video = jnp.asarray(frames, jnp.float32) / 127.5 - 1.0
    return self.normalize(self._encode(self.vae_params, video))

  def reconstruct(self, videos: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """uint8 videos [N, T, H, W, 3] of the model's size through its VAE (posterior mean, decoded) -> uint8, the
    same shape: what the DiT's latent space can hold at best."""
    out = []
    for start in range(0, len(videos), batch_size):
      latents = self.encode_frames(videos[start:start + batch_size], whole=True)
      out.append(io.to_uint8(self._decode(self.vae_params, self.denormalize(latents))))
    return np.concatenate(out)

  def encode_hints(self, last_frames: np.ndarray) -> jax.Array:
    """uint8 last frames [N, P, H, W, 3] (P = 1 + r (k - 1); P = 1: a last image) -> the DiT's hint latents of the
    video's last k latent frames [N, k, h, w, C] (`conditioning.hint_input`, as the condition cache has them)."""
    last_frames = self._checked(last_frames)
    t = self.latent_shape[0]
    if conditioning.latent_frames(last_frames.shape[1], self.temporal_ratio) >= t:
      raise ValueError(f"{last_frames.shape[1]} last frames cover all {t} latent frames: give at most "
                       f"{conditioning.pixel_frames(t - 1, self.temporal_ratio)}.")
    video = conditioning.hint_input(np.asarray(last_frames, np.float32) / 127.5 - 1.0, self.temporal_ratio)
    return self.normalize(self._encode(self.vae_params, jnp.asarray(video)))[:, 1:]

  def _condition(self, shape, head: jax.Array | None, tail: jax.Array | None) -> conditioning.Condition:
    """The condition of a batch of latents `shape`: `head` [B, k, ...] kept at the first frames, `tail`
    [B, k', ...] given as hints at the last ones (either may be None)."""
    condition = conditioning.empty(shape)
    if head is not None:
      padded = jnp.zeros(shape, jnp.float32).at[:, :head.shape[1]].set(head)
      condition = conditioning.from_keep(padded, jnp.arange(shape[1]) < head.shape[1])
    if tail is not None:
      condition = conditioning.with_hints(condition, *conditioning.at_end(tail, shape[1]))
    return condition

  @classmethod
  def from_config(cls, config, params, workdir: str | None = None, *, space: LatentSpace | None = None,
                  text=None, text_params=None) -> "TextToVideoPipeline":
    """The pipeline of a `t2v` config with its trained params ({'dit', and 'text' for a trained encoder}).

    `workdir` locates the latent cache when the config names none; `space`, `text` and `text_params` reuse what
    the caller already built (the trainer's own). A run trained on several sizes (`input.buckets`) starts at its
    first bucket's size (`at_size` for the others)."""
    config = buckets.one_size(config)
    space = space or LatentSpace(config, workdir)
    text = text or text_lib.build(config.text)
    if text_params is None:
      text_params = params["text"] if config.text.trainable else frozen_text_params(config, text)
    vae_module, vae_params = space.vae()
    d = config.diffusion
    return cls(dit=build_dit(config, space.latent_shape(), text), dit_params=params["dit"], text=text,
               text_params=text_params, vae=vae_module, vae_params=vae_params, scaling_factor=space.scaling_factor,
               latent_shift=space.latent_shift, latent_shape=space.latent_shape(),
               schedule=t2v_config.make_schedule(d), prediction_type=d.prediction_type, flow_shift=d.flow_shift,
               conditioned=t2v_config.is_conditioned(config))

  @classmethod
  def from_workdir(cls, workdir: str, lora_scale: float = 1.0) -> "TextToVideoPipeline":
    """The pipeline of a trained `t2v` run: its resolved config, EMA params and frozen VAE; a LoRA run's adapters
    merged into its base at `lora_scale` (`runs.load_model_params`)."""
    config = runs.read_config(workdir)
    if config.get("experiment") != "t2v":
      raise ValueError(f"{workdir!r} holds a {config.get('experiment')!r} run; sampling needs a 't2v' run.")
    config = runs.read_config(workdir, t2v_config.inference_defaults())
    params, _ = runs.load_model_params(workdir, lora_scale=lora_scale)
    return cls.from_config(config, params, workdir)

  def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, sampler: str = "ddim", num_steps: int = 25,
               guidance_scale: float = 4.0, use_dynamic_cfg: bool = False, guidance_rescale: float = 0.0,
               negative_prompt: str = "", batch_size: int = 16, progress: bool = False,
               return_latents: bool = False, frames: np.ndarray | None = None,
               image_guidance_scale: float | None = None, videos: np.ndarray | None = None,
               strength: float = 0.7, last_frames: np.ndarray | None = None) -> np.ndarray:
    """uint8 videos [N, T, H, W, 3], video i from prompts[i] and the initial noise of seeds[i]. Batches are padded
    to `batch_size` so one compiled program serves all of them. `guidance_rescale`: see
    `vdm_jax.diffusion.samplers.rescale_guidance`.

    `frames` (a run trained with frame conditions): uint8 [N, F, H, W, 3], the first F = 1 + r k frames of video i
    (F = 1: image-to-video; more: extension); their latent frames are kept through sampling. `last_frames`: uint8
    [N, P, H, W, 3], the last P = 1 + r (k - 1) frames it should end with (P = 1: a last image; with `frames`:
    interpolation, or a loop with the same image), given as hints (`encode_hints`). With `image_guidance_scale`,
    the frames are guided separately from the text (`samplers._guided`).

    `videos` (any run): uint8 [N, T, H, W, 3] of the model's length, edited by SDEdit: sampling starts from their
    latents noised `strength` of the way to noise (`samplers.sample`'s `init_latents`)."""
    if len(prompts) != len(seeds):
      raise ValueError(f"Got {len(prompts)} prompts but {len(seeds)} seeds.")
    for name, given in (("frames", frames), ("last_frames", last_frames)):
      if given is not None and not self.conditioned:
        raise ValueError(f"This run's DiT was trained without frame conditions (diffusion.condition.mix is t2v "
                         f"only): it cannot take {name}.")
      if given is not None and len(given) != len(prompts):
        raise ValueError(f"Got {len(given)} {name} for {len(prompts)} prompts.")
    if image_guidance_scale is not None and frames is None and last_frames is None:
      raise ValueError("image_guidance_scale needs frames or last_frames to guide.")
    cond_latents = None if frames is None else self.encode_frames(frames)
    hint_latents = None if last_frames is None else self.encode_hints(last_frames)
    if videos is not None and len(videos) != len(prompts):
      raise ValueError(f"Got {len(videos)} videos to edit for {len(prompts)} prompts.")
    if videos is not None and len(videos[0]) != conditioning.pixel_frames(self.latent_shape[0], self.temporal_ratio):
      raise ValueError(f"videos to edit have {len(videos[0])} frames; this run generates "
                       f"{conditioning.pixel_frames(self.latent_shape[0], self.temporal_ratio)}.")
    init = None if videos is None else self.encode_frames(videos, whole=True)
    batch_size = max(1, min(batch_size, len(prompts)))
    outputs = []
    for start in range(0, len(prompts), batch_size):
      chunk = list(prompts[start:start + batch_size])
      chunk_seeds = list(seeds[start:start + batch_size])
      pad = batch_size - len(chunk)
      chunk, chunk_seeds = chunk + chunk[-1:] * pad, chunk_seeds + chunk_seeds[-1:] * pad
      ids, mask = self.text.tokenize(chunk)
      embeds = jnp.asarray(self.text.encode_tokens(self.text_params, ids, mask), jnp.float32)
      if guidance_scale > 1.0 or image_guidance_scale is not None:
        neg_ids, neg_mask = self.text.tokenize([negative_prompt] * len(chunk))
        uncond = jnp.asarray(self.text.encode_tokens(self.text_params, neg_ids, neg_mask), jnp.float32)
        embeds = jnp.concatenate([uncond, embeds])
      noise = jnp.stack([jax.random.normal(jax.random.PRNGKey(int(s)), self.latent_shape) for s in chunk_seeds])
      keep, model_args = None, (self.dit_params, embeds)
      if self.conditioned:
        part = lambda x: None if x is None else _padded(x[start:start + batch_size], pad)
        keep = self._condition(noise.shape, part(cond_latents), part(hint_latents))
        embeds, branches = _guidance_branches(keep, embeds, noise.shape, guidance_scale, image_guidance_scale)
        model_args = (self.dit_params, embeds, branches)
      latents = samplers.sample(self._model_fn, noise, schedule=self.schedule, sampler=sampler, num_steps=num_steps,
                                prediction_type=self.prediction_type, guidance_scale=guidance_scale,
                                use_dynamic_cfg=use_dynamic_cfg, guidance_rescale=guidance_rescale,
                                rng=jax.random.PRNGKey(int(chunk_seeds[0])), flow_shift=self.flow_shift,
                                progress=progress, model_args=model_args, keep=keep,
                                image_guidance_scale=image_guidance_scale, strength=strength,
                                init_latents=None if init is None else _padded(init[start:start + batch_size], pad))
      if return_latents:
        outputs.append(np.asarray(latents)[:len(chunk) - pad])
        continue
      video = self._decode(self.vae_params, self.denormalize(latents))
      outputs.append(io.to_uint8(video)[:len(chunk) - pad])
    return np.concatenate(outputs)

  def extend(self, prompts: Sequence[str], seeds: Sequence[int], videos: np.ndarray, num_frames: int, *,
             context_frames: int | None = None, backward: bool = False, **generate_kwargs) -> np.ndarray:
    """uint8 videos [N, num_frames, H, W, 3] that begin with `videos` (uint8 [N, F, H, W, 3], F = 1 + r j) and go
    on from them, one window of the model's length at a time: each window keeps as its condition the last
    1 + r (k - 1) frames so far (k = `context_frames` latent frames; default as many as the given video has, at
    most all but one of a window's), encoded on their own (exact under the causal VAE), and adds the frames after
    them. `backward`: videos that end with `videos`, each window ending with the first 1 + r (k - 1) frames so far
    (given as hints: `generate`'s `last_frames`) and adding the frames before them. Memory does not grow with
    `num_frames` beyond the output itself. Window i > 0 draws its noise from seed + 1000003 i. `generate_kwargs`
    go to `generate` (sampler, steps, guidance)."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or len(videos) != len(prompts):
      raise ValueError(f"videos {list(videos.shape)}: expected uint8 [N={len(prompts)}, F, H, W, 3], one per prompt.")
    given, r, window = videos.shape[1], self.temporal_ratio, conditioning.pixel_frames(self.latent_shape[0],
                                                                                      self.temporal_ratio)
    if num_frames < given:
      raise ValueError(f"num_frames={num_frames} is shorter than the {given} given frames.")
    k = context_frames or min(conditioning.latent_frames(given, r), self.latent_shape[0] - 1)
    if not 1 <= k < self.latent_shape[0]:
      raise ValueError(f"context_frames={k}: must be in [1, {self.latent_shape[0] - 1}] (latent frames of a window "
                       "kept as its condition; at least one is generated).")
    context = conditioning.pixel_frames(k, r)
    if given < context:
      raise ValueError(f"{given} given frames are fewer than the {context} a context of {k} latent frames needs.")
    out, edge = [videos], (videos[:, :context] if backward else videos[:, -context:])
    length, i = given, 0
    while length < num_frames:
      window_seeds = [int(s) + 1000003 * i for s in seeds]
      if backward:
        new = self.generate(prompts, window_seeds, last_frames=edge, **generate_kwargs)[:, :window - context]
        edge = np.concatenate([new, edge], axis=1)[:, :context]
      else:
        new = self.generate(prompts, window_seeds, frames=edge, **generate_kwargs)[:, context:window]
        edge = np.concatenate([edge, new], axis=1)[:, -context:]
      out.append(new)
      length, i = length + new.shape[1], i + 1
    if backward:
      return np.concatenate(out[::-1], axis=1)[:, -num_frames:]
    return np.concatenate(out, axis=1)[:, :num_frames]
