"""Our sample path vs the plain WebDataset pipeline vs a raw file read, on the same shards, in one run.

    python bench/data_path.py [--shards 8] [--per-shard 10000] [--dim 256] [--batch 256] [--workers 2]
                              [--rounds 5] [--dir DIR]

Writes standard shards (webdataset.ShardWriter, one float32 `x.npy` per sample) into a temporary
directory (or DIR, reused if it already holds them), then measures, `--rounds` times interleaved:

- raw file read: `open(shard, "rb").read()` of every shard (samples/s = the samples those bytes hold);
- webdataset: `wds.WebDataset(urls, shardshuffle=False).decode().to_tuple("x.npy")` + DataLoader
  collate with batch_size, in one process and with `--workers` workers;
- ours: the training path (ShardBatches + the DataModule's DataLoader, shuffling as in training),
  in one process and with `--workers` workers (one epoch of a fresh loader: the workers' start
  included), the workers handing batches over through the batch ring (data/ring.py, the default)
  and through the DataLoader's own per-batch shared-memory segments (`ring_slots=0`, the path
  before issue 13): the two hand-overs of data/handover.py;
- ours with workers, after worker start: the same runs of the ring path, counted from the first
  batch to the last: without the workers' start (fork, first shard read) and shutdown;
- ours with workers, epochs 2-4 of a run: four epochs through one loader, as training reads them
  (the ring's workers are forked once and serve every epoch), timed from the second epoch's start;
- hand-over alone: `--workers` workers yielding ready-made batches of the same shape, so the cost of
  moving batches between processes, with no data work at all: the ceiling of any loader with that
  many workers on this machine, through the DataLoader's segments and through the ring (each batch
  copied into a slot, as the DataLoader copies it into a segment).

Every method reads every shard once per round from the page cache (the shards were just written or
read). Prints the median over the rounds with the spread (min..max), and the ratios against the
targets of issue 5 (ours >= 20x webdataset, ours >= 1/3 of the raw read) and issue 13 (with
workers: >= 20x webdataset with as many workers, >= 1/4 of the raw read).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ae_train import logs  # noqa: E402
from ae_train.data.datamodule import EpochDataLoader  # noqa: E402
from ae_train.data.reader import ShardBatches  # noqa: E402
from ae_train.data.handover import RingHandOver  # noqa: E402
from ae_train.data.shards import count_shard  # noqa: E402


logs.set_tag("bench")  # its DataLoader workers stamp their log records "bench Worker w/K"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_shards(directory: Path, shards: int, per_shard: int, dim: int) -> list[str]:
    urls = [str(directory / f"bench-{i:06d}.tar") for i in range(shards)]
    if all(os.path.exists(u) and count_shard(u)["exts"].get("x.npy") == per_shard for u in urls):
        return urls
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(directory / "bench-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(shards * per_shard):
            sink.write({"__key__": f"sample{i:09d}", "x.npy": rng.standard_normal(dim).astype(np.float32)})
    return urls


def raw_read(urls: list[str], samples: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    for url in urls:
        with open(url, "rb") as f:
            f.read()
    return samples, time.perf_counter() - t0


def plain_webdataset(urls: list[str], batch: int, workers: int) -> tuple[int, float]:
    ds = wds.WebDataset(urls, shardshuffle=False).decode().to_tuple("x.npy")
    t0, n = time.perf_counter(), 0
    for (x,) in DataLoader(ds, batch_size=batch, num_workers=workers):
        n += len(x)
    return n, time.perf_counter() - t0


def ours(urls: list[str], counts: list[int], dim: int, batch: int, workers: int, epoch: int,
         ring_slots: int | None = None) -> tuple[int, float]:
    ds = ShardBatches(urls, counts, "train_shards", "x.npy", dim, batch, workers, 0, 1, 0, True, epoch)
    loader = EpochDataLoader(ds, lambda: (epoch, 0), ring_slots=ring_slots, batch_size=None, num_workers=workers,
                             pin_memory=torch.cuda.is_available(), persistent_workers=False,
                             multiprocessing_context="fork" if workers > 0 else None)
    t0, n, first = time.perf_counter(), 0, None
    for x in loader:
        n += len(x)
        if first is None:
            first, n0 = time.perf_counter(), n
    last = time.perf_counter()
    loader.close()  # the ring's workers stop (the DataLoader's own stopped at the end of the epoch)
    STEADY.append((n - n0) / (last - first) if workers and last > first else 0.0)
    return n, time.perf_counter() - t0


def ours_epochs(urls: list[str], counts: list[int], dim: int, batch: int, workers: int, first: int,
                epochs: int = 4) -> tuple[int, float]:
    """`epochs` epochs through one loader, as training reads them (the workers serve every epoch),
    timed from the second epoch's start: what each epoch of a run costs after the workers' start."""
    epoch = [first]
    ds = ShardBatches(urls, counts, "train_shards", "x.npy", dim, batch, workers, 0, 1, 0, True, first)
    loader = EpochDataLoader(ds, lambda: (epoch[0], 0), batch_size=None, num_workers=workers,
                             pin_memory=torch.cuda.is_available(), persistent_workers=False,
                             multiprocessing_context="fork")
    n, t0 = 0, None
    for e in range(epochs):
        epoch[0] = first + e
        if e == 1:
            t0, n = time.perf_counter(), 0
        for x in loader:
            n += len(x)
    dt = time.perf_counter() - t0
    loader.close()
    return n, dt


STEADY: list[float] = []  # the last `ours` run's rate from its first batch to its last (no worker start)


class ReadyBatches(torch.utils.data.IterableDataset):
    """Batches made once and yielded again: what the DataLoader's hand-over from workers alone costs."""

    def __init__(self, batches: int, batch: int, dim: int):
        self.batches, self.batch, self.dim = batches, batch, dim

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info else (0, 1)
        x = torch.zeros(self.batch, self.dim)
        for _ in range(k, self.batches, n):
            yield x


class RingReadyBatches(ReadyBatches):
    """The same through the batch ring: each ready batch copied into a free slot."""

    def __init__(self, batches: int, batch: int, dim: int, handover: RingHandOver):
        super().__init__(batches, batch, dim)
        self.handover = handover

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        x = np.zeros((self.batch, self.dim), np.float32)
        for _ in self.handover.epochs(info.id, 0, 0):  # as the reader serves rounds
            yield from self.handover.send((x, None) for _ in range(info.id, self.batches, info.num_workers))


def ring_hand_over(total: int, dim: int, batch: int, workers: int) -> tuple[int, float]:
    handover = RingHandOver("bench", workers, 5, (batch, dim), np.float32)
    loader = DataLoader(RingReadyBatches(total // batch, batch, dim, handover), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork")
    t0, n = time.perf_counter(), 0
    for x in handover.start(0, 0, loader.__iter__):
        n += len(x)
    handover.close()  # as the DataLoader's own run below stops its workers at its end
    return n, time.perf_counter() - t0


def hand_over(total: int, dim: int, batch: int, workers: int) -> tuple[int, float]:
    loader = DataLoader(ReadyBatches(total // batch, batch, dim), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork")
    t0, n = time.perf_counter(), 0
    for x in loader:
        n += len(x)
    return n, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=10000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", help="shard directory to (re)use instead of a temporary one")
    a = p.parse_args()
    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="ae_bench_")
    directory = Path(a.dir or tmp.name)
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    urls = make_shards(directory, a.shards, a.per_shard, a.dim)
    counts = [count_shard(u)["exts"]["x.npy"] for u in urls]
    total, size = sum(counts), sum(os.path.getsize(u) for u in urls)
    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}), python "
          f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"webdataset {wds.__version__}")
    print(f"shards: {len(urls)} x {a.per_shard:,} samples of float32[{a.dim}] (x.npy, webdataset.ShardWriter), "
          f"{size / len(urls) / 1e6:.1f} MB each, {size / 1e6:.1f} MB in all (made in {time.perf_counter() - t0:.0f}s); "
          f"batch {a.batch}; {a.rounds} round(s)")
    methods = {
        "raw file read (f.read() per shard)": lambda r: raw_read(urls, total),
        "webdataset, one process": lambda r: plain_webdataset(urls, a.batch, 0),
        f"webdataset, {a.workers} workers": lambda r: plain_webdataset(urls, a.batch, a.workers),
        "ours, one process": lambda r: ours(urls, counts, a.dim, a.batch, 0, r),
        f"ours, {a.workers} workers": lambda r: ours(urls, counts, a.dim, a.batch, a.workers, r),
        f"ours, {a.workers} workers, after worker start": lambda r: (STEADY[-1], 1.0),
        f"ours, {a.workers} workers, epochs 2-4 of a run": lambda r: ours_epochs(urls, counts, a.dim, a.batch, a.workers, 4 * r),
        f"ours, {a.workers} workers, DataLoader hand-over": lambda r: ours(urls, counts, a.dim, a.batch, a.workers, r, 0),
        f"hand-over alone, {a.workers} workers, ring": lambda r: ring_hand_over(total, a.dim, a.batch, a.workers),
        f"hand-over alone, {a.workers} workers, DataLoader": lambda r: hand_over(total, a.dim, a.batch, a.workers),
    }
    raw_read(urls, total)  # warm-up: every shard in the page cache
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(a.rounds):
        for name, fn in methods.items():
            n, dt = fn(r)
            rates[name].append(n / dt)
    med = {k: statistics.median(v) for k, v in rates.items()}
    per_sample = size / total
    print(f"\n{'method':<50} {'samples/s (median)':>19} {'min..max':>23} {'MB/s':>8}")
    for name, v in rates.items():
        print(f"{name:<50} {med[name]:>19,.0f} {f'{min(v):,.0f}..{max(v):,.0f}':>23} {med[name] * per_sample / 1e6:>8,.0f}")
    raw = med["raw file read (f.read() per shard)"]
    w0, wk = med["webdataset, one process"], med[f"webdataset, {a.workers} workers"]
    o0, ok = med["ours, one process"], med[f"ours, {a.workers} workers"]
    print("\nratios (medians):")
    print(f"  ours one process / webdataset one process     {o0 / w0:8.1f}x   target >= 20x: {'met' if o0 / w0 >= 20 else 'NOT met'}")
    print(f"  ours {a.workers} workers / webdataset {a.workers} workers       {ok / wk:8.1f}x   target >= 20x: {'met' if ok / wk >= 20 else 'NOT met'}")
    print(f"  ours {a.workers} workers / webdataset one process       {ok / w0:8.1f}x")
    print(f"  ours one process / raw file read              {o0 / raw:8.2f}    target >= 0.33: {'met' if o0 / raw >= 1 / 3 else 'NOT met'}")
    print(f"  ours {a.workers} workers / raw file read                {ok / raw:8.2f}    target >= 0.25: {'met' if ok / raw >= 1 / 4 else 'NOT met'}")
    od = med[f"ours, {a.workers} workers, DataLoader hand-over"]
    print(f"  ours {a.workers} workers: ring / DataLoader hand-over   {ok / od:8.2f}x")
    ep = med[f"ours, {a.workers} workers, epochs 2-4 of a run"]
    print(f"  ours {a.workers} workers, epochs 2-4 of a run / raw read {ep / raw:7.2f}    target >= 0.25: "
          f"{'met' if ep / raw >= 1 / 4 else 'NOT met'} (webdataset {a.workers} workers: {ep / wk:.1f}x)")
    st = med[f"ours, {a.workers} workers, after worker start"]
    print(f"  ours {a.workers} workers after worker start / raw read  {st / raw:8.2f}    (webdataset {a.workers} workers: {st / wk:.1f}x)")
    hr, ho = med[f"hand-over alone, {a.workers} workers, ring"], med[f"hand-over alone, {a.workers} workers, DataLoader"]
    print(f"  hand-over alone: ring / DataLoader              {hr / ho:8.2f}x   (the ceilings for batches of "
          f"{a.batch} x {a.dim} from {a.workers} worker processes here)")
    print(f"  ours {a.workers} workers / hand-over alone, ring        {ok / hr:8.2f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
