"""Hand-over: how the batches a worker builds reach its rank, two ways behind one interface.

The reader (reader.py) asks its hand-over which epochs to serve, where to build each batch and how to
send the epoch's batches; the rank's loader (EpochDataLoader, datamodule.py) asks it for each epoch's
iterator. The reader and the loader know nothing else of the way chosen:

- `DataLoaderHandOver`, the DataLoader's own (data.ring_slots=0, or no forked workers): a worker yields
  each batch as a tensor, which the DataLoader moves through a new shared-memory segment, a pickle and
  two queue hops; its workers are forked for each epoch and serve that one;
- `RingHandOver`, the batch ring's (ring.py; the default with forked workers): a worker builds each
  batch straight into a reused shared-memory slot and the rank takes it as a tensor view; the workers
  are forked once and serve every epoch the rank starts, in rounds inside the DataLoader's first fetch
  (ring.py says why rounds and not `persistent_workers`).

Either way the rank takes batch i of an epoch's iterator from worker i % K, the DataLoader's order.
An epoch resumed after `skip` of its batches were trained goes on in the same data order: worker w
serves the plan of worker (w + skip) % K, less that plan's share of the `skip` batches (`serves`).
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .. import logformat as lf
from ..batch import KeyedBatch
from .ring import RingIterator, SlotRing, SlotWriter

log = logging.getLogger(__name__)

Batches = Iterable[tuple[np.ndarray, "list[str] | None"]]  # (batch, its samples' keys or None)


def serves(worker: int, workers: int, skip: int) -> tuple[int, int]:
    """(plan worker, batches of its plan to skip) of DataLoader worker `worker` of `workers` in an epoch
    resumed after `skip` batches: the rank's batch i comes from worker i % K and is epoch batch skip + i,
    which plan worker (skip + i) % K made."""
    plan = (worker + skip) % workers
    return plan, len(range(plan, skip, workers))


class HandOver:
    """The interface. A worker's side: `epochs`, then per batch `take` or `gatherer` (where it is
    built) and `drop` (built, not sent), and `send` (what the dataset's iterator yields). The rank's
    side: `start` (an epoch's iterator), `close` (workers that outlive an epoch stop)."""

    waited = 0.0  # seconds a worker waited for memory to build in (the rank's pace, not the loader's)

    def epochs(self, worker: int, epoch: int, skip: int) -> Iterator[tuple[int, int]]:
        """(epoch, batches of it already trained) of each epoch worker `worker` serves; `epoch` and
        `skip` are the rank's when this process was forked (or is the rank)."""
        raise NotImplementedError

    def take(self) -> np.ndarray:
        """Memory (B, *shape) to build the next batch in."""
        raise NotImplementedError

    def gatherer(self, rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A function giving the batch of `rows[index]` (one copy), for the rows of one piece."""
        raise NotImplementedError

    def drop(self, batch: np.ndarray) -> None:
        """A batch taken or gathered and not sent (skipped after a resume)."""

    def send(self, batches: Batches) -> Iterator:
        """Sends one epoch's batches; what the dataset's `__iter__` yields meanwhile."""
        raise NotImplementedError

    def start(self, epoch: int, skip: int, own: Callable[[], Iterator]) -> Iterator:
        """In the rank: the iterator of an epoch `skip` batches of which are trained; `own()` makes the
        DataLoader's own iterator (forking its workers when it has any)."""
        raise NotImplementedError

    def close(self) -> None:
        """In the rank: workers that serve every epoch stop (idle, or leaving the epoch under way)."""


class DataLoaderHandOver(HandOver):
    """The DataLoader's own way: batches yielded as tensors (with keys: KeyedBatch)."""

    def __init__(self, shape: tuple[int, ...], dtype):
        self.shape, self.dtype = shape, dtype

    def epochs(self, worker: int, epoch: int, skip: int) -> Iterator[tuple[int, int]]:
        yield epoch, skip  # forked (or called) for this one

    def take(self) -> np.ndarray:
        return np.empty(self.shape, self.dtype)

    def gatherer(self, rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda index: rows[index].reshape(self.shape)

    def send(self, batches: Batches) -> Iterator:
        for batch, keys in batches:
            yield torch.from_numpy(batch) if keys is None else KeyedBatch(torch.from_numpy(batch), keys)

    def start(self, epoch: int, skip: int, own: Callable[[], Iterator]) -> Iterator:
        return own()


class RingHandOver(HandOver):
    """The batch ring's way (ring.py): the ring is made at the first epoch, before the first fork; the
    DataLoader's first iterator forks the workers, which serve every round the rank starts until `close`."""

    def __init__(self, name: str, workers: int, slots: int, shape: tuple[int, ...], dtype, pin: bool = False,
                 key_bytes: int = 0):
        self.name, self._ring_args = name, (workers, slots, shape, dtype, pin, key_bytes)
        self.ring: SlotRing | None = None
        self.inner = None  # the DataLoader iterator whose workers serve the rounds (None: no workers)
        self._writer: SlotWriter | None = None  # in a worker: its side of the round under way

    # ---- a worker's side ----
    def epochs(self, worker: int, epoch: int, skip: int):
        for epoch, skip in self.ring.rounds(worker):  # every round in the DataLoader's first fetch
            self._writer = self.ring.writer(worker)
            yield epoch, skip

    @property
    def waited(self) -> float:
        return self._writer.waited if self._writer is not None else 0.0

    def take(self) -> np.ndarray:
        return self._writer.take()

    def gatherer(self, rows: np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rows is a read-only view of the shard buffer: only read
            src = torch.from_numpy(rows)

        def gather(index: np.ndarray) -> np.ndarray:
            out = self._writer.take()
            # Straight into the slot by torch (np.take into `out` is 100x slower on these strided rows).
            torch.index_select(src, 0, torch.from_numpy(index), out=torch.from_numpy(out).view(len(index), -1))
            return out
        return gather

    def drop(self, batch: np.ndarray) -> None:
        self._writer.drop(batch)

    def send(self, batches):
        self._writer.feed(batches)
        yield from ()  # the batches went through the slots; the DataLoader's queue carries nothing

    # ---- the rank's side ----
    def start(self, epoch: int, skip: int, own) -> RingIterator:
        if self.ring is None:
            self.ring = ring = SlotRing(*self._ring_args)
            log.debug(lf.RING_MADE.template, self.name, ring.workers, ring.slots, ring.slot_bytes, ring.nbytes / 2**20,
                      ", pinned" if ring.pinned else "")
        return RingIterator(self, own, epoch, skip)

    def close(self) -> None:
        if self.inner is not None:
            inner, self.inner = self.inner, None
            self.ring.stop_workers(inner)
