"""The records `ae-train diagnose` keeps of a run's logs (parse.py fills them, the rules read them), and the
small helpers that turn log text into values and values into report text."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from ae_train import logformat as lf


def line_time(line: bytes) -> float | None:
    """Epoch seconds of a line's `YYYY-MM-DD HH:MM:SS,mmm` (local time, as logging writes it); int() takes bytes."""
    try:
        return datetime(int(line[0:4]), int(line[5:7]), int(line[8:10]), int(line[11:13]), int(line[14:16]),
                        int(line[17:19]), int(line[20:23]) * 1000).timestamp()
    except (ValueError, TypeError):
        return None

def fmt_time(t: float | None) -> str | None:
    """The report's time text, as the logs write it."""
    return None if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S,%f")[:23]


def fmt_age(s: float | None) -> str:
    """`45s`, `12m03s`, `3h05m`."""
    if s is None:
        return "-"
    s = int(max(s, 0))
    return f"{s}s" if s < 120 else f"{s // 60}m{s % 60:02d}s" if s < 7200 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def text(b: bytes) -> str:
    return b.decode("utf-8", "replace").rstrip()


def worker_of(tag: bytes) -> int | None:
    m = lf.TAG.match(tag)
    return int(m.group(3)) if m and m.group(3) else None


def workers_in(tag: bytes) -> int:
    """K of a `Rank r/W Worker w/K` tag (1 for a rank's main process)."""
    m = lf.TAG.match(tag)
    return int(m.group(4)) if m and m.group(4) else 1

class Stamped(NamedTuple):
    """A time and the text logged then (an error, a checkpoint path, a launcher line)."""
    time: float | None
    text: str


class ShardError(NamedTuple):
    time: float | None
    url: str
    message: str
    worker: int | None = None    # the worker that read it (None: the rank's main process)


class Hang(NamedTuple):
    time: float | None
    seconds: str
    phase: str
    last_event: str


class Phase(NamedTuple):
    order: int                   # inside an epoch; before the first epoch the epoch counts as -1
    text: str


class EpochEnd(NamedTuple):
    """A TRAINING END or VALIDATION END marker."""
    time: float | None
    batches: int | None


class Mark(NamedTuple):
    """A phase change (marker) or an alert (`hang`, `error`) for the plot."""
    time: float | None
    kind: str


@dataclass
class WorkerLoad:
    """One worker's iteration of one split and epoch: its Processing line, then its COMPLETED line."""
    files: int
    of: int                      # all shards of the split
    started: float | None
    planned: int                 # batches planned for the worker
    completed: float | None = None
    batches: int | None = None   # batches done, from COMPLETED


@dataclass
class StackDump:
    line: int                    # line number of `Stack dump of ...` in the file
    time: float | None
    who: str
    pid: int | None
    reason: str
    threads: int = 0
    frames: list = field(default_factory=list)  # the innermost frame of each thread, main thread first
    waits: str | None = None     # a WAITS kind
    frame_next: bool = False     # the next File line is a thread's innermost frame


@dataclass
class Marker:
    text: str                    # the marker without its `batches=...` tail
    time: float | None


@dataclass
class TrainLog:
    """The train log: launcher lines, the run's end, rank 0's checkpoints, every rank's WARNING/ERROR."""
    file: str
    lines: int = 0
    last: bytes | None = None    # the last line that is not a hang alert
    finished: Stamped | None = None
    launcher: list = field(default_factory=list)  # [Stamped]: exits and signals
    ckpt: Stamped | None = None  # a Saving without its Saved
    hangs: dict = field(default_factory=dict)     # rank -> HANG SUSPECTED lines
    errors: dict = field(default_factory=dict)    # rank -> ERROR lines
    world: int | None = None
    epoch_split: Stamped | None = None            # the latest epoch summary with a time split
    checks: "Checks | None" = None
    failures: dict = field(default_factory=dict)  # rank -> failures.Tracker: each rank's failure lines


@dataclass
class Checks:
    """The launcher's data checks before any rank starts."""
    start: float | None
    hang: Stamped | None = None
    gave_up: list = field(default_factory=list)  # [Stamped]: shards whose count stalled
    done: float | None = None


@dataclass
class Failure:
    """A line that says a run is failing (failures.py names its kind), with where and when it was logged."""
    kind: str                    # a failures.KINDS key
    text: str                    # the line's message (its first line)
    time: float | None = None
    rank: int | None = None      # None: the launcher
    worker: int | None = None
    file: str = ""
    line: int = 0                # line number in file
    exception: str | None = None  # the exception's type
    message: str | None = None   # the exception's message (its first line)
    thread: str | None = None    # an exception in a thread other than the main one
    pid: int | None = None       # a process that died (a worker, a rank)
    signal: str | None = None    # what killed it (SIGKILL, ...)
    code: int | None = None      # a rank's exit code (the launcher's line)
    epoch: int | None = None     # the rank's state when the line was written
    phase: str | None = None     # a parse.PHASES key
    step: dict | None = None     # the rank's last progress line before it: batch, epoch, global step, time (text)
    shard: str | None = None     # the shard the failing worker had open
    frame: str | None = None     # the innermost frame of its first traceback (the earliest cause)
    raised: str | None = None    # the exception line ending that traceback
    note: str | None = None      # what other lines add (the first unreadable shard, the rank's last line)
    approx: bool = False         # a line without a time stamp (C++ output): the time of the line before it
