"""Samples whose input holds NaN or inf: found in every float batch, named, replaced by repeats.

One non-finite input poisons the model: its loss, then through the gradient all-reduce every weight on
every rank, then every checkpoint. So each float batch is checked where a worker just filled it, in
one pass of `np.isfinite` (a dot product of the batch with itself, finite when every value is, was
measured against it in bench/hand_written.py: 1.16x alone, 0.96x-1.02x end to end, so the plain check
stays). Only a batch that fails is looked at row by row. A bad sample is left out: its row takes a
copy of a finite sample of the same batch (batch counts stay equal on every rank), a WARNING names
its key and shard, and it is counted for the epoch summary; data.max_shard_errors is not touched (one
bad sample is not a bad shard). uint8 images cannot hold either and are not checked.
"""
from __future__ import annotations

import logging

import numpy as np

from .. import logformat as lf
from .tario import ShardError

log = logging.getLogger(__name__)


def finite(batch: np.ndarray) -> bool:
    """Whether every value of a float batch is finite."""
    return bool(np.isfinite(batch).all())


def bad_rows(batch: np.ndarray) -> np.ndarray:
    """Indices of the rows (samples) of `batch` that hold a NaN or inf."""
    return np.flatnonzero(~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1))


def replace(batch: np.ndarray, bad: np.ndarray, name, counter, spare=None) -> list[tuple[int, int]]:
    """Give each bad row a copy of a finite row of the batch (or of `spare`, finite rows, when the batch
    has none); WARNING per bad sample, `name(i)` -> (key, shard) of row i. Returns (bad row, donor row)
    pairs (donor -1: a row of `spare`)."""
    good = np.setdiff1d(np.arange(len(batch)), bad)
    pairs = []
    for k, i in enumerate(bad.tolist()):
        key, shard = name(i)
        if len(good):
            donor = int(good[k % len(good)])
            batch[i] = batch[donor]
            donor_key = name(donor)[0]
        elif spare is not None and len(spare):
            donor = -1
            batch[i] = spare[k % len(spare)]
            donor_key = "a sample read before"
        else:
            raise ShardError(f"every sample of a batch holds NaN or inf (sample {key})")
        log.warning(lf.NONFINITE_SAMPLE.template, key, shard, donor_key)
        pairs.append((i, donor))
    with counter.get_lock():
        counter.value += len(pairs)
    return pairs
