"""StepCheckpoint: checkpoints/last.ckpt every N optimizer steps inside an epoch.

A rank killed without warning (OOM killer, segfault, a lost node) then costs at most N steps instead
of everything since the last epoch end. The save is a collective like every checkpoint save (all
ranks call it at the same step; rank 0 writes, atomically). The per-step cost outside a save is two
integer tests.

Lightning saves from `on_train_batch_end`, where the batch's optimizer step is done but the loop has
not yet counted the batch as completed; on resume Lightning counts it then, after the DataModule has
already asked the loop how many batches to skip. The checkpoint is therefore written as the state at
the next batch boundary (the batch counted as completed), the same state a preemption checkpoint
has, so a resume skips exactly the batches already trained and continues with the same data order.
The last batch of an epoch is left to the epoch-end checkpoint that follows it.

The save waits for a boundary where the epoch's trained batches are a multiple of the DataLoader's
worker count (at most `align - 1` steps past the multiple of N): a DataLoader always starts a new
iterator at worker 0, and worker w holds batches w, w + K, ... of the epoch, so only such a boundary
lets the resumed epoch go on in the original order.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from ..checkpoint_io import raise_if_not_saved
from ..rundir import LAST_CKPT

log = logging.getLogger(__name__)


class StepCheckpoint(Callback):
    def __init__(self, dirpath: str | Path, every_n_steps: int, align: int = 1):
        if every_n_steps < 1 or align < 1:
            raise ValueError(f"every_n_steps and align must be >= 1, got {every_n_steps}, {align}")
        self.path = Path(dirpath) / LAST_CKPT
        self.every_n_steps, self.align = every_n_steps, align
        self._due = -1  # global step of the latest multiple of every_n_steps not yet saved (-1: none)
        self._saving = False

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._due = -1  # a save still due at the last epoch's end was made by the epoch-end checkpoint

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._due = trainer.global_step
        if self._due < 0 or (batch_idx + 1) % self.align:
            return
        self._due = -1
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        t0 = time.perf_counter()
        self._saving = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self._saving = False
        raise_if_not_saved(trainer)
        log.info(lf.STEP_SAVED.template, self.path, trainer.current_epoch, trainer.global_step, batch_idx + 1,
                 time.perf_counter() - t0)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._saving:
            return
        loop = checkpoint["loops"]["fit_loop"]
        progress = loop["epoch_loop.batch_progress"]
        for counts in (progress["total"], progress["current"]):
            counts["completed"] = counts["processed"]  # this batch is done: the state at the next boundary
        # Lightning adds this batch to the loggers' step count after the hooks; a resume would not.
        loop["epoch_loop.state_dict"]["_batches_that_stepped"] += 1
