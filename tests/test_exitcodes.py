"""exitcodes.exit_process: a process that ends without the interpreter's teardown still does what a
normal exit does that users see: atexit handlers run, non-daemon threads finish, buffered output is
written, and the code is the one given."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from ae_train.exitcodes import ExitCode


def test_exit_process_runs_atexit_joins_threads_and_flushes(tmp_path):
    marker = tmp_path / "atexit.txt"
    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from ae_train.exitcodes import exit_process

        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))

        def late():
            time.sleep(0.3)
            print("thread done", flush=True)

        threading.Thread(target=late).start()
        sys.stdout.write("buffered, no newline")  # a pipe: block-buffered until flushed
        exit_process({int(ExitCode.SHARD_ERRORS)})
        print("never printed")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == ExitCode.SHARD_ERRORS, r.stderr
    assert "thread done\n" in r.stdout and "buffered, no newline" in r.stdout and "never" not in r.stdout, r.stdout
    assert marker.read_text() == "ran"


def test_exit_process_of_none_is_zero():
    r = subprocess.run([sys.executable, "-c", "from ae_train.exitcodes import exit_process; exit_process(None)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == ""
