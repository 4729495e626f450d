"""Helpers shared by test modules (test modules never import each other).

- `markers`: the epoch markers of a debug log, in file order.
- `RankWriter`, `train_log`, `finished_run`: logs for `ae-train diagnose` and `ae-train collect`,
  every line formatted through the writers' own templates (ae_train.logformat) and the logging
  setup's line format (ae_train.logs.FORMAT), in the files RunDir names: no line or file name is
  typed here, so the tests follow the writers.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from ae_train import logformat as lf
from ae_train.logs import FORMAT
from ae_train.rundir import RunDir

MARKER = re.compile(r"========== (SANITY CHECK|EPOCH (\d+) (TRAINING|VALIDATION)) (START|END) ==========(?: batches=(\d+))?")


def markers(text: str) -> list[tuple[str, str | None]]:
    """[(name, batches)] in file order, e.g. ('EPOCH 0 TRAINING END', '36')."""
    return [(f"{m.group(1)} {m.group(4)}", m.group(5)) for m in MARKER.finditer(text)]


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
        self.path = RunDir.of_logs(logs).debug_log(rank, ts)
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

    def through(self, writer, *args, level: int = logging.DEBUG, dt: float = 1.0) -> None:
        """Call a real writer function: what it logs through the `ae_train` loggers lands in this file,
        formatted as the logging setup does, dt seconds after the previous record."""
        class Capture(logging.Handler):
            def emit(inner, rec: logging.LogRecord) -> None:
                self.t += dt
                ms = round(self.t * 1000)
                rec.created, rec.msecs, rec.tag = ms / 1000, ms % 1000, self.tag
                self.f.write(FORMATTER.format(rec) + "\n")

        logger = logging.getLogger("ae_train")
        handler, saved = Capture(level), logger.level
        logger.addHandler(handler)
        logger.setLevel(level)
        try:
            writer(*args)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved)
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



def train_log(logs: Path, lines: list[tuple], ts: str = TS) -> Path:
    """The train log: (time, level, tag, Message or template, *args) per record."""
    p = RunDir.of_logs(logs).train_log(ts)
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


def ledger_lines(logs: Path, ts: str | None = None) -> list[tuple[int, str, int, int, list[str]]]:
    """(rank, run ts, epoch, global step, keys) of every line of the sample ledgers in `logs` (one run's with ts)."""
    out = []
    for path in sorted(logs.glob(f"samples_rank*_{ts or '*'}.tsv")):
        m = re.fullmatch(r"samples_rank(\d+)_(\d{8}_\d{6})\.tsv", path.name)
        lines = path.read_text().splitlines()
        assert lines[0] == "epoch\tglobal_step\tkeys", lines[:1]
        for line in lines[1:]:
            epoch, step, keys = line.split("\t")
            out.append((int(m[1]), m[2], int(epoch), int(step), keys.split(",")))
    return out


def run_ts(console: str) -> str:
    """The run timestamp a launcher's console names (`Logs: .../train_<ts>.log and ...`)."""
    return re.search(r"Logs: \S+/train_(\d{8}_\d{6})\.log", console)[1]
