"""The logging setup, in a child process each (it takes over fds 1 and 2, which pytest needs)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from ae_train.exitcodes import ExitCode

PRELUDE = """
import logging, os, sys, time
from pathlib import Path
from ae_train import logs
from ae_train.rundir import RunDir
d = Path(sys.argv[1])
log = logging.getLogger("ae_train.test")
"""


def child(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)


def test_logs_setup_twice_adds_no_duplicates_and_stamps_rank(tmp_path):
    r = child(tmp_path, """
        for _ in range(2):
            logs.setup_rank_logging(d, "20260101_000000", 1, 4, debug=True)
        log.debug("hello once")
        log.info("rank one info")
    """)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "debug_rank1_20260101_000000.log").read_text()
    assert text.count("hello once") == 1 and "[DEBUG] [Rank 1/4] hello once" in text
    # rank 1's INFO stays out of the train log; only its warnings and errors go there
    assert "rank one info" not in (tmp_path / "train_20260101_000000.log").read_text()


def test_logs_worker_records_are_stamped_and_land_in_rank_file(tmp_path):
    r = child(tmp_path, """
        logs.setup_rank_logging(d, "20260101_000000", 0, 2, debug=False)
        if os.fork() == 0:
            logs.set_worker(1, 3)
            log.info("from the worker")
            os._exit(0)
        os.wait()
        log.info("from the rank")
    """)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "debug_rank0_20260101_000000.log").read_text()
    assert "[INFO] [Rank 0/2 Worker 1/3] from the worker" in text and "[INFO] [Rank 0/2] from the rank" in text
    train = (tmp_path / "train_20260101_000000.log").read_text()
    assert "from the rank" in train and "from the worker" not in train


def test_logs_capture_prints_c_output_warnings_and_tracebacks(tmp_path):
    r = child(tmp_path, """
        import warnings
        logs.setup_rank_logging(d, "20260101_000000", 0, 2, debug=False)
        print("a stray print")
        os.write(2, b"raw bytes on fd 2\\n")
        warnings.warn("careful now")
        log.info("key line", extra=logs.CONSOLE)
        raise RuntimeError("boom in rank 0")
    """)
    assert r.returncode == ExitCode.FAILED
    debug = (tmp_path / "debug_rank0_20260101_000000.log").read_text()
    train = (tmp_path / "train_20260101_000000.log").read_text()
    assert "[INFO] [Rank 0/2] a stray print" in debug and "raw bytes on fd 2" in debug
    assert "[WARNING] [Rank 0/2]" in train and "careful now" in train
    assert "Uncaught exception: RuntimeError: boom in rank 0\nTraceback" in train and "Traceback" in debug
    # the console: key lines and errors, one line each, no traceback
    assert "key line" in r.stdout and "Uncaught exception: RuntimeError: boom in rank 0" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr and "stray print" not in r.stdout + r.stderr


def test_logs_reopen_after_logrotate_moves_the_file(tmp_path):
    r = child(tmp_path, """
        logs.setup_rank_logging(d, "20260101_000000", 0, 1, debug=False)
        log.info("before rotation")
        os.rename(d / "debug_rank0_20260101_000000.log", d / "debug_rank0_20260101_000000.log.1")
        log.info("after rotation")
        os.write(1, b"C-level output after rotation\\n")
    """)
    assert r.returncode == 0, r.stderr
    new = (tmp_path / "debug_rank0_20260101_000000.log").read_text()
    assert "after rotation" in new and "before rotation" not in new
    assert "C-level output after rotation" in new
    assert "before rotation" in (tmp_path / "debug_rank0_20260101_000000.log.1").read_text()


def test_logs_failed_writes_are_reported_once_and_do_not_stop_the_process(tmp_path):
    os.symlink("/dev/full", tmp_path / "train_20260101_000000.log")  # every write fails: disk full
    r = child(tmp_path, """
        logs.setup_rank_logging(d, "20260101_000000", 0, 1, debug=False)
        for i in range(5):
            log.warning("warning %d", i)
        log.info("still running", extra=logs.CONSOLE)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("cannot write log file") == 1 and "still running" in r.stdout
    assert "warning 4" in (tmp_path / "debug_rank0_20260101_000000.log").read_text()


def test_logs_startup_log_becomes_the_debug_log_with_every_line(tmp_path):
    r = child(tmp_path, """
        path = logs.setup_startup_logging(d, 1, 2)
        log.info("before the run has a name")
        os.write(2, b"gloo says something on fd 2\\n")
        log.error("blocked in set-up")
        assert path.name.startswith("startup_rank1_") and path.exists()
        # the run's timestamp: not taken by a start-up log of the same second
        ts = RunDir.of_logs(d).new_timestamp()
        assert ts == path.name[len("startup_rank1_"):-4], (ts, path.name)
        logs.setup_rank_logging(d, ts, 1, 2, debug=False)
        log.info("after")
    """)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("startup")] == []
    (debug,) = tmp_path.glob("debug_rank1_*.log")
    lines = debug.read_text().splitlines()
    assert [ln.split("] ", 2)[-1] for ln in lines if "[Rank 1/2]" in ln or "gloo" in ln] == [
        "before the run has a name", "gloo says something on fd 2", "blocked in set-up", "after"], lines
    assert "[ERROR] [Rank 1/2] blocked in set-up" in r.stdout  # errors reach the console from the first second
