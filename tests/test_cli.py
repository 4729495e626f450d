"""Bad input: one clear line, exit 2, within seconds, before any rank starts, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ae_train.exitcodes import ExitCode
from conftest import ROOT, make_shards


def ae_train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The CLI as a user runs it; the timeout only guards against a hang."""
    return subprocess.run([sys.executable, "-m", "ae_train", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli_shards")
    make_shards(d, [10, 10])
    return d


def _bad(tmp_path: Path, shards: Path, *flags: str):
    out = tmp_path / "out"
    r = ae_train("fit", f"--output_dir={out}", f"--data.train_shards={shards}", "--data.val_shards=", *flags)
    assert r.returncode == ExitCode.BAD_INPUT, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ae-train: error: "), lines
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("debug_rank*.log")), "no rank may start"
    return lines[0]


def test_cli_missing_shards(tmp_path, shards):
    line = _bad(tmp_path, shards, f"--data.train_shards={tmp_path}/nope-{{000000..000009}}.tar")
    assert f"data.train_shards: shard not found: {tmp_path}/nope-000000.tar (and 9 more)" in line


def test_cli_unknown_key(tmp_path, shards):
    assert "unknown config key 'trainer.max_epoch' (flag --trainer.max_epoch)" in _bad(tmp_path, shards, "--trainer.max_epoch=3")


def test_cli_wrong_type(tmp_path, shards):
    assert "data.num_workers: expected an integer, got 'two'" in _bad(tmp_path, shards, "--data.num_workers=two")


def test_cli_unwritable_output_dir(tmp_path, shards):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    line = _bad(tmp_path, shards, f"--output_dir={blocker}/run")
    assert f"output_dir {blocker}/run is not writable" in line


def test_cli_missing_resume_checkpoint(tmp_path, shards):
    assert "resume: checkpoint not found: /no/such.ckpt" in _bad(tmp_path, shards, "--resume=/no/such.ckpt")


def test_cli_never_overwrites_checkpoints(tmp_path, shards):
    ckpt = tmp_path / "out" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"earlier run")
    assert "already holds checkpoints of an earlier run; pass --resume=auto" in _bad(tmp_path, shards)
    assert ckpt.read_bytes() == b"earlier run"


def test_cli_train_ae_sh_with_user_config_never_uses_demo_data(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"output_dir: {tmp_path}/out\ndata:\n  train_shards: {tmp_path}/mydata/train-{{000000..000003}}.tar\n")
    r = subprocess.run(["./train_ae.sh", "--config", str(cfg)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == ExitCode.BAD_INPUT
    assert r.stderr.strip() == f"ae-train: error: data.train_shards: shard not found: {tmp_path}/mydata/train-000000.tar (and 3 more)"


def test_cli_make_shards_and_index(tmp_path):
    r = ae_train("make-shards", "--out", str(tmp_path), "--sizes", "3,0,7", "--dim", "5")
    assert r.returncode == 0 and "wrote 3 shards (10 samples of dim 5)" in r.stdout, r.stderr
    (tmp_path / "ae_index.json").unlink()
    r = ae_train("index", str(tmp_path))
    assert r.returncode == 0 and "indexed 3 shards, 10 samples; 0 unreadable" in r.stdout, r.stderr
    r = ae_train("make-shards", "--out", str(tmp_path), "--sizes", "3")
    assert r.returncode == ExitCode.BAD_INPUT and "never overwrites shards" in r.stderr
    (tmp_path / "train-000001.tar").write_bytes(b"garbage" * 200)
    r = ae_train("index", str(tmp_path))
    assert r.returncode == ExitCode.FAILED and "train-000001.tar: not a tar file" in r.stderr


def test_cli_config_help_lists_every_key():
    r = ae_train("config", "--help")
    assert r.returncode == 0 and "--data.train_shards=" in r.stdout and "--log.val_every=20" in r.stdout


@pytest.mark.parametrize("command", [["fit", "--help"], ["fit", "-h"], ["train_ae.sh", "--help"],
                                     ["bench-data", "--help"], ["config", "--help"]])
def test_cli_help_names_the_keys_and_writes_nothing(tmp_path, command):
    env = dict(os.environ, AE_DEMO_DATA=str(tmp_path / "demo"))  # where train_ae.sh would make the demo data
    cmd = [str(ROOT / "train_ae.sh"), *command[1:]] if command[0] == "train_ae.sh" else \
        [sys.executable, "-m", "ae_train", *command, "--output_dir", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == ExitCode.OK and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: ") and "--config" in r.stdout
    assert "--data.train_shards=" in r.stdout and "--log.sample_ledger=" in r.stdout
    assert "\ndata:\n" in r.stdout  # grouped by section
    assert list(tmp_path.iterdir()) == [], "help writes nothing"


@pytest.mark.parametrize("command", ["encode", "evaluate", "export"])
def test_cli_help_of_the_model_commands(tmp_path, command):
    r = ae_train(command, "--help", cwd=tmp_path)
    assert r.returncode == ExitCode.OK and r.stdout.startswith(f"usage: ae-train {command}") and "--ckpt" in r.stdout
    assert list(tmp_path.iterdir()) == []
