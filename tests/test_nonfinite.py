"""Non-finite values, as issue 19 checks them on real 2-rank runs: a NaN sample among 2,000 is named and
left out (finite losses, finite weights in last.ckpt); a diverging run (`--model.lr=10000`) stops every
rank with one ERROR naming the first non-finite step, its rank and its batch's shards and keys, and no
checkpoint is written from those weights."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ae_train.data.make import synthetic, write_shards
from ae_train.data.reader import ShardBatches, keys_at
from ae_train.diagnose import diagnose_run, format_report
from ae_train.exitcodes import ExitCode
from conftest import fit
from helpers import ledger_lines


@pytest.fixture(scope="module")
def nan_shards(tmp_path_factory) -> tuple[Path, str]:
    """2,000 samples in 4 shards; sample 1234 (in the third shard) holds one NaN."""
    d = tmp_path_factory.mktemp("nan_shards")
    data = synthetic(2000, 16, 4, 0)
    data[1234, 5] = np.nan
    write_shards(str(d), "train", data, [500] * 4)
    return d, "train000002_000001234"


def test_nonfinite_sample_is_named_left_out_and_never_trained(nan_shards, tmp_path):
    d, bad = nan_shards
    run = fit(tmp_path / "out", f"--data.train_shards={d}", "--data.val_shards=", "--data.batch_size=8",
              "--trainer.max_epochs=2", "--log.sample_ledger=true")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    train = run.text("train_*.log")
    warnings = re.findall(rf"\[WARNING\] \[Rank \d/2 Worker \d/2\] Sample {bad} of shard {d}/train-000002.tar holds "
                          r"NaN or inf; left out", train)
    assert len(warnings) == 2  # once per epoch
    assert "[ERROR]" not in train
    losses = re.findall(r"Epoch \d train: loss=(\S+) .* shard_errors=0 nonfinite_samples=1 \(all ranks\)", train)
    assert len(losses) == 2 and all(np.isfinite(float(v)) for v in losses)
    assert not any(bad in keys for *_, keys in ledger_lines(run.logs))
    last = torch.load(run.out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_nonfinite_loss_stops_every_rank_naming_its_batch(nan_shards, tmp_path):
    d, _ = nan_shards
    run = fit(tmp_path / "out", f"--data.train_shards={d}", "--data.val_shards=", "--data.batch_size=8",
              "--trainer.max_epochs=2", "--model.lr=10000", "--model.warmup_steps=1", "--log.train_every=20",
              "--log.sample_ledger=true")
    assert run.proc.returncode == ExitCode.NON_FINITE, run.console
    train = run.text("train_*.log")
    errors = [ln for ln in train.splitlines() if "[ERROR]" in ln]
    assert len(errors) == 1, errors
    m = re.search(r"\[Rank (\d)/2\] Non-finite loss (\S+) at epoch 0 step (\d+) \(batch (\d+) of the epoch\) on rank "
                  r"\1; its batch: 8 samples from (.*); keys (.*); stopping every rank, no checkpoint is written", errors[0])
    assert m and not np.isfinite(float(m[2])), errors[0]
    rank, step, batch = int(m[1]), int(m[3]), int(m[4])
    assert "Rank 0 stopped the run (exit code 5: a non-finite loss)" in train or \
        "Rank 1 stopped the run (exit code 5: a non-finite loss)" in train
    assert not (run.out / "checkpoints").exists() or not list((run.out / "checkpoints").glob("*.ckpt"))
    # the keys it names are the batch the rank trained at that step (its sample ledger) ...
    (keys,) = [k for r, _, e, s, k in ledger_lines(run.logs) if r == rank and e == 0 and s == step]
    assert m[6].split(", ") == keys
    # ... and what the epoch plan says that batch held (how they are named with the ledger off)
    plan = ShardBatches(sorted(str(p) for p in d.glob("*.tar")), [500] * 4, "train_shards", "x.npy", 16, 8, 2,
                        rank, 2, 0, True)
    plan.set_epoch(0)
    samples = plan.batch_samples(batch)
    assert [keys_at(url, "x.npy", [i])[0] for url, i in samples] == keys
    # diagnose leads with it, the other rank's stop and the launcher's line after it
    rep = diagnose_run(run.logs)
    first = rep["failure"]["first"]
    assert first["kind"] == "nonfinite_loss" and first["rank"] == rank, rep["failure"]
    verdict = format_report(rep).split("Verdict:", 1)[1]
    assert verdict.lstrip().startswith(f"!! First failure: rank {rank} had a non-finite loss ")
    assert "usual cause: the training diverged" in verdict
