"""Peak memory of one data worker on large shards: the whole-shard fast path vs streaming.

    python bench/worker_memory.py [--gb 1.0] [--dim 1024] [--batch 256] [--dir DIR]

Writes one local `.npy` shard of about `--gb` GB (float32[dim] per sample) and its gzip-compressed
copy into DIR (or a temporary directory), then reads every sample of each, as one DataLoader
worker does (ShardBatches over the whole shard, shuffled as in training), in a fresh forked process
per case, and prints that process's peak RSS (ru_maxrss) and its growth over the process before
reading:
- fast path: data.buffer_mb above the shard size, the whole file in one buffer;
- streamed, plain tar: the default data.buffer_mb (256), below the shard size;
- streamed, .tar.gz: compressed shards always stream.
"""
from __future__ import annotations

import argparse
import gzip
import io
import multiprocessing
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from ae_train import logs  # noqa: E402
from ae_train.data.reader import DEFAULT_BUFFER_BYTES, ShardBatches  # noqa: E402

logs.set_tag("bench")  # its DataLoader workers stamp their log records "bench Worker w/K"


def make(path: Path, samples: int, dim: int) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(0)
    head = io.BytesIO()
    np.save(head, np.zeros(dim, np.float32))
    header = head.getvalue()[:-4 * dim]  # the .npy header, the same for every sample
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        block = rng.standard_normal((4096, dim)).astype(np.float32)
        for i in range(samples):
            data = header + block[i % 4096].tobytes()
            info = tarfile.TarInfo(f"s{i:09d}.x.npy")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _read_all(url: str, count: int, dim: int, batch: int, buffer_bytes: int, out) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds = ShardBatches([url], [count], "train_shards", "x.npy", dim, batch, 0, 0, 1, 0, True, 0,
                      buffer_bytes=buffer_bytes)
    t0, n = time.perf_counter(), 0
    for b in ds:
        n += len(b)
    out.put((before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, n, time.perf_counter() - t0))


def measure(url: str, count: int, dim: int, batch: int, buffer_bytes: int) -> tuple[float, float, int, float]:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_read_all, args=(url, count, dim, batch, buffer_bytes, q))
    p.start()
    before, peak, n, secs = q.get()
    p.join()
    return before / 1024, peak / 1024, n, secs  # MB (ru_maxrss is in KB on Linux)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dir")
    a = p.parse_args()
    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="ae_bench_mem_")
    d = Path(a.dir or tmp.name)
    d.mkdir(parents=True, exist_ok=True)
    per_sample = 512 + 128 + 4 * a.dim
    samples = int(a.gb * 1e9 / per_sample)
    plain, packed = d / "big-000000.tar", d / "big-000000.tar.gz"
    t0 = time.perf_counter()
    make(plain, samples, a.dim)
    if not packed.exists():
        with open(plain, "rb") as f, gzip.open(packed, "wb", compresslevel=1) as g:
            shutil.copyfileobj(f, g, 16 << 20)
    print(f"shard: {samples:,} samples of float32[{a.dim}], {plain.stat().st_size / 1e9:.2f} GB plain, "
          f"{packed.stat().st_size / 1e9:.2f} GB gzip (made in {time.perf_counter() - t0:.0f}s); batch {a.batch}")
    cases = [
        ("fast path (data.buffer_mb=2048: whole shard)", str(plain), 2048 << 20),
        (f"streamed plain tar (data.buffer_mb={DEFAULT_BUFFER_BYTES >> 20}, default)", str(plain), DEFAULT_BUFFER_BYTES),
        ("streamed .tar.gz", str(packed), DEFAULT_BUFFER_BYTES),
    ]
    print(f"\n{'case':<52} {'peak RSS MB':>12} {'growth MB':>10} {'samples':>10} {'samples/s':>10}")
    for name, url, buf in cases:
        before, peak, n, secs = measure(url, samples, a.dim, a.batch, buf)
        print(f"{name:<52} {peak:>12,.0f} {peak - before:>10,.0f} {n:>10,} {n / secs:>10,.0f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
