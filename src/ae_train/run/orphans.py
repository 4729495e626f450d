"""ParentWatch: a rank whose launcher died (even by SIGKILL) saves what it can, then goes, workers and all.

PR_SET_PDEATHSIG delivers SIGTERM when the launcher dies, but a signal only sets a flag that the
training loop reads at the next step, and a rank blocked in C (a collective whose peer is gone, a
stalled file open, a long kernel) never gets there: such ranks lived on as orphans holding GPUs. Under
torchrun and srun there is not even the signal. So every rank runs this thread: once a second it
compares os.getppid() with the parent it started under (our launcher, the torchrun agent, the srun
step daemon). When the parent is gone it asks the rank to stop (SIGTERM to itself: the preemption
path saves last.ckpt at the next step if the rank can get there), waits `grace_s`, and then SIGKILLs
the rank's descendants (DataLoader workers), its process group when it leads one (our launcher starts
each rank as a group leader), and itself. A thread in C that holds the GIL forever would stop this
thread too; blocking calls (sleeps, file I/O, collectives) release it.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from .. import logformat as lf

log = logging.getLogger(__name__)
LAUNCHER_ENV = "AE_TRAIN_LAUNCHER"  # the launcher's pid, for the ranks it starts; absent under torchrun/srun


def launcher_pid() -> int | None:
    """The pid of the launcher that started this rank, or None (torchrun, srun, no launcher)."""
    pid = os.environ.get(LAUNCHER_ENV, "")
    return int(pid) if pid.isdigit() else None


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out.extend(kids)
                todo.extend(kids)
        except OSError:
            continue
    return out


class ParentWatch:
    def __init__(self, grace_s: float, parent: int | None = None, poll_s: float = 1.0):
        if grace_s < 0 or poll_s <= 0:
            raise ValueError(f"grace_s must be >= 0 and poll_s > 0, got {grace_s}, {poll_s}")
        self.grace_s, self.poll_s = grace_s, poll_s
        self.parent = parent or os.getppid()
        self._thread = threading.Thread(target=self._run, name="ae-train-parent-watch", daemon=True)

    def start(self) -> ParentWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(self.poll_s)
        _log_bounded(logging.ERROR, lf.PARENT_GONE.template, self.parent, self.grace_s)
        os.kill(os.getpid(), signal.SIGTERM)  # the preemption path: save at the next step, exit
        time.sleep(self.grace_s)
        workers = descendants(os.getpid())
        _log_bounded(logging.ERROR, lf.PARENT_KILL.template, self.grace_s, self.parent, len(workers))
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _log_bounded(level: int, msg: str, *args) -> None:
    """Log from another thread and wait at most 2 s: a main thread stuck inside a log write (a hung
    filesystem) holds the handler's lock, and the kill must not wait for it."""
    t = threading.Thread(target=log.log, args=(level, msg, *args), daemon=True)
    t.start()
    t.join(2.0)
