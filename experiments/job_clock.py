"""The quickstart's whole-job estimate: each stage's expected seconds on this kind of CPU, rescaled while it runs
by how fast the running stage actually goes.

The expectations are the quickstart's own measurements on 2-core CPUs (docs/results.md),
as fixed seconds (compiling, writing caches, evaluating) plus seconds per training step or per probe video, so
`--vae_steps`, `--t2v_steps` and `--num_probe` scale them. A machine unlike both kinds is covered by the rescaling:
once a stage has run a while, the later stages are assumed to be as much faster or slower as it is.
"""
from __future__ import annotations

import time

# (fixed seconds, seconds per unit) per stage; units: training steps for 'vae' and 't2v', probe videos for 'sample'.
# no_amx t2v: the float32 DiT after the Dense backward (docs/cpu_profile.md: 67 s of latent cache, 13 s of compile,
# 33 s of final eval, 4000 steps in 690 s).
# t2v_stage1/2: the first two stages of the sizes_staged preset (images at 64, 5.8-7 steps/s; video at 32, 19 steps/s,
# 6 latent caches and compiles), measured without AMX and assumed alike with it.
_STAGES = {"t2v_stage1": (70.0, 0.17), "t2v_stage2": (150.0, 0.053)}
EXPECTED = {
    "amx": {"vae": (60.0, 0.275), "t2v": (130.0, 0.186), "sample": (6.0, 0.15), **_STAGES},
    "no_amx": {"vae": (90.0, 0.335), "t2v": (120.0, 0.173), "sample": (8.0, 0.23), **_STAGES},
}
_SPEED_RANGE = (0.2, 5.0)  # how far one stage's pace may rescale the others: a stalled first step says little


class JobClock:
  """Expected and remaining seconds of a job made of named stages run in order."""

  def __init__(self, units: dict[str, int], kind: str, clock=time.time):
    """`units`: each stage's steps (or probe videos), in the order they run; `kind`: a key of EXPECTED."""
    if kind not in EXPECTED:
      raise ValueError(f"CPU kind {kind!r} has no expected stage times; known: {sorted(EXPECTED)}.")
    unknown = set(units) - set(EXPECTED[kind])
    if unknown:
      raise ValueError(f"Stages {sorted(unknown)} have no expected times; known: {sorted(EXPECTED[kind])}.")
    self.order = list(units)
    fixed_and_unit = EXPECTED[kind]
    self.expected = {name: fixed_and_unit[name][0] + fixed_and_unit[name][1] * n for name, n in units.items()}
    self._clock = clock
    self._stage, self._stage_start = None, None
    self._speed = 1.0  # actual / expected seconds, from the stages run so far

  def total(self) -> float:
    """The whole job's expected seconds on this kind of CPU."""
    return sum(self.expected.values())

  def start(self, stage: str) -> None:
    """Marks `stage` as started now (the previous one, if any, as finished: its pace rescales the rest)."""
    now = self._clock()
    if self._stage is not None and now - self._stage_start >= 0.2 * self.expected[self._stage]:
      # A stage that mostly ran (not one finished in an earlier invocation and only restored) sets the pace.
      self._speed = self._clamp((now - self._stage_start) / self.expected[self._stage])
    self._stage, self._stage_start = stage, now

  def remaining(self, stage_remaining: float) -> float:
    """The job's remaining seconds, given the running stage's own estimate of its remaining seconds."""
    elapsed = self._clock() - self._stage_start
    speed = self._clamp((elapsed + stage_remaining) / self.expected[self._stage])
    later = self.order[self.order.index(self._stage) + 1:]
    return stage_remaining + speed * sum(self.expected[name] for name in later)

  def remaining_before(self, stage: str) -> float:
    """The job's remaining seconds when `stage` is about to start, at the pace of the stages run so far."""
    return self._speed * sum(self.expected[name] for name in self.order[self.order.index(stage):])

  @staticmethod
  def _clamp(speed: float) -> float:
    return min(max(speed, _SPEED_RANGE[0]), _SPEED_RANGE[1])
