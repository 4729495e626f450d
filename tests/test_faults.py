"""Faults become a log line and a finished run or a clean, resumable stop: real shards, real 2-rank runs."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from ae_train.diagnose import diagnose_run, format_report
from ae_train.exitcodes import ExitCode, stopped_by
from conftest import DIM, ROOT, fit, make_shards, pids_in, start, wait_for, wait_gone
from helpers import markers


def _tar(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for i, s in enumerate(samples):
            sink.write({"__key__": f"s{i:04d}", **s})
    return str(path)


def _ends(run, what="TRAINING END"):
    return [[(n, b) for n, b in markers(run.text(f"debug_rank{r}_*.log")) if n.endswith(what)] for r in (0, 1)]


def test_faults_every_corruption_kind_is_logged_and_skipped(tmp_path):
    d = tmp_path / "d"
    make_shards(d, [40] * 6 + [7])  # with the bad shards' good samples: 272 = 17 batches x 2 ranks x 8, none dropped
    vec = lambda: np.ones(DIM, np.float32)  # noqa: E731
    bad = {
        "truncated": _tar(d / "bad-truncated.tar", [{"x.npy": vec()} for _ in range(20)]),
        "garbage": str(d / "bad-garbage.tar"),
        "bad npy": _tar(d / "bad-npy.tar", [{"x.npy": b"definitely not numpy"} for _ in range(5)]),
        "no key": _tar(d / "bad-nokey.tar", [{"x.npy": vec()}, {"y.npy": vec()}, {"x.npy": vec()}]),
        "wrong shape": _tar(d / "bad-shape.tar", [{"x.npy": np.ones(DIM // 2, np.float32)} for _ in range(5)]),
        "wrong dtype": _tar(d / "bad-dtype.tar", [{"x.npy": np.array(["abc"] * DIM)} for _ in range(5)]),
        "empty": str(d / "bad-empty.tar"),
        "vanished": _tar(d / "bad-vanish.tar", [{"x.npy": vec()} for _ in range(8)]),
    }
    Path(bad["garbage"]).write_bytes(os.urandom(5000))
    Path(bad["empty"]).write_bytes(b"\0" * 10240)
    raw = Path(bad["truncated"]).read_bytes()
    Path(bad["truncated"]).write_bytes(raw[: len(raw) // 2 + 100])
    run = fit(tmp_path / "out", f"--data.train_shards={d}", "--data.val_shards=", "--data.batch_size=8",
              "--data.num_workers=2", "--trainer.max_epochs=2", "--debug=true", "--data.max_shard_errors=20",
              "--trainer.callbacks=ddp_helpers.DeleteShardAfterEpoch0", env={"AE_TEST_DELETE": bad["vanished"]},
              timeout=150)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    train, debug = run.text("train_*.log"), run.text("debug_rank*_*.log")
    reasons = {"truncated": "truncated tar", "garbage": "not a tar file", "bad npy": "is not a .npy array",
               "no key": "1 of 3 samples have no 'x.npy' member", "wrong shape": "model.input_dim is 16",
               "wrong dtype": "is not numeric", "empty": "empty tar", "vanished": "No such file or directory"}
    for kind, url in bad.items():
        line = re.search(rf"\[ERROR\] \[Rank \d/2[^\]]*\] Error reading shard {re.escape(url)}: (.*)", train)
        assert line and reasons[kind] in line.group(1), (kind, line and line.group(0))
        assert re.search(rf"\[ERROR\] .*Error reading shard {re.escape(url)}", debug), kind
        once = 2 if kind in ("bad npy", "wrong shape", "wrong dtype") else 1  # read-time: once per epoch
        assert len(re.findall(rf"\[ERROR\] [^\n]*Error reading shard {re.escape(url)}:", debug)) == once, kind
    ends = _ends(run)
    assert ends[0] == ends[1] and len(ends[0]) == 2
    assert re.search(r"Epoch 0 train: .* shard_errors=7 ", train) and re.search(r"Epoch 1 train: .* shard_errors=8 ", train)
    assert "Error reading shard" in run.console  # errors reach the console too


def test_faults_mostly_broken_data_stops_before_any_rank(tmp_path):
    d = tmp_path / "d"
    make_shards(d, [40])
    for i in range(3):
        (d / f"junk-{i}.tar").write_bytes(b"junk" * 1000)
    r = subprocess.run([sys.executable, "-m", "ae_train", "fit", f"--output_dir={tmp_path}/out", f"--data.train_shards={d}",
                        "--data.val_shards=", "--data.max_shard_errors=0.5"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == ExitCode.BAD_INPUT
    assert r.stderr.startswith("ae-train: error: data.train_shards: 3 of 4 shards cannot be used, over the limit of 2")


def test_faults_mostly_broken_data_found_at_read_time_stops_the_run(tmp_path):
    paths = make_shards(tmp_path / "d", [40] * 5)
    for p in paths[:4]:  # broken after indexing, same size: only reading finds it
        raw = Path(p).read_bytes().replace(b"\x93NUMPY", b"\x00NUMPY")
        Path(p).write_bytes(raw)
    run = fit(tmp_path / "out", f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8",
              "--data.num_workers=2", "--trainer.max_epochs=3", "--data.max_shard_errors=0.5", timeout=150)
    assert run.proc.returncode != 0
    train = run.text("train_*.log")
    assert "Stopping: 4 of 5 shards of train_shards could not be read in epoch 0, over the limit of 2" in train
    assert "EPOCH 1 TRAINING START" not in run.text("debug_rank*_*.log")
    assert "Stopping: 4 of 5 shards" in run.console
    rep = diagnose_run(run.logs)  # the verdict leads with the stop, naming the first unreadable shard and its reader
    m = re.match(r"First failure: the ranks stopped the run on unreadable shards: 4 of 5 shards of train_shards could "
                 r"not be read in epoch 0, over the limit of 2 \(data.max_shard_errors=0.5\); rank (\d) worker (\d) "
                 r"read the first \(at ", rep["verdict"])
    assert m, rep["verdict"]
    first = rep["failure"]["first"]
    assert first["shard"] in paths[:4]
    assert f"the first unreadable shard: {first['shard']}: " in rep["findings"][0]["message"]
    assert re.search(rf"\[Rank {m[1]}/2 Worker {m[2]}/2\] Error reading shard {re.escape(first['shard'])}", train)
    assert {c["kind"] for c in rep["failure"]["consequences"]} == {"stopped_together", "run_stopped"}


def test_faults_sigterm_saves_and_resume_continues(tmp_path):
    make_shards(tmp_path / "d", [200] * 6)
    out = tmp_path / "out"
    flags = [f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=2",
             "--trainer.max_epochs=3", "--debug=true", "--log.train_every=5", "--trainer.callbacks=ddp_helpers.SlowSteps"]
    proc = start(out, *flags)
    wait_for(out / "logs" / "debug_rank0_*.log", r"Training step 20, .*epoch 1,", 120)
    proc.send_signal(signal.SIGTERM)
    console, _ = proc.communicate(timeout=60)
    assert proc.returncode == stopped_by(signal.SIGTERM), console
    first_logs = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "logs").glob("*.log")}
    train = "".join(p.read_text() for p in (out / "logs").glob("train_*.log"))
    m = re.search(r"Received SIGTERM at epoch 1 step (\d+); saved (\S+)", train)
    assert m and m.group(2) == str(out / "checkpoints" / "last.ckpt"), train
    step = int(m.group(1))
    assert "Stopped by SIGTERM; continue with --resume=auto" in console
    all_text = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert wait_gone(pids_in(all_text), 30) == [], "no orphan ranks or workers"

    run = fit(out, *flags, "--resume=auto", timeout=150)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in first_logs} == first_logs, "first run's logs untouched"
    new_train = [p for p in run.files("train_*.log") if p not in first_logs]
    assert len(new_train) == 1
    text = new_train[0].read_text()
    assert f"Resuming from {out}/checkpoints/last.ckpt at epoch 1, step {step}" in text
    ts = new_train[0].name[len("train_"):-len(".log")]
    for rank in (0, 1):
        resumed = (out / "logs" / f"debug_rank{rank}_{ts}.log").read_text()
        found = [n for n, _ in markers(resumed)]
        assert found == ["EPOCH 1 TRAINING START", "EPOCH 1 TRAINING END", "EPOCH 2 TRAINING START", "EPOCH 2 TRAINING END"], found
        assert "EPOCH 1 TRAINING START ========== resumed at batch" in resumed
        skipped = sum(int(n) for n in re.findall(r"Resuming mid-epoch 1: skipping the (\d+) batch", resumed))
        assert skipped == step - 75  # 1200 samples / (2 ranks x 8) = 75 batches per epoch
    assert "Training finished: 3 epochs" in text


@pytest.mark.parametrize("helper,exit_text,first", [
    ("CrashOnRank1", "exited with code 1", r"rank 1 raised RuntimeError: injected failure on rank 1 \(at "),
    ("KillRank1", "exited with code -9 (killed by SIGKILL)", r"rank 1 was killed by SIGKILL, without a line of its "),
    ("KillWorkerOnRank1", "exited with code 1", r"rank 1 worker (\d) \(pid (\d+)\) died: killed by SIGKILL \(at ")])
def test_faults_dead_rank_stops_the_run(tmp_path, helper, exit_text, first):
    make_shards(tmp_path / "d", [100] * 4)
    # The survivor would wait 600 s in its next collective: only the launcher stopping it ends the run
    # within the subprocess timeout (a hang guard, not a measurement).
    run = fit(tmp_path / "out", f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8",
              "--data.num_workers=2", "--trainer.max_epochs=2", "--trainer.ddp_timeout_s=600",
              f"--trainer.callbacks=ddp_helpers.{helper}", timeout=180)
    assert run.proc.returncode == ExitCode.FAILED, run.console
    train = run.text("train_*.log")
    assert re.search(rf"\[ERROR\] \[Launcher\] Rank 1 \(pid \d+\) {re.escape(exit_text)}; stopping the other ranks", train)
    if helper == "CrashOnRank1":
        assert "[ERROR] [Rank 1/2] Uncaught exception: RuntimeError: injected failure on rank 1\nTraceback" in train
        assert "injected failure on rank 1\nTraceback" in run.text("debug_rank1_*.log")
    assert wait_gone(pids_in(run.text("*.log")), 30) == []
    # The verdict leads with the first failure and its rank, not the launcher's stop or rank 0's lost connection.
    rep = diagnose_run(run.logs)
    verdict = format_report(rep).split("Verdict:\n", 1)[1]
    m = re.match("!! First failure: " + first, verdict)
    assert m, verdict
    if helper == "KillWorkerOnRank1":  # the worker of that pid, as rank 1's log says
        assert f"[Rank 1/2 Worker {m[1]}/2] Worker started pid={m[2]}" in run.text("debug_rank1_*.log")
    if helper == "CrashOnRank1":  # the frame that raised it
        assert re.search(r"\n    raised at \S+/ddp_helpers\.py:\d+ in on_train_batch_end\n", verdict), verdict
    else:  # a SIGKILL without a traceback: the OOM killer's usual way
        assert "OOM killer" in verdict and "dmesg" in verdict
    # The launcher's line is among what followed (or, for a rank killed without a line, how the kill is known).
    assert re.search(rf"Rank 1 \(pid \d+\) {re.escape(exit_text)}", rep["findings"][0]["message"])
    assert all(c["rank"] != 1 or c["role"] == "after" for c in rep["failure"]["consequences"])


@pytest.mark.parametrize("signalled", [(1,), (0, 1)])
def test_faults_sigterm_to_some_ranks_stops_all_at_one_step(tmp_path, signalled):
    """SIGTERM straight to the rank processes (not the launcher), as a scheduler sends it: to rank 1 alone
    (a lost parent, a partial kill), or to both ranks back to back. Every rank stops at the same step,
    last.ckpt is saved, nothing is left running. Before, rank 1 alone (or the rank signalled a
    moment earlier) stopped at its own step's end while the other waited for it in the next collective."""
    make_shards(tmp_path / "d", [200] * 4)
    out = tmp_path / "out"
    proc = start(out, f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8",
                 "--data.num_workers=2", "--trainer.max_epochs=3", "--debug=true", "--log.train_every=5",
                 "--trainer.callbacks=ddp_helpers.SlowSteps")
    wait_for(out / "logs" / "debug_rank1_*.log", r"Training step 10, ", 120)
    text = "".join(p.read_text() for p in sorted((out / "logs").glob("debug_rank*.log")))
    pids = [int(p) for p in re.findall(r"Debug log of rank \d/2: host=\S+ pid=(\d+)", text)]
    for rank in signalled:
        os.kill(pids[rank], signal.SIGTERM)
    console, _ = proc.communicate(timeout=120)
    assert proc.returncode == stopped_by(signal.SIGTERM), console
    train = "".join(p.read_text() for p in (out / "logs").glob("train_*.log"))
    step = re.search(r"\[Rank 0/2\] Received SIGTERM at epoch 0 step (\d+); saved \S+last\.ckpt", train)
    assert step, train
    for r in (0, 1):  # both ranks stopped at that step
        debug = next((out / "logs").glob(f"debug_rank{r}_*.log")).read_text()
        assert f"Received SIGTERM at epoch 0 step {step[1]}; saved" in debug, (r, debug[-3000:])
    assert (out / "checkpoints" / "last.ckpt").is_file() and "continue with --resume=auto" in console
    assert wait_gone(pids_in("".join(p.read_text() for p in (out / "logs").glob("*.log"))), 30) == []
