"""The epoch plan: which samples each (rank, worker) reads, so every rank runs the same number of batches.

Uneven batch counts are what hang DDP at epoch end (a rank waiting in an all-reduce that its peers
never join). So the plan is built from exact per-shard sample counts, identically on every rank:
shards are shuffled with seed + epoch, laid end to end as one stream of samples, and the stream is cut
into equal per-rank spans of whole batches; each span is cut again into per-worker spans of whole
batches. A shard may be split between two workers (each reads its own sample range). The samples
past the last whole batch of every rank are dropped; if the split holds less than one batch per rank
the stream is repeated to fill it (padding). Both are reported.

A piece is a sample range of one shard, or (after an elastic resume, resume.py) the samples of that
range still to be trained, listed in `keep`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Piece:
    shard: int  # index into the split's shard list
    start: int  # first sample (in the shard's own order)
    stop: int   # one past the last sample
    keep: np.ndarray | None = field(default=None, compare=False)  # sorted sample indices in [start, stop): only these

    def __len__(self) -> int:
        return self.stop - self.start if self.keep is None else len(self.keep)

    def indices(self) -> np.ndarray:
        """The piece's sample indices in the shard, ascending."""
        return np.arange(self.start, self.stop) if self.keep is None else self.keep

    def part(self, lo: int, hi: int) -> "Piece":
        """Samples [lo, hi) of this piece (positions in the piece's own ascending order)."""
        if self.keep is None:
            return Piece(self.shard, self.start + lo, self.start + hi)
        keep = self.keep[lo:hi]
        return Piece(self.shard, int(keep[0]), int(keep[-1]) + 1, keep)


@dataclass
class WorkerPlan:
    pieces: list[Piece]
    batches: int

    @property
    def samples(self) -> int:
        return sum(len(p) for p in self.pieces)

    @property
    def shards(self) -> int:
        return len({p.shard for p in self.pieces})


@dataclass
class EpochPlan:
    batches_per_rank: int
    batch_size: int
    dropped: int
    padded: int
    workers: list[list[WorkerPlan]] = field(default_factory=list)  # [rank][worker]


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([seed, epoch]).permutation(num_shards)


def _take(stream: list[Piece], ends: np.ndarray, pos: int, n: int) -> list[Piece]:
    """Pieces covering samples [pos, pos + n) of the concatenated stream (`ends`: cumulative lengths)."""
    out, i = [], int(np.searchsorted(ends, pos, side="right"))
    while n > 0 and i < len(stream):
        p, begin = stream[i], int(ends[i]) - len(stream[i])
        lo, hi = pos - begin, min(pos + n, int(ends[i])) - begin
        out.append(p.part(lo, hi))
        n, pos, i = n - (hi - lo), pos + (hi - lo), i + 1
    return out


def batches_per_rank(total: int, world: int, batch_size: int) -> int:
    """Whole batches every rank gets from `total` samples (at least one: a tiny split is padded)."""
    return max(1, total // (world * batch_size))


def make_plan(counts: list[int], world: int, workers: int, batch_size: int,
              seed: int, epoch: int, shuffle: bool) -> EpochPlan:
    total = sum(counts)
    if total == 0:
        raise ValueError("no samples to plan")
    order = shard_order(len(counts), seed, epoch, shuffle)
    one_pass = [Piece(int(s), 0, counts[s]) for s in order if counts[s] > 0]
    return split_stream(one_pass, world, workers, batch_size, batches_per_rank(total, world, batch_size))


def split_stream(one_pass: list[Piece], world: int, workers: int, batch_size: int,
                 per_rank_batches: int) -> EpochPlan:
    """`per_rank_batches` whole batches per rank cut from the samples of `one_pass` laid end to end:
    what does not fit is dropped, a shortfall is filled by repeating the pass (padding)."""
    total = sum(len(p) for p in one_pass)
    if total == 0:
        raise ValueError("no samples to plan")
    workers = max(1, workers)
    need = per_rank_batches * batch_size * world
    stream = one_pass * -(-need // total)  # repeat whole passes only when padding is needed
    plan = EpochPlan(per_rank_batches, batch_size, dropped=max(0, total - need), padded=max(0, need - total))
    per_rank = per_rank_batches * batch_size
    ends = np.cumsum([len(p) for p in stream])
    for rank in range(world):
        base, rank_workers = rank * per_rank, []
        for w in range(workers):
            # Worker w gets batches w, w + K, ... of the rank's span in DataLoader order; only the
            # count matters for equality, so give each worker a contiguous block of its share.
            n_batches = per_rank_batches // workers + (1 if w < per_rank_batches % workers else 0)
            rank_workers.append(WorkerPlan(_take(stream, ends, base, n_batches * batch_size), n_batches))
            base += n_batches * batch_size
        plan.workers.append(rank_workers)
    return plan
