"""What DebugCallback costs: training steps/s with debug=true, debug=false and no DebugCallback.

    python bench/debug_overhead.py [--steps 1000] [--rounds 20] [--train-every 500] [--batch 256]

A tiny MLP autoencoder (ae_train.model.AutoEncoder, 64 -> 128 -> 64 -> 8) on CPU, one device
(strategy auto), batches from memory: the step is about as short as a training step gets, so the
callback's per-step work weighs as much as it ever will. Debug runs log to a file at DEBUG level,
as a debug-mode rank does. Each run trains `--steps` steps; steps/s is timed from step 100 to the last
step (start-up excluded) by a timing callback present in every run. The three setups run
interleaved (the order alternating), `--rounds` times; printed: the median steps/s of each with its
spread, and per round the ratio to the run without DebugCallback (so slow drifts of the machine
cancel), median and range. On a shared machine one run's noise can exceed 1%, so a second measure
follows: the callback's own per-step cost, its five per-step hooks (batch start, before and after
backward, the optimizer step's post-hook, batch end: the time split's cut points) called 100,000
times in Lightning's order (a progress line every train_every steps, written to the log file),
against the measured time of a training step.
Target of issue 5: debug=true costs <= 1% steps/s at the default interval (train_every=500).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from ae_train.callbacks.debug import DebugCallback  # noqa: E402
from ae_train.model import AutoEncoder  # noqa: E402

WARMUP = 100
warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, data: torch.Tensor, batch: int, steps: int):
        self.data, self.batch, self.steps = data, batch, steps

    def __iter__(self):
        n = len(self.data) // self.batch
        for i in range(self.steps):
            k = i % n
            yield self.data[k * self.batch:(k + 1) * self.batch]

    def __len__(self) -> int:
        return self.steps


class StepClock(Callback):
    def __init__(self):
        self.t_start = self.t_end = 0.0
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == WARMUP:
            self.t_start = time.perf_counter()
        elif batch_idx > WARMUP:
            self.t_end, self.steps = time.perf_counter(), batch_idx - WARMUP


def _log_to(log_file: str, level: int) -> logging.Handler:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def run(setup: str, data: torch.Tensor, steps: int, batch: int, train_every: int, log_file: str) -> float:
    root = logging.getLogger()
    handler = _log_to(log_file, logging.DEBUG if setup == "debug=true" else logging.INFO)
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    if setup != "no DebugCallback":
        callbacks.append(DebugCallback(train_every=train_every, debug=setup == "debug=true"))
    pl.seed_everything(0, verbose=False)
    model = AutoEncoder(64, 8, [128, 64], total_steps=steps)
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="auto", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks, limit_val_batches=0, num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(Batches(data, batch, steps), batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    root.removeHandler(handler)
    handler.close()
    return clock.steps / (clock.t_end - clock.t_start)


def hook_cost(debug: bool, train_every: int, batch: torch.Tensor, log_file: str, calls: int = 100_000) -> float:
    """Seconds per step of DebugCallback's per-step hooks, called in the order Lightning calls them."""
    from types import SimpleNamespace

    handler = _log_to(log_file, logging.DEBUG if debug else logging.INFO)
    cb = DebugCallback(train_every=train_every, debug=debug)
    trainer = SimpleNamespace(current_epoch=0, global_step=0, num_training_batches=10 ** 9, sanity_checking=False)
    outputs = {"loss": torch.tensor(0.5)}
    cb._start_training(trainer, "")
    loss = outputs["loss"]
    t0 = time.perf_counter()
    for i in range(calls):
        cb.on_train_batch_start(trainer, None, batch, i)
        cb.on_before_backward(trainer, None, loss)
        cb.on_after_backward(trainer, None)
        cb._after_step(None, (), {})
        cb.on_train_batch_end(trainer, None, outputs, batch, i)
    dt = time.perf_counter() - t0
    logging.getLogger().removeHandler(handler)
    handler.close()
    return dt / calls


def split_cost(calls: int = 100_000) -> float:
    """Seconds per step of the time split alone: its five cut points (StepSplit.mark, host clock)."""
    from ae_train.callbacks.step_split import BACKWARD, DATA, FORWARD, OPTIMIZER, OTHER, StepSplit

    split = StepSplit(cuda=False)
    split.start()
    mark = split.mark
    t0 = time.perf_counter()
    for _ in range(calls):
        mark(DATA)
        mark(FORWARD)
        mark(BACKWARD)
        mark(OPTIMIZER)
        mark(OTHER)
    return (time.perf_counter() - t0) / calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--train-every", type=int, default=500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                   help="pin the process to this CPU (-1: no pinning); default the last one")
    a = p.parse_args()
    torch.set_num_threads(1)  # steadier timings; the same for every setup
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})
    data = torch.randn(64 * a.batch, 64)
    setups = ["no DebugCallback", "debug=false", "debug=true"]
    rates: dict[str, list[float]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp:
        log_file = os.path.join(tmp, "debug.log")
        run("debug=true", data, WARMUP + 50, a.batch, a.train_every, log_file)  # warm-up: imports, allocator
        for r in range(a.rounds):
            order = setups if r % 2 == 0 else setups[::-1]  # alternate the order within a round
            for s in order:
                rates[s].append(run(s, data, a.steps, a.batch, a.train_every, log_file))
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{s} {rates[s][-1]:,.1f}" for s in setups), flush=True)
        run("debug=true", data, a.steps, a.batch, a.train_every, log_file)
        lines = sum(1 for line in open(log_file) if "Training step" in line)
        per_step = {d: hook_cost(d, a.train_every, data[:a.batch], log_file) for d in (False, True)}
        per_step_split = split_cost()
    print(f"\n{a.rounds} rounds x {a.steps} steps per setup (timed from step {WARMUP}), batch {a.batch}, "
          f"train_every={a.train_every}, torch threads 1, pinned to CPU {a.cpu} of {os.cpu_count()}; "
          f"{lines} progress lines in a debug=true run's log")
    print(f"{'setup':<18} {'steps/s median':>15} {'min..max':>18} {'vs none: median ratio':>22} {'range':>17}")
    base = rates["no DebugCallback"]
    for s in setups:
        ratios = [x / b for x, b in zip(rates[s], base)]
        print(f"{s:<18} {statistics.median(rates[s]):>15,.1f} {f'{min(rates[s]):,.1f}..{max(rates[s]):,.1f}':>18} "
              f"{statistics.median(ratios):>22.4f} {f'{min(ratios):.4f}..{max(ratios):.4f}':>17}")
    cost = 1 - statistics.median([x / b for x, b in zip(rates["debug=true"], base)])
    spread = statistics.median(abs(x / y - 1) for x, y in zip(base[1:], base[:-1])) if len(base) > 1 else float("nan")
    print(f"\nend to end: debug=true costs {cost:+.2%} steps/s against no DebugCallback (median of per-round "
          f"ratios; target <= 1%); round-to-round noise of the baseline itself: {spread:.2%} (median |change|)")
    step = 1 / statistics.median(base)
    for d in (False, True):
        print(f"hooks alone: debug={str(d).lower()}: {per_step[d] * 1e6:.2f} us per step = "
              f"{per_step[d] / step:.3%} of a {step * 1e3:.2f} ms training step (100,000 calls; target <= 1%)")
    print(f"of which the time split (5 cut points): {per_step_split * 1e6:.2f} us per step = "
          f"{per_step_split / step:.3%} of the step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
