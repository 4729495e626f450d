"""Batches: the per-worker sample path, from the shards of this worker's plan to whole batches.

Stages, in order: plan (equal batches per rank) -> this rank -> this worker -> read shard -> pick the
sample range -> shuffle inside it -> decode into a preallocated batch -> batch -> hand over. Batches
are built here, inside the worker, so the rank's main process only receives tensors: float32
(B, *shape) for arrays, uint8 (B, C, H, W) for images (scaled on the device). Where each batch is
built and how it reaches the rank is the hand-over's (handover.py: the DataLoader's own, or the
batch ring's reused shared slots); the reader is the same for both.

Two ways to read a shard. The fast path, for local uncompressed `.npy` shards no larger than
data.buffer_mb: the whole file in memory, read in one call (source.py; the next one read ahead), its members
found by the vectorised tar scan (tarscan.py), its rows gathered from one view (npyrows.py).
Everything else streams (stream.py): any URL, gzip, images, shards over the size limit; memory is one
read chunk, the raw members of the shuffle buffer and the batch being filled. Either way the samples
of a piece leave in the order order.py computes from counts and seeds alone, so a stopped epoch can
be continued over another world (resume.py) with every sample exactly once. Float batches are
screened for NaN/inf where they are filled (screen.py).

With `keys` (the sample ledger, data.sample_ledger) every batch travels with the WebDataset keys of
its samples (`KeyedBatch`); without, batches are plain tensors and no key is ever looked up.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .. import logformat as lf
from .. import logs
from .batcher import Batcher
from .decode import SampleSpec, decode_into
from .handover import DataLoaderHandOver, HandOver, serves
from .npyrows import gather_npy
from .order import piece_order, worker_rng
from .plan import EpochPlan, Piece
from .resume import OrderState, Planner, Segment, shards_digest
from .screen import bad_rows, finite, replace
from .shards import reason
from .source import read_shard_ahead
from .stream import open_samples
from .tario import ShardError
from .tarscan import sample_table

log = logging.getLogger(__name__)
DEFAULT_BUFFER_BYTES = 256 << 20
DEFAULT_SHUFFLE_BUFFER = 1000


class NoReadableSamples(RuntimeError):
    """A worker must pad but no shard of the split gives it one real sample to repeat."""


class _Tally:
    """What a worker's epoch has produced so far: batches left to make, samples read, shard errors, and
    the last batch handed out with its keys (padding repeats its real samples)."""

    def __init__(self, batches: int):
        self.left, self.samples, self.errors, self.last = batches, 0, 0, (None, None)

    def took(self, batch: tuple[np.ndarray, list[str] | None]) -> None:
        self.left -= 1
        self.last = batch


class ShardBatches(IterableDataset):
    """One split's batches for one rank; `len()` is the rank's batch count for the current epoch."""

    def __init__(self, urls: list[str], counts: list[int], name: str, sample_key: str, spec: SampleSpec | int,
                 batch_size: int, num_workers: int, rank: int, world: int, seed: int, shuffle: bool, epoch: int = 0,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 stage_times=None, keys: bool = False, screen: bool = True):
        super().__init__()
        self.urls, self.counts, self.name = urls, counts, name
        # An int is the old form: vectors of that length from .npy members.
        self.spec = spec if isinstance(spec, SampleSpec) else SampleSpec((int(spec),), "float32", "npy")
        self.sample_key, self.batch_size = sample_key.lower(), batch_size
        self.num_workers, self.rank, self.world = num_workers, rank, world
        self.seed, self.shuffle, self.epoch = seed, shuffle, epoch
        self.buffer_bytes, self.shuffle_buffer = buffer_bytes, shuffle_buffer
        self.stage_times = stage_times  # a StageTimes the reader fills (bench-data); None: no clock reads
        self.keys = keys  # batches carry their samples' keys (KeyedBatch): the sample ledger
        self.planner = Planner(urls, counts, batch_size, self.spec.decoder)
        # This world and data order; the epoch's segments (one, unless an elastic resume began another).
        self.now = Segment(world, max(1, num_workers), 0, seed, shuffle, shuffle_buffer, buffer_bytes)
        self.segments = [self.now]
        self.plan: EpochPlan = self.planner.epoch_plan(self.now, epoch)
        self.resume_state: OrderState | None = None  # a checkpoint's data order, used once (resume.py)
        # Shard errors and samples left out for NaN/inf of this epoch, summed over this rank's workers
        # (forked workers share them).
        self.errors = multiprocessing.Value("i", 0)
        self.nonfinite = multiprocessing.Value("i", 0)
        # Which shards failed (a shard split between workers or ranks is one shard error), guarded by errors' lock.
        self.failed = multiprocessing.Array("b", len(urls), lock=False)
        self._screen = screen and self.spec.dtype == "float32"  # NaN/inf samples left out; uint8 images hold none
        self.plan_errors = 0  # shards found broken when counted (set by the DataModule)
        self.skip_batches = 0  # batches of this epoch's last segment already trained (a mid-epoch resume)
        # How batches reach the rank (handover.py); EpochDataLoader sets its own before the workers fork.
        self.handover: HandOver = DataLoaderHandOver((batch_size, *self.spec.shape), self.spec.dtype)
        self._announced = False

    def order_state(self) -> OrderState:
        """The data order of the current epoch, as a checkpoint keeps it."""
        return OrderState(self.epoch, self.batch_size, shards_digest(self.urls, self.counts), len(self),
                          list(self.segments))

    def set_epoch(self, epoch: int, done: int = 0) -> int:
        """The plan of `epoch`, `done` batches of which are already trained (a resume): a fresh plan, the
        resumed segment going on, or the epoch's samples left planned over this world. Returns the
        batches of the plan already trained (each worker skips its share of them)."""
        state, self.resume_state = self.resume_state, None
        if state is not None and state.epoch == epoch and done > 0 and state.segments:
            resumed = self.planner.resume(state, self.now, done)
            self.epoch, self.plan, self.segments, self._announced = epoch, resumed.plan, resumed.segments, True
            if done < len(self):
                self._announce()
            if resumed.left and self.rank == 0:
                old = resumed.segments[-2]
                log.warning(lf.ELASTIC_RESUME.template, epoch, done, old.describe(), self.now.describe(),
                            resumed.left, self.plan.batches_per_rank, self.plan.padded, extra=logs.CONSOLE)
            skip = resumed.skip
        else:
            if epoch != self.epoch or not self._announced:
                self.epoch, self._announced, self.segments = epoch, True, [self.now]
                self.plan = self.planner.epoch_plan(self.now, epoch)
                if done < len(self):  # (a resume at an epoch's end reads nothing of it)
                    self._announce()
            skip = done - self.segments[-1].start
        with self.errors.get_lock():
            self.errors.value = 0
            self.failed[:] = bytes(len(self.urls))
        with self.nonfinite.get_lock():
            self.nonfinite.value = 0
        return skip

    def _announce(self) -> None:
        log.info(lf.EQUALIZED.template, self.name, self.epoch, self.now.world, self.plan.batches_per_rank,
                 self.batch_size, self.plan.dropped, self.plan.padded)

    def batch_samples(self, batch: int) -> list[tuple[str, int]]:
        """(shard URL, sample index) of each row of this rank's epoch batch `batch`, as the plan has it (a
        read error or a NaN sample replaced since may have changed some)."""
        seg, bs = self.segments[-1], self.batch_size
        j = batch - seg.start
        worker, m = j % seg.workers, j // seg.workers  # batch j of the epoch came from worker j % K
        pieces = self.plan.workers[self.rank][worker].pieces
        seq = self.planner.emission(pieces, seg, self.epoch, self.rank, worker, len(self.segments) - 1, (m + 1) * bs)
        return [(self.urls[shard], index) for shard, index in seq[m * bs:]]

    def _plan_for(self, epoch: int) -> None:
        """In a worker that serves several epochs: the plan of `epoch` (the rank announced it)."""
        if epoch != self.epoch:
            self.epoch, self.segments = epoch, [self.now]
            self.plan = self.planner.epoch_plan(self.now, epoch)

    def __len__(self) -> int:
        return self.segments[-1].start + self.plan.batches_per_rank

    def __iter__(self):
        info = get_worker_info()
        worker, num = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            logs.set_worker(worker, num)
            log.info(lf.WORKER_STARTED.template, os.getpid())
        for epoch, skip_batches in self.handover.epochs(worker, self.epoch, self.skip_batches):
            # Planning runs inside send: a failure there reaches the rank as this worker's failure (the ring
            # marks it), not as a worker that never publishes.
            yield from self.handover.send(self._epoch_batches(epoch, worker, num, skip_batches))

    def _epoch_batches(self, epoch: int, worker: int, num: int, skip_batches: int):
        self._plan_for(epoch)
        plan_worker, skip = serves(worker, num, skip_batches)
        if skip:
            log.info(lf.RESUME_SKIP.template, self.epoch, skip)
        yield from self._kept(self._timed(self._worker_batches(plan_worker)), skip)

    def _timed(self, batches):
        return batches if self.stage_times is None else self.stage_times.timed_iter("batches", batches)

    def _kept(self, batches, skip: int):
        for i, (batch, keys) in enumerate(batches):
            if i >= skip:
                yield batch, keys
            else:
                self.handover.drop(batch)

    def _built(self, build, *args) -> np.ndarray:
        """build(*args): a batch in the hand-over's memory, the wait for it counted with stage times."""
        if self.stage_times is None:
            return build(*args)
        before = self.handover.waited
        try:
            return build(*args)
        finally:
            self.stage_times.add("slot_wait", self.handover.waited - before)

    def _fast(self, url: str) -> bool:
        """Local, uncompressed, `.npy`, and small enough to hold whole (order.held_whole)."""
        return self.planner.whole(self.urls.index(url), self.segments[-1])

    def _worker_batches(self, worker: int):
        """This worker's planned batches, in order: its shard pieces read and batched (a partial batch
        carries over into the next piece), then padding with real samples if any read fell short."""
        wp = self.plan.workers[self.rank][worker]  # the plan was made for this many workers
        log.info(lf.PROCESSING.template, wp.shards, len(self.urls), self.name, self.epoch, wp.samples, wp.batches)
        seg = self.segments[-1]
        rng = worker_rng(seg.seed, self.epoch, self.rank, worker, len(self.segments) - 1)
        t0, tally = time.perf_counter(), _Tally(wp.batches)
        batcher = Batcher(self.spec, self.batch_size, lambda: self._built(self.handover.take), self.stage_times,
                          self.keys, self._screen_members if self._screen else None, (self.seed, self.epoch))
        for k, piece in enumerate(wp.pieces):
            whole = self.planner.whole(piece.shard, seg)
            order = piece_order(len(piece), rng, whole, seg.shuffle, seg.shuffle_buffer)  # before any read
            following = wp.pieces[k + 1].shard if k + 1 < len(wp.pieces) else None
            yield from self._piece_batches(piece, order, whole, following, batcher, tally)
            if tally.left == 0:
                break
        if tally.left > 0:  # shard errors or stale counts: repeat real samples to keep ranks in step
            log.warning(lf.PADDING.template, self.name, tally.samples, wp.samples, tally.left)
            yield from self._padding(batcher, tally.last, tally.left)
        log.info(lf.COMPLETED.template, tally.samples, self.epoch, wp.batches, wp.shards, tally.errors,
                 time.perf_counter() - t0, self.name)

    def _piece_batches(self, piece: Piece, order: np.ndarray, whole: bool, following: int | None,
                       batcher: "Batcher", tally: "_Tally"):
        """The batches completed by one shard piece. A read error ends it: planned samples of this worker
        were not delivered, so it is an ERROR naming the shard and a shard error, whichever part of the
        shard the piece is. A shard counts once however many of its pieces fail (`failed`: per shard, for
        the rank's workers; ShardErrorLimit merges the ranks')."""
        url, t_shard, read = self.urls[piece.shard], time.perf_counter(), [0]
        batcher.url = url
        try:
            batches = self._fast_piece(piece, order, following, batcher, tally.left, read) if whole \
                else self._streamed_piece(piece, order, batcher, tally, read)
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

    def _fast_piece(self, piece: Piece, order: np.ndarray, following: int | None, batcher: "Batcher", limit: int,
                    read: list):
        """The fast path: the piece's rows gathered from the whole shard in memory (the next one read ahead)."""
        seg = self.segments[-1]
        ahead = self.urls[following] if following not in (None, piece.shard) else None
        rows, table = self._open(piece, ahead if ahead and self.planner.whole(following, seg) else None)
        read[0] = len(rows)
        yield from self._gathered(rows, table, order, batcher, limit, self.urls[piece.shard])

    def _streamed_piece(self, piece: Piece, order: np.ndarray, batcher: "Batcher", tally: "_Tally", read: list):
        """Any other shard: raw members streamed in the piece's order, each decoded into the batch being filled."""
        for key, data in self._streamed(piece, order):
            read[0] += 1
            yield from batcher.add_member(key, data)
            if tally.left == 0:
                break

    def _gathered(self, rows: np.ndarray, table, order: np.ndarray, batcher: Batcher, limit: int, url: str = ""):
        """Batches of `rows` (n, size) in `order`, at most `limit`: the partial batch left by the previous
        shard is topped up first, then each whole batch is one fancy-index gather (one copy). `table`:
        the rows' MemberTable (keys, looked up when batches carry keys or a row holds NaN/inf)."""
        pos, bs = 0, self.batch_size
        order = order.copy() if self._screen else order  # a NaN/inf row's position takes a finite one's
        picked = (lambda a, b: table.keys_at(order[a:b])) if self.keys else (lambda a, b: None)
        if batcher.fill:
            pos = min(bs - batcher.fill, len(rows))
            for batch in batcher.add_rows(self._screened(rows[order[:pos]], rows, table, order, 0, url), picked(0, pos)):
                limit -= 1
                yield batch
        gather = self.handover.gatherer(rows) if limit > 0 and pos + bs <= len(rows) else None
        while limit > 0 and pos + bs <= len(rows):
            limit -= 1
            out = self._built(gather, order[pos:pos + bs])
            yield self._screened(out, rows, table, order, pos, url), picked(pos, pos + bs)
            pos += bs
        if limit > 0 and pos < len(rows):
            # less than a batch: never completes one
            yield from batcher.add_rows(self._screened(rows[order[pos:]], rows, table, order, pos, url),
                                        picked(pos, len(rows)))

    def _screened(self, batch: np.ndarray, rows: np.ndarray, table, order: np.ndarray, at: int, url: str) -> np.ndarray:
        """`batch` (rows order[at:at + len(batch)] of the piece) with its NaN/inf rows replaced (screen.py);
        `order` follows, so that the keys say what was trained."""
        if not self._screen or finite(batch):
            return batch
        bad = bad_rows(batch)
        if len(bad):
            spare = None
            if len(bad) == len(batch):  # nothing finite here to repeat: the first finite row of the piece
                ok = np.flatnonzero(np.isfinite(rows).all(axis=1))
                spare, spare_at = rows[ok[:1]], ok[:1]
            for i, donor in replace(batch.reshape(len(batch), -1), bad,
                                    lambda i: (table.keys_at(order[at + i:at + i + 1])[0], url), self.nonfinite, spare):
                order[at + i] = order[at + donor] if donor >= 0 else spare_at[0]
        return batch

    def _screen_members(self, batch: np.ndarray, keys: list, urls: list) -> None:
        """A batch filled member by member (streamed shards) that failed the finite check: replace its
        NaN/inf rows; the keys follow."""
        bad = bad_rows(batch)
        if len(bad):
            for i, donor in replace(batch.reshape(len(batch), -1), bad, lambda i: (keys[i], urls[i]), self.nonfinite):
                keys[i] = keys[donor]

    def _padding(self, batcher: Batcher, last: tuple, missing: int):
        """`missing` batches of real samples: the partial batch topped up from the last full one, or
        its own samples repeated; with nothing read at all, samples of any readable shard of the split.
        In a ring worker `last` is a slot that may have been filled again since it was handed over:
        every row of it is still a real sample of this worker (slots are only ever published full)."""
        last_batch, last_keys = last
        if last_batch is None and batcher.fill == 0:
            last_batch, last_keys = self._any_real_batch()
        have = batcher.cur[:batcher.fill].copy() if batcher.fill else last_batch[:0]
        pool = np.concatenate([have, last_batch]) if last_batch is not None else have
        filler = np.resize(pool, (self.batch_size, *self.spec.shape)).astype(self.spec.dtype, copy=False)
        keys = None
        if self.keys:
            names = (batcher.keys if batcher.fill else []) + (list(last_keys) if last_batch is not None else [])
            keys = [names[i % len(names)] for i in range(self.batch_size)]  # as np.resize repeats the rows
        for _ in range(missing):
            yield filler.copy(), keys

    def _any_real_batch(self) -> tuple[np.ndarray, list[str]]:
        """Up to one batch of real samples from the split's shards in order, with their keys; never zeros."""
        out, names, why = [], [], "no shard holds a readable sample"
        for i, url in enumerate(self.urls):
            try:
                for key, data in self._streamed(Piece(i, 0, self.batch_size), None):
                    slot = np.empty(self.spec.shape, self.spec.dtype)
                    decode_into(self.spec, data, slot, key, (self.seed, self.epoch))
                    out.append(slot)
                    names.append(key)
                    if len(out) == self.batch_size:
                        break
            except (OSError, ShardError) as e:
                why = f"{url}: {reason(e)}"
            if out:
                return np.stack(out), names
        raise NoReadableSamples(f"{self.name}: no sample of any shard can be read to keep ranks in step ({why}); "
                                "stopping instead of training on made-up data")

    def _streamed(self, piece: Piece, order: np.ndarray | None):
        """(key, raw input member) of the piece's samples in `order` (positions among the piece's samples;
        None: shard order). `order` comes from a shuffle buffer (order.buffer_order): a sample leaves
        at most data.shuffle_buffer samples after it arrived, so that many raw members are held here."""
        url = self.urls[piece.shard]
        log.debug(lf.OPENING.template, url, piece.start, piece.stop, self.counts[piece.shard])
        stream, samples = open_samples(url, {self.sample_key}, views=True)  # members decoded in place
        if self.stage_times is not None:
            samples = self.stage_times.timed_iter(("read", "read_wait"), samples)  # nothing read ahead here
        try:
            arriving = self._piece_samples(piece, samples)
            if order is None:
                yield from arriving
                return
            arrived: dict[int, tuple[str, bytes]] = {}  # position in the piece -> (key, raw member)
            handed = 0
            for pos in order.tolist():
                while pos not in arrived:
                    arrived[handed + len(arrived)] = next(arriving)  # a short shard raises ShardError
                handed += 1
                yield arrived.pop(pos)
        finally:
            stream.close()

    def _piece_samples(self, piece: Piece, samples):
        """The piece's samples in shard order, (key, raw member with `sample_key`); a shard that ends
        before the piece does is a ShardError."""
        want = None if piece.keep is None else iter(piece.keep.tolist())
        wanted = piece.start if want is None else next(want)
        index = -1
        for key, parts in samples:
            data = parts.get(self.sample_key)
            if data is None:
                continue
            index += 1
            if index < wanted:
                continue
            yield key, data
            if index + 1 >= piece.stop:
                return
            wanted = index + 1 if want is None else next(want)
        raise self._fewer(piece, index + 1)

    def _fewer(self, piece: Piece, found: int) -> ShardError:
        """A shard that holds fewer samples than its count (the index is stale)."""
        return ShardError(f"holds {found} '{self.sample_key}' samples, the index says {self.counts[piece.shard]} "
                          "(run `ae-train index` again)")

    def _open(self, piece: Piece, ahead: str | None) -> tuple[np.ndarray, object]:
        """float32 rows of the piece's samples that hold `sample_key`: (n, size), and their MemberTable."""
        url = self.urls[piece.shard]
        log.debug(lf.OPENING.template, url, piece.start, piece.stop, self.counts[piece.shard])
        times = self.stage_times
        # Reads the next shard meanwhile.
        buf = read_shard_ahead(url, ahead, times)
        t = time.perf_counter() if times is not None else 0.0
        members = sample_table(buf, self.sample_key)
        if len(members) < piece.stop:
            raise self._fewer(piece, len(members))
        chosen = members[piece.start:piece.stop] if piece.keep is None else members.take(piece.keep)
        rows = gather_npy(buf, chosen, chosen.keys, self.spec.size)
        if times is not None:
            times.add("decode", time.perf_counter() - t)
        return rows, chosen


def keys_at(url: str, sample_key: str, indices: list[int]) -> list[str]:
    """The keys of samples `indices` (counting samples that hold `sample_key`) of a shard, read from it."""
    want = set(indices)
    found: dict[int, str] = {}
    stream, samples = open_samples(url, set())  # names only: no member is kept
    try:
        index = -1
        for key, parts in samples:
            if sample_key not in parts:
                continue
            index += 1
            if index in want:
                found[index] = key
                if len(found) == len(want):
                    break
    finally:
        stream.close()
    return [found.get(i, f"<sample {i}>") for i in indices]
