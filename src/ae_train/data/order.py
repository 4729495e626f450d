"""The order in which a worker emits the samples of its plan: computed from counts alone, no data read.

A worker reads its pieces (plan.py) one after another; inside a piece the samples are shuffled:
- a piece of a shard held whole in memory (the fast path: a local uncompressed `.npy` shard no larger
  than data.buffer_mb) is emitted in one random permutation;
- a streamed piece goes through a shuffle buffer of data.shuffle_buffer samples: the first S samples
  fill the buffer, then each arriving sample takes the place of a random one, which leaves; at the
  end the buffer leaves in a random order. Who leaves when depends only on the draws, so the order
  is computed up front (`buffer_order`) and the streamed reader follows it, holding at most S raw
  samples (a sample never leaves before it arrived).

The reader follows these orders and `resume.py` replays them: which samples a worker had emitted after
m batches is the first m x batch_size entries of its order, so an epoch stopped anywhere can be
continued over a different number of ranks or workers with every remaining sample exactly once.
Each piece draws from the worker's generator in plan order, so the orders are the same wherever they
are computed.
"""
from __future__ import annotations

import os

import numpy as np

from .urls import is_compressed, local_path


def worker_rng(seed: int, epoch: int, rank: int, worker: int, segment: int = 0) -> np.random.Generator:
    """The generator of one (rank, worker) plan in an epoch; `segment` > 0 after an elastic resume."""
    return np.random.default_rng([seed, epoch, rank, worker] + ([segment] if segment else []))


def held_whole(url: str, decoder: str, buffer_bytes: int) -> bool:
    """Whether the reader holds this shard whole (the fast path): local, uncompressed, `.npy`, small enough."""
    path = local_path(url)
    if decoder != "npy" or path is None or is_compressed(url):
        return False
    try:
        return os.path.getsize(path) <= buffer_bytes
    except OSError:
        return True  # the fast path's open names the error


def buffer_order(n: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Positions 0..n-1 in the order a shuffle buffer of `size` samples lets them out."""
    if n <= size:
        return rng.permutation(n)
    draws = rng.integers(0, size, n - size)  # one per sample arriving with the buffer full
    pool = list(range(size))
    out = np.empty(n, np.int64)
    for k, j in enumerate(draws.tolist()):
        out[k] = pool[j]
        pool[j] = size + k
    out[n - size:] = np.asarray(pool, np.int64)[rng.permutation(size)]
    return out


def piece_order(n: int, rng: np.random.Generator, whole: bool, shuffle: bool, buffer: int) -> np.ndarray:
    """Positions 0..n-1 of a piece's samples in emission order (draws from `rng` as the reader does)."""
    if not shuffle:
        return np.arange(n)
    if whole or buffer <= 1:
        return rng.permutation(n) if whole else np.arange(n)
    return buffer_order(n, rng, buffer)


def emitted_prefix(lengths: list[int], orders, count: int) -> list[np.ndarray]:
    """Per piece, the positions among the first `count` samples a worker emits (pieces of `lengths`
    samples, emitted whole one after another; `orders(k)` gives piece k's order, called in piece
    order so that its draws follow the reader's)."""
    out = []
    for k, n in enumerate(lengths):
        if count <= 0:
            break
        order = orders(k)
        out.append(order[:count] if count < n else order)
        count -= n
    return out
