"""The per-worker sample path: read the shards of this worker's plan, yield whole batches.

Stages, in order: plan (equal batches per rank) -> this rank -> this worker -> read shard -> pick the
sample range -> shuffle inside it -> decode into a preallocated batch -> batch. Batches are built
here, inside the worker, so the rank's main process only receives tensors: float32 (B, *shape) for
arrays, uint8 (B, C, H, W) for images (scaled on the device). With a batch ring (ring.py, set up by
EpochDataLoader) a worker gathers or decodes each batch straight into a reused shared slot and
yields only its `Slot`; the rank turns it into a tensor view.

Two ways to read a shard. The fast path, for local uncompressed `.npy` shards no larger than
data.buffer_mb: the whole file in one reused buffer (the next one read ahead), its rows gathered by
the vectorized tar walk. Everything else streams: any URL, gzip, images, shards over the size
limit; memory is one read chunk, the raw members of the shuffle buffer and the batch being filled.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
import warnings

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .. import logformat as lf
from .. import logs
from .decode import SampleSpec, decode_into
from .plan import EpochPlan, Piece, make_plan
from .shards import reason
from .stream import open_samples
from .tario import ShardError, npy_layout, read_shard_ahead
from .npyrows import npy_rows, uniform_npy_rows
from .tarscan import sample_table
from .urls import is_compressed, local_path

log = logging.getLogger(__name__)
DEFAULT_BUFFER_BYTES = 256 << 20
DEFAULT_SHUFFLE_BUFFER = 1000


class NoReadableSamples(RuntimeError):
    """A worker must pad but no shard of the split gives it one real sample to repeat."""


class _Batcher:
    """Fills preallocated batches slot by slot (rows in blocks, members one by one)."""

    def __init__(self, spec: SampleSpec, batch_size: int, new=None, times=None):
        self.spec, self.batch_size, self.times = spec, batch_size, times
        self._new = new or (lambda: np.empty((batch_size, *spec.shape), spec.dtype))
        self.cur: np.ndarray | None = None  # taken when its first sample comes: a ring slot only while filled
        self.fill = 0

    def _full(self) -> np.ndarray:
        out, self.cur, self.fill = self.cur, None, 0
        return out

    def add_rows(self, rows: np.ndarray):
        """Copy rows (n, size) into batches; yields each batch as it fills."""
        pos = 0
        while pos < len(rows):
            if self.cur is None:
                self.cur = self._new()
            take = min(self.batch_size - self.fill, len(rows) - pos)
            self.cur.reshape(self.batch_size, -1)[self.fill:self.fill + take] = rows[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == self.batch_size:
                yield self._full()

    def add_member(self, key: str, data: bytes):
        if self.cur is None:
            self.cur = self._new()
        try:
            if self.times is None:
                decode_into(self.spec, data, self.cur[self.fill])
            else:
                self.times.timed("decode", decode_into, self.spec, data, self.cur[self.fill])
        except ShardError as e:
            raise ShardError(f"sample {key}: {e}") from None
        self.fill += 1
        if self.fill == self.batch_size:
            yield self._full()


class _Tally:
    """What a worker's epoch has produced so far: batches left to make, samples read, shard errors, and
    the last batch handed out (padding repeats its real samples)."""

    def __init__(self, batches: int):
        self.left, self.samples, self.errors, self.last = batches, 0, 0, None

    def took(self, batch: np.ndarray) -> None:
        self.left -= 1
        self.last = batch


class ShardBatches(IterableDataset):
    """One split's batches for one rank; `len()` is the rank's batch count for the current epoch."""

    def __init__(self, urls: list[str], counts: list[int], name: str, sample_key: str, spec: SampleSpec | int,
                 batch_size: int, num_workers: int, rank: int, world: int, seed: int, shuffle: bool, epoch: int = 0,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 stage_times=None):
        super().__init__()
        self.urls, self.counts, self.name = urls, counts, name
        # An int is the old form: vectors of that length from .npy members.
        self.spec = spec if isinstance(spec, SampleSpec) else SampleSpec((int(spec),), "float32", "npy")
        self.sample_key, self.batch_size = sample_key.lower(), batch_size
        self.num_workers, self.rank, self.world = num_workers, rank, world
        self.seed, self.shuffle, self.epoch = seed, shuffle, epoch
        self.buffer_bytes, self.shuffle_buffer = buffer_bytes, shuffle_buffer
        self.stage_times = stage_times  # a StageTimes the reader fills (bench-data); None: no clock reads
        self.plan: EpochPlan = make_plan(counts, world, num_workers, batch_size, seed, epoch, shuffle)
        # Shard errors of this epoch, summed over this rank's workers (forked workers share it), and which
        # shards they are (a shard split between workers or ranks is one shard error).
        self.errors = multiprocessing.Value("i", 0)
        self.failed = multiprocessing.Array("b", len(urls), lock=False)  # guarded by errors' lock
        self.plan_errors = 0  # shards found broken when counted (set by the DataModule)
        self.skip_batches = 0  # batches of this epoch already trained (a mid-epoch resume)
        # Set by EpochDataLoader before the workers fork: workers fill its slots and yield Slots (ring.py).
        self.ring = None
        self._writer = None
        self._announced = False

    def set_epoch(self, epoch: int) -> None:
        """New plan for `epoch` (only the shard order changes; the batch count never does)."""
        if epoch != self.epoch or not self._announced:
            self.epoch, self._announced = epoch, True
            self.plan = make_plan(self.counts, self.world, self.num_workers, self.batch_size, self.seed, epoch,
                                  self.shuffle)
            log.info(lf.EQUALIZED.template, self.name, epoch, self.world, self.plan.batches_per_rank, self.batch_size,
                     self.plan.dropped, self.plan.padded)
        with self.errors.get_lock():
            self.errors.value = 0
            self.failed[:] = bytes(len(self.urls))

    def _plan_for(self, epoch: int) -> None:
        """In a worker that serves several epochs: the plan of `epoch` (the rank announced it)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.plan = make_plan(self.counts, self.world, self.num_workers, self.batch_size, self.seed, epoch,
                                  self.shuffle)

    def __len__(self) -> int:
        return self.plan.batches_per_rank

    def __iter__(self):
        info = get_worker_info()
        worker, num = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            logs.set_worker(worker, num)
            log.info(lf.WORKER_STARTED.template, os.getpid())
        if self.ring is not None and info is not None:
            # Every epoch in this first fetch: this worker serves each round the rank starts, its batches
            # going into ring slots. After a resume the ring reads worker skip % K first, so worker w
            # keeps its own plan.
            for epoch, skip_batches in self.ring.rounds(worker):
                self._plan_for(epoch)
                skip = len(range(worker, skip_batches, num))
                self._log_skip(skip)
                self._writer = self.ring.writer(worker)
                self._writer.feed(self._kept(self._timed(self._worker_batches(worker)), skip))
            return
        # The DataLoader takes batch i of an iterator from worker i % K, and epoch batch j came from plan
        # worker j % K. A resumed iterator starts at epoch batch `skip_batches`, so its worker w serves
        # plan worker (w + skip_batches) % K, minus that plan's batches already trained: the epoch goes
        # on in the same data order whatever the skip count.
        plan_worker = (worker + self.skip_batches) % num
        skip = len(range(plan_worker, self.skip_batches, num))
        self._log_skip(skip)
        for i, batch in enumerate(self._timed(self._worker_batches(plan_worker))):
            if i >= skip:
                yield torch.from_numpy(batch)

    def _timed(self, batches):
        return batches if self.stage_times is None else self.stage_times.timed_iter("batches", batches)

    def _log_skip(self, skip: int) -> None:
        if skip:
            log.info(lf.RESUME_SKIP.template, self.epoch, skip)

    def _kept(self, batches, skip: int):
        for i, batch in enumerate(batches):
            if i >= skip:
                yield batch
            else:
                self._writer.drop(batch)

    def _new_batch(self) -> np.ndarray:
        """Where the next batch is built: a free ring slot in a ring worker, else new memory."""
        if self._writer is not None:
            return self._take_slot()
        return np.empty((self.batch_size, *self.spec.shape), self.spec.dtype)

    def _take_slot(self) -> np.ndarray:
        if self.stage_times is None:
            return self._writer.take()
        before = self._writer.waited
        try:
            return self._writer.take()
        finally:
            self.stage_times.add("slot_wait", self._writer.waited - before)

    def _fast(self, url: str) -> bool:
        """Local, uncompressed, `.npy`, and small enough to hold whole."""
        path = local_path(url)
        if self.spec.decoder != "npy" or path is None or is_compressed(url):
            return False
        try:
            return os.path.getsize(path) <= self.buffer_bytes
        except OSError:
            return True  # the fast path's open names the error

    def _worker_batches(self, worker: int):
        """This worker's planned batches, in order: its shard pieces read and batched (a partial batch
        carries over into the next piece), then padding with real samples if any read fell short."""
        wp = self.plan.workers[self.rank][worker]  # the plan was made for this many workers
        log.info(lf.PROCESSING.template, wp.shards, len(self.urls), self.name, self.epoch, wp.samples, wp.batches)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        t0, tally = time.perf_counter(), _Tally(wp.batches)
        batcher = _Batcher(self.spec, self.batch_size, self._new_batch, self.stage_times)
        for k, piece in enumerate(wp.pieces):
            following = wp.pieces[k + 1].shard if k + 1 < len(wp.pieces) else None
            yield from self._piece_batches(piece, following, rng, batcher, tally)
            if tally.left == 0:
                break
        if tally.left > 0:  # shard errors or stale counts: repeat real samples to keep ranks in step
            log.warning(lf.PADDING.template, self.name, tally.samples, wp.samples, tally.left)
            yield from self._padding(batcher, tally.last, tally.left)
        log.info(lf.COMPLETED.template, tally.samples, self.epoch, wp.batches, wp.shards, tally.errors,
                 time.perf_counter() - t0, self.name)

    def _piece_batches(self, piece: Piece, following: int | None, rng: np.random.Generator, batcher: "_Batcher",
                       tally: "_Tally"):
        """The batches completed by one shard piece. A read error ends it: planned samples of this worker
        were not delivered, so it is an ERROR naming the shard and a shard error, whichever part of the
        shard the piece is. A shard counts once however many of its pieces fail (`failed`: per shard, for
        the rank's workers; ShardErrorLimit merges the ranks')."""
        url, t_shard, read = self.urls[piece.shard], time.perf_counter(), [0]
        try:
            batches = self._fast_piece(piece, following, rng, batcher, tally.left, read) if self._fast(url) \
                else self._streamed_piece(piece, rng, batcher, tally, read)
            for batch in batches:
                tally.took(batch)
                yield batch
        except (OSError, ShardError) as e:
            tally.errors += 1
            with self.errors.get_lock():
                if not self.failed[piece.shard]:
                    self.failed[piece.shard] = 1
                    self.errors.value += 1
            log.error(lf.SHARD_ERROR.template, url, reason(e))
        tally.samples += read[0]
        if read[0]:
            log.debug(lf.FINISHED_SHARD.template, url, read[0], time.perf_counter() - t_shard)

    def _fast_piece(self, piece: Piece, following: int | None, rng, batcher: "_Batcher", limit: int, read: list):
        """The fast path: the piece's rows gathered from the whole shard in memory (the next one read ahead)."""
        ahead = self.urls[following] if following not in (None, piece.shard) else None
        rows = self._open(piece, ahead if ahead and self._fast(ahead) else None)
        read[0] = len(rows)
        yield from self._gathered(rows, rng, batcher, limit)

    def _streamed_piece(self, piece: Piece, rng, batcher: "_Batcher", tally: "_Tally", read: list):
        """Any other shard: raw members streamed (shuffle buffer), each decoded into the batch being filled."""
        for key, data in self._streamed(piece, rng):
            read[0] += 1
            yield from batcher.add_member(key, data)
            if tally.left == 0:
                break

    def _gathered(self, rows: np.ndarray, rng: np.random.Generator, batcher: _Batcher, limit: int):
        """Batches of `rows` (n, size) in shuffled order, at most `limit`: the partial batch left by the
        previous shard is topped up first, then each whole batch is one fancy-index gather (one copy)."""
        order = rng.permutation(len(rows)) if self.shuffle else np.arange(len(rows))
        pos, shape = 0, (self.batch_size, *self.spec.shape)
        if batcher.fill:
            pos = min(self.batch_size - batcher.fill, len(rows))
            for batch in batcher.add_rows(rows[order[:pos]]):
                limit -= 1
                yield batch
        if self._writer is not None and limit > 0 and pos + self.batch_size <= len(rows):
            # Gathered straight into ring slots by torch (np.take into `out` is 100x slower on these strided rows).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rows is a read-only view of the shard buffer: only read
                src, index = torch.from_numpy(rows), torch.from_numpy(order)
        while limit > 0 and pos + self.batch_size <= len(rows):
            limit -= 1
            if self._writer is None:
                yield rows[order[pos:pos + self.batch_size]].reshape(shape)
            else:
                out = self._take_slot()
                torch.index_select(src, 0, index[pos:pos + self.batch_size],
                                   out=torch.from_numpy(out).view(self.batch_size, -1))
                yield out
            pos += self.batch_size
        if limit > 0 and pos < len(rows):
            yield from batcher.add_rows(rows[order[pos:]])  # less than a batch: never completes one

    def _padding(self, batcher: _Batcher, last: np.ndarray | None, missing: int):
        """`missing` batches of real samples: the partial batch topped up from the last full one, or
        its own samples repeated; with nothing read at all, samples of any readable shard of the split.
        In a ring worker `last` is a slot that may have been filled again since it was handed over:
        every row of it is still a real sample of this worker (slots are only ever published full)."""
        if last is None and batcher.fill == 0:
            last = self._any_real_batch()
        have = batcher.cur[:batcher.fill].copy() if batcher.fill else last[:0]
        pool = np.concatenate([have, last]) if last is not None else have
        filler = np.resize(pool, (self.batch_size, *self.spec.shape)).astype(self.spec.dtype, copy=False)
        for _ in range(missing):
            yield filler.copy()

    def _any_real_batch(self) -> np.ndarray:
        """Up to one batch of real samples from the split's shards in order; never zeros."""
        out, why = [], "no shard holds a readable sample"
        for url in self.urls:
            try:
                with_key = self._streamed(Piece(self.urls.index(url), 0, self.batch_size), None)
                for _, data in with_key:
                    slot = np.empty(self.spec.shape, self.spec.dtype)
                    decode_into(self.spec, data, slot)
                    out.append(slot)
                    if len(out) == self.batch_size:
                        break
            except (OSError, ShardError) as e:
                why = f"{url}: {reason(e)}"
            if out:
                return np.stack(out)
        raise NoReadableSamples(f"{self.name}: no sample of any shard can be read to keep ranks in step ({why}); "
                                "stopping instead of training on made-up data")

    def _streamed(self, piece: Piece, rng: np.random.Generator | None):
        """(key, raw input member) of samples [start, stop) of the shard, in shuffle-buffer order when shuffling."""
        url = self.urls[piece.shard]
        log.debug(lf.OPENING.template, url, piece.start, piece.stop, self.counts[piece.shard])
        stream, samples = open_samples(url, {self.sample_key})
        if self.stage_times is not None:
            samples = self.stage_times.timed_iter(("read", "read_wait"), samples)  # nothing read ahead here
        try:
            index, pool = 0, []
            for key, parts in samples:
                data = parts.get(self.sample_key)
                if data is None:
                    continue
                index += 1
                if index <= piece.start:
                    continue
                if rng is None or not self.shuffle or self.shuffle_buffer <= 1:
                    yield key, data
                elif len(pool) < self.shuffle_buffer:
                    pool.append((key, data))
                else:
                    j = int(rng.integers(len(pool)))
                    out, pool[j] = pool[j], (key, data)
                    yield out
                if index >= piece.stop:
                    break
            if rng is not None and self.shuffle:
                for j in rng.permutation(len(pool)):
                    yield pool[j]
            if index < piece.stop:
                raise ShardError(f"holds {index} '{self.sample_key}' samples, the index says "
                                 f"{self.counts[piece.shard]} (run `ae-train index` again)")
        finally:
            stream.close()

    def _open(self, piece: Piece, ahead: str | None) -> np.ndarray:
        """float32 rows [start, stop) of the shard's samples that hold `sample_key`: (n, size)."""
        url = self.urls[piece.shard]
        log.debug(lf.OPENING.template, url, piece.start, piece.stop, self.counts[piece.shard])
        times = self.stage_times
        # Reads the next shard meanwhile.
        buf = read_shard_ahead(local_path(url), local_path(ahead) if ahead else None, times)
        t = time.perf_counter() if times is not None else 0.0
        members = sample_table(buf, self.sample_key)
        if len(members) < piece.stop:
            raise ShardError(f"holds {len(members)} '{self.sample_key}' samples, the index says "
                             f"{self.counts[piece.shard]} (run `ae-train index` again)")
        chosen = members[piece.start:piece.stop]
        rows = gather_npy(buf, chosen, chosen.keys, self.spec.size)
        if times is not None:
            times.add("decode", time.perf_counter() - t)
        return rows


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
