"""The per-worker sample path: read the shards of this worker's plan, yield whole batches.

Stages, in order: plan (equal batches per rank) -> this rank -> this worker -> read shard -> pick the
sample range -> shuffle inside it -> slice `.npy` payloads out of the shard buffer -> batch.
Batches are assembled here, inside the worker, so the rank's main process only receives tensors.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .. import logs
from .plan import EpochPlan, Piece, make_plan
from .tario import ShardError, npy_layout, read_shard_ahead
from .tarscan import npy_rows, sample_table, uniform_npy_rows

log = logging.getLogger(__name__)


class ShardBatches(IterableDataset):
    """One split's batches for one rank; `len()` is the rank's batch count for the current epoch."""

    def __init__(self, urls: list[str], counts: list[int], name: str, sample_key: str, input_dim: int,
                 batch_size: int, num_workers: int, rank: int, world: int, seed: int, shuffle: bool, epoch: int = 0):
        super().__init__()
        self.urls, self.counts, self.name = urls, counts, name
        self.sample_key, self.input_dim, self.batch_size = sample_key.lower(), input_dim, batch_size
        self.num_workers, self.rank, self.world = num_workers, rank, world
        self.seed, self.shuffle, self.epoch = seed, shuffle, epoch
        self.plan: EpochPlan = make_plan(counts, world, num_workers, batch_size, seed, epoch, shuffle)
        # Shard errors of this epoch, summed over this rank's workers (forked workers share it).
        self.errors = multiprocessing.Value("i", 0)
        self.plan_errors = 0  # shards found broken when counted (set by the DataModule)
        self.skip_batches = 0  # batches of this epoch already trained (a mid-epoch resume)
        self._announced = False

    def set_epoch(self, epoch: int) -> None:
        """New plan for `epoch` (only the shard order changes; the batch count never does)."""
        if epoch != self.epoch or not self._announced:
            self.epoch, self._announced = epoch, True
            self.plan = make_plan(self.counts, self.world, self.num_workers, self.batch_size, self.seed, epoch,
                                  self.shuffle)
            log.info("Equalized %s for epoch %d: %d ranks x %d batches of %d; dropped %d samples, padded %d",
                     self.name, epoch, self.world, self.plan.batches_per_rank, self.batch_size,
                     self.plan.dropped, self.plan.padded)
        with self.errors.get_lock():
            self.errors.value = 0

    def __len__(self) -> int:
        return self.plan.batches_per_rank

    def __iter__(self):
        info = get_worker_info()
        worker, num = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            logs.set_worker(worker, num)
            log.info("Worker started pid=%d", os.getpid())
        # The DataLoader takes batch i from worker i % K: after a mid-epoch resume each worker drops
        # the batches the rank already trained on, so the epoch continues with the same data order.
        skip = len(range(worker, self.skip_batches, num))
        if skip:
            log.info("Resuming mid-epoch %d: skipping the %d batch(es) of this worker already trained", self.epoch, skip)
        for i, batch in enumerate(self._worker_batches(worker)):
            if i >= skip:
                yield batch

    def _worker_batches(self, worker: int):
        wp = self.plan.workers[self.rank][worker]  # the plan was made for this many workers
        log.info("Processing %d/%d files from %s (epoch %d, %d samples, %d batches)",
                 wp.shards, len(self.urls), self.name, self.epoch, wp.samples, wp.batches)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        t0, produced, samples, errors = time.perf_counter(), 0, 0, 0
        carry, last = None, None
        for piece in wp.pieces:
            try:
                rows = self._open(piece)
            except (OSError, ShardError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else e
                if piece.start > 0:  # the reader of the shard's first samples reports and counts it
                    log.debug("Skipping the rest of shard %s: %s", self.urls[piece.shard], reason)
                    continue
                errors += 1
                with self.errors.get_lock():
                    self.errors.value += 1
                log.error("Error reading shard %s: %s; skipped", self.urls[piece.shard], reason)
                continue
            t_shard = time.perf_counter()
            order = rng.permutation(len(rows)) if self.shuffle else np.arange(len(rows))
            pos = 0
            if carry is not None:  # a batch that spans two shards
                need = self.batch_size - len(carry)
                carry = np.concatenate([carry, rows[order[:need]]])
                pos = need
                if len(carry) == self.batch_size:
                    last, carry = carry, None
                    produced += 1
                    yield torch.from_numpy(last)
            while carry is None and pos + self.batch_size <= len(rows) and produced < wp.batches:
                last = rows[order[pos:pos + self.batch_size]]
                pos += self.batch_size
                produced += 1
                yield torch.from_numpy(last)
            if pos < len(rows) and produced < wp.batches:
                carry = rows[order[pos:]] if carry is None else carry
            samples += len(rows)
            log.debug("Finished shard %s: %d samples in %.3fs", self.urls[piece.shard], len(rows),
                      time.perf_counter() - t_shard)
        missing = wp.batches - produced
        if missing > 0:  # shard errors or stale counts: repeat what we read to keep ranks in step
            log.warning("%s: worker read %d of %d planned samples; padding %d batch(es) with repeats to keep "
                        "batch counts equal across ranks", self.name, samples, wp.samples, missing)
            filler = last if last is not None else np.zeros((self.batch_size, self.input_dim), np.float32)
            if carry is not None:
                filler = np.concatenate([carry, filler])[:self.batch_size]
            for _ in range(missing):
                yield torch.from_numpy(filler.copy())
        log.info("COMPLETED iteration, total samples: %d (epoch %d, batches %d, shards %d, errors %d, %.1fs, %s)",
                 samples, self.epoch, wp.batches, wp.shards, errors, time.perf_counter() - t0, self.name)

    def _open(self, piece: Piece) -> np.ndarray:
        """float32 rows [start, stop) of the shard's samples that hold `sample_key`: (n, input_dim)."""
        url = self.urls[piece.shard]
        log.debug("Opening shard %s (samples %d..%d of %d)", url, piece.start, piece.stop, self.counts[piece.shard])
        info = get_worker_info()
        pieces = self.plan.workers[self.rank][info.id if info else 0].pieces
        k = pieces.index(piece) if piece in pieces else len(pieces)
        after = pieces[k + 1].shard if k + 1 < len(pieces) else piece.shard
        buf = read_shard_ahead(url, self.urls[after] if after != piece.shard else None)  # reads the next one meanwhile
        members = sample_table(buf, self.sample_key)
        if len(members) < piece.stop:
            raise ShardError(f"holds {len(members)} '{self.sample_key}' samples, the index says "
                             f"{self.counts[piece.shard]} (run `ae-train index` again)")
        chosen = members[piece.start:piece.stop]
        return gather_npy(buf, chosen, chosen.keys, self.input_dim)


def gather_npy(buf: bytes, members, keys, input_dim: int) -> np.ndarray:
    """The .npy payloads of `members` (Members or a MemberTable) as a float32 (n, input_dim) array,
    each header validated. When every header is the same and float32, the result is a read-only
    strided view of `buf` (no copy: the batches gather their rows from it); other dtypes are
    converted once. Mixed headers take the per-member path."""
    n = len(members)
    if n == 0:
        return np.empty((0, input_dim), np.float32)
    fast = uniform_npy_rows(buf, members, input_dim)
    if fast is not None:
        return fast
    layouts = [npy_layout(buf, m) for m in members]
    dtype, shape, _ = layouts[0]
    for key, (dt, shp, _) in zip(keys, layouts):
        size = int(np.prod(shp, dtype=np.int64))
        if size != input_dim:
            raise ShardError(f"sample {key}: array of shape {shp} has {size} values, model.input_dim is {input_dim}")
        if dt.kind not in "fiub":
            raise ShardError(f"sample {key}: dtype {dt} is not numeric")
        if dt != dtype:
            dtype = None  # mixed dtypes: one row at a time below
    if dtype is not None:
        offsets = np.fromiter((at for _, _, at in layouts), np.int64, n)
        return npy_rows(buf, offsets, dtype, input_dim)
    out = np.empty((n, input_dim), np.float32)
    for i, (dt, _, at) in enumerate(layouts):
        out[i] = np.frombuffer(buf, dt, input_dim, at)
    return out
