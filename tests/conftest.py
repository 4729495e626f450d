"""Shared fixtures: real tar shards on disk and real `ae-train fit` runs as subprocesses.

Lightning re-runs sys.argv in each rank, so training never runs inside pytest: each run is a
`python -m ae_train fit ...` subprocess with a timeout, and the tests read the log files it wrote.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ae_train.data.make import synthetic, write_shards

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DIM = 16
BS = 8
EPOCHS = 2


def make_shards(directory: Path, sizes: list[int], prefix: str = "train", dim: int = DIM, seed: int = 0) -> list[str]:
    data = synthetic(sum(sizes), dim, 4, seed)
    return write_shards(str(directory), prefix, data, sizes)


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    out: Path

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.logs.glob(pattern))

    def text(self, pattern: str) -> str:
        return "".join(p.read_text() for p in self.files(pattern))

    @property
    def console(self) -> str:
        return self.proc.stdout + self.proc.stderr


def fit(out: Path, *flags: str, timeout: float = 180, env: dict | None = None) -> Run:
    """Run `ae-train fit` (launcher + 2 CPU ranks by default) and wait for it."""
    cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", "--trainer.accelerator=cpu",
           "--trainer.devices=2", f"--model.input_dim={DIM}", "--model.latent_dim=4",
           "--model.hidden_dims=32", *flags]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    return Run(proc, out)


@pytest.fixture(scope="session")
def uneven_shards(tmp_path_factory) -> Path:
    """The issue's uneven layout: 5 shards of 200, 13, 1, 77, 300 samples, plus 2 val shards."""
    d = tmp_path_factory.mktemp("uneven")
    make_shards(d, [200, 13, 1, 77, 300])
    make_shards(d, [50, 31], prefix="val", seed=1)
    return d


@pytest.fixture(scope="session")
def debug_run(uneven_shards, tmp_path_factory) -> Run:
    """The main run: uneven shards, 2 ranks x 2 workers, debug mode, a warning and a print on rank 1."""
    out = tmp_path_factory.mktemp("debug_run") / "out"
    run = fit(out, f"--data.train_shards={uneven_shards}/train-{{000000..000004}}.tar",
              f"--data.val_shards={uneven_shards}/val-*.tar", f"--data.batch_size={BS}", "--data.num_workers=2",
              f"--trainer.max_epochs={EPOCHS}", "--debug=true", "--log.train_every=5", "--log.val_every=2",
              "--trainer.callbacks=ddp_helpers.WarnOnRank1")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    return run


@pytest.fixture(scope="session")
def error_run(tmp_path_factory) -> tuple[Run, Path]:
    """A run where one shard was corrupted after it was indexed (same size): found at read time."""
    tmp = tmp_path_factory.mktemp("error_run")
    paths = make_shards(tmp / "d", [40, 40, 40, 40])
    bad = Path(paths[2])
    raw = bytearray(bad.read_bytes())
    raw[512 * 3:512 * 6] = b"\xff" * (512 * 3)
    bad.write_bytes(bytes(raw))
    run = fit(tmp / "out", f"--data.train_shards={tmp}/d", "--data.val_shards=", "--data.batch_size=8",
              "--data.num_workers=2", "--trainer.max_epochs=1", "--debug=true", "--data.max_shard_errors=1",
              timeout=150)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    return run, bad
