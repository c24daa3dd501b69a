"""The quickstart's whole-job estimate (experiments/job_clock.py), on a fake clock."""
import pytest

from experiments import job_clock


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _expected(kind, stage, units):
  fixed, per_unit = job_clock.EXPECTED[kind][stage]
  return fixed + per_unit * units


def test_total_is_the_sum_of_the_stages_expected_seconds():
  clock = job_clock.JobClock({"vae": 100, "t2v": 200, "sample": 8}, "no_amx")
  assert clock.total() == pytest.approx(sum(_expected("no_amx", s, n)
                                            for s, n in (("vae", 100), ("t2v", 200), ("sample", 8))))


def test_a_slower_machine_rescales_the_later_stages():
  fake = _Clock()
  clock = job_clock.JobClock({"vae": 100, "t2v": 200, "sample": 8}, "amx", clock=fake)
  vae, t2v, sample = (_expected("amx", s, n) for s, n in (("vae", 100), ("t2v", 200), ("sample", 8)))
  clock.start("vae")
  assert clock.remaining(vae) == pytest.approx(vae + t2v + sample)  # on pace
  fake.now = vae  # half-way at twice the expected time: the rest is expected twice as slow
  assert clock.remaining(vae) == pytest.approx(vae + 2 * (t2v + sample))
  fake.now = 2 * vae
  clock.start("t2v")
  assert clock.remaining_before("t2v") == pytest.approx(2 * (t2v + sample))
  assert clock.remaining(2 * t2v) == pytest.approx(2 * t2v + 2 * sample)


def test_a_restored_stage_does_not_set_the_pace():
  fake = _Clock()
  clock = job_clock.JobClock({"vae": 100, "t2v": 200, "sample": 8}, "no_amx", clock=fake)
  clock.start("vae")
  fake.now = 1.0  # finished in an earlier invocation: only restored
  clock.start("t2v")
  assert clock.remaining_before("t2v") == pytest.approx(_expected("no_amx", "t2v", 200) +
                                                        _expected("no_amx", "sample", 8))


def test_unknown_kinds_and_stages_are_named():
  with pytest.raises(ValueError, match="'arm'.*known: \\['amx', 'no_amx'\\]"):
    job_clock.JobClock({"vae": 1}, "arm")
  with pytest.raises(ValueError, match="'lora'"):
    job_clock.JobClock({"lora": 1}, "amx")
