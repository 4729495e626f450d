"""Every command in README and docs/LOGGING*.md runs against real logs and finds what it promises."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = [ROOT / "docs" / "LOGGING.md", ROOT / "docs" / "LOGGING.zh-CN.md"]
ERROR_COMMANDS = ("grep ERROR", 'grep "ERROR.*shard"')  # need a run that had errors
HANG_WORDS = ("Stack dump", "HANG SUSPECTED")  # need a run where the watchdog fired


def bash_commands(path: Path, prefixes=("grep", "tail", "awk", "ae-train diagnose")) -> list[str]:
    """Command lines of ```bash blocks, without trailing comments."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)
    lines = [ln for b in blocks for ln in b.splitlines()]
    return [re.sub(r"\s+#.*$", "", ln).strip() for ln in lines if ln.startswith(prefixes)]


def run_doc_command(cmd: str, logs: Path) -> str:
    if cmd.startswith("tail -f"):
        cmd = "timeout 1 " + cmd  # follow for a second, then stop
    path = os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"])  # ae-train lives beside python
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, env={"LOGS": str(logs), "PATH": path})
    return r.stdout


def test_docs_both_languages_hold_the_same_commands():
    en, zh = (bash_commands(p, ("grep", "tail", "awk", "./train_ae.sh", "LOGS=", "ae-train")) for p in DOCS)
    assert en == zh
    assert len(bash_commands(DOCS[0])) >= 14


@pytest.mark.parametrize("cmd", bash_commands(DOCS[0]))
def test_docs_command_finds_its_lines(cmd, debug_run, error_run, hang_run):
    logs = error_run[0].logs if cmd.startswith(ERROR_COMMANDS) else hang_run.logs if any(
        w in cmd for w in HANG_WORDS) else debug_run.logs
    out = run_doc_command(cmd, logs)
    assert out.strip(), f"`{cmd}` found nothing in {logs}"
    if cmd.startswith(ERROR_COMMANDS):
        assert "Error reading shard" in out
    if "EPOCH" in cmd:
        assert "TRAINING START" in out and "VALIDATION END" in out
    if cmd.startswith("ae-train diagnose"):
        assert ("Run finished cleanly" in out) if "--json" not in cmd else '"findings"' in out
    if "Stack dump" in cmd:
        assert "reason: SIGUSR1" in out and "reason: hang" in out
    if "samples_rank" in cmd:  # the debug run's ledger: 2 epochs of 2 ranks x 36 batches of 8
        assert ("epoch 0 576 samples" in out and "epoch 1 576 samples" in out) if cmd.startswith("awk") else \
            re.search(r"samples_rank\d_\d{8}_\d{6}\.tsv:\d+\t\d+\t.*train000000_000000000", out)


def test_docs_error_greps_are_empty_on_a_clean_run(debug_run):
    for cmd in bash_commands(DOCS[0]):
        if cmd.startswith(ERROR_COMMANDS):
            assert run_doc_command(cmd, debug_run.logs) == ""
