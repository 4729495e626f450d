"""What checkpoint.every_n_steps costs: the step that writes last.ckpt, and every other step.

    python bench/step_checkpoint.py [--steps 400] [--every 50] [--rounds 3] [--hidden 1024,512] [--dim 512] [--batch 64]

The real pieces of a run: ae_train.model.AutoEncoder (AdamW), LastCheckpoint and AtomicCheckpointIO
(write to last.ckpt.tmp<pid>, fsync, rename), on CPU, one device, batches from memory (the data path
is not what is measured). A timing callback after LastCheckpoint records each step from
`on_train_batch_start` to the end of the checkpoint callback's `on_train_batch_end`. Runs with
every_n_steps=0 (no step checkpoints) and every_n_steps=N alternate, `--rounds` times; printed: the
median step time of the run without step checkpoints, of the non-checkpoint steps of the runs with
them, and of the checkpoint steps, the checkpoint's size and its write rate, and the time
checkpoint_files.verify takes to check it before a resume. On a shared machine the step times of
whole runs drift by more than the callback could cost, so its own per-step cost on steps without a
save is also timed directly: its hook called 1,000,000 times. The first 20 steps of each run are not
counted (start-up).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Checkpoint  # noqa: E402

from ae_train.callbacks.last_checkpoint import LastCheckpoint  # noqa: E402
from ae_train.checkpoint_files import verify  # noqa: E402
from ae_train.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from ae_train.model import AutoEncoder  # noqa: E402

WARMUP = 20
warnings.filterwarnings("ignore")
for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(name).setLevel(logging.WARNING)  # no banners between the figures


class StepTimes(Checkpoint):  # a Checkpoint only so that Lightning keeps it after LastCheckpoint (it moves them last)
    def __init__(self) -> None:
        self.times: list[tuple[int, float]] = []  # (global step after the batch, seconds)
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append((trainer.global_step, time.perf_counter() - self._t0))


def run(steps: int, every: int, dim: int, hidden: list[int], batch: int, out: Path) -> list[tuple[int, float]]:
    data = torch.randn(steps * batch, dim)
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    model = AutoEncoder(dim, 32, hidden, "gelu", 1e-3, 0.01, 10, total_steps=steps)
    timing = StepTimes()
    callbacks = [LastCheckpoint(out, every), timing]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         plugins=[AtomicCheckpointIO()], default_root_dir=str(out))
    trainer.fit(model, loader)
    return timing.times[WARMUP:]


def hook_cost(every: int, calls: int = 1_000_000) -> float:
    """Seconds per LastCheckpoint.on_train_batch_end call on steps that do not save, called as
    Lightning calls it (global step rising, batch index within a long epoch)."""
    cb = LastCheckpoint(tempfile.gettempdir(), every, align=2)
    trainer = SimpleNamespace(global_step=0, num_training_batches=10**9)
    hook = cb.on_train_batch_end
    t0 = time.perf_counter()
    for i in range(calls):
        trainer.global_step = i * every + 1  # never a multiple: no save is ever due
        hook(trainer, None, None, None, i)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hidden", default="1024,512")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dir", help="where last.ckpt is written (default: a temporary directory)")
    a = p.parse_args()
    hidden = [int(h) for h in a.hidden.split(",")]
    out = Path(a.dir or tempfile.mkdtemp(prefix="ae_ckpt_bench_"))
    print(f"machine: {os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch.__version__}, "
          f"lightning {pl.__version__}; checkpoints to {out}")
    print(f"model: AutoEncoder {a.dim} -> {hidden} -> 32, AdamW; batch {a.batch}; {a.steps} steps per run, "
          f"every_n_steps={a.every}; {a.rounds} round(s)")
    plain, between, saving, sizes = [], [], [], []
    for r in range(a.rounds):
        for every in ((0, a.every) if r % 2 == 0 else (a.every, 0)):
            times = run(a.steps, every, a.dim, hidden, a.batch, out)
            if every == 0:
                plain += [t for _, t in times]
                continue
            between += [t for s, t in times if s % every]
            saving += [t for s, t in times if s % every == 0]
            sizes.append((out / "last.ckpt").stat().st_size)
    size_mb = statistics.median(sizes) / 2**20
    med = {name: statistics.median(v) * 1000 for name, v in
           (("plain", plain), ("between", between), ("saving", saving))}
    print(f"\ncheckpoint size: {size_mb:.1f} MB (weights and AdamW state)")
    print(f"{'steps':<48}{'n':>6}{'median ms':>12}{'min..max ms':>22}")
    for name, label, v in (("plain", "every_n_steps=0, all steps", plain),
                           ("between", f"every_n_steps={a.every}, steps without a save", between),
                           ("saving", f"every_n_steps={a.every}, steps that save last.ckpt", saving)):
        print(f"{label:<48}{len(v):>6}{med[name]:>12.1f}{min(v) * 1000:>11.1f}..{max(v) * 1000:<10.1f}")
    t0 = time.perf_counter()
    assert verify(out / "last.ckpt") is None
    t_verify = time.perf_counter() - t0
    extra = med["saving"] - med["between"]
    print(f"\nthe save adds {extra:.1f} ms to its step ({size_mb / (extra / 1000):.0f} MB/s); steps without a save: "
          f"{med['between'] / med['plain']:.3f}x the run without step checkpoints; amortized over {a.every} steps: "
          f"+{extra / a.every / med['plain'] * 100:.1f}% per step")
    per_call = hook_cost(a.every)
    print(f"LastCheckpoint's own cost on a step without a save: {per_call * 1e9:.0f} ns per step "
          f"({per_call / (med['plain'] / 1000) * 100:.4f}% of the median step above); 1,000,000 calls")
    print(f"verifying last.ckpt before a resume (every record's CRC, checkpoint_files.verify): {t_verify * 1000:.0f} ms "
          f"({size_mb / t_verify:.0f} MB/s)")


if __name__ == "__main__":
    main()
