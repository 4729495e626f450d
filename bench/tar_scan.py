"""Does the vectorised tar scan (data/tarscan.py, tartemplate.py, tarlanes.py) earn its lines? In one run.

    python bench/tar_scan.py [--shards 8] [--per-shard 10000] [--dim 256] [--rounds 3] [--seconds 10] [--dir DIR]

The fast path reads a local `.npy` shard whole and finds its samples' members either with the
vectorised scan (`sample_table`: runs of equally laid out samples checked at once with numpy) or with
the plain walk every other path uses (tario's generic walk, one header at a time, grouped into
samples: what `sample_table` must equal). On the same shards (written with webdataset.ShardWriter, as
users write them; read from the page cache), `--rounds` times interleaved, it measures:

- the scan alone: seconds per shard, one process;
- end to end, as `ae-train bench-data` runs the training loader (one process and `data.num_workers`
  workers, through the ring), with the plain walk swapped in for `sample_table` in this process (the
  workers fork from it): samples/s of each.

Issue 21's rule: keep the vectorised scan only where it wins by at least 1.3x end to end.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from ae_train import benchdata  # noqa: E402
from ae_train.data import reader  # noqa: E402
from ae_train.data.tario import group_samples, members_of_buffer  # noqa: E402
from ae_train.data.tarscan import MemberTable, sample_table  # noqa: E402
from data_path import cpu_name, make_shards  # noqa: E402


def plain_table(buf: bytes, ext: str) -> MemberTable:
    """The members `sample_table` gives, found by the plain walk (tario, one header at a time)."""
    picked = [(key, parts[ext]) for key, parts in group_samples(members_of_buffer(buf)) if ext in parts]
    offsets = np.fromiter((m.offset for _, m in picked), np.int64, len(picked))
    sizes = np.fromiter((m.size for _, m in picked), np.int64, len(picked))
    return MemberTable(buf, offsets, sizes, lambda i: picked[i], keys_at=lambda pos: [picked[i][0] for i in pos])


def scan_seconds(urls: list[str], table) -> float:
    bufs = [open(u, "rb").read() for u in urls]
    t0 = time.perf_counter()
    for buf in bufs:
        table(buf, "x.npy")
    return (time.perf_counter() - t0) / len(bufs)


def bench_data(config: Path, seconds: float, extra: list[str] = ()) -> dict[str, float]:
    """`ae-train bench-data` in this process (its workers fork from it): samples/s per row."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        benchdata.main(["--config", str(config), f"--seconds={seconds}", *extra])
    rows = re.findall(r"^(one process|workers)\s+(\d+)\s+([\d,]+)\s", out.getvalue(), re.M)
    if not rows:
        raise SystemExit(f"no samples/s rows in bench-data's output:\n{out.getvalue()}")
    return {f"{name} ({workers})": float(rate.replace(",", "")) for name, workers, rate in rows}


def shards_and_config(prefix: str) -> tuple[argparse.Namespace, list[str], Path]:
    """The command line (this script's and hand_written.py's), the shards it asks for (made once in
    --dir) and a bench-data config over them; prints the machine and the data."""
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--per-shard", type=int, default=10000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir")
    a = p.parse_args()
    directory = Path(a.dir or tempfile.mkdtemp(prefix=prefix))
    directory.mkdir(parents=True, exist_ok=True)
    urls = make_shards(directory, a.shards, a.per_shard, a.dim)
    config = directory / "bench.yaml"
    config.write_text(f"data:\n  train_shards: {directory}/bench-{{000000..{a.shards - 1:06d}}}.tar\n  val_shards: ''\n"
                      f"  num_workers: {a.workers}\n")
    size = os.path.getsize(urls[0]) / 2**20
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"data: {a.shards} shards x {a.per_shard} samples of {a.dim} float32 ({size:.1f} MB each, "
          f"webdataset.ShardWriter), batch 256; {a.rounds} rounds interleaved")
    return a, urls, config


def main() -> None:
    a, urls, config = shards_and_config("ae_scan_bench_")
    scans: dict[str, list[float]] = {"vectorised": [], "plain walk": []}
    ends: dict[str, dict[str, list[float]]] = {"vectorised": {}, "plain walk": {}}
    for r in range(a.rounds):
        order = [("vectorised", sample_table), ("plain walk", plain_table)]
        for name, table in (order if r % 2 == 0 else order[::-1]):
            scans[name].append(scan_seconds(urls, table))
            reader.sample_table = table
            try:
                for row, rate in bench_data(config, a.seconds).items():
                    ends[name].setdefault(row, []).append(rate)
            finally:
                reader.sample_table = sample_table
    med = {k: statistics.median(v) for k, v in scans.items()}
    print(f"\nscan alone, seconds per shard: vectorised {med['vectorised'] * 1e3:.1f} ms, plain walk "
          f"{med['plain walk'] * 1e3:.1f} ms: {med['plain walk'] / med['vectorised']:.1f}x")
    print(f"\n{'bench-data row':<16}{'vectorised':>14}{'plain walk':>14}{'ratio':>8}   (median samples/s)")
    for row in ends["vectorised"]:
        v, w = statistics.median(ends["vectorised"][row]), statistics.median(ends["plain walk"][row])
        print(f"{row:<16}{v:>14,.0f}{w:>14,.0f}{v / w:>8.2f}x")


if __name__ == "__main__":
    main()
