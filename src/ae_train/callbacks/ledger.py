"""SampleLedger: each rank's record of the samples it trained, one line per trained batch.

`logs/samples_rank<N>_<ts>.tsv` (log.sample_ledger=true): a header line, then

    <epoch>\t<global_step>\t<key1>,<key2>,...

where global_step is the trainer's step when the batch was trained (0 for a run's first batch) and the
keys are the samples' WebDataset `__key__`s in the batch's row order, padding repeats included. The
keys travel with the batch from the DataLoader workers (reader.py, ring.py: a KeyedBatch). Lines are
buffered and flushed at every checkpoint save and epoch end, so after a kill the ledger holds at
least the batches whose training a checkpoint kept; a resumed run writes its own file. With the
ledger off this callback is not installed and batches carry no keys.
"""
from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from ..batch import KeyedBatch

log = logging.getLogger(__name__)
HEADER = "epoch\tglobal_step\tkeys\n"
BUFFER_BYTES = 1 << 16


class SampleLedger(Callback):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None
        self._step = 0  # global step when the batch under way started

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule
        if data is None or not getattr(data, "keys", False):
            raise RuntimeError("log.sample_ledger needs batches that carry their keys (ShardDataModule(keys=True))")
        if self._file is None:
            self._file = open(self.path, "a", buffering=BUFFER_BYTES, encoding="utf-8")
            if self._file.tell() == 0:
                self._file.write(HEADER)
            atexit.register(self._flush)  # every process ends through os._exit (exitcodes.exit_process)
            log.info(lf.LEDGER_AT.template, self.path)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not isinstance(batch, KeyedBatch):
            raise RuntimeError(f"log.sample_ledger: batch {batch_idx} of epoch {trainer.current_epoch} carries no keys")
        self._file.write(f"{trainer.current_epoch}\t{self._step}\t{','.join(batch.keys)}\n")

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._flush()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _flush(self) -> None:
        if self._file is not None:
            self._file.flush()
