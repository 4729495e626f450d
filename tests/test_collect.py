"""`ae-train collect`: one tar.gz with everything the guide's "need help" section asks for."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ae_train.collect import main, tail_lines
from helpers import TS, RankWriter, finished_run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A finished 2-rank run whose rank 0 PID is this (live) test process, so /proc is read for it."""
    out = tmp_path / "out"
    logs = out / "logs"
    logs.mkdir(parents=True)
    finished_run(logs, epochs=3)  # > 100 lines per debug log, so the tail is a real cut
    RankWriter(logs, 0, 2, pid=os.getpid(), host=os.uname().nodename)  # a second header: this process's PID
    (out / "config.yaml").write_text("data:\n  batch_size: 8\n")
    (out / "config_resolved.yaml").write_text("seed: 1\n")
    return logs


def names(bundle: Path) -> list[str]:
    if shutil.which("tar"):  # what the user will run
        return subprocess.run(["tar", "tzf", str(bundle)], capture_output=True, text=True, check=True).stdout.split()
    with tarfile.open(bundle) as tar:
        return tar.getnames()


def test_collect_bundle_holds_every_item(run, capsys):
    assert main([str(run)]) == 0
    bundle = run.parent / f"ae_diag_{TS}.tar.gz"
    assert capsys.readouterr().out.strip() == str(bundle)
    top = f"ae_diag_{TS}"
    logs = [f"train_{TS}.log", f"debug_rank0_{TS}.log", f"debug_rank1_{TS}.log"]
    expected = ({f"{top}/logs/{n}" for n in logs} | {f"{top}/tail/{n}.tail.txt" for n in logs}
                | {f"{top}/config/config.yaml", f"{top}/config/config_resolved.yaml"}
                | {f"{top}/{n}" for n in ("nvidia-smi.txt", "processes.txt", "versions.txt", "diagnose.txt",
                                          "diagnose.json", "MANIFEST.txt")})
    assert set(names(bundle)) == expected
    with tarfile.open(bundle) as tar:
        read = lambda n: tar.extractfile(f"{top}/{n}").read().decode()
        assert read(f"logs/debug_rank1_{TS}.log") == (run / f"debug_rank1_{TS}.log").read_text()
        full = (run / f"debug_rank0_{TS}.log").read_text().splitlines()
        assert len(full) > 100 and read(f"tail/debug_rank0_{TS}.log.tail.txt").splitlines() == full[-100:]
        assert json.loads(read("diagnose.json"))["state"] == "finished"
        assert "Run finished cleanly" in read("diagnose.txt")
        assert "python " in read("versions.txt") and "torch " in read("versions.txt")
        procs = read("processes.txt")
        assert f"pid {os.getpid()} (rank 0" in procs and "VmRSS" in procs and "cmdline:" in procs
        assert "MemTotal" in procs
        smi = read("nvidia-smi.txt")
        assert ("nvidia-smi not found" in smi) == (shutil.which("nvidia-smi") is None)


def test_collect_never_overwrites(run, tmp_path, capsys):
    out = tmp_path / "b.tar.gz"
    out.write_bytes(b"precious")
    assert main([str(run), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and out.read_bytes() == b"precious"


def test_collect_bad_input_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("ae-train collect: error: logs directory not found")


def test_collect_run_selection_and_output_name(run, tmp_path):
    RankWriter(run, 0, 1, ts="20261130_000000").train(0, end=False)
    out = tmp_path / "old.tar.gz"
    assert main([str(run), "--run", TS, "-o", str(out)]) == 0
    assert all(TS in n for n in names(out) if "/logs/" in n)
    assert main([str(run)]) == 0 and (run.parent / "ae_diag_20261130_000000.tar.gz").exists()


def test_collect_tail_reads_last_lines_of_big_file(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes(b"".join(b"line %d %s\n" % (i, b"x" * 1000) for i in range(500)) + b"torn")
    got = tail_lines(p, 100).splitlines()
    assert len(got) == 100 and got[0].startswith(b"line 401 ") and got[-1] == b"torn"
