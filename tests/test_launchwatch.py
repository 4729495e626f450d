"""The launcher's checks are never silent: a shard that blocks on open while it is counted is named by
HANG SUSPECTED (stage, shard, stacks) on the console and in the train log, then given up on like a
broken shard, and the run goes on without it."""
from __future__ import annotations

import os
import re

from conftest import fit, make_shards
from helpers import markers


def test_launchwatch_stalled_count_is_named_then_given_up(tmp_path):
    d = tmp_path / "d"
    make_shards(d, [64, 64, 64])
    (d / "ae_index.json").unlink()  # every shard is counted by reading it
    fifo = d / "train-000003.tar"
    os.mkfifo(fifo)  # nobody writes: open() blocks, like a dead NFS server
    run = fit(tmp_path / "out", f"--data.train_shards={d}", "--data.val_shards=", "--data.batch_size=8",
              "--data.num_workers=1", "--trainer.max_epochs=1", "--debug=true", "--log.hang_timeout_s=3",
              "--data.count_timeout_s=14", "--data.max_shard_errors=1", timeout=150)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    train = run.text("train_*.log")
    # On a loaded machine an alert can come before the counting starts; one of them names the shard.
    hangs = re.findall(r"\[ERROR\] \[Launcher\] HANG SUSPECTED: no progress for \d+ s in launcher checks "
                       r"\(last event: (.*)\)", train)
    assert any(str(fifo) in h for h in hangs), train
    assert "Stack dump of launcher" in train and "in _count_all" in train
    assert "HANG SUSPECTED" in run.console and "Stack dump of launcher" in run.console
    assert re.search(rf"Error counting shard {fifo}: stalled for \d+ s; left out of the run", train)
    assert f"Error reading shard {fifo}: no count within 14 s" in train
    debug = run.text("debug_rank*.log")
    assert f"Opening shard {fifo}" not in debug  # left out of the plan: no rank ever opens it
    ends = [[b for n, b in markers(run.text(f"debug_rank{r}_*.log")) if n.endswith("TRAINING END")] for r in (0, 1)]
    assert ends[0] == ends[1] == ["12"], ends  # 192 samples / (2 ranks x 8)


def test_launchwatch_diagnose_names_the_stuck_launcher_stage_and_shard(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    from conftest import ROOT, start, wait_for

    d = tmp_path / "d"
    make_shards(d, [64, 64])
    (d / "ae_index.json").unlink()
    fifo = d / "train-000002.tar"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    proc = start(out, f"--data.train_shards={d}", "--data.val_shards=", "--log.hang_timeout_s=3",
                 "--data.count_timeout_s=600")
    try:
        # On a loaded machine an earlier alert (before the FIFO is opened) may come first: wait for the one naming it.
        wait_for(out / "logs" / "train_*.log",
                 r"HANG SUSPECTED: no progress for \d+ s in launcher checks \(last event: .*reading " + re.escape(str(fifo)), 60)
        r = subprocess.run([sys.executable, "-m", "ae_train", "diagnose", str(out / "logs"), "--json"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        verdict = json.loads(r.stdout)["verdict"]  # one line: the stage and the shard
        assert "launcher is stuck in its checks" in verdict and f"reading {fifo}" in verdict, r.stdout
        assert re.search(r"data\.train_shards: count(ing samples in 3 shard\(s\)|ed 2/3 shards)", verdict), verdict
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
