"""One run per output directory: `output_dir/.ae_train.lock` (RunDir.lock), held with flock for the life of the run.

The launcher takes the lock before it writes anything; its ranks inherit the locked file, so the lock
is held until the last process of the run is gone (a launcher killed by SIGKILL leaves ranks that
still save for a few seconds). The kernel drops a flock when its holders die, so a lock file whose
lock is free is the leftover of a dead run: it is taken over with a warning. The file names the
holder (pid, host, start time) for the error a second launcher prints.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from .. import logformat as lf
from ..errors import ConfigError
from ..rundir import RunDir

log = logging.getLogger(__name__)
_held: set[int] = set()  # descriptors of locks this process holds


def _holder(text: str) -> dict:
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def acquire(output_dir: str | Path) -> int:
    """Lock `output_dir` for this run and return the locked file's descriptor (open until this process
    exits; pass it to the ranks). ConfigError when a live run holds it."""
    path = RunDir(Path(output_dir)).lock
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"output_dir {output_dir}: cannot create the run lock {path}: {e.strerror or e}") from None
    previous = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"output_dir {output_dir} is in use by a running ae-train fit: launcher pid {previous.get('pid', '?')} on "
            f"host {previous.get('host', '?')}, started {previous.get('started', '?')}; wait for it, stop it, or "
            "choose another --output_dir") from None
    if previous:
        log.warning(lf.RUNLOCK_TAKEN.template, output_dir, previous.get("pid", "?"), previous.get("host", "?"),
                    previous.get("started", "?"))
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, me, 0)
    if not _held:
        atexit.register(_release_all)  # a normal exit; a killed launcher leaves the file for the next run to see
    _held.add(fd)
    return fd


def release(fd: int) -> None:
    """The launcher exits normally (its ranks are gone): empty the file, so the next run finds no stale
    holder. The lock itself goes with the last open descriptor."""
    if fd not in _held:
        return
    _held.discard(fd)
    try:
        os.ftruncate(fd, 0)
        os.close(fd)
    except OSError:
        pass


def _release_all() -> None:
    for fd in list(_held):
        release(fd)
