"""ShardErrorLimit: count unreadable shards per epoch across ranks and stop when too much data is broken.

Workers skip a broken shard and pad so batch counts stay equal; this callback merges the shards that
failed on each rank at the end of each training and validation epoch (one all-reduce of a flag per
shard, the same point on every rank: a shard split between ranks, or between workers, is one shard
error) and raises TooManyShardErrors on every rank at once when the count passes
`data.max_shard_errors` (a fraction of the split's shards when below 1, else a count). The samples
left out for NaN/inf (data/screen.py) are summed in a second all-reduce, for the epoch summary; they
do not count against the limit.
"""
from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from ..data.shards import error_limit

log = logging.getLogger(__name__)


class TooManyShardErrors(RuntimeError):
    pass


class ShardErrorLimit(Callback):
    def __init__(self, max_shard_errors: float):
        if max_shard_errors < 0:
            raise ValueError(f"max_shard_errors must be >= 0, got {max_shard_errors}")
        self.max_shard_errors = max_shard_errors
        self.last: dict[str, int] = {}  # split name -> shard errors of its latest epoch, all ranks
        self.nonfinite: dict[str, int] = {}  # split name -> samples left out for NaN/inf in it, all ranks

    def _check(self, trainer: pl.Trainer, dataset, what: str) -> None:
        if dataset is None:
            return
        failed = torch.frombuffer(memoryview(dataset.failed), dtype=torch.int8).to(torch.int32)  # a flag per shard
        total = int(torch.count_nonzero(trainer.strategy.reduce(failed, reduce_op="max")))
        total += getattr(dataset, "plan_errors", 0)  # found broken when counted: never read, never in `failed`
        nonfinite = int(trainer.strategy.reduce(torch.tensor(dataset.nonfinite.value, dtype=torch.float64),
                                                reduce_op="sum"))
        self.last[dataset.name], self.nonfinite[dataset.name] = total, nonfinite
        limit = error_limit(self.max_shard_errors, len(dataset.urls))
        if total and trainer.is_global_zero:
            log.warning(lf.SHARD_ERRORS_EPOCH.template, trainer.current_epoch, what, total, len(dataset.urls),
                        dataset.name, limit, self.max_shard_errors)
        if total > limit:
            raise TooManyShardErrors(lf.SHARD_LIMIT % (total, len(dataset.urls), dataset.name, trainer.current_epoch,
                                                       limit, self.max_shard_errors))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, getattr(trainer.datamodule, "train_set", None), "train")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, getattr(trainer.datamodule, "val_set", None), "val")
