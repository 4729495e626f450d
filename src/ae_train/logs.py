"""Logging setup: `train_<ts>.log` plus `debug_rank<N>_<ts>.log` per run, rank 0 owns the console.

Handlers sit on the root logger so Lightning's, torch's and Python's warnings land in the same files;
every other module only calls `logging.getLogger(__name__)`. A filter stamps `[Rank r/W]` (and
`Worker w/K` inside DataLoader workers) on each record. After setup, whatever the process writes to
stdout/stderr (Python prints, C++ banners such as gloo's, tracebacks) goes to the rank's debug log.
The line format and the tags are logformat's; the files' paths are rundir.RunDir's.

A rank that does not know the run's timestamp yet (torchrun, srun: rank 0 names the run over the
process group) writes `startup_rank<N>_<ts>.log` from its first second, <ts> its own start time
(setup_startup_logging); once the ranks agree, setup_rank_logging renames it to the rank's debug log,
whose first lines it then is. A start-up log left in logs/ is a rank that never got through set-up.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import shutil
import sys
import threading
from pathlib import Path

from . import logformat as lf
from .rundir import RunDir

FORMAT = lf.LINE_FORMAT
RUN_TS_ENV = "AE_TRAIN_RUN_TS"
# INFO records of these loggers are per-rank detail: debug logs only, never the train log or console.
DEBUG_ONLY = ("ae_train.data", "ae_train.callbacks.debug", "ae_train.callbacks.watchdog", "ae_train.run.procgroup",
              "ae_train.run.startup", "stdout", "stderr")
CONSOLE = {"console": True}  # extra= for the few INFO records the console shows (rank 0's)
NODE_CONSOLE = {"node_console": True}  # extra= for a line every node's console shows
FILE_ONLY = {"file_only": True}  # extra= for an error the console already shows as `ae-train: error:`
HEARTBEAT = {"heartbeat": True}  # extra= for a periodic line that reports no new progress

_state: dict = {"tag": lf.LAUNCHER_TAG, "rank": None, "worker": None, "installed": False, "console": None}


def logging_installed() -> bool:
    return _state["installed"]


def set_tag(tag: str) -> None:
    """The stamp of this process's records in a tool that is not a rank (a benchmark); its DataLoader
    workers stamp `<tag> Worker w/K`."""
    _state.update(rank_tag=tag, tag=tag)


def console():
    """The stream of the terminal the run was started from (kept before fd 1/2 went to the debug log), or None."""
    return _state["console"]


def set_worker(worker: int, num_workers: int) -> None:
    """Called at the top of a DataLoader worker's iteration: its records get `Worker w/K`."""
    _state["worker"] = (worker, num_workers)
    _state["tag"] = _state.get("rank_tag", "Rank ?") + lf.WORKER_PART % (worker, num_workers)


class _StampFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.tag = _state["tag"]
        record.in_worker = _state["worker"] is not None
        return True


class _NoiseFilter(logging.Filter):
    """Lightning's advertising ("💡 Tip: ... litlogger / litmodels") is no run's news: kept out of every log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith(("pytorch_lightning", "lightning")) and isinstance(record.msg, str)
                    and record.msg.startswith("💡 Tip:"))


class _TrainLogFilter(logging.Filter):
    """Train log: every rank's WARNING+, and rank 0's own INFO (config, summaries, checkpoints)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return _state["rank"] in (0, None) and not record.in_worker and not record.name.startswith(DEBUG_ONLY)


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        if record.levelno >= logging.ERROR or getattr(record, "node_console", False):
            return True
        return _state["rank"] in (0, None) and getattr(record, "console", False)


class _SafeFileHandler(logging.handlers.WatchedFileHandler):
    """WatchedFileHandler reopens after logrotate moves the file; a failed write (disk full, file
    removed) is reported once on the console and training goes on. `redirect_fds` keeps fd 1/2 on
    the reopened debug file."""

    redirect_fds = False
    _reported = False

    def reopenIfNeeded(self) -> None:
        old = self.stream
        super().reopenIfNeeded()
        if self.redirect_fds and self.stream is not old and self.stream is not None:
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)

    def handleError(self, record: logging.LogRecord) -> None:
        if not _SafeFileHandler._reported:
            _SafeFileHandler._reported = True
            err = sys.exc_info()[1]
            console = _state["console"] or sys.__stderr__
            try:
                console.write(f"ae-train: cannot write log file {self.baseFilename}: {err}; "
                              "training continues, further log write errors are not reported\n")
                console.flush()
            except Exception:
                pass


class _ConsoleHandler(logging.StreamHandler):
    """With `held`, records wait until show_held(): the launcher's checks stay off the console while
    they are quick (bad input is then one line), and show as soon as they take a while."""

    held: list | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        else:
            super().emit(record)

    def show_held(self, show: bool = True) -> None:  # not `release`: that is Handler's lock
        held, self.held = self.held, None
        for record in (held or []) if show else []:
            super().emit(record)


def release_console(show: bool = True) -> None:
    """Show (or drop, with show=False) what the launcher's console held back; later lines show at once."""
    for h in logging.getLogger().handlers:
        if isinstance(h, _ConsoleHandler):
            h.show_held(show)


def print_error(message: str) -> None:
    """Bad input: the one line the console shows."""
    print(f"ae-train: error: {message}", file=sys.__stderr__, flush=True)


def print_note(message: str) -> None:
    """A command with nothing to do says why in one line (no log files are written)."""
    print(f"ae-train: {message}", file=sys.__stdout__, flush=True)


class _StreamToLogger:
    """File-like object that turns writes into log records, one per line."""

    def __init__(self, logger: logging.Logger, level: int, fd: int):
        self.logger, self.level, self._buf, self._fd = logger, level, "", fd
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The descriptor under it (the log file): faulthandler (torchrun's error handler) writes there."""
        return self._fd

    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, line.rstrip())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _OneLineFormatter(logging.Formatter):
    """Console: the message without the traceback (that is in the log files)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _handler(h: logging.Handler, level: int, *filters: logging.Filter) -> logging.Handler:
    h.setLevel(level)
    h.setFormatter(_OneLineFormatter(FORMAT) if isinstance(h, _ConsoleHandler) else logging.Formatter(FORMAT))
    for f in (_StampFilter(), _NoiseFilter(), *filters):
        h.addFilter(f)
    return h


def _install(handlers: list[logging.Handler], level: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    # Lightning gives its logger a console handler at import and stops propagation: take it back.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    logging.captureWarnings(True)
    _state["installed"] = True


def _console_stream():
    """The terminal as it was before fd 1 was pointed at the debug log (kept across calls)."""
    if _state["console"] is None:
        sys.stdout.flush()
        _state["console"] = os.fdopen(os.dup(1), "w", buffering=1)
    return _state["console"]


def setup_startup_logging(logs_dir: Path, rank: int, world: int) -> Path:
    """A rank's own log before the run's timestamp is known: `startup_rank<N>_<ts>.log` (everything),
    the console (errors). setup_rank_logging later makes it the rank's debug log."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = RunDir.of_logs(logs_dir).new_startup_log(rank)
    tag = lf.RANK_TAG % (rank, world)
    _state.update(rank=rank, worker=None, rank_tag=tag, tag=tag, startup=path)
    startup_file = _SafeFileHandler(path, encoding="utf-8")
    startup_file.redirect_fds = True
    _install([_handler(startup_file, logging.DEBUG),
              _handler(_ConsoleHandler(_console_stream()), logging.INFO, _ConsoleFilter())], logging.INFO)
    logging.getLogger("ae_train").setLevel(logging.INFO)
    _redirect_output(startup_file)
    return path


def _take_over_startup_log(debug: Path) -> None:
    """The start-up log becomes the first lines of `debug` (renamed; appended if `debug` exists)."""
    startup = _state.pop("startup", None)
    if startup is None or not startup.exists():
        return
    root = logging.getLogger()
    for h in list(root.handlers):  # no handler may write to (or recreate) the old name meanwhile
        root.removeHandler(h)
        h.close()
    root.addHandler(logging.NullHandler())  # not logging's last resort: stderr is a logger here
    if not debug.exists():
        os.replace(startup, debug)
        return
    with open(startup, "rb") as src, open(debug, "ab") as dst:
        shutil.copyfileobj(src, dst)
    startup.unlink()


def setup_rank_logging(logs_dir: Path, ts: str, rank: int, world: int, debug: bool) -> dict[str, Path]:
    """Per-rank files and console; safe to call twice (handlers are replaced, not added). A start-up
    log this process wrote becomes the debug log's first lines."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    run = RunDir.of_logs(logs_dir)
    paths = {"train": run.train_log(ts), "debug": run.debug_log(rank, ts)}
    _take_over_startup_log(paths["debug"])
    tag = lf.RANK_TAG % (rank, world)
    _state.update(rank=rank, worker=None, rank_tag=tag, tag=tag)
    level = logging.DEBUG if debug else logging.INFO
    debug_file = _SafeFileHandler(paths["debug"], encoding="utf-8")
    debug_file.redirect_fds = True
    console = _console_stream()
    _install([
        _handler(debug_file, logging.DEBUG),
        _handler(_SafeFileHandler(paths["train"], encoding="utf-8"), logging.INFO, _TrainLogFilter()),
        _handler(_ConsoleHandler(console), logging.INFO, _ConsoleFilter()),
    ], logging.INFO)
    # Debug mode opens DEBUG for our own per-shard/per-batch lines only, not every library's chatter.
    logging.getLogger("ae_train").setLevel(level)
    _redirect_output(debug_file)
    return paths


def _redirect_output(file_handler: logging.FileHandler) -> None:
    """From here on every byte the process prints lands in `file_handler`'s file: C++ writes via fd 1/2,
    Python via the stream objects (as log records, so they carry time and rank)."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (1, 2):
        os.dup2(file_handler.stream.fileno(), fd)
    sys.stdout = _StreamToLogger(logging.getLogger("stdout"), logging.INFO, 1)
    sys.stderr = _StreamToLogger(logging.getLogger("stderr"), logging.INFO, 2)
    sys.excepthook = log_uncaught
    threading.excepthook = lambda a: log_uncaught(a.exc_type, a.exc_value, a.exc_traceback, a.thread.name)


def setup_launcher_logging(logs_dir: Path, ts: str, train_log: bool = True, hold_console: bool = False) -> Path:
    """The launcher writes its own lines (checks, rank exits, signals) to the train log and the console.
    Launchers of nodes other than 0 keep to their console: the run's timestamp is node 0's."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = RunDir.of_logs(logs_dir).train_log(ts)
    _state.update(rank=None, worker=None, tag=lf.LAUNCHER_TAG, rank_tag=lf.LAUNCHER_TAG)
    console = _ConsoleHandler(sys.stdout)
    console.held = [] if hold_console else None
    handlers = [_handler(console, logging.INFO, _ConsoleFilter())]
    if train_log:
        handlers.append(_handler(_SafeFileHandler(path, encoding="utf-8"), logging.INFO))
    _install(handlers, logging.INFO)
    return path


def log_uncaught(exc_type, exc, tb, thread: str | None = None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        logging.getLogger("ae_train").error(lf.INTERRUPTED.template)
        return
    where = f" in thread {thread}" if thread else ""
    logging.getLogger("ae_train").error(lf.UNCAUGHT.template, where, exc_type.__name__, exc,
                                        exc_info=(exc_type, exc, tb))
