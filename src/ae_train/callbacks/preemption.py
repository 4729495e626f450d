"""Preemption: SIGTERM/SIGINT stop every rank at the same step boundary with one saved checkpoint.

The signal handler only notes the signal (nothing else is safe inside a handler: Lightning's own
broadcasts a tensor from it, which can collide with a collective that is in flight). With several
ranks it does not set Lightning's `received_sigterm` either: Lightning also reads that flag on each
rank alone (at the end of a step, of an epoch, in validation), and a rank whose signal came a moment
before the others' would stop there alone while the others wait for it in the next collective (a
scheduler's SIGTERMs reach the ranks at slightly different times). Instead, Lightning's check at the
start of each training step becomes an all-reduce of every rank's note (through step_start.py;
Lightning broadcasts rank 0's flag only, so a signal to any other rank alone went unheard): when any
rank was signalled, every rank sets the flag and raises SIGTERMException at that same step; `on_exception` then saves
`last.ckpt` (a collective, which every rank reaches at the same point) and the rank exits with
128 + signal number.
"""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException
from typing_extensions import override

from .. import logformat as lf
from ..checkpoint_io import save_failure
from ..exitcodes import stopped_by
from ..logs import CONSOLE
from ..rundir import LAST_CKPT
from .step_start import StepStart

log = logging.getLogger(__name__)


class PreemptionCallback(Callback):
    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.signal: signal.Signals | None = None
        self._saved = False
        self._step_start: StepStart | None = None  # the DDP step-start collective, ours to run (step_start.py)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1:
            self._step_start = StepStart.of(trainer)
            if self._step_start is not None:
                self._step_start.check = lambda: self._stop_together(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._step_start is not None:
            self._step_start.check = None
            self._step_start.release()
            self._step_start = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path:
            log.info(lf.RESUMING.template, trainer.ckpt_path, trainer.current_epoch,
                     trainer.global_step, extra=CONSOLE)
        # Installed here, after Lightning registered its own handlers at the start of fit.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, _f: self._on_signal(trainer, s))

    def _on_signal(self, trainer: pl.Trainer, signum: int) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
            self._t_signal = time.monotonic()
        if trainer.world_size == 1:  # one rank: Lightning's own checks stop it at the step's end
            trainer._signal_connector.received_sigterm = True

    def _stop_together(self, trainer: pl.Trainer) -> None:
        """At the start of each training step (in place of Lightning's broadcast of rank 0's flag): stop
        every rank here when any rank was signalled."""
        flag = torch.tensor([0 if self.signal is None else 1], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():  # Lightning's check waited for this value on every step as well
            trainer._signal_connector.received_sigterm = True
            raise SIGTERMException()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self._saved:
            return
        self._saved = True
        name = self.signal.name if self.signal else "SIGTERM"
        path = self.checkpoint_dir / LAST_CKPT
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank 0 writes
        failed = save_failure(trainer)
        if failed:  # known on every rank (a broadcast); one ERROR line, from rank 0
            log.log(logging.ERROR if trainer.is_global_zero else logging.INFO, lf.PREEMPT_NOT_SAVED.template, name,
                    trainer.current_epoch, trainer.global_step, failed)
            return
        log.info(lf.PREEMPT_SAVED.template, name, trainer.current_epoch, trainer.global_step, path, extra=CONSOLE)

    @property
    def exit_code(self) -> int:
        return stopped_by(self.signal or signal.SIGTERM)
