"""Hand-over trial (issue 21): workers kept by the ring's own rounds vs by the DataLoader's `persistent_workers`.

    python bench/handover_trial.py [--rounds 5] [--short-shards 2] [--short-per-shard 2000] [--short-epochs 8]
                                   [--long-shards 8] [--long-per-shard 10000] [--long-epochs 2] [--dim 256]
                                   [--batch 256] [--workers 2] [--dir DIR]

Four ways through the real ShardBatches + EpochDataLoader, on the same shards (page cache), `--rounds`
times interleaved (the order reversed every other round), each on a fresh loader whose first epoch
(the fork) is not timed:

- ring, rounds: the batch ring's workers loop on a `go` per round inside the DataLoader's first fetch
  (`persistent_workers=False`, data/ring.py `SlotRing.rounds`);
- ring, persistent_workers: the DataLoader keeps the workers and resumes them at each `iter(loader)`
  (torch's `_ResumeIteration`); each worker's `__iter__` serves one epoch, the epoch and the batches to
  skip read from the ring's mapping (`PersistentRing` below: the trial's version, no `go` rounds);
- DataLoader, forked per epoch: data.ring_slots=0 as it is (`persistent_workers=False`);
- DataLoader, persistent_workers: data.ring_slots=0 with the workers kept, the epoch and the batches
  to skip in a small shared array (`PersistentDataLoader` below).

Every way must give the same batches: each epoch's checksum is compared across the ways of a round.

Per way: samples/s over `--short-epochs` short epochs (every epoch's start included), over
`--long-epochs` long epochs, the start latency of an epoch (`iter(loader)` to its first batch, median
over the short epochs) and of the epoch after one cut short after 3 batches (the ring abandons the
round). Prints min and median over the rounds and the ratio of the medians, persistent / the other.
Last, once per way: how long Lightning's fit-loop teardown (`CombinedLoader.reset`, which shuts down
the workers of a loader with `persistent_workers` through torch's private `_shutdown_workers`, before
the DataModule's `teardown`) takes right after an epoch cut short after 3 batches (max_steps reached
mid-epoch, an exception, a preemption).
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from ae_train import logs  # noqa: E402
from ae_train.data.datamodule import EpochDataLoader  # noqa: E402
from ae_train.data.handover import DataLoaderHandOver, RingHandOver  # noqa: E402
from ae_train.data.reader import ShardBatches  # noqa: E402
from ae_train.data.shards import count_shard  # noqa: E402
from pytorch_lightning.utilities.combined_loader import _shutdown_workers_and_reset_iterator  # noqa: E402
from data_path import cpu_name, make_shards  # noqa: E402

logs.set_tag("bench")

class PersistentRing(RingHandOver):
    """The ring without rounds: the DataLoader resumes its kept workers at each epoch, each worker's
    `__iter__` serves that one epoch, read from the ring's mapping (`_begin` wrote it before the resume)."""

    def epochs(self, worker: int, epoch: int, skip: int):
        ring = self.ring
        number, ring._pids[worker] = int(ring._round[0]), os.getpid()
        self._writer = ring.writer(worker)
        yield int(ring._round[1]), int(ring._round[2])
        ring._done[worker] = number  # idle: the rank may reset the ring (it waits for this after a cut-short epoch)

    def start(self, epoch: int, skip: int, own):
        fresh = self.inner is None
        it = super().start(epoch, skip, own)  # the ring reset for this epoch, the workers forked when fresh
        if not fresh:
            it.inner = self.inner = own()  # persistent_workers: _reset sends _ResumeIteration, waits for the acks
        return it


class PersistentDataLoader(DataLoaderHandOver):
    """The DataLoader's own hand-over with kept workers: the epoch and skip in shared memory."""

    def __init__(self, shape, dtype):
        super().__init__(shape, dtype)
        self.serving = multiprocessing.RawArray("q", 2)  # (epoch, batches to skip), made before the fork
        self.inner = None

    def epochs(self, worker: int, epoch: int, skip: int):
        yield int(self.serving[0]), int(self.serving[1])

    def start(self, epoch: int, skip: int, own):
        self.serving[:] = [epoch, skip]
        self.inner = own()
        return self.inner

    def close(self) -> None:
        if self.inner is not None:  # no public way to stop persistent workers now
            inner, self.inner = self.inner, None
            inner._shutdown_workers()


WAYS = {  # name: (ring_slots, persistent_workers)
    "ring, rounds": (None, False),
    "ring, persistent_workers": (None, True),
    "DataLoader, forked per epoch": (0, False),
    "DataLoader, persistent_workers": (0, True),
}
PAIRS = [("ring, persistent_workers", "ring, rounds"),
         ("DataLoader, persistent_workers", "DataLoader, forked per epoch")]


def _loader(urls, counts, dim, batch, workers, way, state):
    ring_slots, persistent = WAYS[way]
    ds = ShardBatches(urls, counts, "train_shards", "x.npy", dim, batch, workers, 0, 1, 0, True, 0)
    loader = EpochDataLoader(ds, lambda: tuple(state), ring_slots=ring_slots, batch_size=None, num_workers=workers,
                             pin_memory=torch.cuda.is_available(), persistent_workers=persistent,
                             multiprocessing_context="fork")
    if persistent:  # the trial's hand-overs, in place before the first fork
        old = ds.handover
        ds.handover = PersistentRing(old.name, *old._ring_args) if isinstance(old, RingHandOver) \
            else PersistentDataLoader(old.shape, old.dtype)
    return loader


def _epoch(loader, cut=None, sums=None) -> tuple[int, float]:
    """(samples, seconds from iter() to the first batch) of one epoch, left after `cut` batches if given;
    the epoch's checksum appended to `sums`."""
    t0, n, start, total = time.perf_counter(), 0, None, 0.0
    for i, x in enumerate(loader):
        if start is None:
            start = time.perf_counter() - t0
        n += len(x)
        total += float(x[0, 0])
        if cut is not None and i + 1 == cut:
            break
    if sums is not None:
        sums.append(total)
    return n, start


def short_epochs(urls, counts, a, way, sums) -> dict[str, float]:
    state = [0, 0]
    loader = _loader(urls, counts, a.dim, a.batch, a.workers, way, state)
    _epoch(loader, sums=sums)  # the fork and the first reads: not timed
    n, starts, t0 = 0, [], time.perf_counter()
    for e in range(1, a.short_epochs + 1):
        state[0] = e
        m, s = _epoch(loader, sums=sums)
        n, starts = n + m, starts + [s]
    rate = n / (time.perf_counter() - t0)
    state[0] += 1
    _epoch(loader, cut=3, sums=sums)
    state[:] = [state[0] + 1, 2]  # and a resumed one: 2 batches of it trained
    _, after_cut = _epoch(loader, sums=sums)
    loader.close()
    return {"short epochs, samples/s": rate, "epoch start, ms": 1e3 * statistics.median(starts),
            "start after a cut-short epoch, ms": 1e3 * after_cut}


def long_epochs(urls, counts, a, way, sums) -> dict[str, float]:
    state = [0, 0]
    loader = _loader(urls, counts, a.dim, a.batch, a.workers, way, state)
    _epoch(loader, sums=sums)
    n, t0 = 0, time.perf_counter()
    for e in range(1, a.long_epochs + 1):
        state[0] = e
        n += _epoch(loader, sums=sums)[0]
    rate = n / (time.perf_counter() - t0)
    loader.close()
    return {"long epochs, samples/s": rate}


def lightning_teardown(urls, counts, a, way) -> float:
    """Seconds Lightning's teardown takes to stop the loader's workers right after a cut-short epoch (with
    more batches per worker than ring slots, as the long shards have: the ring's workers then block)."""
    loader = _loader(urls, counts, a.dim, a.batch, a.workers, way, [0, 0])
    it = iter(loader)
    held = [next(it) for _ in range(3)]  # the ring's workers fill their free slots, then wait
    time.sleep(1)
    t0 = time.perf_counter()
    _shutdown_workers_and_reset_iterator(loader)  # what CombinedLoader.reset does for each loader
    dt = time.perf_counter() - t0
    del held
    loader.close()  # then the DataModule's teardown
    return dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("rounds", 5), ("short-shards", 2), ("short-per-shard", 2000), ("short-epochs", 8),
                          ("long-shards", 8), ("long-per-shard", 10000), ("long-epochs", 2), ("dim", 256),
                          ("batch", 256), ("workers", 2)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--dir", help="shard directory to (re)use instead of a temporary one")
    a = p.parse_args()
    with contextlib.nullcontext(a.dir) if a.dir else tempfile.TemporaryDirectory(prefix="ae_bench_") as d:
        trial(a, Path(d))
    return 0


def trial(a, root: Path) -> None:
    (root / "short").mkdir(parents=True, exist_ok=True)
    (root / "long").mkdir(parents=True, exist_ok=True)
    short = make_shards(root / "short", a.short_shards, a.short_per_shard, a.dim)
    long = make_shards(root / "long", a.long_shards, a.long_per_shard, a.dim)
    sc = [count_shard(u)["exts"]["x.npy"] for u in short]
    lc = [count_shard(u)["exts"]["x.npy"] for u in long]
    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}), load average {os.getloadavg()[0]:.2f} at the start, "
          f"torch {torch.__version__}")
    print(f"short: {len(short)} x {a.short_per_shard:,} float32[{a.dim}], {a.short_epochs} epochs; long: "
          f"{len(long)} x {a.long_per_shard:,}, {a.long_epochs} epochs; batch {a.batch}, {a.workers} workers, "
          f"{a.rounds} rounds interleaved")
    got: dict[str, dict[str, list[float]]] = {w: {} for w in WAYS}
    for r in range(a.rounds):
        order = list(WAYS) if r % 2 == 0 else list(WAYS)[::-1]
        sums: dict[str, list[float]] = {}
        for way in order:
            s = sums[way] = []
            for k, v in {**short_epochs(short, sc, a, way, s), **long_epochs(long, lc, a, way, s)}.items():
                got[way].setdefault(k, []).append(v)
        if len({tuple(v) for v in sums.values()}) != 1:
            raise SystemExit(f"the ways gave different batches in round {r + 1}: {sums}")
        print(f"round {r + 1} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    metrics = list(next(iter(got.values())))
    print(f"\n{'way':<32}" + "".join(f"{m:>36}" for m in metrics))
    print(f"{'':<32}" + "".join(f"{'min / median':>36}" for m in metrics))
    for way, rows in got.items():
        print(f"{way:<32}" + "".join(f"{f'{min(rows[m]):,.1f} / {statistics.median(rows[m]):,.1f}':>36}"
                                     for m in metrics))
    print("\nratios of the medians (persistent_workers / the other; samples/s: > 1 is faster, ms: < 1 is faster),"
          " then the per-round ratios (min..max)")
    for new, old in PAIRS:
        print(f"{new + ' / ' + old}:")
        for m in metrics:
            paired = [x / y for x, y in zip(got[new][m], got[old][m])]
            print(f"    {m:<36}{statistics.median(got[new][m]) / statistics.median(got[old][m]):6.2f}x"
                  f"   ({min(paired):.2f}..{max(paired):.2f})")
    print("\nLightning's fit-loop teardown right after an epoch cut short after 3 batches (once per way):")
    for way in WAYS:
        print(f"  {way:<32}{lightning_teardown(long, lc, a, way):6.2f} s", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    sys.exit(main())
