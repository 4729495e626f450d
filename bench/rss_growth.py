"""Memory of a training rank over epochs: RSS at the end of epochs 2 and 10, and the growth between.

    python bench/rss_growth.py [--epochs 10] [--shards 16] [--per-shard 2000] [--dim 64] [--workers 2]

Writes shards (ae-train's own writer) into a temporary directory and runs a real `ae-train fit`
(launcher + one CPU rank, debug logs on as in train_ae.sh, 2 DataLoader workers restarted every
epoch, validation and checkpoints every epoch). A callback in the rank (RssRecorder, loaded with
--trainer.callbacks) reads /proc/self/statm at the end of every epoch (after validation and the
checkpoint). The RSS is the rank's own process; the workers live one epoch each.
Target of issue 5: RSS grows < 5% from epoch 2 to epoch 10.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT_ENV = "AE_BENCH_RSS_OUT"

try:
    from pytorch_lightning.callbacks import Callback
except ImportError:  # the launcher side never needs it
    Callback = object


class RssRecorder(Callback):
    """Appends {"epoch": e, "rss": bytes} to the file named by $AE_BENCH_RSS_OUT at each epoch end."""

    def on_train_epoch_end(self, trainer, pl_module):
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open(os.environ[OUT_ENV], "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch + 1, "rss": rss}) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=2000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from ae_train.data.make import synthetic, write_shards

    with tempfile.TemporaryDirectory(prefix="ae_rss_") as tmp:
        data = Path(tmp) / "data"
        write_shards(str(data), "train", synthetic(a.shards * a.per_shard, a.dim, 6, 0), [a.per_shard] * a.shards)
        write_shards(str(data), "val", synthetic(2 * a.per_shard // 4, a.dim, 6, 1), [a.per_shard // 4] * 2)
        out = Path(tmp) / "rss.jsonl"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        env[OUT_ENV] = str(out)
        cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={tmp}/out", "--trainer.accelerator=cpu",
               "--trainer.devices=1", f"--trainer.max_epochs={a.epochs}", f"--data.train_shards={data}/train-*.tar",
               f"--data.val_shards={data}/val-*.tar", "--data.batch_size=64", f"--data.num_workers={a.workers}",
               f"--model.input_dim={a.dim}", "--debug=true", "--trainer.callbacks=rss_growth.RssRecorder"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        rss = {r["epoch"]: r["rss"] for r in map(json.loads, out.read_text().splitlines())}
    print(f"ae-train fit: 1 CPU rank, {a.epochs} epochs of {a.shards * a.per_shard:,} samples (dim {a.dim}, batch 64, "
          f"{a.workers} workers, debug logs), {time.perf_counter() - t0:.0f}s")
    print("RSS at the end of each epoch (MB): " + ", ".join(f"{e}: {v / 2**20:.1f}" for e, v in sorted(rss.items())))
    first, last = 2, max(rss)
    growth = rss[last] / rss[first] - 1
    print(f"RSS epoch {first}: {rss[first] / 2**20:.1f} MB, epoch {last}: {rss[last] / 2**20:.1f} MB, "
          f"growth {growth:+.2%} (target < 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
