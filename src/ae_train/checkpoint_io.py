"""Atomic checkpoint writes, and every rank stopping together when one cannot be written.

Lightning's TorchCheckpointIO writes over the target file in place: a kill or a full disk during the
save leaves a truncated `last.ckpt` and no good one. AtomicCheckpointIO writes through
atomic.atomic_write (`<name>.tmp<pid>`, fsynced, renamed over `<name>`, the directory fsynced), so
`<name>` is always either the previous checkpoint or the new one, whole. Only global rank 0 writes; a failed write (ENOSPC, EFBIG,
EIO) removes the temporary file and is remembered, and `raise_if_not_saved` (called by every rank
after each save, a broadcast from rank 0) stops all ranks at the same point with one ERROR line.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from . import logformat as lf
from .atomic import atomic_write

log = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous file of that name is unchanged."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        self.failed: str | None = None  # why the latest save failed (rank 0 only)

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        self.failed = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, durable=True) as f:
                torch.save(checkpoint, f)  # streamed: no second copy of the checkpoint in memory
        except OSError as e:
            self.failed = f"{path}: {e.strerror or e}"
            log.info(lf.CKPT_NOT_WRITTEN.template, path, e.strerror or e)  # the ERROR line: train.main


def save_failure(trainer: pl.Trainer) -> str | None:
    """Every rank, after a save: why rank 0's write failed, or None (a broadcast from rank 0)."""
    io = trainer.strategy.checkpoint_io
    failed = io.failed if isinstance(io, AtomicCheckpointIO) else None
    if trainer.world_size > 1:
        failed = trainer.strategy.broadcast(failed, src=0)
    return failed


def raise_if_not_saved(trainer: pl.Trainer) -> None:
    """Every rank, after every save: all raise CheckpointWriteError together if rank 0's write failed."""
    failed = save_failure(trainer)
    if failed:
        raise CheckpointWriteError(failed)
