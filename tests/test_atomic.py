"""atomic.atomic_write: a file is its old content or its new one, whole; a failed or killed write leaves the old."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ae_train.atomic import atomic_write


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "counts.json"
    for durable in (False, True):
        target.write_bytes(b"old")
        with atomic_write(target, durable=durable) as f:
            f.write(b"new ")
            f.flush()
            assert target.read_bytes() == b"old"  # the name keeps its content until the new one is whole
            f.write(b"content")
        assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.json"]


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous checkpoint")
    with pytest.raises(RuntimeError, match="pickling failed"):
        with atomic_write(target, durable=True) as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("pickling failed")
    assert target.read_bytes() == b"previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    with pytest.raises(FileNotFoundError):  # no directory to write in: the error as open() raises it
        with atomic_write(tmp_path / "missing" / "x.json"):
            pass


def test_atomic_write_killed_midway_leaves_the_old_file_and_a_named_leftover(tmp_path):
    target = tmp_path / "train-000000.tar"
    target.write_bytes(b"the shard as it was")
    script = textwrap.dedent(f"""
        import sys, time
        from ae_train.atomic import atomic_write
        with atomic_write({str(target)!r}) as f:
            f.write(b"the first half")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "writing\n"
        assert (tmp_path / f"{target.name}.tmp{p.pid}").read_bytes() == b"the first half"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        p.kill()
    assert target.read_bytes() == b"the shard as it was"
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([target.name, f"{target.name}.tmp{p.pid}"])
