"""Elastic resume: an epoch stopped at any batch goes on over any number of ranks and workers, every
sample it had left trained exactly once.

An epoch is trained in segments. The first is the epoch plan (plan.py) for the world that started it.
When a run resumes inside the epoch with the same world and data order, the segment simply goes on
(each worker skips its batches already trained). With another world (ranks, nodes or DataLoader
workers) or another data order (seed, shuffle, buffers), a new segment starts: the samples the old
segment's workers had emitted are derived from its plan and the emission orders (order.py: counts
and seeds only, no data read), and the samples left are planned over the new world, equal batches
per rank, the last batch of each rank topped up with repeats (padding) when they do not divide.

The checkpoint carries the epoch's `OrderState` (ShardDataModule.state_dict): the batch size, a
digest of the shards and their counts, and each segment's world, order parameters and the epoch
batch (Lightning's count, per rank) it began at. Lightning's own batch counter says how far the
last segment got. A changed batch size or changed shards cannot be continued exactly inside an
epoch: `mismatch()` names what changed (the launcher stops before any rank starts).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .order import emitted_prefix, held_whole, piece_order, worker_rng
from .plan import EpochPlan, Piece, make_plan, split_stream

STATE_KEY = "ShardDataModule"  # where Lightning keeps the DataModule's state in a checkpoint (its class name)


@dataclass(frozen=True)
class Segment:
    """Part of an epoch trained by one world in one data order, from epoch batch `start` (per rank) on."""
    world: int
    workers: int
    start: int
    seed: int
    shuffle: bool
    shuffle_buffer: int
    buffer_bytes: int

    def same_order(self, other: "Segment") -> bool:
        """Whether `other` emits the same batches in the same order (it may go on where this one stopped)."""
        return (self.world, self.workers, self.seed, self.shuffle, self.shuffle_buffer, self.buffer_bytes) == \
            (other.world, other.workers, other.seed, other.shuffle, other.shuffle_buffer, other.buffer_bytes)

    def describe(self) -> str:
        return f"{self.world} rank(s) x {self.workers} worker(s)"


@dataclass
class OrderState:
    """What a checkpoint records of the training data order of its epoch."""
    epoch: int
    batch_size: int
    shards: str  # shards_digest of the training split
    batches: int  # batches per rank of the whole epoch (Lightning's count: every segment's)
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"version": 1, "epoch": self.epoch, "batch_size": self.batch_size, "shards": self.shards,
                "batches": self.batches, "segments": [asdict(s) for s in self.segments]}

    @classmethod
    def from_dict(cls, d: dict) -> "OrderState":
        return cls(int(d["epoch"]), int(d["batch_size"]), str(d["shards"]), int(d["batches"]),
                   [Segment(**s) for s in d["segments"]])


def shards_digest(urls: list[str], counts: list[int]) -> str:
    """Names the training data: the shard list and each shard's sample count."""
    return hashlib.sha1(json.dumps([urls, counts]).encode()).hexdigest()[:16]


def mismatch(state: OrderState, batch_size: int, digest: str, done: int) -> str | None:
    """Why an epoch stopped at batch `done` cannot go on exactly with this batch size and these shards
    (None: it can, or it was not stopped inside an epoch)."""
    if done <= 0 or done >= state.batches:
        return None
    if batch_size != state.batch_size:
        return (f"data.batch_size is {batch_size} but the checkpoint stopped inside epoch {state.epoch} with "
                f"data.batch_size={state.batch_size}")
    if digest != state.shards:
        return (f"data.train_shards (the shard list or their sample counts) changed since the checkpoint stopped "
                f"inside epoch {state.epoch}")
    return None


@dataclass
class Resumed:
    """The plan of the segment a resumed epoch goes on with, and what to say about it."""
    plan: EpochPlan
    segments: list[Segment]
    skip: int  # batches of the last segment each rank already trained (its workers skip their share)
    left: int = 0  # samples of the epoch not yet trained when a new segment began (0: the segment goes on)


class Planner:
    """Plans of one split for any epoch and world: `epoch_plan` fresh, `resume` inside an epoch."""

    def __init__(self, urls: list[str], counts: list[int], batch_size: int, decoder: str):
        self.urls, self.counts, self.batch_size, self.decoder = urls, counts, batch_size, decoder
        self._whole: dict[tuple[int, int], bool] = {}

    def epoch_plan(self, seg: Segment, epoch: int) -> EpochPlan:
        return make_plan(self.counts, seg.world, seg.workers, self.batch_size, seg.seed, epoch, seg.shuffle)

    def resume(self, state: OrderState, now: Segment, done: int) -> Resumed:
        """Epoch `state.epoch` stopped after `done` batches per rank, going on with segment `now`."""
        segments = list(state.segments)
        plan = self.epoch_plan(segments[0], state.epoch)
        for k in range(1, len(segments)):  # the segments the earlier runs went through
            plan = self._left_plan(plan, segments[k - 1], k - 1, segments[k].start - segments[k - 1].start,
                                   state.epoch, segments[k])
        last = segments[-1]
        trained = done - last.start
        if trained >= plan.batches_per_rank or last.same_order(now):  # the segment goes on (or was finished)
            return Resumed(plan, segments, skip=trained)
        seg = Segment(now.world, now.workers, done, now.seed, now.shuffle, now.shuffle_buffer, now.buffer_bytes)
        left = self.left_pieces(plan, last, len(segments) - 1, trained, state.epoch)
        new = self._split(left, seg)
        return Resumed(new, segments + [seg], skip=0, left=sum(len(p) for p in left))

    def _left_plan(self, plan: EpochPlan, seg: Segment, index: int, trained: int, epoch: int,
                   nxt: Segment) -> EpochPlan:
        return self._split(self.left_pieces(plan, seg, index, trained, epoch), nxt)

    def _split(self, left: list[Piece], seg: Segment) -> EpochPlan:
        per_rank = -(-sum(len(p) for p in left) // (seg.world * self.batch_size))
        return split_stream(left, seg.world, seg.workers, self.batch_size, per_rank)

    def left_pieces(self, plan: EpochPlan, seg: Segment, index: int, trained: int, epoch: int) -> list[Piece]:
        """The samples of `plan` not emitted after `trained` batches per rank, as pieces in plan order."""
        out = []
        for rank, workers in enumerate(plan.workers):
            for w, wp in enumerate(workers):
                emitted = len(range(w, trained, seg.workers)) * self.batch_size  # worker w gives batches w, w+K, ...
                used = self.emitted(wp.pieces, seg, epoch, rank, w, index, emitted)
                for k, piece in enumerate(wp.pieces):
                    if k >= len(used):
                        out.append(piece)
                    elif len(used[k]) < len(piece):
                        mask = np.ones(len(piece), bool)
                        mask[used[k]] = False
                        keep = piece.indices()[mask]
                        out.append(Piece(piece.shard, int(keep[0]), int(keep[-1]) + 1, keep))
        return out

    def emitted(self, pieces: list[Piece], seg: Segment, epoch: int, rank: int, worker: int, index: int,
                count: int) -> list[np.ndarray]:
        """Per piece, the positions among the first `count` samples the worker emits (order.py)."""
        rng = worker_rng(seg.seed, epoch, rank, worker, index)
        return emitted_prefix([len(p) for p in pieces],
                              lambda k: piece_order(len(pieces[k]), rng, self.whole(pieces[k].shard, seg),
                                                    seg.shuffle, seg.shuffle_buffer), count)

    def emission(self, pieces: list[Piece], seg: Segment, epoch: int, rank: int, worker: int, index: int,
                 count: int) -> list[tuple[int, int]]:
        """The first `count` samples the worker emits, in order: (shard, sample index in the shard)."""
        out = []
        for piece, positions in zip(pieces, self.emitted(pieces, seg, epoch, rank, worker, index, count)):
            out += [(piece.shard, int(i)) for i in piece.indices()[positions]]
        return out

    def whole(self, shard: int, seg: Segment) -> bool:
        key = (shard, seg.buffer_bytes)
        if key not in self._whole:
            self._whole[key] = held_whole(self.urls[shard], self.decoder, seg.buffer_bytes)
        return self._whole[key]
