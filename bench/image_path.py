"""The general (streamed) path on images: `.png` in `.tar.gz`, ours vs the plain webdataset pipeline.

    python bench/image_path.py [--shards 8] [--per-shard 2000] [--size 32] [--batch 256] [--workers 2]
                               [--rounds 3] [--dir DIR]

Writes gzip-compressed shards of `<key>.png` + `<key>.cls` (synthetic RGB images, `--size` pixels
square) into a temporary directory (or DIR, reused), then measures, `--rounds` times interleaved,
in one process and with `--workers` DataLoader workers:
- webdataset: `wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png").batched(B)`:
  the same decoder (Pillow, uint8 pixels) and the same batching into one array per batch;
- ours: the training path (ShardBatches + the DataModule's DataLoader): the streamed tar walk with
  gzip, each PNG decoded straight into its slot of a preallocated uint8 (B, C, H, W) batch.
Prints medians with their spread and the ratio against issue 9's target (ours >= 2x webdataset).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ae_train import logs  # noqa: E402
from ae_train.data.datamodule import EpochDataLoader  # noqa: E402
from ae_train.data.decode import SampleSpec  # noqa: E402
from ae_train.data.make import split_sizes, synthetic_image_samples, write_image_shards  # noqa: E402
from ae_train.data.reader import ShardBatches  # noqa: E402

logs.set_tag("bench")  # its DataLoader workers stamp their log records "bench Worker w/K"


def make(directory: Path, shards: int, per_shard: int, size: int) -> list[str]:
    urls = [str(directory / f"img-{i:06d}.tar.gz") for i in range(shards)]
    if not all(os.path.exists(u) for u in urls):
        write_image_shards(str(directory), "img", synthetic_image_samples(shards * per_shard, size, 3, 0),
                           split_sizes(shards * per_shard, per_shard))
    return urls


def plain_webdataset(urls: list[str], batch: int, workers: int) -> tuple[int, float]:
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png").batched(batch, partial=False)
    t0, n = time.perf_counter(), 0
    for (x,) in DataLoader(ds, batch_size=None, num_workers=workers):
        n += len(x)
    return n, time.perf_counter() - t0


def ours(urls: list[str], per_shard: int, size: int, batch: int, workers: int, epoch: int) -> tuple[int, float]:
    spec = SampleSpec((3, size, size), "uint8", "image")
    ds = ShardBatches(urls, [per_shard] * len(urls), "train_shards", "png", spec, batch, workers, 0, 1, 0, False, epoch)
    loader = EpochDataLoader(ds, lambda: (epoch, 0), batch_size=None, num_workers=workers,
                             pin_memory=torch.cuda.is_available(), persistent_workers=False,
                             multiprocessing_context="fork" if workers > 0 else None)
    t0, n = time.perf_counter(), 0
    for x in loader:
        n += len(x)
    return n, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=2000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", help="shard directory to (re)use instead of a temporary one")
    a = p.parse_args()
    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="ae_bench_img_")
    directory = Path(a.dir or tmp.name)
    directory.mkdir(parents=True, exist_ok=True)
    urls = make(directory, a.shards, a.per_shard, a.size)
    size = sum(os.path.getsize(u) for u in urls)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, webdataset {wds.__version__}")
    print(f"shards: {len(urls)} x {a.per_shard:,} samples of png {a.size}x{a.size} RGB + cls in .tar.gz, "
          f"{size / len(urls) / 1e6:.1f} MB each; batch {a.batch}; {a.workers} workers; {a.rounds} round(s)")
    methods = {
        "webdataset decode('rgb8').batched, one process": lambda r: plain_webdataset(urls, a.batch, 0),
        "ours (streamed, decode into uint8 batch), one process": lambda r: ours(urls, a.per_shard, a.size, a.batch, 0, r),
        f"webdataset decode('rgb8').batched, {a.workers} workers": lambda r: plain_webdataset(urls, a.batch, a.workers),
        f"ours (streamed, decode into uint8 batch), {a.workers} workers":
            lambda r: ours(urls, a.per_shard, a.size, a.batch, a.workers, r),
    }
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(a.rounds):
        for name, fn in methods.items():
            n, dt = fn(r)
            rates[name].append(n / dt)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{'method':<58} {'samples/s (median)':>19} {'min..max':>19}")
    for name, v in rates.items():
        print(f"{name:<58} {med[name]:>19,.0f} {f'{min(v):,.0f}..{max(v):,.0f}':>19}")
    names = list(methods)
    print("\nratios (medians):")
    print(f"  ours / webdataset, one process     {med[names[1]] / med[names[0]]:6.2f}x")
    ratio = med[names[3]] / med[names[2]]
    print(f"  ours / webdataset, {a.workers} workers      {ratio:6.2f}x   target >= 2x: {'met' if ratio >= 2 else 'NOT met'}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
