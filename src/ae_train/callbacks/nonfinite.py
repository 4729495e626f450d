"""NonFiniteGuard: a NaN or inf loss stops every rank together, names its batch, and never reaches a checkpoint.

Per training step the loss is copied into a small buffer on its own device: one copy, no sync, no
syscall. At the logging interval (every log.train_every batches, where DebugCallback reads the loss
anyway), before validation's checkpoint, at the epoch end and inside every checkpoint save, each rank
reads its buffer (one sync) and the ranks agree in one all-reduce on the first non-finite step of
any rank. Then the rank that had it logs one ERROR naming the step, the epoch's batch, the rank and
the batch's shards and keys (the batch's own keys with the sample ledger on, else the epoch plan's:
data/resume.py), and every rank raises NonFiniteLoss at that same point: the run ends with
ExitCode.NON_FINITE and nothing is saved from those weights. A save's weights are checked too (a
finite loss can leave non-finite weights behind, e.g. an overflowing optimizer step): the save
stops the run the same way instead of writing them.

A rank's loss goes non-finite first, and the gradient all-reduce makes every rank's weights non-finite
in that same step, so every rank stops by the next check.
"""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from ..batch import KeyedBatch

log = logging.getLogger(__name__)
NONE = 2**62  # "no non-finite step" in the all-reduce (MIN)


class NonFiniteLoss(RuntimeError):
    """Raised on every rank at the same point: a loss (or the weights) went NaN or inf."""


class NonFiniteGuard(Callback):
    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._buf: torch.Tensor | None = None  # this window's losses, on the loss's device
        self._n = 0  # entries of _buf in use
        self._where: list[tuple[int, int, int]] = []  # (epoch, batch index, global step) of each entry
        self._keys: list = []  # each entry's batch keys (a KeyedBatch's), or None
        self._step = 0  # global step at the start of the batch under way

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            if self._buf is None or self._buf.device != loss.device:
                self._buf = torch.zeros(self.every + 1, dtype=torch.float32, device=loss.device)
            if self._n == len(self._buf):
                self._check(trainer, pl_module)  # a window longer than the interval (cannot happen in an epoch)
            self._buf[self._n] = loss.detach()  # a copy on the device: no sync
            self._where.append((trainer.current_epoch, batch_idx, self._step))
            self._keys.append(batch.keys if isinstance(batch, KeyedBatch) else None)
            self._n += 1
        if batch_idx % self.every == 0:
            self._check(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:  # before ModelCheckpoint saves best-* (checkpoints run last)
            self._check(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)  # before LastCheckpoint's epoch-end save

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._check(trainer, pl_module, weights=True)  # every rank takes part in every save

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, weights: bool = False) -> None:
        """Every rank at the same point: stop all together if any rank's loss (or weights) went non-finite."""
        first = self._first_bad()
        code = NONE if first is None else self._where[first][2] * trainer.world_size + trainer.global_rank
        bad_weights = weights and not bool(torch.stack([torch.isfinite(p).all() for p in pl_module.parameters()]).all())
        agreed = torch.tensor([code, -int(bad_weights)], dtype=torch.int64, device=pl_module.device)
        if trainer.world_size > 1:
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        code, weights_bad = int(agreed[0]), agreed[1] < 0
        if code == NONE and not weights_bad:
            self._reset()
            return
        if code == NONE:  # a finite loss, non-finite weights, found at a save
            log.log(logging.ERROR if trainer.is_global_zero else logging.INFO, lf.NONFINITE_WEIGHTS.template,
                    trainer.current_epoch, trainer.global_step)
            raise NonFiniteLoss(lf.NONFINITE_WEIGHTS.text(trainer.current_epoch, trainer.global_step))
        step, rank = divmod(code, trainer.world_size)
        if rank == trainer.global_rank:
            epoch, batch_idx, step = self._where[first]
            value = float(self._buf[first])
            log.error(lf.NONFINITE_LOSS.template, value, epoch, step, batch_idx, rank,
                      _describe(self._batch_samples(trainer, batch_idx, self._keys[first])))
        else:
            log.info(lf.NONFINITE_ELSEWHERE.template, rank, step)
        self._reset()
        raise NonFiniteLoss(f"a non-finite loss on rank {rank} at step {step}")

    def _first_bad(self) -> int | None:
        if not self._n:
            return None
        finite = torch.isfinite(self._buf[:self._n]).tolist()  # the one read from the device
        return next((i for i, ok in enumerate(finite) if not ok), None)

    def _reset(self) -> None:
        self._n = 0
        self._where.clear()
        self._keys.clear()

    @staticmethod
    def _batch_samples(trainer: pl.Trainer, batch_idx: int, keys: list | None) -> list[tuple[str, str]]:
        """(shard, key) of each sample of this rank's batch: its own keys with the ledger on (the shards from
        the plan), else the plan's samples with their keys read from the shards."""
        data = trainer.datamodule.train_set
        samples = data.batch_samples(batch_idx)
        if keys is None:
            from ..data.reader import keys_at

            by_shard: dict[str, list[int]] = {}
            for url, index in samples:
                by_shard.setdefault(url, []).append(index)
            found = {url: dict(zip(idx, keys_at(url, data.sample_key, idx))) for url, idx in by_shard.items()}
            keys = [found[url][index] for url, index in samples]
        return [(url, key) for (url, _), key in zip(samples, keys)]


def _describe(samples: list[tuple[str, str]]) -> str:
    """`8 samples from /d/train-000004.tar (5), /d/train-000001.tar (3); keys k1, k2, ...` (every key)."""
    counts: dict[str, int] = {}
    for url, _ in samples:
        counts[url] = counts.get(url, 0) + 1
    shards = ", ".join(f"{url} ({n})" for url, n in counts.items())
    return f"{len(samples)} samples from {shards}; keys {', '.join(key for _, key in samples)}"
