"""StepSplit (callbacks/step_split.py): the parts add up, and the CUDA path reads its events once per interval.

No GPU here: the CUDA path runs with torch.cuda.Event replaced by a host-clock event that counts its
synchronize() calls, so what is checked is StepSplit's own bookkeeping (which event pairs make which
part, one wait per fold, the anchor carried across folds), not CUDA. The host clock is a test clock
that each part advances by its time: the shares are exact, whatever the load on the machine.
"""
from __future__ import annotations

import time

import pytest
import torch

from ae_train.callbacks.step_split import BACKWARD, DATA, FORWARD, OPTIMIZER, OTHER, PARTS, StepSplit, format_split

STEP = ((DATA, 0.004), (FORWARD, 0.002), (BACKWARD, 0.003), (OPTIMIZER, 0.0005), (OTHER, 0.0005))


class HostEvent:
    syncs = 0

    def __init__(self, enable_timing: bool = False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        HostEvent.syncs += 1

    def elapsed_time(self, end: "HostEvent") -> float:
        return (end.t - self.t) * 1000.0


class Clock:
    """time.perf_counter for the test: it moves only when a part spends its time."""
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def steps(split: StepSplit, clock: Clock, n: int) -> None:
    for _ in range(n):
        for part, seconds in STEP:
            clock.now += seconds
            split.mark(part)


@pytest.mark.parametrize("cuda", [False, True])
def test_step_split_parts_follow_the_time_spent(monkeypatch, cuda):
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(torch.cuda, "Event", HostEvent)
    HostEvent.syncs = 0
    split = StepSplit(cuda=cuda)
    split.start()
    windows = []
    for _ in range(3):  # three logging intervals of 4 steps
        steps(split, clock, 4)
        windows.append(split.fold())
    assert HostEvent.syncs == (3 if cuda else 0)  # one wait per interval, none per step
    for w in windows:
        assert w == pytest.approx([4 * seconds for _, seconds in STEP])  # each part: its 4 steps' time
    total = split.epoch_seconds()
    assert sum(total) == pytest.approx(sum(map(sum, windows)))
    assert total[BACKWARD] == pytest.approx(sum(w[BACKWARD] for w in windows))
    assert split.clock == ("cuda events" if cuda else "cpu clock")


def test_step_split_format_adds_up_to_100():
    text = format_split([0.71, 0.10, 0.05, 0.03, 0.11])
    assert text == "data wait 71.0%, forward 10.0%, backward 5.0%, optimizer 3.0%, other 11.0%"
    assert len(PARTS) == 5
