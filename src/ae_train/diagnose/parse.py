"""Log files -> typed per-rank records: the one pass of `ae-train diagnose` over a run's logs.

Standard library only and log files only (the line formats are ae_train.logformat, documented in
docs/LOG_FORMAT.md). Each file is read once, line by line, in binary (a torn UTF-8 sequence cannot stop
it), keeping per-rank state only: the hot path (step and shard lines, the bulk of a debug log) costs two
bounded `find`s and one slice compare; everything else is rare and parsed with logformat's patterns.
Big runs scan their files in parallel processes. Times are the logs' own local times, so ages are right
when diagnosing on a machine in the run's time zone.
"""
from __future__ import annotations

import bisect
import heapq
import logging
import os
from collections import deque
from pathlib import Path

from ae_train import logformat as lf
from ae_train.rundir import RunDir
from ae_train.diagnose.records import (Checks, EpochEnd, Hang, Mark, Marker, Phase, ShardError, Stamped, StackDump,
                                       TrainLog, WorkerLoad, line_time, text, worker_of)

log = logging.getLogger(__name__)
# Phase code -> where it is inside an epoch, and its text.
PHASES = {"starting": Phase(-3, "starting (no marker yet)"), "sanity": Phase(-2, "sanity check"),
          "after_sanity": Phase(-1, "after sanity check"), "training": Phase(1, "training"),
          "train_end": Phase(2, "between training end and validation start"), "validation": Phase(3, "validation"),
          "val_end": Phase(4, "after validation end"), "finished": Phase(5, "finished")}
# Stack dump frames that tell what the main thread waits for (faulthandler and traceback styles).
# Ordered by priority: a main thread waiting for data explains more than a logger thread reading a file.
WAITS = (("data", (b" _next_data", b" _get_data", b" _try_get_data")),
         ("collective", (b"distributed_c10d", b" all_reduce", b" barrier", b" broadcast", b" all_gather",
                         b" backward", b"_engine_run_backward")),
         ("io", (b"tarfile", b" gopen", b" in open", b" in _open", b" in read", b" readinto")))
WAIT_ORDER = [kind for kind, _ in WAITS]
# Raw lines (C++ output through fd 2) that name a distributed failure.
RAW_ALERTS = (b"Watchdog caught collective", b"collective operation timeout", b"NCCL error", b"ncclInternalError",
              b"Connection reset by peer", b"Connection closed by peer", b"Gloo connectFullMesh failed")
CAP = 2000  # markers and alerts kept per rank for the plot (the latest); counts go on regardless
STEPS_KEPT = 21  # the latest progress lines per rank: their time split says why the run is slow now
SLOW_KEPT = 5    # the slowest shards per rank (Opening to Finished)
DUMPS_KEPT = 4   # the latest stack dumps per rank
FRAMES_KEPT = 8  # innermost frames kept per dump (one per thread, main thread first)
LAUNCHER_KEPT = 50  # launcher lines (exits, signals) kept from the train log
# The hot path compares one slice of the message's first HEAD bytes with these constants.
HEAD = 14
OPENING, FINISHED = lf.OPENING.head[:HEAD], lf.FINISHED_SHARD.head[:HEAD]
STEP, VAL_STEP = lf.TRAINING_STEP.head[:HEAD], lf.VAL_STEP.head[:HEAD]

# The literal start of each rarer message, bound once: the rare path tests a line against several of them.
CHECKING_HEAD = lf.CHECKING.head
COMPLETED_HEAD = lf.COMPLETED.head
COUNT_STALLED_HEAD = lf.COUNT_STALLED.head
DUMP_HEAD = lf.DUMP.head
FINISHED_RUN_HEAD = lf.FINISHED_RUN.head
HANG_HEAD = lf.HANG.head
HEADER_HEAD = lf.HEADER.head
PROCESSING_HEAD = lf.PROCESSING.head
RECEIVED_HEAD = lf.RECEIVED.head
LAUNCHER_KEPT_HEADS = (lf.EXITED.head, lf.RANK_STOPPED.head, RECEIVED_HEAD)  # a rank's exit, a signal to the launcher
RESOURCES_HEAD = lf.RESOURCES.head
RESUMED_HEAD = lf.RESUMED.head
SAVED_HEAD = lf.SAVED.head
SAVING_HEAD = lf.SAVING.head
SHARD_ERROR_HEAD = lf.SHARD_ERROR.head
STARTING_HEAD = lf.STARTING.head
WORKER_STARTED_HEAD = lf.WORKER_STARTED.head
ALERT_HEADS = (HANG_HEAD, RESUMED_HEAD)
DUMP_BODY_HEADS = (*lf.DUMP_THREAD_HEADS, lf.DUMP_FRAME_HEAD)
LAUNCHER = lf.LAUNCHER_TAG.encode()


class DiagnoseError(Exception):
    """Bad input: the CLI prints it as one line and exits 2."""


def _sod(line: bytes) -> float:
    """Seconds of the day of a line's time stamp: cheap, for the hot path's differences."""
    return int(line[11:13]) * 3600 + int(line[14:16]) * 60 + int(line[17:19]) + int(line[20:23]) / 1000


class RankLog:
    """One debug log after its pass. Bounded: per worker, per epoch, a few dumps, CAP plot events."""

    def __init__(self, path: Path, rank: int):
        self.path, self.rank, self.world, self.header = path, rank, None, {}
        self.lines, self.last, self.last_step, self.prev_step, self.step_n, self.last_val = 0, None, None, None, 0, None
        self.phase, self.epoch, self.in_sanity, self.marker, self.marker_n = "starting", None, False, None, 0
        self.starts = deque(maxlen=2)      # times of the last two TRAINING START markers: an epoch's length
        self.timeline = deque(maxlen=CAP)  # Mark at each marker: the latest matter most
        self.train_end: dict = {}          # epoch -> EpochEnd
        self.val_end: dict = {}
        self.pending: dict = {}            # worker tag -> its Opening shard line without a Finished yet
        self.split: dict = {}              # worker tag -> split of its latest Processing line
        self.loads: dict = {}              # (split, epoch) -> {worker tag: WorkerLoad}
        self.pids: dict = {}
        self.errors = self.shard_errors = self.hangs = 0
        self.last_error: Stamped | None = None
        self.last_shard_error: ShardError | None = None
        self.last_hang: Hang | None = None
        self.ckpt: Stamped | None = None
        self.finished: Stamped | None = None
        self.raw_alert, self.hang_active, self.events = None, False, deque(maxlen=CAP)
        self.dumps, self.dump, self.dump_n, self.t_rare = deque(maxlen=DUMPS_KEPT), None, 0, None
        self.steps = deque(maxlen=STEPS_KEPT)  # the latest progress lines
        # Shards read (Opening to Finished, from the time stamps: it includes the open and read, whatever
        # the reader's own figure covers): how many, and a min-heap of the slowest (s, line no, line).
        self.shard_n, self.slow_shards = 0, []

    def scan(self) -> "RankLog":
        pending, rare, last, last_step, prev_step, step_n, last_val, n = self.pending, self._rare, None, None, None, 0, None, 0
        steps, slow, shard_n, slow_min = self.steps, self.slow_shards, 0, -1.0
        # Locals, not globals: a name lookup per line and comparison costs measurably over millions of lines.
        opening, finished, step, val_step, end = OPENING, FINISHED, STEP, VAL_STEP, 2 + HEAD
        with open(self.path, "rb", buffering=1 << 20) as f:
            for n, line in enumerate(f, 1):
                k = line.find(b"] [", 24, 40)  # end of `[LEVEL]`; -1: continuation or torn line
                m = line.find(b"] ", k + 3) if k > 0 else -1  # end of `[TAG]`
                if m < 0:
                    self._raw(line, n)
                    continue
                # One HEAD-byte slice compared with constants: cheaper than a chain of startswith calls.
                head = line[m + 2:m + end]
                if head == opening:
                    pending[line[k + 3:m]] = last = line
                elif head == finished:  # a worker reads one shard at a time
                    opened = pending.pop(line[k + 3:m], None)
                    last = line
                    if opened is not None:
                        shard_n += 1
                        try:  # same minute (nearly always): one int() per line, `SS` + `mmm` as milliseconds
                            if line[:16] == opened[:16]:
                                d = (int(line[17:19] + line[20:23]) - int(opened[17:19] + opened[20:23])) / 1000
                            else:
                                d = _sod(line) - _sod(opened)
                                d += 86400 if d < 0 else 0  # across midnight
                        except ValueError:
                            continue
                        if d > slow_min:
                            (heapq.heappush if len(slow) < SLOW_KEPT else heapq.heapreplace)(slow, (d, n, line))
                            slow_min = slow[0][0] if len(slow) == SLOW_KEPT else -1.0
                elif head == step:
                    prev_step, last_step, last, step_n = last_step, line, line, n
                    steps.append(line)
                elif head == val_step:
                    last_val = last = line
                elif rare(line, k, m, m + 2, n):
                    last = line
        self.lines, self.last, self.last_step, self.prev_step, self.step_n, self.last_val = n, last, last_step, prev_step, step_n, last_val
        self.shard_n = shard_n
        return self

    def _raw(self, line: bytes, n: int) -> None:
        """A line without the prefix: stack dump body, traceback, C++ output, or a torn last line."""
        if self.dump is not None and n != self.dump_n + 1:
            self.dump = None  # a dump is one unbroken block of lines
        if line.startswith(DUMP_HEAD):
            self._dump_start(line, n, None)
        elif self.dump is not None:
            self.dump_n = n
            self._dump_line(line)
        elif any(a in line for a in RAW_ALERTS):
            self.raw_alert = text(line)[:300]

    def _dump_start(self, line: bytes, n: int, t: float | None) -> None:
        m = lf.DUMP.pattern.match(line)
        who, pid, reason = (text(m.group(1)), m.group(2) and int(m.group(2)), text(m.group(3))) if m else ("?", None, "?")
        self.dump = StackDump(line=n, time=t or self.t_rare, who=who, pid=pid, reason=reason)
        self.dump_n = n
        self.dumps.append(self.dump)

    def _dump_line(self, s: bytes) -> None:
        d, s = self.dump, s.strip()
        if s.startswith(lf.DUMP_THREAD_HEADS):
            d.threads += 1
            d.frame_next = True
        elif s.startswith(lf.DUMP_FRAME_HEAD):
            if d.frame_next and len(d.frames) < FRAMES_KEPT:  # innermost frame of each thread comes first
                d.frames.append(text(s))
            d.frame_next = False
            for i, (kind, pats) in enumerate(WAITS):
                if any(x in s for x in pats):
                    if d.waits is None or i < WAIT_ORDER.index(d.waits):
                        d.waits = kind
                    break

    def _rare(self, line: bytes, k: int, m: int, p: int, n: int) -> bool:
        """Any line but steps and shard open/finish. Returns False for watchdog lines, which are not progress."""
        s = line[p:].rstrip(b"\r\n")
        if self.dump is not None:  # dump lines may also come prefixed (through the stderr logger)
            if n == self.dump_n + 1 and s.lstrip().startswith(DUMP_BODY_HEADS):
                self.dump_n = n
                self._dump_line(s)
                return False
            self.dump = None
        tag = line[k + 3:m]
        t = self.t_rare = line_time(line)  # also the time of a raw dump header, which has none of its own
        if s.startswith(lf.MARKER_PREFIX):
            self._marker(s, t, n)
        elif s.startswith(PROCESSING_HEAD):
            self._processing(s, tag, t)
        elif s.startswith(COMPLETED_HEAD):
            self._completed(s, tag, t)
        elif s.startswith(SHARD_ERROR_HEAD):
            self._shard_error(s, tag, t)
        elif s.startswith(HANG_HEAD):
            mm = lf.HANG.pattern.match(s)
            self.hangs, self.hang_active = self.hangs + 1, True
            self.last_hang = Hang(t, *(text(g) for g in mm.groups())) if mm else Hang(t, "?", "?", text(s))
            self.events.append(Mark(t, "hang"))
            return False
        elif s.startswith(DUMP_HEAD):
            self._dump_start(s, n, t)
            return False
        elif s.startswith(RESOURCES_HEAD):
            return False
        elif s.startswith(RESUMED_HEAD):
            self.hang_active = False
            return False
        elif s.startswith(WORKER_STARTED_HEAD):
            mm = lf.WORKER_STARTED.pattern.match(s)
            if mm:
                self.pids[int(mm.group(1))] = f"rank {self.rank} worker {worker_of(tag)}"
            self.pending.pop(tag, None)
        elif s.startswith(HEADER_HEAD):
            self._header(s, t)
        elif s.startswith(SAVING_HEAD):
            self.ckpt = Stamped(t, text(s[len(SAVING_HEAD):]))
        elif s.startswith(SAVED_HEAD):
            self.ckpt = None
        elif s.startswith(FINISHED_RUN_HEAD):
            self.finished, self.phase = Stamped(t, text(s)), "finished"
            self.timeline.append(Mark(t, "finished"))
        elif line.startswith(b"[ERROR]", 24) or line.startswith(b"[CRITICAL]", 24):
            self.errors += 1
            self.last_error = Stamped(t, text(s)[:300])
            self.events.append(Mark(t, "error"))
        if self.world is None and (mm := lf.TAG.match(tag)):
            self.world = int(mm.group(2))
        return True

    def _processing(self, s: bytes, tag: bytes, t: float | None) -> None:
        mm = lf.PROCESSING.pattern.match(s)
        if mm:
            split, ep = text(mm.group(3)), int(mm.group(4))
            self.split[tag] = split
            self.pending.pop(tag, None)  # a new iteration: an old open shard was abandoned, not stuck
            self.loads.setdefault((split, ep), {})[tag] = WorkerLoad(files=int(mm.group(1)), of=int(mm.group(2)),
                                                                     started=t, planned=int(mm.group(6)))

    def _completed(self, s: bytes, tag: bytes, t: float | None) -> None:
        mm = lf.COMPLETED.pattern.match(s)
        if mm:
            split = text(mm.group(4)) if mm.group(4) else self.split.get(tag)
            rec = self.loads.get((split, int(mm.group(2))), {}).get(tag)
            if rec is not None:
                rec.completed, rec.batches = t, int(mm.group(3))
            self.pending.pop(tag, None)

    def _shard_error(self, s: bytes, tag: bytes, t: float | None) -> None:
        mm = lf.SHARD_ERROR.pattern.match(s)
        self.shard_errors += 1
        self.last_shard_error = ShardError(t, text(mm.group(1)), text(mm.group(2))) if mm else ShardError(t, "?", text(s))
        o = self.pending.get(tag)
        if mm and o is not None and mm.group(1) in o:
            del self.pending[tag]
        self.events.append(Mark(t, "error"))

    def _header(self, s: bytes, t: float | None) -> None:
        mm = lf.HEADER.pattern.match(s)
        if mm:
            self.world = int(mm.group(2))
            self.header = dict(kv.split("=", 1) for kv in text(mm.group(3)).split() if "=" in kv)
            self.timeline.append(Mark(t, "starting"))  # the lane of the plot begins with the process
            if self.header.get("pid", "").isdigit():
                self.pids[int(self.header["pid"])] = f"rank {self.rank}"

    def _marker(self, s: bytes, t: float | None, n: int) -> None:
        mm = lf.MARKER_START.pattern.match(s)
        if not mm:
            return
        ep, what, edge = mm.group(1) and int(mm.group(1)), mm.group(2), mm.group(3)
        b = lf.MARKER_BATCHES.search(s)
        batches = int(b.group(1)) if b else None
        if what == b"SANITY CHECK":
            self.in_sanity, phase = edge == b"START", "sanity" if edge == b"START" else "after_sanity"
        elif self.in_sanity:  # Lightning's sanity validation may write VALIDATION markers: still sanity
            return
        elif what == b"TRAINING":
            phase = "training" if edge == b"START" else "train_end"
            if edge == b"START" and t is not None:
                self.starts.append(t)
            if edge == b"END":
                self.train_end[ep] = EpochEnd(t, batches)
                if ep in self.val_end:  # Lightning 2 ends the train epoch after validation: epoch done
                    phase = "val_end"
        else:
            phase = "validation" if edge == b"START" else "val_end"
            if edge == b"END":
                self.val_end[ep] = EpochEnd(t, batches)
        self.phase, self.marker, self.marker_n = phase, Marker(text(s.split(b" batches=")[0]), t), n
        if ep is not None:
            self.epoch = ep
        self.timeline.append(Mark(t, phase))


def scan_train(path: Path) -> TrainLog:
    """The train log: launcher lines, the run's end, rank 0's checkpoints, every rank's WARNING/ERROR."""
    out, n = TrainLog(file=path.name), 0
    with open(path, "rb", buffering=1 << 20) as f:
        for n, line in enumerate(f, 1):
            k = line.find(b"] [", 24, 40)
            m = line.find(b"] ", k + 3) if k > 0 else -1
            if m < 0:
                continue
            tag, s = line[k + 3:m], line[m + 2:].rstrip()
            if not s.startswith(ALERT_HEADS):  # alerts are not the run moving
                out.last = line
            if tag == LAUNCHER:
                _launcher_line(out, line, s)
                continue
            r = lf.TAG.match(tag)
            rank = int(r.group(1)) if r else None
            if r and out.world is None:
                out.world = int(r.group(2))
            if s.startswith(FINISHED_RUN_HEAD):
                out.finished = Stamped(line_time(line), text(s))
            elif s.startswith(b"Epoch ") and lf.EPOCH_SPLIT_MARK in s:  # the latest epoch's slowest/fastest rank
                out.epoch_split = Stamped(line_time(line), text(s))
            elif s.startswith(SAVING_HEAD):
                out.ckpt = Stamped(line_time(line), text(s[len(SAVING_HEAD):]))
            elif s.startswith(SAVED_HEAD):
                out.ckpt = None
            elif s.startswith(HANG_HEAD):
                out.hangs[rank] = out.hangs.get(rank, 0) + 1
            elif line.startswith(b"[ERROR]", 24):
                out.errors[rank] = out.errors.get(rank, 0) + 1
    out.lines = n
    return out


def _launcher_line(out: TrainLog, line: bytes, s: bytes) -> None:
    if s.startswith(LAUNCHER_KEPT_HEADS) and len(out.launcher) < LAUNCHER_KEPT:
        out.launcher.append(Stamped(line_time(line), text(s)))
    elif s.startswith(CHECKING_HEAD):  # the launcher's checks before any rank
        out.checks = Checks(start=line_time(line))
    elif out.checks is not None and s.startswith(HANG_HEAD):
        out.checks.hang = Stamped(line_time(line), text(s))
    elif out.checks is not None and s.startswith(COUNT_STALLED_HEAD):
        out.checks.gave_up.append(Stamped(line_time(line), text(s)))
    elif out.checks is not None and s.startswith(STARTING_HEAD):
        out.checks.done = line_time(line)


def find_runs(logs_dir: Path) -> dict[str, dict]:
    """{ts: {"train": path|None, "debug": {rank: path}}} for every run with logs in logs_dir.

    Start-up logs left behind (`startup_rank<N>_<ts>.log`: ranks that never got through process-group
    set-up, so the attempt never named a run) count as one run per gap between real runs, keyed by the
    earliest of them, with each rank's newest start-up log as its debug log."""
    runs: dict[str, dict] = {}
    startups = []
    for p in logs_dir.iterdir():
        m = lf.RUN_FILE.fullmatch(p.name)
        if m and p.is_file():
            run = runs.setdefault(m.group(2), {"train": None, "debug": {}})
            if m.group(1) is None:
                run["train"] = p
            else:
                run["debug"][int(m.group(1))] = p
        elif (m := lf.STARTUP_FILE.fullmatch(p.name)) and p.is_file():
            startups.append((m.group(2), int(m.group(1)), p))
    keys, attempts = sorted(runs), {}
    for ts, rank, p in sorted(startups):  # ts order: a rank's newest start-up log is set last
        after = bisect.bisect_right(keys, ts)  # the real runs begun before it
        attempt = attempts.setdefault(after, {"train": None, "debug": {}, "key": ts})
        attempt["debug"][rank] = p
    for attempt in attempts.values():
        key = attempt.pop("key")
        if key in runs:  # started the very second a run was named: part of it
            for rank, p in attempt["debug"].items():
                runs[key]["debug"].setdefault(rank, p)
        else:
            runs[key] = attempt
    return runs


def resolve_run(logs_dir, run: str | None = None) -> tuple[Path, str, dict]:
    logs = Path(logs_dir)
    if not logs.is_dir():
        raise DiagnoseError(f"logs directory not found: {logs}")
    runs = find_runs(logs)
    if not runs and RunDir(logs).logs.is_dir():  # given the output dir instead of its logs/
        logs, runs = RunDir(logs).logs, find_runs(RunDir(logs).logs)
    if not runs:
        raise DiagnoseError(f"no train_<ts>.log or debug_rank<N>_<ts>.log files in {logs}")
    if run is None:
        run = max(runs)  # YYYYmmdd_HHMMSS sorts as time
    elif run not in runs:
        raise DiagnoseError(f"no logs of run {run} in {logs} (runs there: {', '.join(sorted(runs)[-5:])})")
    return logs, run, runs[run]


def _scan(item: tuple) -> RankLog | TrainLog:
    kind, path, rank = item
    return RankLog(path, rank).scan() if kind == "debug" else scan_train(path)


def scan_run(files: dict, jobs: int | None = None) -> tuple[list[RankLog], TrainLog | None]:
    """Every debug log of the run (by rank) and its train log. Files are independent: big runs spread them
    over the CPUs (a 2-core box halves the time)."""
    items = [("debug", p, r) for r, p in sorted(files["debug"].items())]
    items += [("train", files["train"], None)] if files["train"] else []
    jobs = min(len(items), jobs or os.cpu_count() or 1)
    scanned = None
    if jobs > 1 and sum(p.stat().st_size for _, p, _ in items) > 64 << 20:
        try:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(jobs) as ex:
                scanned = list(ex.map(_scan, items))
        except (OSError, RuntimeError) as e:  # no /dev/shm, no fork, a broken pool: do it here
            log.debug("parallel scan unavailable (%s), scanning sequentially", e)
    if scanned is None:
        scanned = [_scan(it) for it in items]
    train = scanned.pop() if files["train"] else None
    return scanned, train
