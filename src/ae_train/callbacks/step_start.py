"""The collective at the start of each DDP training step: the one place that replaces Lightning's own.

Lightning (2.x) starts every training step of a multi-rank run, before the batch is fetched, with the
epoch loop's private `_broadcast_sigterm_tensor`: rank 0's SIGTERM flag broadcast to all. Two of our
callbacks care about that moment. PreemptionCallback replaces what it does (an all-reduce of every
rank's signal, so a signal to any rank stops all at the same step), and DebugCallback times the wait
in it as backward (a rank slow after its backward is waited for there, as in the gradient all-reduce).
`StepStart.of(trainer)` installs one StepStart on the loop (an instance attribute over the method)
the first time a callback asks for it; each callback sets its own part and clears it when done, in
any order, and the loop's own method is back once no part is set. Without that method (another
Lightning) `of` returns None and the callbacks do without.
"""
from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl

METHOD = "_broadcast_sigterm_tensor"


class StepStart:
    def __init__(self, loop) -> None:
        self.loop = loop
        self.lightning_check = getattr(loop, METHOD)  # the loop's own (bound) method
        self.check: Callable[[], None] | None = None  # in place of Lightning's check (PreemptionCallback)
        self.before: Callable[[], None] | None = None  # around the check (DebugCallback's clock)
        self.after: Callable[[], None] | None = None

    @classmethod
    def of(cls, trainer: pl.Trainer) -> StepStart | None:
        """The trainer's StepStart, installed on its training epoch loop at the first call."""
        loop = trainer.fit_loop.epoch_loop
        installed = vars(loop).get(METHOD)
        if isinstance(installed, StepStart):
            return installed
        if not callable(getattr(loop, METHOD, None)):
            return None
        step_start = cls(loop)
        setattr(loop, METHOD, step_start)
        return step_start

    def __call__(self) -> None:
        if self.before is not None:
            self.before()
        try:
            (self.check or self.lightning_check)()
        finally:
            if self.after is not None:
                self.after()

    def release(self) -> None:
        """Called by a callback that cleared its part: the loop's own method is back once none is set."""
        if self.check is None and self.before is None and self.after is None and vars(self.loop).get(METHOD) is self:
            del vars(self.loop)[METHOD]
