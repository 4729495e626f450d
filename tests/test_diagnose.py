"""`ae-train diagnose` on synthetic logs written line for line as docs/LOG_FORMAT.md specifies."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from ae_train.diagnose import diagnose_run, format_report, main

TS = "20261129_050102"
NOW = time.time()
T0 = NOW - 7200  # runs start two hours back: a run whose lines stop early is long silent


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S,") + f"{int(round(t * 1000)) % 1000:03d}"


class RankLog:
    """Writes one debug log (and optionally mirrors lines to the train log) in the contract's format."""

    def __init__(self, logs: Path, rank: int, world: int, ts: str = TS, workers: int = 2, host: str = "node1",
                 pid: int | None = None, t: float = T0):
        self.path = logs / f"debug_rank{rank}_{ts}.log"
        self.rank, self.world, self.K, self.t = rank, world, workers, t
        self.tag = f"Rank {rank}/{world}"
        self.f = open(self.path, "a", encoding="utf-8")
        self.line("INFO", f"Debug log of rank {rank}/{world}: host={host} pid={pid or 1000 + rank} local_rank={rank} "
                          f"node_rank=0 device=cpu run={ts}")

    def line(self, level: str, msg: str, worker: int | None = None, dt: float = 1.0) -> None:
        self.t += dt
        tag = self.tag if worker is None else f"{self.tag} Worker {worker}/{self.K}"
        self.f.write(f"{stamp(self.t)} [{level}] [{tag}] {msg}\n")
        self.f.flush()

    def raw(self, text: str) -> None:
        self.f.write(text if text.endswith("\n") or not text else text + "\n")
        self.f.flush()

    def marker(self, text: str, extra: str = "") -> None:
        self.line("INFO", f"========== {text} ==========" + (f" {extra}" if extra else ""))

    def train(self, ep: int, batches: int = 8, files=(2, 2), end: bool = True, finish_last: bool = True,
              planned=None, split: str = "data wait 3.1%", read_s=None) -> None:
        """One training epoch: workers start, shards open/finish, steps every 2 batches, COMPLETED, END.
        `split`: the progress lines' time split; `read_s(b)`: seconds from batch b's shard Opening to Finished."""
        self.marker(f"EPOCH {ep} TRAINING START")
        per = batches // self.K
        planned = planned or [per] * self.K
        for w in range(self.K):
            self.line("DEBUG", f"Worker started pid={20000 + 100 * self.rank + 10 * ep + w}", w)
            self.line("INFO", f"Processing {files[w]}/{sum(files) * self.world} files from train_shards "
                              f"(epoch {ep}, {planned[w] * 8} samples, {planned[w]} batches)", w)
        for b in range(batches):
            w = b % self.K
            url = f"/data/train-{self.rank:02d}{ep:02d}{b:03d}.tar"
            self.line("DEBUG", f"Opening shard {url} (samples 0..8 of 8)", w)
            if finish_last or b < batches - 1:
                self.line("DEBUG", f"Finished shard {url}: 8 samples in 0.052s", w, dt=read_s(b) if read_s else 1.0)
            if b % 2 == 0:
                self.line("DEBUG", f"Training step {b}, loss=0.0987{b} | Processed {b + 1} training batches (epoch {ep}, "
                                   f"global step {ep * batches + b + 1}), 12000 samples/s, {split}, rss 812 MB, cuda 0 MB")
        if not end:
            return
        for w in range(self.K):
            self.line("INFO", f"COMPLETED iteration, total samples: {per * 8} (epoch {ep}, batches {per}, shards "
                              f"{files[w]}, errors 0)", w)
        self.marker(f"EPOCH {ep} TRAINING END", f"batches={batches} time=1.23s")

    def validate(self, ep: int, batches: int = 4, end: bool = True) -> None:
        self.marker(f"EPOCH {ep} VALIDATION START")
        for v in range(batches):
            self.line("DEBUG", f"Validation step {v}, loss=0.105000 (epoch {ep})")
        if end:
            self.marker(f"EPOCH {ep} VALIDATION END", f"batches={batches} time=0.20s")

    def epoch(self, ep: int, **kw) -> None:
        self.train(ep, **kw)
        self.validate(ep)


def train_log(logs: Path, lines: list[tuple[float, str, str, str]], ts: str = TS) -> Path:
    p = logs / f"train_{ts}.log"
    with open(p, "a", encoding="utf-8") as f:
        for t, level, tag, msg in lines:
            f.write(f"{stamp(t)} [{level}] [{tag}] {msg}\n")
    return p


def finished_run(logs: Path, world: int = 2, epochs: int = 2, ts: str = TS) -> list[RankLog]:
    """A clean run: every rank does every epoch, the train log says finished, the launcher sees exit 0."""
    rls = [RankLog(logs, r, world, ts) for r in range(world)]
    for rl in rls:
        rl.marker("SANITY CHECK START")
        rl.marker("SANITY CHECK END", "batches=2 time=0.10s")
        for ep in range(epochs):
            rl.epoch(ep)
        rl.line("INFO", f"Training finished: {epochs} epochs in 35.2s")
    t = max(rl.t for rl in rls)
    train_log(logs, [(T0, "INFO", f"Rank 0/{world}", "Starting training..."),
                     (t, "INFO", f"Rank 0/{world}", f"Training finished: {epochs} epochs in 35.2s")]
              + [(t + 1, "INFO", "Launcher", f"Rank {r} (pid {1000 + r}) exited with code 0") for r in range(world)], ts)
    return rls


def kinds(report: dict) -> list[str]:
    return [f["kind"] for f in report["findings"]]


def finding(report: dict, kind: str) -> dict:
    return next(f for f in report["findings"] if f["kind"] == kind)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    d = tmp_path / "out" / "logs"
    d.mkdir(parents=True)
    return d


def test_diagnose_ddp_hang_names_arrived_and_missing_ranks(logs):
    rls = [RankLog(logs, r, 4) for r in range(4)]
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
    rls = [RankLog(logs, r, 2) for r in range(2)]
    rls[0].epoch(0)
    rls[1].epoch(0)
    rls[0].train(1)  # rank 0 waits after TRAINING END ...
    rls[1].t = NOW - 40 - 8 * 3
    rls[1].train(1, batches=8, end=False)  # ... rank 1 is still writing steps a minute later
    rls[0].t = NOW - 1000
    rls[0].marker("EPOCH 1 TRAINING END", "batches=8 time=1.23s")
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "ddp_sync")
    assert f["ranks"] == [1] and "still writing progress" in f["message"] and "more batches" in f["message"]


def test_diagnose_silent_rank_names_open_shard_and_stack_dump(logs):
    rls = [RankLog(logs, r, 4) for r in range(4)]
    for rl in rls:
        rl.epoch(0)
    stuck = rls[2]
    stuck.train(1, end=False, finish_last=False)  # last shard opened, never finished
    stuck.line("ERROR", "HANG SUSPECTED: no progress for 605 s in training (last event: Training step 6 at x)", dt=605)
    stuck.line("ERROR", "Stack dump of rank 2 (pid 1002), reason: hang")
    dump_line = sum(1 for _ in open(stuck.path))
    stuck.raw("Thread 0x00007f0000000001 (most recent call first):\n"
              '  File "/usr/lib/python3/torch/utils/data/dataloader.py", line 1133 in _try_get_data\n'
              '  File "/usr/lib/python3/torch/utils/data/dataloader.py", line 1294 in _get_data\n'
              '  File "/work/ae_train/train.py", line 88 in fit\n\n'
              "Current thread 0x00007f0000000002 (most recent call first):\n"
              '  File "/work/ae_train/callbacks/watchdog.py", line 50 in _dump\n')
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
    rls = [RankLog(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.epoch(0)
        rl.train(1, end=False)
        rl.line("ERROR", "HANG SUSPECTED: no progress for 600 s in training (last event: Training step 6 at x)", dt=600)
        rl.line("ERROR", f"Stack dump of rank {rl.rank} (pid {1000 + rl.rank}), reason: hang")
        frame = "_try_get_data" if rl.rank == 1 else "all_reduce"
        rl.raw(f'Thread 0x1 (most recent call first):\n  File "/x.py", line 1 in {frame}\n')
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "stuck_in_phase" and f["ranks"] == [1] and "Most likely stuck first" in f["message"]


def test_diagnose_short_hang_timeout_on_live_run_finds_stuck_rank(logs):
    # Issue 4's FIFO case: hang_timeout_s=10, diagnose runs seconds later; rank 0 waits in backward's
    # all_reduce, rank 1's worker is blocked opening a shard, so its main thread waits for data.
    rls = [RankLog(logs, r, 2, t=NOW - 60) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False, finish_last=rl.rank != 1)
        rl.line("ERROR", "HANG SUSPECTED: no progress for 10 s in training (last event: Training step 6 at x)", dt=10)
        rl.line("ERROR", f"Stack dump of rank {rl.rank} (pid {1000 + rl.rank}), reason: hang")
        frame = "_try_get_data" if rl.rank == 1 else "_engine_run_backward"
        rl.raw(f'Thread 0x1 (most recent call first):\n  File "/x.py", line 1 in {frame}\n')
    rep = diagnose_run(logs, now=NOW)
    assert rep["stall_after_s"] == 10 and rep["state"] == "stalled"
    f = rep["findings"][0]
    assert f["kind"] == "stuck_in_phase" and f["ranks"] == [1]
    assert "/data/train-0100007.tar" in f["message"] and "waits for DataLoader workers" in f["message"]


def test_diagnose_all_at_train_end_splits_ranks_by_stack_dump(logs):
    rls = [RankLog(logs, r, 3) for r in range(3)]
    for rl in rls:
        rl.train(0)
        rl.line("ERROR", "HANG SUSPECTED: no progress for 600 s in train_end (last event: x)", dt=600)
        rl.line("ERROR", f"Stack dump of rank {rl.rank} (pid {1000 + rl.rank}), reason: hang")
        frame = "time.sleep" if rl.rank == 2 else "barrier"
        rl.raw(f'Thread 0x1 (most recent call first):\n  File "/x.py", line 1 in {frame}\n')
    f = diagnose_run(logs, now=NOW)["findings"][0]
    assert f["kind"] == "ddp_sync" and f["ranks"] == [2]
    assert "ranks 0, 1 wait in a collective; rank 2 did not reach it" in f["message"]


def test_diagnose_single_rank_hang_alert_on_live_run(logs):
    rl = RankLog(logs, 0, 1, t=NOW - 100)
    rl.train(0, end=False)
    rl.line("ERROR", "HANG SUSPECTED: no progress for 605 s in validation (last event: x)")
    rl.t = NOW - 50
    rl.line("DEBUG", "Validation step 3, loss=0.1 (epoch 0)")  # progress after the alert, no "resumed" yet
    f = diagnose_run(logs, now=NOW)["findings"][0]
    assert f["kind"] == "hang_alert" and "no progress for 605 s in validation" in f["message"]


def test_diagnose_debug_off_long_epochs_are_not_a_hang(logs):
    rl = RankLog(logs, 0, 1, t=NOW - 3000)
    for ep in range(3):  # INFO only: markers 15 minutes apart, no step or shard lines
        rl.marker(f"EPOCH {ep} TRAINING START")
        rl.marker(f"EPOCH {ep} TRAINING END", "batches=9000 time=900.0s")
        rl.t += 898
    rl.marker("EPOCH 3 TRAINING START")
    rl.t = NOW
    rep = diagnose_run(logs, now=NOW + 480)  # 8 minutes into the epoch
    assert rep["state"] == "running" and kinds(rep) == ["running"]


def test_diagnose_after_validation_end_points_to_checkpoint(logs):
    rls = [RankLog(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.epoch(0)
        rl.epoch(1)
    rls[0].line("INFO", "Saving checkpoint /out/checkpoints/last.ckpt")
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "checkpoint_or_scheduler" and "checkpoint saving or the LR scheduler" in f["message"]
    assert "/out/checkpoints/last.ckpt" in f["message"]
    assert {r["phase"] for r in rep["ranks"]} == {"val_end"}


def test_diagnose_lightning_order_train_end_after_val_end_is_epoch_end(logs):
    rl = RankLog(logs, 0, 1)
    rl.train(0, end=False)
    rl.validate(0)
    rl.marker("EPOCH 0 TRAINING END", "batches=8 time=1.23s")
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
    rls = [RankLog(logs, r, 2) for r in range(2)]
    rls[0].epoch(0, files=(5, 1), planned=[10, 2])
    rls[1].epoch(0, files=(2, 2), batches=6)
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "uneven_assignment")
    assert "train_shards epoch 0: workers got 1 to 5 of 12 files, 2 to 10 batches" in f["message"]
    assert "rank 0 worker 0: 5 files, 10 batches" in f["message"]
    assert "rank 0 8, rank 1 6" in finding(rep, "uneven_batches")["message"]


def test_diagnose_sample_range_split_is_not_uneven_and_completed_names_split(logs):
    # The reader's real lines: 2 val files over 2 workers as sample ranges, and the split ends COMPLETED.
    rl = RankLog(logs, 0, 1)
    rl.line("INFO", "Processing 0/2 files from val_shards (epoch 0, 0 samples, 0 batches)", 1)
    rl.line("INFO", "Processing 2/2 files from val_shards (epoch 0, 256 samples, 1 batches)", 0)
    rl.line("INFO", "Processing 3/8 files from train_shards (epoch 0, 1024 samples, 4 batches)", 1)  # same tag
    rl.line("INFO", "COMPLETED iteration, total samples: 0 (epoch 0, batches 0, shards 0, errors 0, 0.0s, val_shards)", 1)
    rep = diagnose_run(logs, now=NOW)
    assert "uneven_assignment" not in kinds(rep)
    assert rep["ranks"][0]["workers"]["val_shards"] == {"epoch": 0, "started": 2, "completed": 1}
    assert rep["ranks"][0]["workers"]["train_shards"] == {"epoch": 0, "started": 1, "completed": 0}


def test_diagnose_early_completion_of_a_worker(logs):
    rl = RankLog(logs, 0, 1)
    rl.marker("EPOCH 0 TRAINING START")
    for w in range(2):
        rl.line("INFO", "Processing 2/4 files from train_shards (epoch 0, 16 samples, 2 batches)", w)
    rl.line("INFO", "COMPLETED iteration, total samples: 16 (epoch 0, batches 2, shards 2, errors 0)", 1, dt=5)
    rl.line("INFO", "COMPLETED iteration, total samples: 16 (epoch 0, batches 2, shards 2, errors 0)", 0, dt=300)
    rep = diagnose_run(logs, now=NOW)
    assert "rank 0 worker 1 COMPLETED after 5s with 2 files, rank 0 worker 0 ran 5m06s with 2 files" in finding(rep, "early_completion")["message"]


def test_diagnose_shard_errors_counted_with_last_url(logs):
    rls = finished_run(logs)
    rls[1].line("ERROR", "Error reading shard /data/train-000004.tar: truncated tar header at byte 10240", 0)
    rls[1].line("ERROR", "Error reading shard s3://b/train-000009.tar: connection reset", 1)
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "shard_errors")
    assert f["ranks"] == [1] and f["message"].startswith("2 shard read error(s) (rank 1: 2)")
    assert "s3://b/train-000009.tar: connection reset" in f["message"]
    assert rep["ranks"][1]["last_shard_error"]["url"] == "s3://b/train-000009.tar"
    assert "last shard error: s3://b/train-000009.tar" in format_report(rep)


def test_diagnose_launcher_kill_and_missing_rank(logs):
    rl = RankLog(logs, 0, 2)
    rl.epoch(0)
    train_log(logs, [(rl.t, "INFO", "Launcher", "Rank 1 (pid 1001) exited with code -9 (killed by SIGKILL)")])
    rep = diagnose_run(logs, now=NOW)
    assert rep["state"] == "stopped" and rep["missing_ranks"] == [1]
    assert "exited with code -9 (killed by SIGKILL)" in finding(rep, "launcher")["message"]
    assert "OOM killer" in finding(rep, "launcher")["message"]
    assert finding(rep, "missing_ranks")["ranks"] == [1]
    assert kinds(rep)[0] == "launcher" and "stuck_in_phase" not in kinds(rep)  # a crash, not a hang


def test_diagnose_rank_killed_after_long_silence_is_still_a_hang(logs):
    rls = [RankLog(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    train_log(logs, [(rls[0].t + 3600, "ERROR", "Launcher", "Rank 1 (pid 1001) exited with code -9 (killed by SIGKILL)")])
    rep = diagnose_run(logs, now=NOW)
    assert kinds(rep)[:2] == ["launcher", "stuck_in_phase"]


def test_diagnose_tolerates_torn_unknown_and_continuation_lines(logs):
    rl = RankLog(logs, 0, 1)
    rl.train(0, end=False)
    rl.line("ERROR", "Uncaught exception: ValueError: boom")
    rl.raw("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: boom\n")
    rl.raw("\xff\xfe garbage that is not a log line ] [ at all")
    rl.raw("[E ProcessGroupNCCL.cpp:475] Watchdog caught collective operation timeout: WorkNCCL(OpType=ALLREDUCE)")
    rl.line("INFO", "some unknown message from a library")
    rl.f.write(f"{stamp(rl.t + 1)} [DEBUG] [Rank 0/1] Training st")  # torn last line, no newline
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
    RankLog(logs, 0, 1, ts="20261129_020202").train(0, end=False)
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
    rls = [RankLog(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.epoch(0)
    rls[1].line("ERROR", "HANG SUSPECTED: no progress for 605 s in validation (last event: x)", dt=605)
    rls[1].line("ERROR", "Error reading shard /data/x.tar: boom")
    out = tmp_path / "timeline.png"
    assert main([str(logs), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from ae_train.diagnose.plot import draw
    legend = [t.get_text() for t in draw(diagnose_run(logs, now=NOW)).axes[0].get_legend().get_texts()]
    assert "silent (no progress)" in legend  # rank 0 went silent while rank 1 went on: a stalled run


def test_diagnose_plot_finished_run_is_not_silent_and_time_labels_differ(logs):
    pytest.importorskip("matplotlib")
    from ae_train.diagnose.plot import draw
    rls = finished_run(logs)
    rls[0].line("INFO", "late line of rank 0", dt=300)  # rank 1 ended 5 minutes before the run did
    fig = draw(diagnose_run(logs, now=NOW))
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 3 and len(set(labels)) == len(labels)
    assert "silent (no progress)" not in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert fig.axes[1].get_title() == "time split" and len(fig.axes[1].patches) == 2  # old lines: data wait only


def test_diagnose_plot_time_labels_as_fine_as_needed():
    from datetime import timedelta

    from ae_train.diagnose.plot import _time_labels
    t0, t1 = datetime(2026, 11, 29, 23, 59, 58), datetime(2026, 11, 29, 10, 0, 0)
    assert _time_labels([t1 + timedelta(minutes=i) for i in range(3)]) == ["10:00", "10:01", "10:02"]
    assert _time_labels([t1 + timedelta(seconds=20 * i) for i in range(3)]) == ["10:00:00", "10:00:20", "10:00:40"]
    assert _time_labels([t1 + timedelta(seconds=0.2 * i) for i in range(3)]) == ["10:00:00.000", "10:00:00.200",
                                                                                   "10:00:00.400"]
    assert _time_labels([t0, t0 + timedelta(minutes=10)]) == ["11-29 23:59", "11-30 00:09"]  # the date when it changes



def test_diagnose_plot_without_matplotlib_says_pip_install(logs, capsys, monkeypatch):
    finished_run(logs)
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert main([str(logs), "--plot", "x.png"]) == 2
    assert 'pip install "ae-train[plot]"' in capsys.readouterr().err


def test_diagnose_imports_no_heavy_modules():
    code = ("import sys, time; t = time.perf_counter(); import ae_train.diagnose, ae_train.collect; "
            "bad = {'torch', 'lightning', 'pytorch_lightning', 'numpy', 'matplotlib'} & set(sys.modules); "
            "print(sorted(bad), time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[0] == "[]" and float(out[1]) < 0.5

