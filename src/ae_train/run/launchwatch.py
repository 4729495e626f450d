"""The launcher's own watchdog: its checks (listing, counting, probing shards) are never silent.

Every line the launcher logs is progress, except heartbeats (a periodic line that reports nothing
new, logged with `logs.HEARTBEAT`). After 10 s of checks the console shows what the train log holds;
when nothing progresses for `log.hang_timeout_s` it writes `HANG SUSPECTED` with the stage (the last
progress line), the shard being read longest and the launcher's stacks, to the console and the
train log, once per timeout, like the ranks' watchdog.
"""
from __future__ import annotations

import logging
import threading
import time

from .. import logformat as lf
from .. import logs, stacks
from ..data.shards import reads_in_flight

log = logging.getLogger(__name__)
CONSOLE_AFTER_S = 10.0  # checks found bad within this keep the console to one `ae-train: error:` line


class _Progress(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last_at, self.stage, self.beat = time.monotonic(), "start", ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == __name__:
            return
        if getattr(record, "heartbeat", False):
            self.beat = record.getMessage()
        else:
            self.last_at, self.stage, self.beat = time.monotonic(), record.getMessage().split("\n", 1)[0], ""


class LauncherWatchdog:
    """Use as a context manager around the launcher's checks."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._progress = _Progress()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ae-launcher-watchdog", daemon=True)

    def __enter__(self) -> "LauncherWatchdog":
        logging.getLogger().addHandler(self._progress)
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        logging.getLogger().removeHandler(self._progress)

    def _run(self) -> None:
        shown, alerted_at = False, 0.0
        while not self._done.wait(0.2):
            now = time.monotonic()
            if not shown and now - self._started >= CONSOLE_AFTER_S:
                shown = True
                logs.release_console()
            quiet = now - self._progress.last_at
            if quiet >= self.timeout_s and now - alerted_at >= self.timeout_s:
                alerted_at = now
                p = self._progress
                reads = reads_in_flight()
                reading = f"; reading {reads[0][0]} for {reads[0][1]:.0f} s" if reads else \
                    (f"; {p.beat}" if p.beat else "")
                log.error(lf.LAUNCHER_HANG.template, quiet, p.stage, reading)
                log.info("%s", stacks.format_stacks("launcher", "HANG SUSPECTED"), extra=logs.CONSOLE)
