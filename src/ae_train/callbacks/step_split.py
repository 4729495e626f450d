"""Where a training step's time goes: data wait, forward, backward, optimizer, other (DebugCallback's helper).

A step is cut at five points, each the end of one part: the batch is ready (on_train_batch_start ends
the data wait), the loss is computed (on_before_backward ends forward), gradients are done
(on_after_backward ends backward, which in DDP includes the gradient all-reduce and so the wait for
slower ranks), the optimizer step returned (a torch step post-hook ends optimizer), the batch hooks
are done (on_train_batch_end ends other: LR scheduler, logging, callbacks). The parts add up to the
wall time between two batch ends. DebugCallback also times the collective at the start of each DDP
step (step_start.py, before the batch is fetched) as backward: that too is waiting for the other ranks.

On the CPU each cut is one `perf_counter()` (a vDSO clock read, no syscall) added into a float. On
a GPU the host only queues the kernels, so each cut records a CUDA event on the current stream
instead (no sync); `fold()` reads the events once per logging interval after one `synchronize()` of
the last event, and the parts are device time: "data wait" is then the time the device sat idle
between two steps waiting for the next batch.
"""
from __future__ import annotations

import time

import torch

from ..logformat import SPLIT_NAMES as PARTS
from ..logformat import format_split as _format_shares

DATA, FORWARD, BACKWARD, OPTIMIZER, OTHER = range(len(PARTS))
MAX_EVENTS = 50_000  # a very long interval (or debug off) folds when this many events wait


def format_split(seconds: list[float]) -> str:
    """`data wait 3.1%, forward 20.0%, backward 55.0%, optimizer 12.0%, other 9.9%` (shares of their sum)."""
    total = sum(seconds) or 1.0
    return _format_shares([100 * s / total for s in seconds])


class StepSplit:
    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.clock = "cuda events" if cuda else "cpu clock"
        self.window = [0.0] * len(PARTS)  # seconds since the last fold (host clock on the CPU)
        self.epoch = [0.0] * len(PARTS)   # seconds of the epoch so far, up to the last fold
        self.t = time.perf_counter()
        self._events: list = []  # CUDA: events recorded since the last fold, [0] the one before them
        self._parts: list[int] = []
        self._n = 0

    def start(self) -> float:
        """A new epoch: zero the sums, restart the clock (and the event chain)."""
        self.window, self.epoch = [0.0] * len(PARTS), [0.0] * len(PARTS)
        self._n = 0
        self.t = time.perf_counter()
        if self.cuda:
            self._record(OTHER)  # the anchor: its own part is never counted
        return self.t

    def mark(self, part: int) -> float:
        """The end of `part` now; returns the host clock read."""
        now = time.perf_counter()
        if self.cuda:
            self._record(part)
            if self._n >= MAX_EVENTS:
                self.fold()
        else:
            self.window[part] += now - self.t
        self.t = now
        return now

    def _record(self, part: int) -> None:
        if self._n == len(self._events):
            self._events.append(torch.cuda.Event(enable_timing=True))
            self._parts.append(part)
        self._events[self._n].record()
        self._parts[self._n] = part
        self._n += 1

    def fold(self) -> list[float]:
        """Close the window: returns its seconds per part and adds them to the epoch's."""
        if self.cuda and self._n > 1:
            ev = self._events
            ev[self._n - 1].synchronize()  # the one wait of the interval; every earlier event is done too
            for i in range(1, self._n):
                self.window[self._parts[i]] += ev[i - 1].elapsed_time(ev[i]) / 1000.0  # ms -> s
            ev[0], ev[self._n - 1] = ev[self._n - 1], ev[0]  # the last event anchors the next window
            self._n = 1
        out, self.window = self.window, [0.0] * len(PARTS)
        self.epoch = [a + b for a, b in zip(self.epoch, out)]
        return out

    def epoch_seconds(self) -> list[float]:
        self.fold()
        return list(self.epoch)
