"""Frame conditions: latent frames of a clip given to the model (image-to-video, extension), drawn per example.

A condition is, per example, condition latents c [T', h, w, C] and two masks over the T' latent frames:
  keep    the frame is given exactly: the noisy input carries c there (it is never noised), the loss skips it, and
          every sampler puts c back after each step, so it comes out bit-identical;
  given   the frame's condition channels carry c (keep implies given).
The DiT sees them on channels, [x_t | c * given | given | keep] (C + C + 2 inputs, `extra_channels`), Open-Sora
2.0's layout rather than a per-token timestep (Wan2.2 TI2V, LTX-Video): a channel can carry a frame that is not a
whole latent frame of the clip (a last image under the causal VAE, see below), a per-token timestep cannot, and the
layout is the one the CogVideoX image-to-video weights use. docs/conditioning.md says more.

Which pixel frames a latent frame holds: the causal VAE (with per-frame normalisation, `group_norm_over_time=False`)
encodes pixel frame 0 alone into latent frame 0 and pixel frames r j - r + 1 .. r j into latent frame j >= 1
(r = its temporal compression), each seeing only earlier frames. So the first r k + 1 pixel frames encoded on their
own give exactly the clip's first k + 1 latent frames: prefix conditions (the first frame, the first k latent
frames) are kept frames taken from the clip's own latents, in training and in sampling alike.

Frames at the end are not whole latent frames: the last pixel frame shares its latent frame with the r - 1 before
it, and its latents depend on everything before it. They are given as *hints* (given, not kept: the latent frame is
still generated and in the loss) made the way Open-Sora 2.0 and Wan encode masked videos, the given frames in place
and zeros (mid grey) elsewhere. With per-frame statistics and causal convolutions, a run of zero frames before them
computes the same values whatever its length, so the hint latents are those of `hint_input(frames)`: r zero frames
then the given ones, encoded on their own, dropping the first (all-zero) latent frame. Training reads them from a
condition cache written next to the latent cache; sampling encodes the given frames the same way.

Tasks (`TASKS`) over the T' latent frames (k = `extend_frames`, P = 1 + r (k - 1) pixel frames):
  t2v              nothing given (also what a dropped condition trains)
  i2v_head         the first frame: latent frame 0 kept
  extend_forward   the first P frames: the first k latent frames kept
  i2v_tail         the last frame: a hint at latent frame T' - 1
  interpolate      the first and the last frame: latent frame 0 kept, a hint at T' - 1 (a loop is this with the
                   first image at both ends)
  extend_backward  the last P frames: hints at the last k latent frames
`draw` picks one per example inside the jitted step from the configured mix, so a batch mixes tasks without
recompiling.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("t2v", "i2v_head", "extend_forward", "i2v_tail", "interpolate", "extend_backward")
TAIL_TASKS = ("i2v_tail", "interpolate")  # a hint of the last frame at latent frame T' - 1
BACKWARD_TASKS = ("extend_backward",)  # hints of the last P frames at the last k latent frames
EXTRA_MASKS = 2  # given, keep
DEFAULT_MIX = {task: (1.0 if task == "t2v" else 0.0) for task in TASKS}


def extra_channels(latent_channels: int) -> int:
  """Input channels a conditioned DiT adds to the latents' C: the condition latents and the two masks."""
  return latent_channels + EXTRA_MASKS


def latent_frames(num_pixel_frames: int, temporal_ratio: int) -> int:
  """Latent frames of a clip of `num_pixel_frames` under the causal VAE: 1 + (T - 1) / r (T - 1 divisible by r)."""
  if num_pixel_frames < 1 or (num_pixel_frames - 1) % temporal_ratio:
    raise ValueError(f"{num_pixel_frames} frames: a causal VAE with temporal compression {temporal_ratio} takes "
                     f"1 + {temporal_ratio} k frames (1, {1 + temporal_ratio}, {1 + 2 * temporal_ratio}, ...).")
  return 1 + (num_pixel_frames - 1) // temporal_ratio


def pixel_frames(num_latent_frames: int, temporal_ratio: int) -> int:
  """Pixel frames that `num_latent_frames` latent frames decode to: 1 + r (T' - 1)."""
  return 1 + temporal_ratio * (num_latent_frames - 1)


def keep_mask(task: str, num_latent_frames: int, extend_frames: int = 1) -> np.ndarray:
  """bool [T']: the latent frames `task` gives exactly (TASKS)."""
  if task not in TASKS:
    raise ValueError(f"Unknown condition task {task!r}; allowed: {list(TASKS)}.")
  check_extend_frames(extend_frames, num_latent_frames)
  mask = np.zeros((num_latent_frames,), bool)
  if task in ("i2v_head", "interpolate"):
    mask[0] = True
  elif task == "extend_forward":
    mask[:extend_frames] = True
  return mask


def check_extend_frames(extend_frames: int, num_latent_frames: int) -> None:
  if not 1 <= extend_frames < num_latent_frames:
    raise ValueError(f"extend_frames={extend_frames}: must be in [1, {num_latent_frames - 1}] for clips of "
                     f"{num_latent_frames} latent frames (at least one frame is generated).")


def needs_hints(mix: Mapping[str, float]) -> bool:
  """Whether a mix trains a task with hints (its clips need the condition cache)."""
  return any(t in TAIL_TASKS + BACKWARD_TASKS for t in mix_probabilities(mix)[0])


def hint_input(frames, temporal_ratio: int):
  """The video whose encoding gives the hints of `frames` [B, F, H, W, 3] (pixels in [-1, 1], F = 1 + r j, the
  last frames of a video): r zero frames, then the frames. Its first latent frame (zeros only) is dropped:
  latents[:, 1:] are the hints of the video's last 1 + j latent frames."""
  b, _, h, w, c = frames.shape
  zeros = np.zeros((b, temporal_ratio, h, w, c), np.asarray(frames).dtype)
  return np.concatenate([zeros, np.asarray(frames)], axis=1)


def mix_probabilities(mix: Mapping[str, float]) -> tuple[tuple[str, ...], np.ndarray]:
  """(tasks with a positive weight, their probabilities [K] summing to 1) from a {task: weight} mix."""
  unknown = sorted(set(mix) - set(TASKS))
  if unknown:
    raise ValueError(f"Unknown condition tasks {unknown} in the mix; allowed: {list(TASKS)}.")
  if any(float(w) < 0 for w in mix.values()):
    raise ValueError(f"Condition mix {dict(mix)}: weights must be >= 0.")
  tasks = tuple(t for t in TASKS if float(mix.get(t, 0.0)) > 0)
  if not tasks:
    raise ValueError(f"Condition mix {dict(mix)}: at least one task needs a positive weight.")
  weights = np.asarray([float(mix[t]) for t in tasks], np.float64)
  return tasks, weights / weights.sum()


def is_conditioned(mix: Mapping[str, float]) -> bool:
  """Whether a mix trains any task other than t2v (the DiT then takes the condition channels)."""
  return mix_probabilities(mix)[0] != ("t2v",)


class Condition(NamedTuple):
  """Per-example condition: latents [B, T', h, w, C] (zero where not given), keep and given bool [B, T']."""
  latents: jax.Array
  keep: jax.Array
  given: jax.Array


def empty(shape: Sequence[int], dtype=jnp.float32) -> Condition:
  """No condition for latents of `shape` [B, T', h, w, C] (text-to-video)."""
  b, t = shape[:2]
  return Condition(jnp.zeros(shape, dtype), jnp.zeros((b, t), bool), jnp.zeros((b, t), bool))


def from_keep(latents: jax.Array, keep: jax.Array) -> Condition:
  """The condition that keeps `latents` [B, T', ...] at the frames of `keep` [B, T'] (or [T'], for every example)."""
  keep = jnp.broadcast_to(jnp.asarray(keep, bool), latents.shape[:2])
  return Condition(jnp.where(_frames(keep, latents), latents, 0).astype(latents.dtype), keep, keep)


def with_hints(condition: Condition, hints: jax.Array, at: jax.Array) -> Condition:
  """`condition` with `hints` [B, T', ...] given (not kept) at the frames of `at` [B, T'] that it does not keep."""
  at = jnp.logical_and(jnp.broadcast_to(jnp.asarray(at, bool), condition.keep.shape), ~condition.keep)
  latents = jnp.where(_frames(at, hints), hints.astype(condition.latents.dtype), condition.latents)
  return Condition(latents, condition.keep, jnp.logical_or(condition.given, at))


def at_end(hints: jax.Array, num_latent_frames: int) -> tuple[jax.Array, jax.Array]:
  """(hints [B, n, ...] placed at the last n of `num_latent_frames` frames, zeros before: [B, T', ...]; where they
  are: bool [T'])."""
  b, n = hints.shape[:2]
  pad = jnp.zeros((b, num_latent_frames - n) + hints.shape[2:], hints.dtype)
  return jnp.concatenate([pad, hints], axis=1), jnp.arange(num_latent_frames) >= num_latent_frames - n


def draw(rng: jax.Array, latents: jax.Array, tasks: Sequence[str], probabilities: np.ndarray,
         extend_frames: int = 1, hints: jax.Array | None = None) -> tuple[Condition, jax.Array]:
  """A task per example drawn from `probabilities` [K] over `tasks`, and its condition on the clip's own latents
  [B, T', h, w, C] (prefix tasks are exact: see the module docstring) and, for tasks with hints, the clip's hint
  latents `hints` [B, 1 + k, h, w, C] (the tail hint, then the k backward hints; k = extend_frames). Returns
  (condition, task index int32 [B])."""
  b, t = latents.shape[:2]
  table = jnp.asarray(np.stack([keep_mask(task, t, extend_frames) for task in tasks]))  # [K, T']
  index = jax.random.categorical(rng, jnp.log(jnp.asarray(probabilities, jnp.float32)), shape=(b,))
  condition = from_keep(latents, table[index])
  if not any(task in TAIL_TASKS + BACKWARD_TASKS for task in tasks):
    return condition, index
  if hints is None or hints.shape[1] != 1 + extend_frames:
    raise ValueError(f"Tasks {list(tasks)} need the clips' hint latents [B, 1 + extend_frames = "
                     f"{1 + extend_frames}, ...]; got {None if hints is None else list(hints.shape)}.")
  for kind, part in ((TAIL_TASKS, hints[:, :1]), (BACKWARD_TASKS, hints[:, 1:])):
    placed, at = at_end(part, t)
    chosen = jnp.asarray([task in kind for task in tasks])[index][:, None]  # [B, 1]
    condition = with_hints(condition, placed, jnp.logical_and(chosen, at[None]))
  return condition, index


def _frames(mask: jax.Array, like: jax.Array) -> jax.Array:
  """[B, T'] -> [B, T', 1, ..., 1] to broadcast over `like`'s frames."""
  return jnp.reshape(mask, mask.shape + (1,) * (like.ndim - 2))


def apply(x: jax.Array, condition: Condition) -> jax.Array:
  """x [B, T', ...] with the kept frames replaced by the condition latents (bit for bit, in x's dtype)."""
  return jnp.where(_frames(condition.keep, x), condition.latents.astype(x.dtype), x)


def augment(rng: jax.Array, condition: Condition, sigma: float) -> Condition:
  """The condition channels' latents with Gaussian noise of std `sigma` at the given frames (SVD's `cond_aug`,
  CogVideoX's image noise). Only what the model reads on the condition channels: `apply` keeps frames clean."""
  if sigma <= 0:
    return condition
  noise = sigma * jax.random.normal(rng, condition.latents.shape, jnp.float32)
  latents = condition.latents + jnp.where(_frames(condition.given, noise), noise, 0).astype(condition.latents.dtype)
  return condition._replace(latents=latents)


def model_input(x: jax.Array, condition: Condition) -> jax.Array:
  """[x | c * given | given | keep] on channels: [B, T', h, w, 2C + 2] in x's dtype."""
  given = _frames(condition.given, x)
  masks = jnp.stack([condition.given, condition.keep], -1).astype(x.dtype)  # [B, T', 2]
  masks = jnp.broadcast_to(masks[:, :, None, None, :], x.shape[:-1] + (EXTRA_MASKS,))
  return jnp.concatenate([x, jnp.where(given, condition.latents, 0).astype(x.dtype), masks], axis=-1)


def generated_fraction(keep: jax.Array) -> jax.Array:
  """float32 [B, T']: 1 at the frames the model generates (the loss covers them), 0 at kept ones."""
  return 1.0 - keep.astype(jnp.float32)


def masked_mse(output: jax.Array, target: jax.Array, frame_weight: jax.Array) -> jax.Array:
  """Mean squared error [B] over the frames where `frame_weight` [B, T'] is 1 (float32; 0 where it is 0 at every
  frame)."""
  diff = jnp.square(output.astype(jnp.float32) - target.astype(jnp.float32))
  per_frame = jnp.mean(diff, axis=tuple(range(2, diff.ndim)))  # [B, T']
  return jnp.sum(per_frame * frame_weight, axis=1) / jnp.maximum(jnp.sum(frame_weight, axis=1), 1.0)
