"""Hand-over: how the batches a worker builds reach its rank, two ways behind one interface.

The reader (reader.py) asks its hand-over which epochs to serve, where to build each batch and how to
send the epoch's batches; the rank's loader (EpochDataLoader, datamodule.py) asks it for each epoch's
iterator. The reader and the loader know nothing else of the way chosen:

- `DataLoaderHandOver`, the DataLoader's own (data.ring_slots=0, or no forked workers): a worker yields
  each batch as a tensor, which the DataLoader moves through a new shared-memory segment, a pickle and
  two queue hops; its workers are forked for each epoch and serve that one;
- `RingHandOver` (ring.py, the default with forked workers): a worker builds each batch straight into
  a reused shared-memory slot and the rank takes it as a tensor view; the workers are forked once and
  serve every epoch the rank starts.

Either way the rank takes batch i of an epoch's iterator from worker i % K, the DataLoader's order.
An epoch resumed after `skip` of its batches were trained goes on in the same data order: worker w
serves the plan of worker (w + skip) % K, less that plan's share of the `skip` batches (`serves`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..batch import KeyedBatch

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
