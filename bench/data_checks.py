"""What the sample ledger and the NaN/inf check cost the training data path, in one run.

    python bench/data_checks.py [--shards 8] [--per-shard 10000] [--dim 256] [--batch 256] [--workers 2]
                                [--rounds 5] [--calls 20000] [--dir DIR]

The training loader (ShardBatches + EpochDataLoader, shuffling as in training) over the same shards
(written once with webdataset.ShardWriter, read from the page cache), one epoch of a fresh loader per
measure, interleaved `--rounds` times:

- the NaN/inf check of every float batch (data/screen.py; issue 19: at most 5% of the samples/s), on
  and off: the fast path in one process, the fast path with `--workers` workers through the batch
  ring, and the streamed path (shards over data.buffer_mb) with workers;
- the sample ledger (`--log.sample_ledger=true`, issue 18), off and on: the loader with `--workers`
  workers through the ring, every batch then carrying its samples' keys (looked up in the shard,
  written into the ring slot's keys area, read by the rank); and the rank's part, SampleLedger's hooks
  as Lightning calls them per trained batch (a line of `--batch` keys written to a real file, flushed
  as in a run), `--calls` calls.

Prints medians (min..max) and the ratios; for the ledger, its cost per training step.
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
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from ae_train import logs  # noqa: E402
from ae_train.batch import KeyedBatch, samples_of  # noqa: E402
from ae_train.callbacks.ledger import SampleLedger  # noqa: E402
from ae_train.data.datamodule import EpochDataLoader  # noqa: E402
from ae_train.data.reader import ShardBatches  # noqa: E402
from data_path import cpu_name, make_shards  # noqa: E402

logs.set_tag("bench")


def epoch(urls, counts, dim, batch, workers, buffer_bytes, screen=True, keys=False) -> float:
    """Samples/s of one epoch of a fresh training loader."""
    ds = ShardBatches(urls, counts, "train_shards", "x.npy", dim, batch, workers, 0, 1, 0, True, 0,
                      buffer_bytes=buffer_bytes, screen=screen, keys=keys)
    loader = EpochDataLoader(ds, lambda: (0, 0), batch_size=None, num_workers=workers, persistent_workers=False,
                             multiprocessing_context="fork" if workers > 0 else None)
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(samples_of(b))
    dt = time.perf_counter() - t0
    loader.close()
    return n / dt


def hook_seconds(batch: int, calls: int, directory: Path) -> float:
    """Seconds per trained batch of SampleLedger's hooks (start and end of the batch)."""
    ledger = SampleLedger(directory / "samples_rank0_bench.tsv")
    trainer = SimpleNamespace(global_step=0, current_epoch=0, datamodule=SimpleNamespace(keys=True))
    ledger.on_train_start(trainer, None)
    b = KeyedBatch(torch.empty(batch, 1), [f"sample{i:09d}" for i in range(batch)])
    start, end = ledger.on_train_batch_start, ledger.on_train_batch_end
    t0 = time.perf_counter()
    for i in range(calls):
        trainer.global_step = i
        start(trainer, None, b, i)
        end(trainer, None, None, b, i)
    ledger.on_train_epoch_end(trainer, None)  # the flush a run makes at the epoch end
    dt = time.perf_counter() - t0
    ledger.teardown(trainer, None, "fit")
    return dt / calls


def paired(rounds: int, measure, a, b) -> tuple[list[float], list[float]]:
    """`measure(a)` and `measure(b)` `rounds` times, alternating which goes first."""
    out: dict = {a: [], b: []}
    for r in range(rounds):
        for x in ((a, b) if r % 2 == 0 else (b, a)):
            out[x].append(measure(x))
    return out[a], out[b]


def line(label: str, off: list[float], on: list[float], names=("off", "on")) -> None:
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"{label:<34}{names[0]} {m_off:>10,.0f}  {names[1]} {m_on:>10,.0f} ({min(on):,.0f}..{max(on):,.0f})  "
          f"{names[1]}/{names[0]} {m_on / m_off:.3f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=10000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--dir")
    a = p.parse_args()
    directory = Path(a.dir or tempfile.mkdtemp(prefix="ae_checks_bench_"))
    directory.mkdir(parents=True, exist_ok=True)
    urls = make_shards(directory, a.shards, a.per_shard, a.dim)
    counts, whole = [a.per_shard] * a.shards, 256 << 20
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch.__version__}")
    print(f"data: {a.shards} shards x {a.per_shard} samples of {a.dim} float32 (webdataset.ShardWriter), batch "
          f"{a.batch}; {a.rounds} rounds, interleaved; samples/s of one epoch of a fresh loader (median, min..max)\n")
    print("NaN/inf check (data/screen.py), check off vs on:")
    for label, workers, buffer_bytes in (("fast path, one process", 0, whole),
                                         (f"fast path, {a.workers} workers (ring)", a.workers, whole),
                                         (f"streamed, {a.workers} workers (ring)", a.workers, 0)):
        off, on = paired(a.rounds, lambda s: epoch(urls, counts, a.dim, a.batch, workers, buffer_bytes, screen=s),
                         False, True)
        line("  " + label, off, on)
    print("\nsample ledger, off vs on:")
    off, on = paired(a.rounds, lambda k: epoch(urls, counts, a.dim, a.batch, a.workers, whole, keys=k), False, True)
    line(f"  loader, {a.workers} workers (ring)", off, on)
    hooks = [hook_seconds(a.batch, a.calls, directory) for _ in range(a.rounds)]
    per_batch = a.batch / statistics.median(off)
    extra = a.batch / statistics.median(on) - per_batch
    hook = statistics.median(hooks)
    print(f"  SampleLedger's hooks: {hook * 1e6:.1f} us per trained batch (median of {a.rounds} x {a.calls:,} calls; "
          f"min {min(hooks) * 1e6:.1f}, max {max(hooks) * 1e6:.1f})")
    print(f"  per training step with the ledger on: {(extra + hook) * 1e6:.0f} us (the loader's part {extra * 1e6:+.0f} "
          f"us, spread over its workers; the rank's {hook * 1e6:.0f} us); the loader's own time per batch "
          f"{per_batch * 1e6:.0f} us")


if __name__ == "__main__":
    main()
