"""LightningDataModule over WebDataset shards with equal batches per rank in every epoch."""
from __future__ import annotations

import json
import logging
import os
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..config import DataConfig
from .reader import ShardBatches
from .shards import COUNTS_ENV, list_shards, sample_counts

log = logging.getLogger(__name__)

# Our __len__ is exact (the epoch plan), so Lightning's generic caution does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def resolve_counts(urls: list[str], sample_key: str, key: str) -> list[int]:
    path = os.environ.get(COUNTS_ENV)
    if path and os.path.isfile(path):
        with open(path) as f:
            known = json.load(f)
        if all(u in known for u in urls):
            return [int(known[u]) for u in urls]
    return sample_counts(urls, sample_key, key)


class ShardDataModule(pl.LightningDataModule):
    def __init__(self, cfg: DataConfig, input_dim: int, seed: int):
        super().__init__()
        self.cfg, self.input_dim, self.seed = cfg, input_dim, seed
        self.splits: dict[str, tuple[list[str], list[int]]] = {}
        self.train_set: ShardBatches | None = None
        self.val_set: ShardBatches | None = None

    def setup(self, stage: str) -> None:
        for name, spec in (("train_shards", self.cfg.train_shards), ("val_shards", self.cfg.val_shards)):
            if spec.strip() and name not in self.splits:
                urls = list_shards(spec, f"data.{name}")
                self.splits[name] = (urls, resolve_counts(urls, self.cfg.sample_key, f"data.{name}"))
                log.info("%s: %d shards, %d samples", name, len(urls), sum(self.splits[name][1]))

    def _dataset(self, name: str, shuffle: bool) -> ShardBatches:
        urls, counts = self.splits[name]
        return ShardBatches(urls, counts, name, self.cfg.sample_key, self.input_dim, self.cfg.batch_size,
                            self.cfg.num_workers, self.trainer.global_rank, self.trainer.world_size,
                            self.seed, shuffle, self.trainer.current_epoch)

    def _loader(self, ds: ShardBatches) -> DataLoader:
        # batch_size=None: workers yield whole batches; fork keeps the rank's log handlers in workers.
        return EpochDataLoader(ds, lambda: self.trainer.current_epoch, batch_size=None,
                               num_workers=self.cfg.num_workers, pin_memory=torch.cuda.is_available(),
                               persistent_workers=False,
                               multiprocessing_context="fork" if self.cfg.num_workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        self.train_set = self._dataset("train_shards", self.cfg.shuffle)
        return self._loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        if "val_shards" not in self.splits:
            return []
        self.val_set = self._dataset("val_shards", False)
        return self._loader(self.val_set)


class EpochDataLoader(DataLoader):
    """Sets the dataset's epoch right before each iteration, while the workers are not yet forked.

    Lightning creates the epoch's iterator after `on_train_epoch_start` (for epoch 0 and after a
    resume, during setup with the restored epoch), so `epoch_fn()` is the epoch about to run.
    """

    def __init__(self, dataset: ShardBatches, epoch_fn, **kwargs):
        super().__init__(dataset, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        self.dataset.set_epoch(self._epoch_fn())
        return super().__iter__()
