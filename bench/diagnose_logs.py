"""Benchmark `ae-train diagnose` on synthetic logs: 8 ranks x 1,000,000 lines (about 1.1 GB).

    python bench/diagnose_logs.py [--ranks 8] [--lines 1000000] [--jobs N] [--keep DIR]

The mix follows docs/LOG_FORMAT.md as a debug run writes it: per shard an Opening and a Finished line
from one of 4 workers (~70% of the lines: the costlier path), a training step line every 8 batches
(~25%), validation steps (~6%), epoch markers, Processing/COMPLETED per worker and epoch, a few shard
errors. Rank 3's clock runs 12 minutes behind the others and its last shard stays open, so the verdict
path runs too. Target (issue 4): under 10 s on the 2-core dev machine. The files are timed right after
being written, so they come from the page cache; a cold read adds the disk's time for 1.1 GB.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ae_train.diagnose import diagnose_run  # noqa: E402
from ae_train.rundir import RunDir  # noqa: E402

TS = "20261129_050102"


def write_rank(path: Path, rank: int, world: int, lines: int, stop_early: bool, t0: datetime) -> int:
    """One debug log; returns the number of lines written. Built in ~1 MB chunks to stay quick."""
    K, n, t, buf, ep = 4, 0, t0, [], 0
    tag = f"Rank {rank}/{world}"

    def emit(level: str, who: str, msg: str) -> None:
        nonlocal n, t
        t += timedelta(milliseconds=7)
        buf.append(f"{t:%Y-%m-%d %H:%M:%S},{t.microsecond // 1000:03d} [{level}] [{who}] {msg}\n")
        n += 1

    limit = lines
    with open(path, "w", encoding="utf-8") as f:
        emit("INFO", tag, f"Debug log of rank {rank}/{world}: host=node{rank // 4} pid={1000 + rank} "
                          f"local_rank={rank % 4} node_rank={rank // 4} device=cuda:{rank % 4} run={TS}")
        shard, gstep = 0, 0
        while n < limit:
            emit("INFO", tag, f"========== EPOCH {ep} TRAINING START ==========")
            for w in range(K):
                wt = f"{tag} Worker {w}/{K}"
                emit("DEBUG", wt, f"Worker started pid={20000 + rank * 100 + w}")
                emit("INFO", wt, f"Processing 160/5120 files from train_shards (epoch {ep}, 32000 samples, 800 batches)")
            for b in range(3200):  # a shard every 5 batches (round robin over workers), a step line every 8
                if b % 5 == 0:
                    w = (b // 5) % K
                    url = f"/data/imagenet/train-{shard:06d}.tar"
                    emit("DEBUG", f"{tag} Worker {w}/{K}", f"Opening shard {url} (samples 0..200 of 200)")
                    if b % 2000 == 1000 and ep % 50 == 0:
                        emit("ERROR", f"{tag} Worker {w}/{K}", f"Error reading shard {url}: truncated tar header")
                    elif not (stop_early and n >= limit - 2):
                        emit("DEBUG", f"{tag} Worker {w}/{K}", f"Finished shard {url}: 200 samples in 0.052s")
                    shard += 1
                if b % 8 == 0:
                    gstep += 8
                    emit("DEBUG", tag, f"Training step {b}, loss=0.0987{b % 10} | Processed {b + 1} training batches "
                                       f"(epoch {ep}, global step {gstep}), 12000 samples/s, data wait 3.1%, "
                                       f"rss 812 MB, cuda 4012 MB")
                if n >= limit:
                    break
                if len(buf) > 8000:
                    f.write("".join(buf))
                    buf.clear()
            else:
                for w in range(K):
                    emit("INFO", f"{tag} Worker {w}/{K}",
                         f"COMPLETED iteration, total samples: 32000 (epoch {ep}, batches 800, shards 160, errors 0)")
                emit("INFO", tag, f"========== EPOCH {ep} TRAINING END ========== batches=3200 time=22.40s")
                emit("INFO", tag, f"========== EPOCH {ep} VALIDATION START ==========")
                for v in range(0, 400, 4):
                    emit("DEBUG", tag, f"Validation step {v}, loss=0.105000 (epoch {ep})")
                emit("INFO", tag, f"========== EPOCH {ep} VALIDATION END ========== batches=400 time=2.00s")
                ep += 1
            f.write("".join(buf))
            buf.clear()
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--jobs", type=int, help="processes for the scan (default: one per CPU; 1: sequential)")
    ap.add_argument("--keep", help="write the logs here and keep them (default: a temp dir, removed)")
    a = ap.parse_args()
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="ae_diag_bench_"))
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        t0 = datetime.now() - timedelta(seconds=a.lines * 0.007 + 60)  # 7 ms a line: the run ends a minute ago
        run = RunDir.of_logs(logs)
        total = sum(write_rank(run.debug_log(r, TS), r, a.ranks, a.lines, r == 3,
                               t0 - timedelta(minutes=12) * (r == 3)) for r in range(a.ranks))
        run.train_log(TS).write_text(f"{t0:%Y-%m-%d %H:%M:%S},000 [INFO] [Rank 0/{a.ranks}] Starting\n")
        size = sum(p.stat().st_size for p in logs.iterdir())
        print(f"generated {total:,} lines, {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        report = diagnose_run(logs, jobs=a.jobs)
        dt = time.perf_counter() - t
        print(f"diagnose_run: {dt:.2f}s total, {total / dt:,.0f} lines/s, {size / 1e6 / dt:.0f} MB/s")
        print(f"verdict: {report['findings'][0]['message'][:200] if report['findings'] else '-'}")
        return 0 if dt < 10 else 1
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
