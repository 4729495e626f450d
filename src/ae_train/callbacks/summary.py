"""EpochSummary: one line per epoch for train and val on the console and in the train log (rank 0).

The train line ends with the epoch's time split (DebugCallback's, see step_split.py) of the slowest
and the fastest rank, gathered once per epoch. Slowest is the rank with the most time outside
backward: in DDP the others spend that difference in backward, where ranks wait for each other.
"""
from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from ..batch import samples_of
from ..logs import CONSOLE
from .debug import DebugCallback
from .step_split import BACKWARD, PARTS, format_split

log = logging.getLogger(__name__)


def _metric(trainer: pl.Trainer, name: str) -> float:
    value = trainer.callback_metrics.get(name)
    return float(value) if value is not None else float("nan")


class EpochSummary(Callback):
    def __init__(self, shard_errors=None) -> None:
        self.shard_errors = shard_errors  # a ShardErrorLimit run before us: its per-split counts
        self._t0 = self._t_last = 0.0
        self._samples = 0
        self._epoch = -1  # the epoch the clock runs for
        self._debug: DebugCallback | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._debug = next((c for c in trainer.callbacks if isinstance(c, DebugCallback)), None)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._epoch != trainer.current_epoch:  # resumed inside the epoch: Lightning skips on_train_epoch_start
            self._start(trainer)

    def _start(self, trainer: pl.Trainer) -> None:
        """The epoch's clock and sample count: this process's part of the epoch."""
        self._t0 = self._t_last = time.perf_counter()
        self._samples, self._epoch = 0, trainer.current_epoch

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += len(samples_of(batch))
        self._t_last = time.perf_counter()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = _metric(trainer, "val_loss")  # every rank reads: the first read may be a collective
        if trainer.is_global_zero:
            log.info(lf.EPOCH_VAL.template, trainer.current_epoch, loss,
                     sum(trainer.num_val_batches), self._errors("val_shards"), self._nonfinite("val_shards"),
                     extra=CONSOLE)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = _metric(trainer, "train_loss")  # reduced across ranks: every rank must read it
        splits = self._gather_splits(trainer, pl_module)  # a collective too: every rank
        if not trainer.is_global_zero:
            return
        elapsed = max(1e-9, self._t_last - self._t0)
        log.info(lf.EPOCH_TRAIN.template, trainer.current_epoch, loss, trainer.num_training_batches, elapsed,
                 self._samples * trainer.world_size / elapsed, self._errors("train_shards"),
                 self._nonfinite("train_shards"), _split_text(splits), extra=CONSOLE)

    def _gather_splits(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[list[float]]:
        """Every rank's epoch split in seconds, [rank][part]; one all_gather of len(PARTS) floats per rank."""
        mine = self._debug.split.epoch_seconds() if self._debug else [float("nan")] * len(PARTS)
        if trainer.world_size == 1:
            return [mine]
        t = torch.tensor(mine, dtype=torch.float32, device=pl_module.device)
        out = [torch.empty_like(t) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(out, t)  # the plain collective (Lightning's all_gather path is deprecated in torch)
        return torch.stack(out).tolist()  # once per epoch: a read from the device is fine here

    def _errors(self, split: str) -> int:
        return self.shard_errors.last.get(split, 0) if self.shard_errors else 0

    def _nonfinite(self, split: str) -> str:
        """` nonfinite_samples=N` when samples of the split were left out for NaN/inf this epoch, else ``."""
        n = self.shard_errors.nonfinite.get(split, 0) if self.shard_errors else 0
        return lf.NONFINITE_PART % n if n else ""


def _split_text(splits: list[list[float]]) -> str:
    """`; time split slowest rank 1: data wait 71.0%, ...; fastest rank 0: ...` (one rank: `rank 0: ...`)."""
    ok = [(r, s) for r, s in enumerate(splits) if sum(s) > 0]  # nan sums compare False: no split measured
    if not ok:
        return ""
    if len(ok) == 1:
        return lf.SPLIT_ONE % (ok[0][0], format_split(ok[0][1]))

    def outside_backward(item):
        return 1 - item[1][BACKWARD] / sum(item[1])

    slow, fast = max(ok, key=outside_backward), min(ok, key=outside_backward)
    return lf.SPLIT_TWO % (slow[0], format_split(slow[1]), fast[0], format_split(fast[1]))
