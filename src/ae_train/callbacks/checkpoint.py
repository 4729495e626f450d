"""ModelCheckpoint that logs each save: a hang after VALIDATION END is often the checkpoint write.

The write itself is atomic (checkpoint_io.AtomicCheckpointIO); after it every rank learns from rank 0
whether it succeeded, and a failed write (a full disk) stops all ranks together with the previous
files kept.
"""
from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from typing_extensions import override

from .. import logformat as lf
from ..checkpoint_io import raise_if_not_saved
from ..logs import CONSOLE

log = logging.getLogger(__name__)


class LoggedModelCheckpoint(ModelCheckpoint):
    @override
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        log.info(lf.SAVING.template, filepath)  # written first, so a stuck save still names its file
        t0 = time.perf_counter()
        super()._save_checkpoint(trainer, filepath)
        raise_if_not_saved(trainer)
        log.info(lf.SAVED.template, filepath, time.perf_counter() - t0, extra=CONSOLE)
