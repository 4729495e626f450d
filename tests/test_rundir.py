"""RunDir names every file a run writes; the start-up steps keep what the user wrote; ranks' exit codes
reach the shell through ExitCode."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ae_train import logformat as lf
from ae_train.config import ConfigError, load_config, to_yaml
from ae_train.exitcodes import STOPPED_ON_PURPOSE, ExitCode
from ae_train.rundir import CONFIG_MARK, RunDir
from conftest import fit, make_shards


def _run_ts(run: RunDir) -> str:
    found = {lf.RUN_FILE.fullmatch(p.name).group(2) for p in run.logs.iterdir() if lf.RUN_FILE.fullmatch(p.name)}
    assert len(found) == 1, found
    return found.pop()


def test_rundir_names_every_file_a_run_made(tmp_path):
    make_shards(tmp_path / "d", [40, 40])
    make_shards(tmp_path / "d", [24], prefix="val", seed=1)
    (tmp_path / "d" / "ae_index.json").unlink()  # the launcher counts the shards: shard_counts.json is written
    result = fit(tmp_path / "out", f"--data.train_shards={tmp_path}/d/train-*.tar",
                 f"--data.val_shards={tmp_path}/d/val-*.tar", "--data.batch_size=8", "--data.num_workers=1",
                 "--trainer.max_epochs=1")
    assert result.proc.returncode == ExitCode.OK, result.console + result.text("*.log")
    run = RunDir(tmp_path / "out")
    ts = _run_ts(run)
    made = {p for p in run.root.rglob("*") if p.is_file()}
    named = {run.train_log(ts), run.debug_log(0, ts), run.debug_log(1, ts), run.config, run.run_config(ts),
             run.lock, run.counts_cache, run.last_ckpt, run.metrics_csv(ts)}
    assert named <= made, sorted(map(str, named - made))
    rest = made - named  # Lightning's own files, each in a directory RunDir names
    assert all(p.parent == run.checkpoints and p.suffix == ".ckpt" or p.parent == run.metrics / ts
               or run.tensorboard / ts in p.parents or p == run.reconstructions / "epoch_000.png"
               for p in rest), sorted(map(str, rest))
    assert run.reconstructions / "epoch_000.png" in rest  # the one validation's picture
    assert any(p.name.startswith("best-") for p in rest)
    assert not run.launch_counts(ts).exists()  # the ranks' facts file lives as long as the run
    assert run.config.read_text().startswith(CONFIG_MARK) and run.config.read_text() == run.run_config(ts).read_text()
    counted = json.loads(run.counts_cache.read_text())
    assert sorted(counted) == sorted(str(p) for p in (tmp_path / "d").glob("*.tar")), counted
    train = run.train_log(ts).read_text()
    logs_at = [lf.LOGS_AT.pattern.search(line.encode()) for line in train.splitlines()]
    logs_at = [m for m in logs_at if m]
    assert [m.groups() for m in logs_at] == [(str(run.train_log(ts)).encode(), str(run.debug_logs(ts)).encode())]
    assert lf.COUNTS_SAVED.text(3, run.counts_cache) in train
    assert lf.ALL_FINISHED.text(2) in train


def test_rundir_write_config_keeps_a_config_the_user_wrote(tmp_path, caplog):
    run = RunDir(tmp_path)
    cfg = load_config(None, [f"--output_dir={tmp_path}", "--data.train_shards=x.tar", "--seed=7"])
    run.config.write_text("# mine\nseed: 1\n")
    with caplog.at_level(logging.WARNING):
        run.write_config(to_yaml(cfg), "20260101_000000")
    assert run.config.read_text() == "# mine\nseed: 1\n"
    assert "seed: 7" in run.run_config("20260101_000000").read_text()
    assert lf.CONFIG_LEFT.text(run.config, "20260101_000000") in caplog.text
    run.config.unlink()
    run.write_config(to_yaml(cfg), "20260101_000001")  # no file: ours to write, and to update next time
    run.write_config(to_yaml(load_config(None, [f"--output_dir={tmp_path}", "--data.train_shards=x.tar", "--seed=8"])),
                     "20260101_000002")
    assert run.config.read_text() == run.run_config("20260101_000002").read_text() and "seed: 8" in run.config.read_text()
    assert [p.name for p in run.configs()] == ["config.yaml", "config_20260101_000000.yaml",
                                               "config_20260101_000001.yaml", "config_20260101_000002.yaml"]


def test_rundir_prepare_names_an_output_dir_that_cannot_hold_logs(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=rf"^output_dir {tmp_path}/file/out is not writable: "):
        RunDir(tmp_path / "file" / "out", f"{tmp_path}/file/out").prepare()
    assert RunDir(tmp_path / "ok").prepare() == tmp_path / "ok" / "logs"
    assert list((tmp_path / "ok" / "logs").iterdir()) == []  # the write probe is gone


def test_rundir_counts_cache_round_trip_and_a_broken_one_is_empty(tmp_path):
    run = RunDir(tmp_path)
    assert run.load_counts() == {}
    run.save_counts({"/d/a.tar": 3})
    assert run.load_counts() == {"/d/a.tar": 3} and [p.name for p in tmp_path.iterdir()] == ["shard_counts.json"]
    run.counts_cache.write_text("{half")
    assert run.load_counts() == {}


def test_rundir_ranks_that_stop_the_run_give_the_launcher_their_exit_code(tmp_path):
    paths = make_shards(tmp_path / "d", [40] * 5)
    for p in map(Path, paths[:4]):  # broken after indexing, same size: only reading finds it
        p.write_bytes(p.read_bytes().replace(b"\x93NUMPY", b"\x00NUMPY"))
    result = fit(tmp_path / "out", f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8",
                 "--data.num_workers=1", "--trainer.max_epochs=1", "--data.max_shard_errors=0.5", timeout=150)
    assert result.proc.returncode == ExitCode.SHARD_ERRORS, result.console
    train = RunDir(tmp_path / "out").train_log(_run_ts(RunDir(tmp_path / "out"))).read_text()
    stopped = [lf.RANK_STOPPED.pattern.search(line.encode()) for line in train.splitlines()]
    stopped = [m.groups() for m in stopped if m]
    assert len(stopped) == 1 and stopped[0][1:] == (b"3", STOPPED_ON_PURPOSE[ExitCode.SHARD_ERRORS].encode()), train
    assert lf.STOPPING.text(lf.SHARD_LIMIT % (4, 5, "train_shards", 0, 2, 0.5)) in train
