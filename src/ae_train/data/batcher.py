"""Batches filled slot by slot: preallocated arrays (the hand-over's memory) filled with rows in blocks
or with members decoded one by one, handed on as (batch, keys) once full.
"""
from __future__ import annotations

import numpy as np

from .decode import SampleSpec, decode_into
from .screen import finite
from .tario import ShardError


class Batcher:
    """Fills preallocated batches slot by slot (rows in blocks, members one by one). Yields
    (batch, keys) pairs: keys is the list of the samples' keys with `keys`, else None. With `screen`
    (float data) a batch filled member by member is checked for NaN/inf as it completes (screen.py);
    the keys and shards of its rows are kept for naming a bad one."""

    def __init__(self, spec: SampleSpec, batch_size: int, new=None, times=None, keys: bool = False, screen=None,
                 seed: tuple[int, int] | None = None):
        self.spec, self.batch_size, self.times = spec, batch_size, times
        self.seed = seed  # (seed, epoch): with the sample key, draws each sample's augmentation (decode.py)
        self._new = new or (lambda: np.empty((batch_size, *spec.shape), spec.dtype))
        self.cur: np.ndarray | None = None  # taken when its first sample comes (a ring slot: only while filled)
        self.fill = 0
        self.ship, self.screen = keys, screen
        self.keys: list | None = [] if keys or screen else None  # keys of the samples in `cur`
        self.urls: list | None = [] if screen else None  # their shards
        self.url = ""  # the shard of the members being added

    def _full(self) -> tuple[np.ndarray, list[str] | None]:
        out, keys = self.cur, self.keys
        if self.screen is not None and not finite(out):
            self.screen(out, keys, self.urls)
        self.cur, self.fill = None, 0
        if keys is not None:
            self.keys = []
        if self.urls is not None:
            self.urls = []
        return out, keys if self.ship else None

    def add_rows(self, rows: np.ndarray, keys=None):
        """Copy rows (n, size) into batches (`keys`: a sequence of their keys, with `keys` on); yields
        each batch as it fills."""
        pos = 0
        while pos < len(rows):
            if self.cur is None:
                self.cur = self._new()
            take = min(self.batch_size - self.fill, len(rows) - pos)
            self.cur.reshape(self.batch_size, -1)[self.fill:self.fill + take] = rows[pos:pos + take]
            if self.keys is not None:
                self.keys.extend(keys[pos:pos + take] if keys is not None else [None] * take)
            if self.urls is not None:
                self.urls.extend([self.url] * take)
            self.fill += take
            pos += take
            if self.fill == self.batch_size:
                yield self._full()

    def add_member(self, key: str, data: bytes):
        if self.cur is None:
            self.cur = self._new()
        try:
            if self.times is None:
                decode_into(self.spec, data, self.cur[self.fill], key, self.seed)
            else:
                self.times.timed("decode", decode_into, self.spec, data, self.cur[self.fill], key, self.seed)
        except ShardError as e:
            raise ShardError(f"sample {key}: {e}") from None
        if self.keys is not None:
            self.keys.append(key)
        if self.urls is not None:
            self.urls.append(self.url)
        self.fill += 1
        if self.fill == self.batch_size:
            yield self._full()
