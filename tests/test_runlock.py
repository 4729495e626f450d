"""One run per output directory: a live run's lock stops a second launcher; a dead run's is taken over."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from ae_train.run import runlock
from ae_train.config import ConfigError
from ae_train.exitcodes import ExitCode
from ae_train.rundir import RunDir
from conftest import ROOT, make_shards, start, wait_for


def test_runlock_a_held_lock_names_its_holder_and_a_released_one_is_free(tmp_path, caplog):
    fd = runlock.acquire(tmp_path)
    holder = json.loads(RunDir(tmp_path).lock.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(ConfigError, match=rf"output_dir {tmp_path} is in use by a running ae-train fit: launcher pid "
                                          rf"{os.getpid()} on host {socket.gethostname()}, started "):
        runlock.acquire(tmp_path)
    runlock.release(fd)
    assert RunDir(tmp_path).lock.read_text() == ""
    runlock.release(runlock.acquire(tmp_path))
    assert "Took over" not in caplog.text  # a run that ended normally leaves no holder behind


def test_runlock_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    code = f"from ae_train.run import runlock; runlock.acquire({str(tmp_path)!r}); print('locked', flush=True); input()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ConfigError, match=f"launcher pid {holder.pid} on host"):
            runlock.acquire(tmp_path)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
    fd = runlock.acquire(tmp_path)
    runlock.release(fd)
    assert f"Took over the run lock of output_dir {tmp_path} from launcher pid {holder.pid} on host " in caplog.text
    assert "that run is no longer running" in caplog.text


def test_runlock_second_fit_into_a_live_run_is_one_line(tmp_path):
    make_shards(tmp_path / "d", [200] * 4)
    out = tmp_path / "out"
    flags = [f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8",
             "--trainer.max_epochs=3", "--trainer.callbacks=ddp_helpers.SlowSteps"]
    first = start(out, *flags)
    try:
        wait_for(out / "logs" / "train_*.log", r"EPOCH 0 TRAINING START|Epoch 0|Starting training", 120)
        r = subprocess.run([sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", *flags, "--resume=auto"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert r.returncode == ExitCode.BAD_INPUT
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"ae-train: error: output_dir {re.escape(str(out))} is in use by a running ae-train fit: launcher pid "
        rf"{first.pid} on host {re.escape(socket.gethostname())}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d; wait "
        "for it, stop it, or choose another --output_dir", lines[0]), lines
