import pytest

from virnucpro.ckpt import CheckpointTrigger


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fires_on_count_first():
    clock = FakeClock()
    trigger = CheckpointTrigger(seq_threshold=10, time_threshold_sec=60, clock=clock)
    assert trigger.should_checkpoint(4) == (False, "")
    assert trigger.should_checkpoint(5) == (False, "")
    assert trigger.should_checkpoint(3) == (True, "sequence_count")
    trigger.reset()
    assert trigger.pending_sequences == 0
    assert trigger.should_checkpoint(9) == (False, "")


def test_fires_on_time_first_and_restarts_the_clock_on_reset():
    clock = FakeClock()
    trigger = CheckpointTrigger(seq_threshold=1000, time_threshold_sec=5, clock=clock)
    clock.now += 4.9
    assert trigger.should_checkpoint(1) == (False, "")
    clock.now += 0.1
    assert trigger.should_checkpoint(1) == (True, "time")
    trigger.reset()
    assert trigger.should_checkpoint(1) == (False, "")


def test_time_alone_with_nothing_pending_does_not_fire():
    clock = FakeClock()
    trigger = CheckpointTrigger(seq_threshold=10, time_threshold_sec=1, clock=clock)
    clock.now += 50
    assert trigger.should_checkpoint(0) == (False, "")


def test_defaults_follow_the_design():
    trigger = CheckpointTrigger()
    assert (trigger.seq_threshold, trigger.time_threshold_sec) == (10_000, 300.0)


@pytest.mark.parametrize("kwargs", [{"seq_threshold": 0}, {"time_threshold_sec": 0}])
def test_rejects_meaningless_thresholds(kwargs):
    with pytest.raises(ValueError, match="threshold"):
        CheckpointTrigger(**kwargs)
