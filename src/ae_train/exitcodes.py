"""Exit codes of `ae-train` commands, of the launcher and of each rank: one table instead of literals.

Standard library only, and a module of its own rather than a corner of rundir.py: `diagnose` and
`collect` (login-node tools that must not import torch or yaml) return these codes too, and the
codes are about how a process ended, not about where a run keeps its files.
"""
from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # something broke: a rank died, a shard could not be read by encode/evaluate/index
    BAD_INPUT = 2  # one `ae-train: error:` line: a config key, a flag, a file the user named
    SHARD_ERRORS = 3  # ranks stopped the run together: more unreadable shards than data.max_shard_errors
    CHECKPOINT_WRITE_FAILED = 4  # ranks stopped the run together: a checkpoint could not be written
    NON_FINITE = 5  # ranks stopped the run together: a NaN or inf loss (or weights), nothing saved from it


# Ranks that stop the run on purpose, together, after saying why in an ERROR line: the launcher
# waits for the others and exits with the same code.
STOPPED_ON_PURPOSE = {ExitCode.SHARD_ERRORS: "too many unreadable shards",
                      ExitCode.CHECKPOINT_WRITE_FAILED: "a checkpoint could not be written",
                      ExitCode.NON_FINITE: "a non-finite loss"}


def stopped_by(signum: int) -> int:
    """The shell's code for a process that stopped because of signal `signum` (143 for SIGTERM): a rank
    that saved last.ckpt on SIGTERM/SIGINT, and the launcher that passed the signal on."""
    return 128 + int(signum)


PREEMPTED = {stopped_by(signal.SIGTERM), stopped_by(signal.SIGINT)}  # a rank that saved last.ckpt and stopped


def exit_process(code: int | None) -> None:
    """End this process now with `code`, after doing what a normal exit does that matters: wait for
    non-daemon threads, run the atexit handlers (log files flushed and closed, worker processes
    stopped, loggers finalized), flush stdio. What it skips is the interpreter's teardown of every
    imported module, which with torch and Lightning loaded is ~0.9 s of CPU per rank at every exit."""
    import atexit
    import os
    import sys
    import threading

    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()  # what Py_Finalize runs after the threads (private, but in CPython since 3.0)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced by None
            pass
    os._exit(int(code or 0))
