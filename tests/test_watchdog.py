"""Real hangs in real 2-rank runs: the watchdog's alert and stacks, SIGUSR1 dumps, and `ae-train diagnose`."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ae_train import logformat as lf
from conftest import ROOT, make_shards, pids_in, start, wait_for, wait_gone


def _diagnose(logs: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ae_train", "diagnose", str(logs), *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def _diagnose_once_stalled(logs: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`diagnose --json`, polled until the run has been silent long enough to count as stalled (as a
    user would run it on a stuck run), or until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        report = _diagnose(logs, "--json")
        assert report.returncode == 0, report.stderr
        if json.loads(report.stdout)["state"] == "stalled" or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def _kill_run(proc: subprocess.Popen, logs: Path) -> None:
    """Two SIGTERMs: the launcher kills ranks that cannot stop (they are stuck by design here). The
    second is sent once the launcher has logged the first."""
    proc.send_signal(signal.SIGTERM)
    if proc.poll() is None:
        wait_for(logs / "train_*.log", r"\[Launcher\] " + lf.RECEIVED.pattern.pattern.decode(), 30)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    text = "".join(p.read_text() for p in logs.glob("*.log"))
    assert wait_gone(pids_in(text), 30) == [], "every rank and worker is gone"


def test_watchdog_stalled_shard_open_is_found(tmp_path):
    """A shard that is a FIFO nobody writes to: its worker blocks in open(), like a stalled NFS read."""
    d = tmp_path / "d"
    make_shards(d, [64, 64, 64])
    fifo = d / "train-000003.tar"
    os.mkfifo(fifo)
    index = json.loads((d / "ae_index.json").read_text())
    index["shards"][fifo.name] = {"bytes": 0, "samples": 64, "exts": {"x.npy": 64}}  # stat says 0 bytes
    (d / "ae_index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    proc = start(out, f"--data.train_shards={d}", "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=2",
                  "--trainer.max_epochs=1", "--debug=true", "--log.hang_timeout_s=4")
    logs = out / "logs"
    try:
        wait_for(logs / "debug_rank*_*.log", re.escape(f"Opening shard {fifo}"), 90)
        stuck = next(r for r in (0, 1) if f"Opening shard {fifo}" in next(logs.glob(f"debug_rank{r}_*.log")).read_text())
        rank_log = logs / f"debug_rank{stuck}_*.log"
        # The alert's lines, last to first written: the rank's resources line and its worker's stack dump.
        wait_for(rank_log, r"Resources at hang: rss", 90)
        wait_for(rank_log, rf"Stack dump of rank {stuck} worker \d/2 \(pid \d+\), reason: SIGUSR1[\s\S]*in _open", 30)
        wait_for(logs / "train_*.log", rf"\[ERROR\] \[Rank {stuck}/2\] HANG SUSPECTED", 30)
        text = {r: next(logs.glob(f"debug_rank{r}_*.log")).read_text() for r in (0, 1)}
        assert re.search(rf"\[ERROR\] \[Rank {stuck}/2\] HANG SUSPECTED: no progress for \d+ s in training \(waiting for data\)",
                         text[stuck])
        assert re.search(rf"Stack dump of rank {stuck} \(pid \d+\), reason: hang\nThread 0x[0-9a-f]+ \(MainThread\)", text[stuck])
        dumps = [d for d in re.split(r"(?=Stack dump of rank)", text[stuck]) if d.startswith(f"Stack dump of rank {stuck} worker")]
        # The blocked worker's stack shows the open (its sibling may be idle, waiting for its turn).
        assert any("in _open" in d and "in open_shard" in d for d in dumps), dumps
        assert "Resources at hang: rss" in text[stuck]
        train = next(logs.glob("train_*.log")).read_text()
        assert f"[ERROR] [Rank {stuck}/2] HANG SUSPECTED" in train
        report = _diagnose(logs)
        assert report.returncode == 0, report.stderr
        verdict = report.stdout
        assert f"rank {stuck}" in verdict.lower() and str(fifo) in verdict, verdict
        assert "data" in verdict.lower()
    finally:
        _kill_run(proc, logs)


def test_watchdog_rank_missing_at_epoch_end_collective(tmp_path):
    make_shards(tmp_path / "d", [64] * 4)
    out = tmp_path / "out"
    proc = start(out, f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8",
                  "--data.num_workers=2", "--trainer.max_epochs=2", "--log.hang_timeout_s=4",
                  "--trainer.callbacks=ddp_helpers.BlockRank1AtEpochEnd")
    logs = out / "logs"
    try:
        wait_for(logs / "debug_rank0_*.log", r"HANG SUSPECTED", 90)
        wait_for(logs / "debug_rank1_*.log", r"HANG SUSPECTED", 30)
        rank0 = next(logs.glob("debug_rank0_*.log")).read_text()
        assert "EPOCH 0 TRAINING END" in rank0 and "HANG SUSPECTED: no progress for" in rank0
        assert "EPOCH 0 TRAINING END" not in next(logs.glob("debug_rank1_*.log")).read_text()
        for rank in (0, 1):  # the last line of each rank's alert
            wait_for(logs / f"debug_rank{rank}_*.log", r"Resources at hang: rss", 30)
        report = _diagnose_once_stalled(logs)
        text = _diagnose(logs).stdout
        assert "DDP synchronization" in text, text
        assert re.search(r"Stuck between TRAINING END and VALIDATION START: DDP synchronization problem\. "
                         r"Arrived \(wrote EPOCH 0 TRAINING END at [^)]*\): rank 0\. Not arrived: rank 1\.", text), text
        finding = next(f for f in json.loads(report.stdout)["findings"] if f["kind"] == "ddp_sync")
        assert finding["ranks"] == [1]
    finally:
        _kill_run(proc, logs)


def test_watchdog_sigusr1_and_progress_resumed(hang_run):
    assert hang_run.returncode == 0, hang_run.console
    text = next(hang_run.logs.glob("debug_rank1_*.log")).read_text()
    assert re.search(rf"Stack dump of rank 1 \(pid {hang_run.rank_pid}\), reason: SIGUSR1\nThread 0x[0-9a-f]+ \(MainThread\)", text)
    assert re.search(rf"Stack dump of rank 1 worker 0/2 \(pid {hang_run.worker_pid}\), reason: SIGUSR1", text)
    rank0 = next(hang_run.logs.glob("debug_rank0_*.log")).read_text()
    assert re.search(r"HANG SUSPECTED: no progress for \d+ s in training \(in step\)", rank0)
    assert "ddp_helpers.py" in rank0 and "time.sleep(7)" in rank0  # its stack shows the sleeping callback
    assert re.search(r"\[WARNING\] \[Rank 0/2\] progress resumed after \d+ s", rank0)
    assert "HANG SUSPECTED" in hang_run.console  # errors reach the console
