"""Python stack dumps of every thread, written into the rank's debug log as one block; and what /proc
says of this process (its children, its resident memory).

Used by the hang watchdog and by `kill -USR1 <pid>` on a rank or a DataLoader worker. The block
starts with `Stack dump of <who> (pid P), reason: R` and lists each thread in faulthandler's layout,
most recent call first, so the line after each `Thread` header is where that thread waits.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback

from . import logformat as lf

log = logging.getLogger("ae_train.callbacks.watchdog")  # debug log only (see logs.DEBUG_ONLY)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def format_stacks(who: str, reason: str) -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    main, me = threading.main_thread().ident, threading.get_ident()
    frames = sys._current_frames()
    lines = [lf.DUMP.template % (who, os.getpid(), reason)]
    # The main thread first (where training or reading happens), not the dumping thread itself;
    # innermost frame first, as faulthandler prints them: the first frame is where the thread waits.
    for ident in sorted(frames, key=lambda i: i != main):
        if ident == me and ident != main:
            continue
        lines.append(lf.DUMP_THREAD % (ident, names.get(ident, "?")))
        stack = traceback.extract_stack(frames[ident])
        while stack and stack[-1].filename == __file__:  # a signal handler's own frames: not where it waits
            stack.pop()
        for frame in reversed(stack):
            lines.append(lf.DUMP_FRAME % (frame.filename, frame.lineno, frame.name))
            if frame.line:
                lines.append(lf.DUMP_SOURCE % frame.line)
    return "\n".join(lines)


def dump(who: str, reason: str) -> None:
    log.info("%s", format_stacks(who, reason))


def install_worker_handler(who: str) -> None:
    """In a DataLoader worker: SIGUSR1 dumps its stacks. A worker blocked in a system call (an open()
    of a stalled file) is interrupted and runs the handler before retrying the call (PEP 475)."""
    signal.set_wakeup_fd(-1)  # the rank's wakeup pipe was inherited through fork: not ours to write
    signal.signal(signal.SIGUSR1, lambda _s, _f: dump(who, "SIGUSR1"))


def child_pids() -> list[int]:
    """This process's children (its DataLoader workers), from /proc."""
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return pids


def rss_mb() -> float:
    """This process's resident memory in MB, from /proc (nan where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return float("nan")
