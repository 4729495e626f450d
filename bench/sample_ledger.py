"""What the sample ledger (`--log.sample_ledger=true`) costs per training step, in one run.

    python bench/sample_ledger.py [--shards 8] [--per-shard 10000] [--dim 256] [--batch 256] [--workers 2]
                                  [--rounds 5] [--calls 20000] [--dir DIR]

Two parts, each measured with the ledger off and on, interleaved `--rounds` times:

- the data path: the training loader (ShardBatches + EpochDataLoader, shuffling as in training,
  `--workers` workers handing batches over through the batch ring), one epoch of a fresh loader over
  the same shards (written once with webdataset.ShardWriter); with the ledger on every batch carries
  its samples' keys (looked up in the shard, written into the ring slot's keys area, read by the rank);
- the rank's part: SampleLedger's hooks as Lightning calls them for each trained batch (a KeyedBatch
  of `--batch` keys of the shards' length, the line formatted and written to a real file in a
  temporary directory, flushed as in a run), `--calls` calls.

Prints the loader's samples/s both ways (median, min..max) and the cost per step: the loader's extra
time per batch plus the hooks' time per call, against the time per batch of the loader itself.
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
from ae_train.batch import KeyedBatch  # noqa: E402
from ae_train.callbacks.ledger import SampleLedger  # noqa: E402
from ae_train.data.datamodule import EpochDataLoader  # noqa: E402
from ae_train.data.reader import ShardBatches  # noqa: E402
from data_path import cpu_name, make_shards  # noqa: E402

logs.set_tag("bench")


def loader_epoch(urls: list[str], counts: list[int], dim: int, batch: int, workers: int, keys: bool) -> tuple[int, float]:
    ds = ShardBatches(urls, counts, "train_shards", "x.npy", dim, batch, workers, 0, 1, 0, True, 0, keys=keys)
    loader = EpochDataLoader(ds, lambda: (0, 0), batch_size=None, num_workers=workers, persistent_workers=False,
                             multiprocessing_context="fork" if workers > 0 else None)
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(b.x if keys else b)
        if keys:
            assert len(b.keys) == len(b.x)
    dt = time.perf_counter() - t0
    loader.close()
    return n, dt


def hook_cost(batch: int, calls: int, directory: Path) -> float:
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
    directory = Path(a.dir or tempfile.mkdtemp(prefix="ae_ledger_bench_"))
    directory.mkdir(parents=True, exist_ok=True)
    urls = make_shards(directory, a.shards, a.per_shard, a.dim)
    counts = [a.per_shard] * a.shards
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch.__version__}")
    print(f"data: {a.shards} shards x {a.per_shard} samples of {a.dim} float32 (keys like sample000000000), "
          f"batch {a.batch}, {a.workers} workers through the batch ring; {a.rounds} rounds")
    rates: dict[bool, list[float]] = {False: [], True: []}
    hooks: list[float] = []
    for r in range(a.rounds):
        for keys in ((False, True) if r % 2 == 0 else (True, False)):
            n, dt = loader_epoch(urls, counts, a.dim, a.batch, a.workers, keys)
            rates[keys].append(n / dt)
        hooks.append(hook_cost(a.batch, a.calls, directory))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    hook = statistics.median(hooks)
    per_batch_off = a.batch / off
    loader_extra = a.batch / on - per_batch_off
    print(f"\n{'loader, one epoch':<34}{'median samples/s':>18}{'min..max':>26}")
    for keys, label in ((False, "ledger off"), (True, "ledger on (keys in every batch)")):
        v = rates[keys]
        print(f"{label:<34}{statistics.median(v):>18,.0f}{min(v):>14,.0f}..{max(v):<12,.0f}")
    print(f"\nloader with keys: {on / off:.3f}x the samples/s without ({loader_extra * 1e6:+.0f} us per batch of "
          f"{a.batch}; {per_batch_off * 1e6:.0f} us per batch without)")
    print(f"SampleLedger hooks: {hook * 1e6:.1f} us per trained batch (median of {a.rounds} x {a.calls} calls, "
          f"min {min(hooks) * 1e6:.1f}, max {max(hooks) * 1e6:.1f}), a {a.batch}-key line written and flushed as in a run")
    total = loader_extra + hook
    print(f"cost per step with the ledger on: {total * 1e6:.0f} us "
          f"({total / per_batch_off * 100:.1f}% of the loader's own time per batch; a training step on a GPU "
          f"takes several ms, where this is the share that matters)")


if __name__ == "__main__":
    main()
