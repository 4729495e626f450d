"""StageTimes: where a reader's time goes, for `ae-train bench-data` (training passes none: no clock reads).

Given to ShardBatches (through datamodule.make_loader), it is filled by the reader itself at the
points where each stage runs, in the rank, in its read-ahead thread and in forked DataLoader workers
alike: the counters live in one shared array made before the fork, so every process adds to the
same numbers.

    read      file reads (most done by the read-ahead thread while the previous shard is batched);
              for streamed shards, the wait for the next raw sample (read, gunzip, tar walk)
    decode    tar index and .npy header checks (fast path); member decoding (streamed)
    bytes     bytes read from shard files (fast path)
    batches   time inside the worker's batch generator, all stages together
    read_wait the part of `read` the reader waited for (not hidden behind batching)
    slot_wait time a ring worker waited for the rank to free a slot (the rank's pace, not the loader's)
"""
from __future__ import annotations

import multiprocessing
import time

FIELDS = ("read", "decode", "bytes", "batches", "read_wait", "slot_wait")


class StageTimes:
    def __init__(self) -> None:
        self._values = multiprocessing.Array("d", len(FIELDS))  # shared with forked workers
        self._index = {name: i for i, name in enumerate(FIELDS)}

    def add(self, fields: str | tuple[str, ...], value: float) -> None:
        with self._values.get_lock():
            for f in (fields,) if isinstance(fields, str) else fields:
                self._values[self._index[f]] += value

    def timed(self, field: str | tuple[str, ...], fn, *args, **kwargs):
        """fn(*args, **kwargs), its wall time added to `field`."""
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(field, time.perf_counter() - t)

    def timed_iter(self, field: str | tuple[str, ...], items):
        """Yields from `items`, the time spent producing each item added to `field`."""
        it = iter(items)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.add(field, time.perf_counter() - t)
                return
            self.add(field, time.perf_counter() - t)
            yield item

    def values(self) -> dict[str, float]:
        with self._values.get_lock():
            return dict(zip(FIELDS, self._values[:]))
