"""StepStart: one replacement of Lightning's step-start check on a real Trainer's loop, shared by
PreemptionCallback (the check) and DebugCallback (its clock) in either order; the 2-rank runs of
test_diagnose_speed (a rank waited for there counts as backward) and test_faults (a signal to one
rank stops all) show it working in DDP."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ae_train.callbacks.step_start import METHOD, StepStart


def _trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


@pytest.mark.parametrize("first", ["preemption", "debug"])
def test_step_start_one_hook_for_both_callbacks_in_either_order(first):
    trainer = _trainer()
    loop = trainer.fit_loop.epoch_loop
    lightning = getattr(loop, METHOD)
    calls = []

    def preemption(on: bool) -> None:
        hook = StepStart.of(trainer)
        hook.check = (lambda: calls.append("all-reduce")) if on else None
        if not on:
            hook.release()

    def debug(on: bool) -> None:
        hook = StepStart.of(trainer)
        hook.before, hook.after = ((lambda: calls.append("clock: other")), (lambda: calls.append("clock: backward"))) \
            if on else (None, None)
        if not on:
            hook.release()

    parts = [preemption, debug] if first == "preemption" else [debug, preemption]
    for part in parts:
        part(True)
    assert isinstance(getattr(loop, METHOD), StepStart) and StepStart.of(trainer) is getattr(loop, METHOD)
    getattr(loop, METHOD)()  # what the loop calls at the start of each DDP step
    assert calls == ["clock: other", "all-reduce", "clock: backward"]
    parts[0](False)
    assert isinstance(getattr(loop, METHOD), StepStart)  # the other part still needs it
    parts[1](False)
    assert METHOD not in vars(loop) and getattr(loop, METHOD) == lightning  # Lightning's own again


def test_step_start_the_clock_stops_when_the_check_stops_the_step():
    trainer = _trainer()
    hook, calls = StepStart.of(trainer), []
    hook.before, hook.after = (lambda: calls.append("before")), (lambda: calls.append("after"))

    def stop():
        raise SIGTERMException()

    hook.check = stop
    with pytest.raises(SIGTERMException):
        getattr(trainer.fit_loop.epoch_loop, METHOD)()
    assert calls == ["before", "after"]
    hook.check = None
    getattr(trainer.fit_loop.epoch_loop, METHOD)()  # no part: Lightning's own check (no process group: a no-op)
    assert calls == ["before", "after", "before", "after"]
