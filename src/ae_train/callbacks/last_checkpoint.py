"""LastCheckpoint: checkpoints/last.ckpt is always the newest state of the run.

It is rewritten at every epoch end, after the epoch's validation, whatever the monitored metric did
(Lightning's ModelCheckpoint writes `last` only when it wrote a top-k file at the same step, so a run
whose val loss stopped improving kept an old last.ckpt, and after a resume it wrote `last-v1.ckpt`
beside it). With `every_n_steps` it is also written every N optimizer steps inside an epoch, so a
rank killed without warning (OOM killer, segfault, a lost node) costs at most N steps; a SIGTERM
writes it too (preemption.py). Always the one file `last.ckpt`; best-*.ckpt stays ModelCheckpoint's.
A save is a collective like every checkpoint save (all ranks call it at the same step; rank 0 writes,
atomically), logged like ModelCheckpoint's (`Saving checkpoint ...` first, so a stuck save names its
file). As a `Checkpoint`, Lightning runs it after the other callbacks, so the file holds their state.

Step saves: Lightning saves from `on_train_batch_end`, where the batch's optimizer step is done but
the loop has not yet counted the batch as completed; on resume Lightning counts it then, after the
DataModule has already asked the loop how many batches to skip. The checkpoint is therefore written
as the state at the next batch boundary (the batch counted as completed), the same state a
preemption checkpoint has, so a resume skips exactly the batches already trained. The last batch of
an epoch is left to the epoch-end save that follows it. The save waits for a boundary where the
epoch's trained batches are a multiple of the DataLoader's worker count (at most `align - 1` steps
past the multiple of N). Outside a save the per-step cost is two integer tests.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint
from typing_extensions import override

from .. import logformat as lf
from ..checkpoint_io import raise_if_not_saved
from ..logs import CONSOLE
from ..rundir import LAST_CKPT

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, align: int = 1):
        if every_n_steps < 0 or align < 1:
            raise ValueError(f"every_n_steps must be >= 0 and align >= 1, got {every_n_steps}, {align}")
        self.path = Path(dirpath) / LAST_CKPT
        self.every_n_steps, self.align = every_n_steps, align
        self._due = -1  # global step of the latest multiple of every_n_steps not yet saved (-1: none)
        self._mid_step = False  # a step save is being written

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._due = -1  # a save still due at the last epoch's end was made by the epoch-end save

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.every_n_steps:
            return
        if trainer.global_step % self.every_n_steps == 0:
            self._due = trainer.global_step
        if self._due < 0 or (batch_idx + 1) % self.align:
            return
        self._due = -1
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        t0 = time.perf_counter()
        self._mid_step = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self._mid_step = False
        raise_if_not_saved(trainer)
        log.info(lf.STEP_SAVED.template, self.path, trainer.current_epoch, trainer.global_step, batch_idx + 1,
                 time.perf_counter() - t0)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info(lf.SAVING.template, self.path)
        t0 = time.perf_counter()
        trainer.save_checkpoint(self.path, weights_only=False)
        raise_if_not_saved(trainer)
        log.info(lf.SAVED.template, self.path, time.perf_counter() - t0, extra=CONSOLE)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._mid_step:
            return
        loop = checkpoint["loops"]["fit_loop"]
        progress = loop["epoch_loop.batch_progress"]
        for counts in (progress["total"], progress["current"]):
            counts["completed"] = counts["processed"]  # this batch is done: the state at the next boundary
        # Lightning adds this batch to the loggers' step count after the hooks; a resume would not.
        loop["epoch_loop.state_dict"]["_batches_that_stepped"] += 1
