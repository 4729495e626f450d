"""`ae-train diagnose` on logs written through the writers' own templates (ae_train.logformat) and the
logging setup's line format: no line is typed here, so the tests follow the writers when they change.
The real runs (hangs, errors, stragglers) are in test_watchdog.py, test_faults.py and test_diagnose_speed.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from ae_train import logformat as lf
from ae_train.diagnose import diagnose_run, format_report, main
from ae_train.logs import log_uncaught
from helpers import NOW, RankWriter, finding, finished_run, kinds, log_line, train_log


def test_diagnose_ddp_hang_names_arrived_and_missing_ranks(logs):
    rls = [RankWriter(logs, r, 4) for r in range(4)]
    for rl in rls:
        rl.epoch(0)
        rl.train(1, end=rl.rank != 1)  # rank 1 never writes EPOCH 1 TRAINING END
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "ddp_sync" and f["ranks"] == [1]
    assert "DDP synchronization problem" in f["message"]
    assert "Arrived (wrote EPOCH 1 TRAINING END" in f["message"] and "ranks 0, 2, 3" in f["message"]
    assert "Not arrived: rank 1" in f["message"]
    phases = {r["rank"]: r["phase"] for r in rep["ranks"]}
    assert phases == {0: "train_end", 1: "training", 2: "train_end", 3: "train_end"}
    assert rep["state"] == "stalled"


def test_diagnose_ddp_hang_rank_still_training_means_more_batches(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    rls[0].epoch(0)
    rls[1].epoch(0)
    rls[0].train(1)  # rank 0 waits after TRAINING END ...
    rls[1].t = NOW - 40 - 8 * 3
    rls[1].train(1, batches=8, end=False)  # ... rank 1 is still writing steps a minute later
    rls[0].t = NOW - 1000
    rls[0].end(lf.TRAINING % 1, 8, 1.23)
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "ddp_sync")
    assert f["ranks"] == [1] and "still writing progress" in f["message"] and "more batches" in f["message"]


def test_diagnose_silent_rank_names_open_shard_and_stack_dump(logs):
    rls = [RankWriter(logs, r, 4) for r in range(4)]
    for rl in rls:
        rl.epoch(0)
    stuck = rls[2]
    stuck.train(1, end=False, finish_last=False)  # last shard opened, never finished
    stuck.log("ERROR", lf.HANG, 605, "training", "Training step 6 at x", dt=605)
    dump_line = stuck.dump("rank 2", 1002, "hang", [("MainThread", ["_try_get_data", "_get_data", "fit"]),
                                                    ("watchdog", ["_dump"])])
    for rl in (rls[0], rls[1], rls[3]):
        rl.t = NOW - 60  # the others go on until a minute ago
        rl.train(1)
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "silent_rank")
    assert f["ranks"] == [2] and f["severity"] == "error"
    assert "/data/train-0201007.tar" in f["message"] and "worker 1" in f["message"]
    assert f"{stuck.path.name}:{dump_line}" in f["message"]
    assert "waits for DataLoader workers" in f["message"]
    row = rep["ranks"][2]
    assert row["hang_alerts"] == 1 and row["hang_active"] and row["stack_dumps"][0]["waits"] == "data"
    assert row["stack_dumps"][0]["frames"][0].endswith("in _try_get_data")
    assert row["unfinished_shards"][0]["url"] == "/data/train-0201007.tar"


def test_diagnose_all_ranks_stuck_picks_rank_waiting_for_data(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.epoch(0)
        rl.train(1, end=False)
        rl.log("ERROR", lf.HANG, 600, "training", "Training step 6 at x", dt=600)
        frame = "_try_get_data" if rl.rank == 1 else "all_reduce"
        rl.dump(f"rank {rl.rank}", 1000 + rl.rank, "hang", [("MainThread", [frame])])
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "stuck_in_phase" and f["ranks"] == [1] and "Most likely stuck first" in f["message"]


def test_diagnose_short_hang_timeout_on_live_run_finds_stuck_rank(logs):
    # Issue 4's FIFO case: hang_timeout_s=10, diagnose runs seconds later; rank 0 waits in backward's
    # all_reduce, rank 1's worker is blocked opening a shard, so its main thread waits for data.
    rls = [RankWriter(logs, r, 2, t=NOW - 60) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False, finish_last=rl.rank != 1)
        rl.log("ERROR", lf.HANG, 10, "training", "Training step 6 at x", dt=10)
        frame = "_try_get_data" if rl.rank == 1 else "_engine_run_backward"
        rl.dump(f"rank {rl.rank}", 1000 + rl.rank, "hang", [("MainThread", [frame])])
    rep = diagnose_run(logs, now=NOW)
    assert rep["stall_after_s"] == 10 and rep["state"] == "stalled"
    f = rep["findings"][0]
    assert f["kind"] == "stuck_in_phase" and f["ranks"] == [1]
    assert "/data/train-0100007.tar" in f["message"] and "waits for DataLoader workers" in f["message"]


def test_diagnose_all_at_train_end_splits_ranks_by_stack_dump(logs):
    rls = [RankWriter(logs, r, 3) for r in range(3)]
    for rl in rls:
        rl.train(0)
        rl.log("ERROR", lf.HANG, 600, "train_end", "x", dt=600)
        frame = "time.sleep" if rl.rank == 2 else "barrier"
        rl.dump(f"rank {rl.rank}", 1000 + rl.rank, "hang", [("MainThread", [frame])])
    f = diagnose_run(logs, now=NOW)["findings"][0]
    assert f["kind"] == "ddp_sync" and f["ranks"] == [2]
    assert "ranks 0, 1 wait in a collective; rank 2 did not reach it" in f["message"]


def test_diagnose_single_rank_hang_alert_on_live_run(logs):
    rl = RankWriter(logs, 0, 1, t=NOW - 100)
    rl.train(0, end=False)
    rl.log("ERROR", lf.HANG, 605, "validation", "x")
    rl.t = NOW - 50
    rl.log("DEBUG", lf.VAL_STEP, 3, 0.1, 0)  # progress after the alert, no "resumed" yet
    f = diagnose_run(logs, now=NOW)["findings"][0]
    assert f["kind"] == "hang_alert" and "no progress for 605 s in validation" in f["message"]


def test_diagnose_debug_off_long_epochs_are_not_a_hang(logs):
    rl = RankWriter(logs, 0, 1, t=NOW - 3000)
    for ep in range(3):  # INFO only: markers 15 minutes apart, no step or shard lines
        rl.start(lf.TRAINING % ep)
        rl.end(lf.TRAINING % ep, 9000, 900.0)
        rl.t += 898
    rl.start(lf.TRAINING % 3)
    rl.t = NOW
    rep = diagnose_run(logs, now=NOW + 480)  # 8 minutes into the epoch
    assert rep["state"] == "running" and kinds(rep) == ["running"]


def test_diagnose_after_validation_end_points_to_checkpoint(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.epoch(0)
        rl.epoch(1)
    rls[0].log("INFO", lf.SAVING, "/out/checkpoints/last.ckpt")
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "checkpoint_or_scheduler" and "checkpoint saving or the LR scheduler" in f["message"]
    assert "/out/checkpoints/last.ckpt" in f["message"]
    assert {r["phase"] for r in rep["ranks"]} == {"val_end"}


def test_diagnose_lightning_order_train_end_after_val_end_is_epoch_end(logs):
    rl = RankWriter(logs, 0, 1)
    rl.train(0, end=False)
    rl.validate(0)
    rl.end(lf.TRAINING % 0, 8, 1.23)
    assert diagnose_run(logs, now=NOW)["ranks"][0]["phase"] == "val_end"


def test_diagnose_clean_finished_run_says_so(logs):
    finished_run(logs)
    rep = diagnose_run(logs, now=NOW)
    assert rep["state"] == "finished"
    assert kinds(rep) == ["finished", "no_straggler"]  # both ranks wait 3.1% for data
    assert rep["verdict"].startswith("Run finished cleanly: Training finished: 2 epochs in 35.2s")
    assert all(r["phase"] == "finished" for r in rep["ranks"])
    text = format_report(rep)
    assert "Run finished cleanly" in text and "node1" in text


def test_diagnose_uneven_assignment_and_batches(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    rls[0].epoch(0, files=(5, 1), planned=[10, 2])
    rls[1].epoch(0, files=(2, 2), batches=6)
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "uneven_assignment")
    assert "train_shards epoch 0: workers got 1 to 5 of 12 files, 2 to 10 batches" in f["message"]
    assert "rank 0 worker 0: 5 files, 10 batches" in f["message"]
    assert "rank 0 8, rank 1 6" in finding(rep, "uneven_batches")["message"]


def test_diagnose_sample_range_split_is_not_uneven_and_completed_names_split(logs):
    # The reader's real lines: 2 val files over 2 workers as sample ranges, and the split ends COMPLETED.
    rl = RankWriter(logs, 0, 1)
    rl.log("INFO", lf.PROCESSING, 0, 2, "val_shards", 0, 0, 0, worker=1)
    rl.log("INFO", lf.PROCESSING, 2, 2, "val_shards", 0, 256, 1, worker=0)
    rl.log("INFO", lf.PROCESSING, 3, 8, "train_shards", 0, 1024, 4, worker=1)  # same tag
    rl.log("INFO", lf.COMPLETED, 0, 0, 0, 0, 0, 0.0, "val_shards", worker=1)
    rep = diagnose_run(logs, now=NOW)
    assert "uneven_assignment" not in kinds(rep)
    assert rep["ranks"][0]["workers"]["val_shards"] == {"epoch": 0, "started": 2, "completed": 1}
    assert rep["ranks"][0]["workers"]["train_shards"] == {"epoch": 0, "started": 1, "completed": 0}


def test_diagnose_early_completion_of_a_worker(logs):
    rl = RankWriter(logs, 0, 1)
    rl.start(lf.TRAINING % 0)
    for w in range(2):
        rl.log("INFO", lf.PROCESSING, 2, 4, "train_shards", 0, 16, 2, worker=w)
    rl.log("INFO", lf.COMPLETED, 16, 0, 2, 2, 0, 5.0, "train_shards", worker=1, dt=5)
    rl.log("INFO", lf.COMPLETED, 16, 0, 2, 2, 0, 305.0, "train_shards", worker=0, dt=300)
    rep = diagnose_run(logs, now=NOW)
    assert "rank 0 worker 1 COMPLETED after 5s with 2 files, rank 0 worker 0 ran 5m06s with 2 files" in finding(rep, "early_completion")["message"]


def test_diagnose_shard_errors_counted_with_last_url(logs):
    rls = finished_run(logs)
    rls[1].log("ERROR", lf.SHARD_ERROR, "/data/train-000004.tar", "truncated tar header at byte 10240", worker=0)
    rls[1].log("ERROR", lf.SHARD_ERROR, "s3://b/train-000009.tar", "connection reset", worker=1)
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "shard_errors")
    assert f["ranks"] == [1] and f["message"].startswith("2 shard read error(s) (rank 1: 2)")
    assert "s3://b/train-000009.tar: connection reset" in f["message"]
    assert rep["ranks"][1]["last_shard_error"]["url"] == "s3://b/train-000009.tar"
    assert "last shard error: s3://b/train-000009.tar" in format_report(rep)


def test_diagnose_launcher_kill_and_missing_rank(logs):
    rl = RankWriter(logs, 0, 2)
    rl.epoch(0)
    train_log(logs, [(rl.t, "ERROR", lf.LAUNCHER_TAG, lf.EXITED, 1, 1001, "code -9 (killed by SIGKILL)")])
    rep = diagnose_run(logs, now=NOW)
    assert rep["state"] == "stopped" and rep["missing_ranks"] == [1]
    assert rep["verdict"].startswith("First failure: rank 1 was killed by SIGKILL, without a line of its own (at ")
    f = finding(rep, "failure")
    assert "the launcher's line: Rank 1 (pid 1001) exited with code -9 (killed by SIGKILL)" in f["message"]
    assert "OOM killer" in f["message"] and f["ranks"] == [1]
    assert finding(rep, "missing_ranks")["ranks"] == [1]
    assert kinds(rep)[0] == "failure" and "stuck_in_phase" not in kinds(rep)  # a crash, not a hang


def test_diagnose_rank_killed_after_long_silence_is_still_a_hang(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    train_log(logs, [(rls[0].t + 3600, "ERROR", lf.LAUNCHER_TAG, lf.EXITED, 1, 1001, "code -9 (killed by SIGKILL)")])
    rep = diagnose_run(logs, now=NOW)
    assert kinds(rep)[:2] == ["stuck_in_phase", "failure"]  # first in time: the run stopped moving, then the kill
    then = rep["findings"][1]["message"]
    assert then.startswith("Then, after 60m00s without progress on any rank: rank 1 was killed by SIGKILL")
    assert rep["failure"]["quiet_before_s"] >= 3590 and rep["failure"]["first"]["kind"] == "killed"


def test_diagnose_tolerates_torn_unknown_and_continuation_lines(logs):
    rl = RankWriter(logs, 0, 1)
    rl.train(0, end=False)
    try:
        raise ValueError("boom")
    except ValueError as e:
        rl.through(log_uncaught, ValueError, e, e.__traceback__)  # logs.py's excepthook: line + traceback
    rl.raw("\xff\xfe garbage that is not a log line ] [ at all")
    rl.raw("[E ProcessGroupNCCL.cpp:475] Watchdog caught collective operation timeout: WorkNCCL(OpType=ALLREDUCE)")
    rl.log("INFO", "some unknown message from a library")
    torn = log_line(rl.t + 1, "DEBUG", rl.tag, lf.TRAINING_STEP.template, *lf.TRAINING_STEP.example)
    rl.f.write(torn[:torn.index("Training st") + 11])  # torn last line, no newline
    rl.f.close()
    rep = diagnose_run(logs, now=NOW)
    row = rep["ranks"][0]
    assert row["last_step"]["step"] == 6 and row["errors"] == 1
    assert "Watchdog caught collective" in row["raw_alert"]
    assert "ValueError: boom" in finding(rep, "errors")["message"]


def test_diagnose_json_shape(logs, capsys):
    finished_run(logs)
    assert main([str(logs), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"run", "state", "world_size", "ranks", "findings", "verdict", "train_log"} <= rep.keys()
    row = rep["ranks"][0]
    for key in ("rank", "host", "last_time", "age_s", "epoch", "phase", "last_marker", "last_step", "batches",
                "workers", "errors", "shard_errors", "hang_alerts", "unfinished_shards", "stack_dumps", "pids"):
        assert key in row
    assert row["workers"] == {"train_shards": {"epoch": 1, "started": 2, "completed": 2}}
    assert {"severity", "kind", "ranks", "message"} == rep["findings"][0].keys()


def test_diagnose_run_selection_latest_by_default(logs, capsys):
    finished_run(logs, ts="20261128_010101")
    RankWriter(logs, 0, 1, ts="20261129_020202").train(0, end=False)
    assert diagnose_run(logs)["run"] == "20261129_020202"
    assert diagnose_run(logs, "20261128_010101")["state"] == "finished"
    assert main([str(logs.parent), "--run", "20261128_010101"]) == 0  # the output dir works too
    assert "Run 20261128_010101" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing_dir", "no_logs", "unknown_run"])
def test_diagnose_bad_input_exits_2_with_one_line(tmp_path, logs, capsys, case):
    if case == "unknown_run":
        finished_run(logs)
    argv = {"missing_dir": [str(tmp_path / "nope")], "no_logs": [str(logs)],
            "unknown_run": [str(logs), "--run", "20200101_000000"]}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ae-train diagnose: error:") and "Traceback" not in err


def test_diagnose_plot_writes_png(logs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.epoch(0)
    rls[1].log("ERROR", lf.HANG, 605, "validation", "x", dt=605)
    rls[1].log("ERROR", lf.SHARD_ERROR, "/data/x.tar", "boom")
    out = tmp_path / "timeline.png"
    assert main([str(logs), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from ae_train.diagnose.plot import draw
    legend = [t.get_text() for t in draw(diagnose_run(logs, now=NOW)).axes[0].get_legend().get_texts()]
    assert "silent (no progress)" in legend  # rank 0 went silent while rank 1 went on: a stalled run


def test_diagnose_plot_finished_run_is_not_silent_andtime_labels_differ(logs):
    pytest.importorskip("matplotlib")
    from ae_train.diagnose.plot import draw
    rls = finished_run(logs)
    rls[0].log("INFO", "late line of rank 0", dt=300)  # rank 1 ended 5 minutes before the run did
    fig = draw(diagnose_run(logs, now=NOW))
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 3 and len(set(labels)) == len(labels)
    assert "silent (no progress)" not in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert fig.axes[1].get_title() == "time split" and len(fig.axes[1].patches) == 2  # old lines: data wait only


def test_diagnose_plottime_labels_as_fine_as_needed():
    from datetime import timedelta

    from ae_train.diagnose.plot import time_labels
    t0, t1 = datetime(2026, 11, 29, 23, 59, 58), datetime(2026, 11, 29, 10, 0, 0)
    assert time_labels([t1 + timedelta(minutes=i) for i in range(3)]) == ["10:00", "10:01", "10:02"]
    assert time_labels([t1 + timedelta(seconds=20 * i) for i in range(3)]) == ["10:00:00", "10:00:20", "10:00:40"]
    assert time_labels([t1 + timedelta(seconds=0.2 * i) for i in range(3)]) == ["10:00:00.000", "10:00:00.200",
                                                                                   "10:00:00.400"]
    assert time_labels([t0, t0 + timedelta(minutes=10)]) == ["11-29 23:59", "11-30 00:09"]  # the date when it changes



def test_diagnose_plot_without_matplotlib_says_pip_install(logs, capsys, monkeypatch):
    finished_run(logs)
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert main([str(logs), "--plot", "x.png"]) == 2
    assert 'pip install "ae-train[plot]"' in capsys.readouterr().err


def test_diagnose_imports_no_heavy_modules():
    code = ("import sys; import ae_train.diagnose, ae_train.collect; "
            "print(sorted({'torch', 'lightning', 'pytorch_lightning', 'numpy', 'matplotlib'} & set(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"  # diagnose runs on a login node in a second: none of the heavy imports

