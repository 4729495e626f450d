"""EpochSummary: one line per epoch for train and val on the console and in the train log (rank 0)."""
from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from ..logs import CONSOLE

log = logging.getLogger(__name__)


def _metric(trainer: pl.Trainer, name: str) -> float:
    value = trainer.callback_metrics.get(name)
    return float(value) if value is not None else float("nan")


class EpochSummary(Callback):
    def __init__(self, shard_errors=None) -> None:
        self.shard_errors = shard_errors  # a ShardErrorLimit run before us: its per-split counts
        self._t0 = self._t_last = 0.0
        self._samples = 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = self._t_last = time.perf_counter()
        self._samples = 0

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += len(batch)
        self._t_last = time.perf_counter()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = _metric(trainer, "val_loss")  # every rank reads: the first read may be a collective
        if trainer.is_global_zero:
            log.info("Epoch %d val: loss=%.6f batches=%d shard_errors=%d", trainer.current_epoch, loss,
                     sum(trainer.num_val_batches), self._errors("val_shards"), extra=CONSOLE)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = _metric(trainer, "train_loss")  # reduced across ranks: every rank must read it
        if not trainer.is_global_zero:
            return
        elapsed = max(1e-9, self._t_last - self._t0)
        log.info("Epoch %d train: loss=%.6f batches=%d time=%.2fs samples/s=%.0f shard_errors=%d (all ranks)",
                 trainer.current_epoch, loss, trainer.num_training_batches, elapsed,
                 self._samples * trainer.world_size / elapsed, self._errors("train_shards"), extra=CONSOLE)

    def _errors(self, split: str) -> int:
        return self.shard_errors.last.get(split, 0) if self.shard_errors else 0
