"""Write WebDataset shards (per-sample `x.npy`) and their sample-count index.

Synthetic data is low-rank vectors plus noise (x = z @ W + 0.05 * noise, z of `rank` dims), so an
autoencoder with a latent of at least `rank` dims can learn to reconstruct it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import webdataset as wds

from .shards import write_index
from .tario import count_file

log = logging.getLogger(__name__)


def synthetic(num: int, dim: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).standard_normal((rank, dim)) / np.sqrt(rank)  # shared by all splits
    z = rng.standard_normal((num, rank))
    return (z @ basis + 0.05 * rng.standard_normal((num, dim))).astype(np.float32)


def write_shards(out_dir: str, prefix: str, data: np.ndarray, sizes: list[int], sample_key: str = "x.npy") -> list[str]:
    """One shard per entry of `sizes` (samples each), named `<prefix>-000000.tar`, ...; returns paths."""
    if sum(sizes) > len(data):
        raise ValueError(f"{sum(sizes)} samples requested, {len(data)} available")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for i, n in enumerate(sizes):
        path = os.path.join(out_dir, f"{prefix}-{i:06d}.tar")
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; make-shards never overwrites shards")
        with wds.TarWriter(path) as sink:
            for j in range(start, start + n):
                sink.write({"__key__": f"{prefix}{i:06d}_{j:09d}", sample_key: data[j]})
        paths.append(path)
        start += n
    write_index({p: count_file(p) for p in paths})
    return paths


def split_sizes(total: int, per_shard: int) -> list[int]:
    full, rest = divmod(total, per_shard)
    return [per_shard] * full + ([rest] if rest else [])
