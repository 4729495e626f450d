"""`ae-train diagnose <logs_dir>`: read a run's logs and say which rank is stuck where, and why.

Standard library only and log files only (the contract is docs/LOG_FORMAT.md): it has to start at once
on a login node beside a hung job, where importing torch takes longer than the diagnosis. Each file is
read once, line by line, in binary (a torn UTF-8 sequence cannot stop it), keeping per-rank state only:
the hot path (step and shard lines, the bulk of a debug log) costs two bounded `find`s and one slice
compare; everything else is rare and parsed with regular expressions. Big runs scan their files in
parallel processes. Times are the logs' own local times, so ages are right when diagnosing on a
machine in the run's time zone. The verdict rules and the text form live in diagnose_rules.py.
"""
from __future__ import annotations

import argparse
import heapq
import importlib.util
import json
import logging
import os
import re
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path

RUN_FILE = re.compile(r"(?:train|debug_rank(\d+))_(\d{8}_\d{6})\.log")
# Phase code -> (order inside an epoch, text). Before the first epoch the epoch counts as -1.
PHASES = {"starting": (-3, "starting (no marker yet)"), "sanity": (-2, "sanity check"),
          "after_sanity": (-1, "after sanity check"), "training": (1, "training"),
          "train_end": (2, "between training end and validation start"), "validation": (3, "validation"),
          "val_end": (4, "after validation end"), "finished": (5, "finished")}
SEVERITY = {"error": 0, "warning": 1, "info": 2}
TAG = re.compile(rb"Rank (\d+)/(\d+)(?: Worker (\d+)/(\d+))?")
HEADER = re.compile(rb"Debug log of rank (\d+)/(\d+): (.*)")
MARKER = re.compile(rb"=+ (?:EPOCH (\d+) )?(SANITY CHECK|TRAINING|VALIDATION) (START|END) =+")
PROCESSING = re.compile(rb"Processing (\d+)/(\d+) files from (\S+) \(epoch (\d+), (\d+) samples, (\d+) batches")
# The reader may end the parentheses with the split (`..., 0.1s, val_shards)`): it beats the tag's guess.
COMPLETED = re.compile(rb"COMPLETED iteration, total samples: (\d+) \(epoch (\d+), batches (\d+)(?:[^)]*, ([A-Za-z_]\w*)\))?")
SHARD_ERROR = re.compile(rb"Error reading shard (.+?): (.*)")
HANG = re.compile(rb"HANG SUSPECTED: no progress for (\d+) s in (.*?) \(last event: (.*)\)")
DUMP = re.compile(rb"Stack dump of (.*?)(?: \(pid (\d+)\))?, reason: (.*)")
STEP = re.compile(rb"Training step (\d+), loss=([^ |,]+)(?: \| Processed (\d+) training batches "
                  rb"\(epoch (\d+), global step (\d+)\),? ?(.*))?")
VAL_STEP = re.compile(rb"Validation step (\d+), loss=([^ ,]+)(?: \(epoch (\d+)\))?")
EXITED = re.compile(rb"Rank (\d+) \(pid (\d+)\) exited with code (-?\d+)(.*)")
BATCHES = re.compile(rb"batches=(\d+)")
# Stack dump frames that tell what the main thread waits for (faulthandler and traceback styles).
# Ordered by priority: a main thread waiting for data explains more than a logger thread reading a file.
WAITS = (("data", (b" _next_data", b" _get_data", b" _try_get_data")),
         ("collective", (b"distributed_c10d", b" all_reduce", b" barrier", b" broadcast", b" all_gather",
                         b" backward", b"_engine_run_backward")),
         ("io", (b"tarfile", b" gopen", b" in open", b" in _open", b" in read", b" readinto")))
WAIT_TEXT = {"data": "main thread waits for DataLoader workers", "io": "blocked in file I/O",
             "collective": "in backward/a collective: waits for other ranks or compute"}
# Raw lines (C++ output through fd 2) that name a distributed failure.
RAW_ALERTS = (b"Watchdog caught collective", b"collective operation timeout", b"NCCL error", b"ncclInternalError",
              b"Connection reset by peer", b"Connection closed by peer", b"Gloo connectFullMesh failed")
log = logging.getLogger(__name__)
CAP = 2000  # markers and alerts kept per rank for the plot (the latest); counts go on regardless
STEPS_KEPT = 21  # the latest progress lines per rank: their time split says why the run is slow now
SLOW_KEPT = 5    # the slowest shards per rank (Opening to Finished)


class DiagnoseError(Exception):
    """Bad input: the CLI prints it as one line and exits 2."""


def _t(line: bytes) -> float | None:
    try:  # `YYYY-MM-DD HH:MM:SS,mmm`, local time as logging writes it; int() takes bytes
        return datetime(int(line[0:4]), int(line[5:7]), int(line[8:10]), int(line[11:13]), int(line[14:16]),
                        int(line[17:19]), int(line[20:23]) * 1000).timestamp()
    except (ValueError, TypeError):
        return None


def _sod(line: bytes) -> float:
    """Seconds of the day of a line's time stamp: cheap, for the hot path's differences."""
    return int(line[11:13]) * 3600 + int(line[14:16]) * 60 + int(line[17:19]) + int(line[20:23]) / 1000


def _ts(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S,%f")[:23]


def _s(b: bytes) -> str:
    return b.decode("utf-8", "replace").rstrip()


def _num(v: str | None):
    return int(v) if v and v.isdigit() else v


def _worker(tag: bytes) -> int | None:
    m = TAG.match(tag)
    return int(m.group(3)) if m and m.group(3) else None


def find_runs(logs_dir: Path) -> dict[str, dict]:
    """{ts: {"train": path|None, "debug": {rank: path}}} for every run with logs in logs_dir."""
    runs: dict[str, dict] = {}
    for p in logs_dir.iterdir():
        m = RUN_FILE.fullmatch(p.name)
        if m and p.is_file():
            run = runs.setdefault(m.group(2), {"train": None, "debug": {}})
            if m.group(1) is None:
                run["train"] = p
            else:
                run["debug"][int(m.group(1))] = p
    return runs


def resolve_run(logs_dir, run: str | None = None) -> tuple[Path, str, dict]:
    logs = Path(logs_dir)
    if not logs.is_dir():
        raise DiagnoseError(f"logs directory not found: {logs}")
    runs = find_runs(logs)
    if not runs and (logs / "logs").is_dir():  # given the output dir instead of its logs/
        logs, runs = logs / "logs", find_runs(logs / "logs")
    if not runs:
        raise DiagnoseError(f"no train_<ts>.log or debug_rank<N>_<ts>.log files in {logs}")
    if run is None:
        run = max(runs)  # YYYYmmdd_HHMMSS sorts as time
    elif run not in runs:
        raise DiagnoseError(f"no logs of run {run} in {logs} (runs there: {', '.join(sorted(runs)[-5:])})")
    return logs, run, runs[run]


class _Rank:
    """One debug log after its pass. Bounded: per worker, per epoch, a few dumps, CAP plot events."""

    def __init__(self, path: Path, rank: int):
        self.path, self.rank, self.world, self.header = path, rank, None, {}
        self.lines, self.last, self.last_step, self.prev_step, self.step_n, self.last_val = 0, None, None, None, 0, None
        self.phase, self.epoch, self.in_sanity, self.marker, self.marker_n = "starting", None, False, None, 0
        self.starts = deque(maxlen=2)      # times of the last two TRAINING START markers: an epoch's length
        self.timeline = deque(maxlen=CAP)  # (t, phase) at each marker: the latest matter most
        self.train_end: dict = {}          # epoch -> (t, batches)
        self.val_end: dict = {}
        self.pending: dict = {}            # worker tag -> its Opening shard line without a Finished yet
        self.split: dict = {}              # worker tag -> split of its latest Processing line
        # (split, epoch) -> {tag: [files, of, t_start, t_done, batches_done, batches_planned]}
        self.loads: dict = {}
        self.pids: dict = {}
        self.errors = self.shard_errors = self.hangs = 0
        self.last_error = self.last_shard_error = self.last_hang = self.ckpt = self.finished = None
        self.raw_alert, self.hang_active, self.events = None, False, deque(maxlen=CAP)
        self.dumps, self.dump, self.dump_n, self.t_rare = deque(maxlen=4), None, 0, None
        self.steps = deque(maxlen=STEPS_KEPT)  # the latest progress lines
        # Shards read (Opening to Finished, from the time stamps: it includes the open and read, whatever
        # the reader's own figure covers): how many, and a min-heap of the slowest (s, line no, line).
        self.shard_n, self.slow_shards = 0, []

    def scan(self) -> "_Rank":
        pending, rare, last, last_step, prev_step, step_n, last_val, n = self.pending, self._rare, None, None, None, 0, None, 0
        steps, slow, shard_n, slow_min = self.steps, self.slow_shards, 0, -1.0
        with open(self.path, "rb", buffering=1 << 20) as f:
            for n, line in enumerate(f, 1):
                k = line.find(b"] [", 24, 40)  # end of `[LEVEL]`; -1: continuation or torn line
                m = line.find(b"] ", k + 3) if k > 0 else -1  # end of `[TAG]`
                if m < 0:
                    self._raw(line, n)
                    continue
                # One 14-byte slice compared with constants: cheaper than a chain of startswith calls.
                head = line[m + 2:m + 16]
                if head == b"Opening shard ":
                    pending[line[k + 3:m]] = last = line
                elif head == b"Finished shard":  # a worker reads one shard at a time
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
                elif head == b"Training step ":
                    prev_step, last_step, last, step_n = last_step, line, line, n
                    steps.append(line)
                elif head == b"Validation ste":
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
        if line.startswith(b"Stack dump of "):
            self._dump_start(line, 0, n, None)
        elif self.dump is not None:
            self.dump_n = n
            self._dump_line(line)
        elif any(a in line for a in RAW_ALERTS):
            self.raw_alert = _s(line)[:300]

    def _dump_start(self, line: bytes, p: int, n: int, t: float | None) -> None:
        m = DUMP.match(line, p)
        who, pid, reason = (_s(m.group(1)), m.group(2) and int(m.group(2)), _s(m.group(3))) if m else ("?", None, "?")
        self.dump = {"line": n, "time": t or self.t_rare, "who": who, "pid": pid, "reason": reason,
                     "threads": 0, "frames": [], "waits": None, "_frame_next": False}
        self.dump_n = n
        self.dumps.append(self.dump)

    def _dump_line(self, s: bytes) -> None:
        d, s = self.dump, s.strip()
        if s.startswith((b"Thread 0x", b"Current thread 0x")):
            d["threads"] += 1
            d["_frame_next"] = True
        elif s.startswith(b"File "):
            if d["_frame_next"] and len(d["frames"]) < 8:  # innermost frame of each thread comes first
                d["frames"].append(_s(s))
            d["_frame_next"] = False
            for i, (kind, pats) in enumerate(WAITS):
                if any(x in s for x in pats):
                    if d["waits"] is None or i < [w[0] for w in WAITS].index(d["waits"]):
                        d["waits"] = kind
                    break

    def _rare(self, line: bytes, k: int, m: int, p: int, n: int) -> bool:
        """Any line but steps and shard open/finish. Returns False for watchdog lines, which are not progress."""
        s = line[p:].rstrip(b"\r\n")
        if self.dump is not None:  # dump lines may also come prefixed (through the stderr logger)
            if n == self.dump_n + 1 and s.lstrip().startswith((b"Thread 0x", b"Current thread 0x", b"File ")):
                self.dump_n = n
                self._dump_line(s)
                return False
            self.dump = None
        tag = line[k + 3:m]
        t = self.t_rare = _t(line)  # also the time of a raw dump header, which has none of its own
        if s.startswith(b"=========="):
            self._marker(s, t, n)
        elif s.startswith(b"Processing "):
            mm = PROCESSING.match(s)
            if mm:
                split, ep = _s(mm.group(3)), int(mm.group(4))
                self.split[tag] = split
                self.pending.pop(tag, None)  # a new iteration: an old open shard was abandoned, not stuck
                self.loads.setdefault((split, ep), {})[tag] = [int(mm.group(1)), int(mm.group(2)), t, None, None,
                                                               int(mm.group(6))]
        elif s.startswith(b"COMPLETED iteration"):
            mm = COMPLETED.match(s)
            if mm:
                split = _s(mm.group(4)) if mm.group(4) else self.split.get(tag)
                rec = self.loads.get((split, int(mm.group(2))), {}).get(tag)
                if rec is not None:
                    rec[3], rec[4] = t, int(mm.group(3))
                self.pending.pop(tag, None)
        elif s.startswith(b"Error reading shard "):
            mm = SHARD_ERROR.match(s)
            self.shard_errors += 1
            self.last_shard_error = (t, _s(mm.group(1)) if mm else "?", _s(mm.group(2)) if mm else _s(s))
            o = self.pending.get(tag)
            if mm and o is not None and mm.group(1) in o:
                del self.pending[tag]
            self.events.append((t, "error"))
        elif s.startswith(b"HANG SUSPECTED"):
            mm = HANG.match(s)
            self.hangs, self.hang_active = self.hangs + 1, True
            self.last_hang = (t, *(_s(g) for g in mm.groups())) if mm else (t, "?", "?", _s(s))
            self.events.append((t, "hang"))
            return False
        elif s.startswith(b"Stack dump of "):
            self._dump_start(s, 0, n, t)
            return False
        elif s.startswith(b"Resources at hang"):
            return False
        elif s.startswith(b"progress resumed"):
            self.hang_active = False
            return False
        elif s.startswith(b"Worker started pid="):
            pid = s[19:].split(b" ")[0]
            if pid.isdigit():
                self.pids[int(pid)] = f"rank {self.rank} worker {_worker(tag)}"
            self.pending.pop(tag, None)
        elif s.startswith(b"Debug log of rank "):
            mm = HEADER.match(s)
            if mm:
                self.world = int(mm.group(2))
                self.header = dict(kv.split("=", 1) for kv in _s(mm.group(3)).split() if "=" in kv)
                self.timeline.append((t, "starting"))  # the lane of the plot begins with the process
                if self.header.get("pid", "").isdigit():
                    self.pids[int(self.header["pid"])] = f"rank {self.rank}"
        elif s.startswith(b"Saving checkpoint "):
            self.ckpt = (t, _s(s[18:]))
        elif s.startswith(b"Saved checkpoint "):
            self.ckpt = None
        elif s.startswith(b"Training finished"):
            self.finished, self.phase = (t, _s(s)), "finished"
            self.timeline.append((t, "finished"))
        elif line.startswith(b"[ERROR]", 24) or line.startswith(b"[CRITICAL]", 24):
            self.errors += 1
            self.last_error = (t, _s(s)[:300])
            self.events.append((t, "error"))
        if self.world is None and (mm := TAG.match(tag)):
            self.world = int(mm.group(2))
        return True

    def _marker(self, s: bytes, t: float | None, n: int) -> None:
        mm = MARKER.match(s)
        if not mm:
            return
        ep, what, edge = mm.group(1) and int(mm.group(1)), mm.group(2), mm.group(3)
        b = BATCHES.search(s)
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
                self.train_end[ep] = (t, batches)
                if ep in self.val_end:  # Lightning 2 ends the train epoch after validation: epoch done
                    phase = "val_end"
        else:
            phase = "validation" if edge == b"START" else "val_end"
            if edge == b"END":
                self.val_end[ep] = (t, batches)
        self.phase, self.marker, self.marker_n = phase, (_s(s.split(b" batches=")[0]), t), n
        if ep is not None:
            self.epoch = ep
        self.timeline.append((t, phase))


def _scan_train(path: Path) -> dict:
    """The train log: launcher lines, the run's end, rank 0's checkpoints, every rank's WARNING/ERROR."""
    out = {"file": path.name, "lines": 0, "last": None, "finished": None, "launcher": [], "ckpt": None,
           "hangs": {}, "errors": {}, "world": None, "epoch_split": None, "checks": None}
    n = 0
    with open(path, "rb", buffering=1 << 20) as f:
        for n, line in enumerate(f, 1):
            k = line.find(b"] [", 24, 40)
            m = line.find(b"] ", k + 3) if k > 0 else -1
            if m < 0:
                continue
            tag, s = line[k + 3:m], line[m + 2:].rstrip()
            if not s.startswith((b"HANG SUSPECTED", b"progress resumed")):  # alerts are not the run moving
                out["last"] = line
            if tag == b"Launcher":
                if s.startswith((b"Rank ", b"Received ")) and len(out["launcher"]) < 50:
                    out["launcher"].append((_t(line), _s(s)))
                elif s.startswith(b"Checking the data of run"):  # the launcher's checks before any rank
                    out["checks"] = {"start": _t(line), "hang": None, "gave_up": [], "done": None}
                elif out["checks"] is not None and s.startswith(b"HANG SUSPECTED"):
                    out["checks"]["hang"] = (_t(line), _s(s))
                elif out["checks"] is not None and s.startswith(b"Error counting shard "):
                    out["checks"]["gave_up"].append((_t(line), _s(s)))
                elif out["checks"] is not None and s.startswith(b"Starting training"):
                    out["checks"]["done"] = _t(line)
                continue
            r = TAG.match(tag)
            rank = int(r.group(1)) if r else None
            if r and out["world"] is None:
                out["world"] = int(r.group(2))
            if s.startswith(b"Training finished"):
                out["finished"] = (_t(line), _s(s))
            elif s.startswith(b"Epoch ") and b"; time split " in s:  # the latest epoch's slowest/fastest rank
                out["epoch_split"] = (_t(line), _s(s))
            elif s.startswith(b"Saving checkpoint "):
                out["ckpt"] = (_t(line), _s(s[18:]))
            elif s.startswith(b"Saved checkpoint "):
                out["ckpt"] = None
            elif s.startswith(b"HANG SUSPECTED"):
                out["hangs"][rank] = out["hangs"].get(rank, 0) + 1
            elif line.startswith(b"[ERROR]", 24):
                out["errors"][rank] = out["errors"].get(rank, 0) + 1
    out["lines"] = n
    return out


def _scan(item: tuple) -> object:
    kind, path, rank = item
    return _Rank(path, rank).scan() if kind == "debug" else _scan_train(path)


def _scan_all(items: list[tuple], jobs: int | None = None) -> list:
    """Files are independent: big runs spread them over the CPUs (a 2-core box halves the time)."""
    jobs = min(len(items), jobs or os.cpu_count() or 1)
    if jobs > 1 and sum(p.stat().st_size for _, p, _ in items) > 64 << 20:
        try:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(jobs) as ex:
                return list(ex.map(_scan, items))
        except (OSError, RuntimeError) as e:  # no /dev/shm, no fork, a broken pool: do it here
            log.debug("parallel scan unavailable (%s), scanning sequentially", e)
    return [_scan(it) for it in items]


def diagnose_run(logs_dir, run: str | None = None, *, now: float | None = None, stall_after: float = 300.0,
                 jobs: int | None = None) -> dict:
    """Scan every log of the run (latest by default) and return the report: a JSON-ready dict.
    `now` (epoch seconds) fixes the clock for tests; `stall_after` is the least silence called stuck;
    `jobs` caps the processes used on big runs (default: one per CPU)."""
    logs, run, files = resolve_run(logs_dir, run)
    t0, now = time.perf_counter(), time.time() if now is None else now
    items = [("debug", p, r) for r, p in sorted(files["debug"].items())]
    items += [("train", files["train"], None)] if files["train"] else []
    scanned = _scan_all(items, jobs)
    train = scanned.pop() if files["train"] else None
    from ae_train.diagnose_rules import build  # after the imports above: it uses this module's helpers
    report = build(logs, run, scanned, train, now, stall_after)
    report["scan_seconds"] = round(time.perf_counter() - t0, 3)
    return report


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(max(s, 0))
    return f"{s}s" if s < 120 else f"{s // 60}m{s % 60:02d}s" if s < 7200 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_report(report: dict) -> str:
    """The per-rank table, then the verdict, as plain text for a terminal."""
    from ae_train.diagnose_rules import format_text
    return format_text(report)


def main(argv: list[str] | None = None) -> int:
    """`ae-train diagnose` (argv: the arguments after `diagnose`)."""
    ap = argparse.ArgumentParser(prog="ae-train diagnose", description="Find where a run is stuck, from its logs.")
    ap.add_argument("logs_dir", help="the run's logs directory (<output_dir>/logs)")
    ap.add_argument("--run", help="run timestamp YYYYmmdd_HHMMSS (default: the latest)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--plot", metavar="PNG", help="draw one lane per rank over time into this PNG")
    ap.add_argument("--stall-after", type=float, default=300.0, metavar="S",
                    help="seconds without progress that count as stuck (default 300; raised for slow logging)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # fail before the long scan
        print('ae-train diagnose: error: --plot needs matplotlib: pip install "ae-train[plot]"', file=sys.stderr)
        return 2
    try:
        report = diagnose_run(args.logs_dir, args.run, stall_after=args.stall_after)
    except DiagnoseError as e:
        print(f"ae-train diagnose: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ae-train diagnose: error: cannot read logs: {e}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(report, indent=1) if args.json else format_report(report))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")
    if args.plot:
        from ae_train.diagnose_plot import PlotUnavailable, plot_timeline
        try:
            plot_timeline(report, args.plot)
        except (PlotUnavailable, OSError) as e:
            print(f"ae-train diagnose: error: {e}", file=sys.stderr)
            return 2
        print(f"timeline written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
