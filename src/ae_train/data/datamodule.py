"""LightningDataModule over WebDataset shards with equal batches per rank in every epoch."""
from __future__ import annotations

import logging
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, get_worker_info

from .. import stacks
from ..config import DataConfig
from .plan import batches_per_rank
from .reader import ShardBatches
from .ring import SlotRing
from .splits import DataFacts

log = logging.getLogger(__name__)

# Our __len__ is exact (the epoch plan), so Lightning's generic caution does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


class ShardDataModule(pl.LightningDataModule):
    def __init__(self, cfg: DataConfig, facts: DataFacts, seed: int, rank: int = 0, ring_slots: int | None = None):
        super().__init__()
        self.cfg, self.facts, self.seed, self.rank = cfg, facts, seed, rank
        self.ring_slots = ring_slots  # batch ring slots per worker (EpochDataLoader); 0: the DataLoader's hand-over
        self.train_set: ShardBatches | None = None
        self.val_set: ShardBatches | None = None
        self._reported = False

    def setup(self, stage: str) -> None:
        if self._reported:
            return
        self._reported = True
        for name, split in self.facts.splits.items():
            log.info("%s: %d shards, %d samples of %s", name, len(split.urls), sum(split.counts), split.spec.describe())
            if self.rank == 0:  # once per run, into the train log as well
                for url, why in split.problems.items():
                    log.error("Error reading shard %s: %s", url, why)

    def steps_per_epoch(self, world: int) -> int:
        """Training batches per rank in every epoch (the epoch plan's count, the same on all ranks)."""
        return batches_per_rank(sum(self.facts.splits["train_shards"].counts), world, self.cfg.batch_size)

    def _dataset(self, name: str, shuffle: bool) -> ShardBatches:
        split = self.facts.splits[name]
        ds = ShardBatches(split.urls, split.counts, name, self.cfg.sample_key, split.spec, self.cfg.batch_size,
                          self.cfg.num_workers, self.trainer.global_rank, self.trainer.world_size,
                          self.seed, shuffle, self.trainer.current_epoch, buffer_bytes=self.cfg.buffer_mb << 20,
                          shuffle_buffer=self.cfg.shuffle_buffer)
        ds.plan_errors = len(split.problems)  # shards found broken when counted: errors of every epoch
        return ds

    def _loader(self, ds: ShardBatches) -> DataLoader:
        # batch_size=None: workers yield whole batches; fork keeps the rank's log handlers in workers.
        return EpochDataLoader(ds, self._epoch_state if ds.name == "train_shards" else self._val_state,
                               ring_slots=self.ring_slots, batch_size=None,
                               num_workers=self.cfg.num_workers, pin_memory=torch.cuda.is_available(),
                               persistent_workers=False, worker_init_fn=_worker_init,
                               multiprocessing_context="fork" if self.cfg.num_workers > 0 else None)

    def _epoch_state(self) -> tuple[int, int]:
        """(epoch about to run, its batches already trained: non-zero only right after a mid-epoch resume)."""
        loop = self.trainer.fit_loop
        done = loop.epoch_loop.batch_progress.current.completed if loop.restarting else 0
        return self.trainer.current_epoch, done

    def _val_state(self) -> tuple[int, int]:
        return self.trainer.current_epoch, 0

    def train_dataloader(self) -> DataLoader:
        self.train_set = self._dataset("train_shards", self.cfg.shuffle)
        return self._loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        if "val_shards" not in self.facts.splits:
            return []
        self.val_set = self._dataset("val_shards", False)
        return self._loader(self.val_set)


def _worker_init(worker_id: int) -> None:
    info = get_worker_info()
    stacks.install_worker_handler(f"rank {info.dataset.rank} worker {worker_id}/{info.num_workers}")


class EpochDataLoader(DataLoader):
    """Sets the dataset's epoch right before each iteration, while the workers are not yet forked.

    Lightning creates the epoch's iterator after `on_train_epoch_start` (for epoch 0 and after a
    resume, during setup with the restored epoch), so `state_fn()` gives the epoch about to run.

    With forked workers, batches cross through a ring of reused shared slots (ring.py): `ring_slots`
    per worker (None: prefetch_factor + 3, the batches a worker may have queued, the two Lightning's
    prefetching fetcher holds, and the one being filled; 0: the DataLoader's own hand-over). The ring
    is made once, before the first fork, and serves every epoch; `pin_memory` then pins the ring once
    instead of copying each batch into pinned memory.
    """

    def __init__(self, dataset: ShardBatches, state_fn, ring_slots: int | None = None, **kwargs):
        workers = kwargs.get("num_workers", 0)
        ctx = kwargs.get("multiprocessing_context")  # the ring is inherited through fork only
        fork = (ctx if isinstance(ctx, str) or ctx is None else ctx.get_start_method()) == "fork"
        if ring_slots is None:
            ring_slots = (kwargs.get("prefetch_factor") or 2) + 3
        self._ring_slots = ring_slots if workers > 0 and fork and ring_slots > 0 else 0
        self._pin = bool(kwargs.get("pin_memory")) and self._ring_slots > 0
        if self._pin:
            kwargs["pin_memory"] = False  # the ring is pinned itself: no per-batch copy into pinned memory
        super().__init__(dataset, **kwargs)
        self._state_fn = state_fn
        self.ring: SlotRing | None = None

    def __iter__(self):
        epoch, done = self._state_fn()
        self.dataset.set_epoch(epoch)
        self.dataset.skip_batches = done
        if not self._ring_slots:
            return super().__iter__()
        if self.ring is None:
            spec = self.dataset.spec
            self.ring = SlotRing(self.num_workers, self._ring_slots, (self.dataset.batch_size, *spec.shape),
                                 spec.dtype, pin=self._pin)
            self.dataset.ring = self.ring
            log.debug("Batch ring for %s: %d workers x %d slots of %d bytes (%.1f MB)%s", self.dataset.name,
                      self.num_workers, self._ring_slots, self.ring.slot_bytes, self.ring.nbytes / 2**20,
                      ", pinned" if self.ring.pinned else "")
        return self.ring.iterate(super().__iter__, start=done)
