"""The data path wired for Lightning: `make_loader` (one split's ShardBatches and its EpochDataLoader, as
training and `ae-train bench-data` read them) and the LightningDataModule, equal batches per rank in
every epoch.

Its state in a checkpoint is the training data order of the epoch under way (resume.OrderState): a run
resumed inside that epoch goes on in it, or, in another world, plans the samples left (resume.py).
"""
from __future__ import annotations

import logging
import warnings
import weakref

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, get_worker_info

from .. import logformat as lf
from .. import stacks
from ..config import DataConfig
from ..errors import ConfigError
from .plan import batches_per_rank
from .reader import ShardBatches
from .remote import set_retry_policy
from .resume import OrderState, mismatch, shards_digest
from .handover import DataLoaderHandOver, RingHandOver
from .ring import SlotRing
from .splits import DataFacts, Split

log = logging.getLogger(__name__)

# Our __len__ is exact (the epoch plan), so Lightning's generic caution does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def make_loader(cfg: DataConfig, split: Split, name: str, state_fn, rank: int, world: int, seed: int, shuffle: bool,
                epoch: int = 0, num_workers: int | None = None, stage_times=None, keys: bool = False) -> "EpochDataLoader":
    """One split's ShardBatches and its loader, as training reads them (`ae-train bench-data` measures
    this same loader; `stage_times` lets the reader time its stages; `keys`: batches carry their
    samples' keys, for the sample ledger). `state_fn()` gives (epoch about to run, its batches already
    trained) at each iteration's start."""
    workers = cfg.num_workers if num_workers is None else num_workers
    set_retry_policy(cfg.read_retries, cfg.read_retry_backoff_s)  # before the workers fork: they inherit it
    ds = ShardBatches(split.urls, split.counts, name, cfg.sample_key, split.spec, cfg.batch_size, workers, rank, world,
                      seed, shuffle, epoch, buffer_bytes=cfg.buffer_mb << 20, shuffle_buffer=cfg.shuffle_buffer,
                      stage_times=stage_times, keys=keys)
    ds.plan_errors = len(split.problems)  # shards found broken when counted: errors of every epoch
    # batch_size=None: workers yield whole batches; fork keeps the rank's log handlers in workers.
    return EpochDataLoader(ds, state_fn, ring_slots=None if cfg.ring_slots < 0 else cfg.ring_slots, batch_size=None,
                           num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=False,
                           worker_init_fn=_worker_init, multiprocessing_context="fork" if workers > 0 else None)


class ShardDataModule(pl.LightningDataModule):
    def __init__(self, cfg: DataConfig, facts: DataFacts, seed: int, rank: int = 0, keys: bool = False):
        super().__init__()
        self.cfg, self.facts, self.seed, self.rank, self.keys = cfg, facts, seed, rank, keys
        self.train_set: ShardBatches | None = None
        self.val_set: ShardBatches | None = None
        self._reported = False
        self._loaders: dict[str, EpochDataLoader] = {}
        self._resumed: OrderState | None = None  # the data order a checkpoint holds, until the train loader uses it
        self._reload_every: int | None = None  # the user's reload_dataloaders_every_n_epochs, while we asked for 1

    def state_dict(self) -> dict:
        """The training data order of the epoch under way (Lightning keeps it in every checkpoint)."""
        return self.train_set.order_state().to_dict() if self.train_set is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        try:
            self._resumed = OrderState.from_dict(state_dict) if state_dict else None
        except (KeyError, TypeError, ValueError):  # another version's state: the epoch goes on as Lightning restores it
            self._resumed = None

    def setup(self, stage: str) -> None:
        if self._reported:
            return
        self._reported = True
        for name, split in self.facts.splits.items():
            log.info(lf.SPLIT_SUMMARY.template, name, len(split.urls), sum(split.counts), split.spec.describe())
            if self.rank == 0:  # once per run, into the train log as well
                for url, why in split.problems.items():
                    log.error(lf.SHARD_ERROR.template, url, why)

    def steps_per_epoch(self, world: int) -> int:
        """Training batches per rank in every epoch (the epoch plan's count, the same on all ranks)."""
        return batches_per_rank(sum(self.facts.splits["train_shards"].counts), world, self.cfg.batch_size)

    def _loader(self, name: str, shuffle: bool, state_fn, keys: bool = False) -> "EpochDataLoader":
        old = self._loaders.pop(name, None)
        if old is not None:  # made again (reload_dataloaders_every_n_epochs): the old one's workers go
            old.close()
        self._loaders[name] = make_loader(self.cfg, self.facts.splits[name], name, state_fn, self.trainer.global_rank,
                                          self.trainer.world_size, self.seed, shuffle, self.trainer.current_epoch,
                                          keys=keys)
        return self._loaders[name]

    def teardown(self, stage: str) -> None:
        for loader in self._loaders.values():  # the ring's workers stay between epochs: stopped here
            loader.close()

    def _epoch_state(self) -> tuple[int, int]:
        """(epoch about to run, its batches already trained: non-zero only right after a mid-epoch resume)."""
        loop = self.trainer.fit_loop
        epochs = loop.epoch_progress.current
        if epochs.processed > epochs.completed:
            # Resumed from a checkpoint written at an epoch's end (LastCheckpoint): Lightning counts that epoch
            # as completed only after this loader is made, and runs the next one with it.
            return epochs.processed, 0
        done = loop.epoch_loop.batch_progress.current.completed if loop.restarting else 0
        return self.trainer.current_epoch, done

    def _val_state(self) -> tuple[int, int]:
        return self.trainer.current_epoch, 0

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if self._reload_every is not None:  # the epoch after an elastic resume: the user's setting again
            trainer.reload_dataloaders_every_n_epochs, self._reload_every = self._reload_every, None
        loader = self._loader("train_shards", self.cfg.shuffle, self._epoch_state, keys=self.keys)
        self.train_set = ds = loader.dataset
        ds.resume_state, self._resumed = self._resumed, None
        epoch, done = self._epoch_state()
        if ds.resume_state is not None and ds.resume_state.epoch == epoch:
            why = mismatch(ds.resume_state, ds.batch_size, shards_digest(ds.urls, ds.counts), done)
            if why:  # the launcher said so before starting the ranks; here under torchrun/srun
                raise ConfigError(f"{why}: the rest of that epoch cannot be planned exactly; resume with the "
                                  "earlier value, or from an epoch-end checkpoint")
        # The epoch's plan now (Lightning reads the length before it iterates): after an elastic resume the
        # epoch has another length than the next ones, so the loader is made again for the next epoch.
        ds.set_epoch(epoch, done)
        if len(ds) != batches_per_rank(sum(ds.counts), ds.world, ds.batch_size):
            self._reload_every, trainer.reload_dataloaders_every_n_epochs = trainer.reload_dataloaders_every_n_epochs, 1
        return loader

    def val_dataloader(self) -> DataLoader:
        if "val_shards" not in self.facts.splits:
            return []
        loader = self._loader("val_shards", False, self._val_state)
        self.val_set = loader.dataset
        return loader


def _worker_init(worker_id: int) -> None:
    info = get_worker_info()
    stacks.install_worker_handler(f"rank {info.dataset.rank} worker {worker_id}/{info.num_workers}")


class EpochDataLoader(DataLoader):
    """Sets the dataset's epoch right before each iteration (its plan, its log line), and hands the
    epoch's batches over one of two ways (handover.py): through a ring of reused shared slots (ring.py)
    with forked workers, else the DataLoader's own way.

    Lightning creates the epoch's iterator after `on_train_epoch_start` (for epoch 0 and after a
    resume, during setup with the restored epoch), so `state_fn()` gives the epoch about to run.

    `ring_slots` per worker (None: prefetch_factor + 3, the batches a worker may have queued, the two
    Lightning's prefetching fetcher holds, and the one being filled; 0: the DataLoader's own hand-over).
    The ring is made once, before the first fork, and serves every epoch, and so do its workers (forked
    at the first epoch, stopped by `close()` or when the loader is collected); `pin_memory` then pins
    the ring once instead of copying each batch into pinned memory.
    """

    def __init__(self, dataset: ShardBatches, state_fn, ring_slots: int | None = None, **kwargs):
        workers = kwargs.get("num_workers", 0)
        ctx = kwargs.get("multiprocessing_context")  # the ring is inherited through fork only
        fork = (ctx if isinstance(ctx, str) or ctx is None else ctx.get_start_method()) == "fork"
        if ring_slots is None:
            ring_slots = (kwargs.get("prefetch_factor") or 2) + 3
        shape = (dataset.batch_size, *dataset.spec.shape)
        if workers > 0 and fork and ring_slots > 0:
            pin = bool(kwargs.get("pin_memory"))
            kwargs["pin_memory"] = False  # the ring is pinned itself: no per-batch copy into pinned memory
            dataset.handover = RingHandOver(dataset.name, workers, ring_slots, shape, dataset.spec.dtype, pin=pin,
                                            key_bytes=256 * dataset.batch_size if dataset.keys else 0)
            weakref.finalize(self, dataset.handover.close)  # when the loader goes, so do the ring's workers
        else:
            dataset.handover = DataLoaderHandOver(shape, dataset.spec.dtype)
        super().__init__(dataset, **kwargs)
        self._state_fn = state_fn

    @property
    def ring(self) -> SlotRing | None:
        """The batch ring, once the first epoch made it (None: the DataLoader's own hand-over)."""
        return getattr(self.dataset.handover, "ring", None)

    def __iter__(self):
        epoch, done = self._state_fn()
        self.dataset.skip_batches = self.dataset.set_epoch(epoch, done)  # batches of the epoch's plan already trained
        return self.dataset.handover.start(self.dataset.epoch, self.dataset.skip_batches, super().__iter__)

    def state_dict(self) -> dict:
        """Lightning keeps this in checkpoints for a loader that can resume inside an epoch, as this one can:
        the position is Lightning's own batch count and the data order the DataModule's state (resume.py)."""
        return {"epoch": self.dataset.epoch, "batches": len(self.dataset)}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # nothing of its own to restore (see state_dict)

    def close(self) -> None:
        """Stop the workers that serve every epoch (the ring's, idle between epochs)."""
        self.dataset.handover.close()
