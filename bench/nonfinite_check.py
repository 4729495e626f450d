"""What the NaN/inf check of every float batch (data/screen.py) costs the data path, in one run.

    python bench/nonfinite_check.py [--shards 8] [--per-shard 10000] [--dim 256] [--batch 256] [--rounds 5] [--dir DIR]

The training loader (ShardBatches + EpochDataLoader, shuffling as in training) over the same shards
(written once with webdataset.ShardWriter, read from the page cache), one epoch of a fresh loader per
measure, with the check on (as training runs) and off, interleaved `--rounds` times: in one process,
with 2 workers through the batch ring, and on the streamed path (shards over data.buffer_mb). Prints
the median samples/s both ways and the ratio (issue 19: the check may cost at most 5%).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from ae_train import logs  # noqa: E402
from ae_train.data.datamodule import EpochDataLoader  # noqa: E402
from ae_train.data.reader import ShardBatches  # noqa: E402
from data_path import cpu_name, make_shards  # noqa: E402

logs.set_tag("bench")


def epoch(urls, counts, dim, batch, workers, screen, buffer_bytes) -> float:
    ds = ShardBatches(urls, counts, "train_shards", "x.npy", dim, batch, workers, 0, 1, 0, True, 0,
                      buffer_bytes=buffer_bytes, screen=screen)
    loader = EpochDataLoader(ds, lambda: (0, 0), batch_size=None, num_workers=workers, persistent_workers=False,
                             multiprocessing_context="fork" if workers > 0 else None)
    t0, n = time.perf_counter(), 0
    for x in loader:
        n += len(x)
    dt = time.perf_counter() - t0
    loader.close()
    return n / dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=10000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir")
    a = p.parse_args()
    directory = Path(a.dir or tempfile.mkdtemp(prefix="ae_screen_bench_"))
    directory.mkdir(parents=True, exist_ok=True)
    urls = make_shards(directory, a.shards, a.per_shard, a.dim)
    counts = [a.per_shard] * a.shards
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch.__version__}")
    print(f"data: {a.shards} shards x {a.per_shard} samples of {a.dim} float32, batch {a.batch}; {a.rounds} rounds, "
          "check on and off interleaved")
    setups = [("fast path, one process", 0, 256 << 20), ("fast path, 2 workers (ring)", 2, 256 << 20),
              ("streamed, 2 workers (ring)", 2, 0)]
    print(f"\n{'loader, one epoch':<30}{'check off':>14}{'check on':>14}{'on / off':>10}   (median samples/s; min..max on)")
    for label, workers, buffer_bytes in setups:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for r in range(a.rounds):
            for screen in ((False, True) if r % 2 == 0 else (True, False)):
                rates[screen].append(epoch(urls, counts, a.dim, a.batch, workers, screen, buffer_bytes))
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{label:<30}{off:>14,.0f}{on:>14,.0f}{on / off:>10.3f}   ({min(rates[True]):,.0f}..{max(rates[True]):,.0f})")


if __name__ == "__main__":
    main()
