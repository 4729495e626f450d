"""Where the seconds of a short `ae-train fit` go: the launcher's checks, the ranks' imports, training, exit.

    python bench/launch_overhead.py [--rounds 5] [--baseline-src DIR]

A default 2-rank CPU run over 4 tiny shards (1 epoch, 10 steps per rank), started as users start it
(`python -m ae_train fit`). Phases come from the run's own log lines (ms timestamps) and the bench's
clock around the process:
  launcher   process start -> `Starting training` (config, logs, shard checks, device resolution)
  ranks up   `Starting training` -> the first rank's `Debug log of rank` header (a rank's imports)
  run        that header -> the last `Training finished` line
  exit       the last `Training finished` -> the launcher process has exited (ranks' and launcher's exit)
With --baseline-src another checkout's `src` (e.g. a `git worktree` of an older commit) runs the same
runs, interleaved, and the ratios of the medians are printed: before/after measured in one run.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from ae_train.data.make import synthetic, write_shards  # noqa: E402

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[\w+\] \[[^\]]+\] (.*)$", re.M)
PHASES = ("launcher", "ranks up", "run", "exit", "total")


def _when(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def one_run(src: Path, shards: Path, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", "--trainer.accelerator=cpu",
           "--trainer.devices=2", "--model.input_dim=16", "--model.latent_dim=4", "--model.hidden_dims=32",
           f"--data.train_shards={shards}", "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=2",
           "--trainer.max_epochs=1"]
    env = dict(os.environ, PYTHONPATH=str(src))
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src.parent)
    t1 = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({src}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    lines = [(_when(s), msg) for p in (out / "logs").glob("*.log") for s, msg in STAMP.findall(p.read_text())]
    starting = min(t for t, m in lines if m.startswith("Starting training"))
    header = min(t for t, m in lines if m.startswith("Debug log of rank"))
    finished = max(t for t, m in lines if m.startswith("Training finished"))
    return {"launcher": starting - t0, "ranks up": header - starting, "run": finished - header,
            "exit": t1 - finished, "total": t1 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare with (run interleaved)")
    a = ap.parse_args()
    trees = {"this tree": ROOT / "src"}
    if a.baseline_src:
        trees["baseline"] = a.baseline_src.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_shards(str(shards), "train", synthetic(160, 16, 4, 0), [40] * 4)
        times: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for r in range(a.rounds):
            for name, src in trees.items():
                times[name].append(one_run(src, shards, Path(tmp) / f"out_{name.replace(' ', '_')}_{r}"))
    print(f"median of {a.rounds} runs, seconds (2 CPU ranks, 10 steps each)")
    print(f"{'':10s}" + "".join(f"{p:>10s}" for p in PHASES))
    med = {name: {p: statistics.median(t[p] for t in runs) for p in PHASES} for name, runs in times.items()}
    for name in trees:
        print(f"{name:10s}" + "".join(f"{med[name][p]:10.2f}" for p in PHASES))
    if a.baseline_src:
        print(f"{'ratio':10s}" + "".join(f"{med['this tree'][p] / med['baseline'][p]:10.2f}" for p in PHASES)
              + "   (this tree / baseline)")


if __name__ == "__main__":
    main()
