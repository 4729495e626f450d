"""Preemption: SIGTERM/SIGINT stop every rank at the same step boundary with one saved checkpoint.

The signal handler only sets Lightning's `received_sigterm` flag (nothing else is safe inside a
handler: Lightning's own handler broadcasts a tensor from it, which can collide with a collective
that is in flight). At the start of each training step Lightning broadcasts rank 0's flag and all
ranks raise SIGTERMException together; `on_exception` then saves `last.ckpt` (a collective, which
every rank reaches at the same point) and the rank exits with 128 + signal number.
"""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException
from typing_extensions import override

from .. import logformat as lf
from ..checkpoint_io import save_failure
from ..exitcodes import stopped_by
from ..logs import CONSOLE
from ..rundir import LAST_CKPT

log = logging.getLogger(__name__)


class PreemptionCallback(Callback):
    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.signal: signal.Signals | None = None
        self._saved = False

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
        trainer._signal_connector.received_sigterm = True  # read by Lightning at the next step boundary

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
