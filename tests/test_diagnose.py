"""`ae-train diagnose` on logs written through the writers' own templates (ae_train.logformat) and the
logging setup's line format: no line is typed here, so the tests follow the writers when they change.
The real runs (hangs, errors, stragglers) are in test_watchdog.py, test_faults.py and test_diagnose_speed.py."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from ae_train import logformat as lf
from ae_train.diagnose import diagnose_run, format_report, main
from ae_train.logs import FORMAT

TS = "20261129_050102"
NOW = time.time()
T0 = NOW - 7200  # runs start two hours back: a run whose lines stop early is long silent
FORMATTER = logging.Formatter(FORMAT)  # the log files' formatter (ae_train.logs)
DATA_ONLY = lf.format_split([3.1])  # `data wait 3.1%`: progress lines as written before the full split


def log_line(t: float, level: str, tag: str, template: str, *args) -> str:
    """One line as the logging setup writes a record logged at time t (local time, milliseconds)."""
    rec = logging.LogRecord("ae_train", getattr(logging, level), __file__, 0, template, args or None, None)
    ms = round(t * 1000)
    rec.created, rec.msecs, rec.tag = ms / 1000, ms % 1000, tag
    return FORMATTER.format(rec) + "\n"


def dump_text(who: str, pid: int, reason: str, threads: list[tuple[str, list[str]]]) -> tuple[str, str]:
    """A stack dump record as stacks.py logs it (template, text): per thread its name and innermost-first frames."""
    lines = [lf.DUMP.template % (who, pid, reason)]
    for i, (name, funcs) in enumerate(threads):
        lines.append(lf.DUMP_THREAD % (0x7F0000000001 + i, name))
        lines += [lf.DUMP_FRAME % ("/x.py", 1, f) for f in funcs]
    return "%s", "\n".join(lines)


class RankWriter:
    """Writes one debug log through the writers' templates, as a rank and its K DataLoader workers do."""

    def __init__(self, logs: Path, rank: int, world: int, ts: str = TS, workers: int = 2, host: str = "node1",
                 pid: int | None = None, t: float = T0):
        self.path = logs / f"debug_rank{rank}_{ts}.log"
        self.rank, self.world, self.K, self.t = rank, world, workers, t
        self.tag = lf.RANK_TAG % (rank, world)
        self.f = open(self.path, "a", encoding="utf-8")
        self.log("INFO", lf.HEADER, rank, world, host, pid or 1000 + rank, rank, 0, "cpu", ts, "3.11.7", "2.13.0",
                 "2.6.6")

    def log(self, level: str, msg: lf.Message | str, *args, worker: int | None = None, dt: float = 1.0) -> None:
        """A record logged dt seconds after the previous one; msg: a logformat Message, or another logger's text."""
        self.t += dt
        tag = self.tag if worker is None else lf.WORKER_TAG % (self.rank, self.world, worker, self.K)
        self.f.write(log_line(self.t, level, tag, msg.template if isinstance(msg, lf.Message) else msg, *args))
        self.f.flush()

    def raw(self, text: str) -> None:
        """Output that bypasses logging (C++ through fd 2, a torn line)."""
        self.f.write(text if text.endswith("\n") or not text else text + "\n")
        self.f.flush()

    def dump(self, who: str, pid: int, reason: str, threads: list[tuple[str, list[str]]], dt: float = 1.0) -> int:
        """A stack dump (stacks.dump); returns the line number of its `Stack dump of` line."""
        self.f.flush()
        n = sum(1 for _ in open(self.path, encoding="utf-8")) + 1
        self.log("INFO", *dump_text(who, pid, reason, threads), dt=dt)
        return n

    def start(self, what: str, note: str = "") -> None:
        self.log("INFO", lf.MARKER_START.template + note, what)

    def end(self, what: str, batches: int, secs: float) -> None:
        self.log("INFO", lf.MARKER_END, what, batches, secs)

    def step(self, b: int, ep: int, gstep: int, split: str = DATA_ONLY, clock: str = "cpu clock",
             rate: float = 12000, loss: float = 0.0987) -> None:
        self.log("DEBUG", lf.TRAINING_STEP, b, loss, b + 1, ep, gstep, rate, split, clock, 812, 0)

    def train(self, ep: int, batches: int = 8, files=(2, 2), end: bool = True, finish_last: bool = True,
              planned=None, split: str = DATA_ONLY, clock: str = "cpu clock", read_s=None) -> None:
        """One training epoch: workers start, shards open/finish, steps every 2 batches, COMPLETED, END.
        `split`: the progress lines' time split; `read_s(b)`: seconds from batch b's shard Opening to Finished."""
        self.start(lf.TRAINING % ep)
        per = batches // self.K
        planned = planned or [per] * self.K
        for w in range(self.K):
            self.log("INFO", lf.WORKER_STARTED, 20000 + 100 * self.rank + 10 * ep + w, worker=w)
            self.log("INFO", lf.PROCESSING, files[w], sum(files) * self.world, "train_shards", ep, planned[w] * 8,
                     planned[w], worker=w)
        for b in range(batches):
            w = b % self.K
            url = f"/data/train-{self.rank:02d}{ep:02d}{b:03d}.tar"
            self.log("DEBUG", lf.OPENING, url, 0, 8, 8, worker=w)
            if finish_last or b < batches - 1:
                self.log("DEBUG", lf.FINISHED_SHARD, url, 8, 0.052, worker=w, dt=read_s(b) if read_s else 1.0)
            if b % 2 == 0:
                self.step(b, ep, ep * batches + b + 1, split, clock)
        if not end:
            return
        for w in range(self.K):
            self.log("INFO", lf.COMPLETED, per * 8, ep, per, files[w], 0, 0.6, "train_shards", worker=w)
        self.end(lf.TRAINING % ep, batches, 1.23)

    def validate(self, ep: int, batches: int = 4, end: bool = True) -> None:
        self.start(lf.VALIDATION % ep)
        for v in range(batches):
            self.log("DEBUG", lf.VAL_STEP, v, 0.105, ep)
        if end:
            self.end(lf.VALIDATION % ep, batches, 0.2)

    def epoch(self, ep: int, **kw) -> None:
        self.train(ep, **kw)
        self.validate(ep)


RankLog = RankWriter  # the name tests/test_collect.py imports


def train_log(logs: Path, lines: list[tuple], ts: str = TS) -> Path:
    """The train log: (time, level, tag, Message or template, *args) per record."""
    p = logs / f"train_{ts}.log"
    with open(p, "a", encoding="utf-8") as f:
        for t, level, tag, msg, *args in lines:
            f.write(log_line(t, level, tag, msg.template if isinstance(msg, lf.Message) else msg, *args))
    return p


def finished_run(logs: Path, world: int = 2, epochs: int = 2, ts: str = TS) -> list[RankWriter]:
    """A clean run: every rank does every epoch, the train log says finished."""
    rls = [RankWriter(logs, r, world, ts) for r in range(world)]
    for rl in rls:
        rl.start(lf.SANITY)
        rl.end(lf.SANITY, 2, 0.1)
        for ep in range(epochs):
            rl.epoch(ep)
        rl.log("INFO", lf.FINISHED_RUN, epochs, 35.2)
    t = max(rl.t for rl in rls)
    train_log(logs, [(T0, "INFO", lf.LAUNCHER_TAG, lf.STARTING, world, 1, "cpu", ts),
                     (t, "INFO", lf.RANK_TAG % (0, world), lf.FINISHED_RUN, epochs, 35.2)], ts)
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
    assert "exited with code -9 (killed by SIGKILL)" in finding(rep, "launcher")["message"]
    assert "OOM killer" in finding(rep, "launcher")["message"]
    assert finding(rep, "missing_ranks")["ranks"] == [1]
    assert kinds(rep)[0] == "launcher" and "stuck_in_phase" not in kinds(rep)  # a crash, not a hang


def test_diagnose_rank_killed_after_long_silence_is_still_a_hang(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False)
    train_log(logs, [(rls[0].t + 3600, "ERROR", lf.LAUNCHER_TAG, lf.EXITED, 1, 1001, "code -9 (killed by SIGKILL)")])
    rep = diagnose_run(logs, now=NOW)
    assert kinds(rep)[:2] == ["launcher", "stuck_in_phase"]


def test_diagnose_tolerates_torn_unknown_and_continuation_lines(logs):
    rl = RankWriter(logs, 0, 1)
    rl.train(0, end=False)
    rl.log("ERROR", "Uncaught exception%s: %s: %s", "", "ValueError", "boom")  # logs.py's excepthook
    rl.raw("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: boom\n")
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


def test_diagnose_plot_finished_run_is_not_silent_and_time_labels_differ(logs):
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

