"""LastCheckpoint: last.ckpt is always the newest state (every epoch end whatever the loss did, every
N steps), one file across any number of resumes; a finished run says so in one line. Real 2-rank runs
with weights that never change (`--model.lr=1e-30`: the loss stops improving at once)."""
from __future__ import annotations

import re
import signal

import torch

from ae_train.exitcodes import ExitCode, stopped_by
from helpers import ledger_lines, run_ts

EPOCH_BATCHES = 125  # 2007 samples / (2 ranks x 8), the 7 left over dropped


def test_last_checkpoint_holds_the_last_step_whatever_the_loss_did(elastic_runs):
    step, files = elastic_runs.after_first
    assert step == 3 * EPOCH_BATCHES
    assert [f for f in files if f.startswith("last")] == ["last.ckpt"]
    assert len([f for f in files if re.fullmatch(r"best-epoch=\d{3}\.ckpt", f)]) == 1, files


def test_last_checkpoint_after_a_stop_and_a_resume_on_another_world(elastic_runs):
    r = elastic_runs
    console, code = r.stopped
    assert code == stopped_by(signal.SIGTERM), console
    stop = int(re.search(r"Received SIGTERM at epoch 3 step (\d+); saved \S+/last\.ckpt", console)[1])
    assert 3 * EPOCH_BATCHES < stop < 4 * EPOCH_BATCHES
    assert r.resumed.proc.returncode == 0, r.resumed.console + r.resumed.text("*.log")
    assert f"Resuming from {r.out}/checkpoints/last.ckpt at epoch 3, step {stop}" in r.resumed.console
    ts = run_ts(r.resumed.console)
    trained = ledger_lines(r.resumed.logs, ts)  # the resumed run's batches, one ledger line each
    last = torch.load(r.out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == stop + len(trained) and last["epoch"] == 4
    assert sorted(p.name for p in (r.out / "checkpoints").glob("last*")) == ["last.ckpt"]
    # the resumed epoch's summary: this process's part of the epoch, timed by this process
    seconds = float(re.search(r"Epoch 3 train: .* time=([\d.]+)s samples/s=(\d+)", r.resumed.console)[1])
    assert 0 < seconds <= r.resumed_wall


def test_last_checkpoint_a_finished_run_says_so_in_one_line(elastic_runs):
    r = elastic_runs
    assert r.nothing.returncode == ExitCode.OK, r.nothing.stderr
    assert r.nothing.stdout.splitlines() == [
        "ae-train: Nothing to train: the checkpoint is at the end of epoch 4 and trainer.max_epochs is 5; to train "
        "on, pass a larger trainer.max_epochs (e.g. --trainer.max_epochs=10)"]
    assert r.nothing.stderr == ""


def test_last_checkpoint_resumed_into_another_model_is_one_line(elastic_runs):
    r = elastic_runs.other_model
    assert r.returncode == ExitCode.BAD_INPUT and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"ae-train: error: resume: {elastic_runs.out}/checkpoints/last.ckpt holds a model with model.latent_dim=4; "
        "this run's config has 6: resume with --model.latent_dim=4, or start afresh with another --output_dir"]
