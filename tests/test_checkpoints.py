"""Checkpoints: atomic writes, verification, resume=auto's fallback, step checkpoints that resume inside
an epoch with the same data, a kill during a save and a full disk. Real files, real 2-rank runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ae_train.checkpoint_files import newest_good, remove_leftovers, resume_path, verify
from ae_train.config import ConfigError, load_config
from ae_train.diagnose import diagnose_run
from ae_train.exitcodes import ExitCode
from conftest import ROOT, fit, make_shards, start, wait_for
from helpers import markers

STEPS = 250  # batches per rank per epoch in the step-checkpoint runs: 4000 samples / (2 ranks x 8)


def _save(path: Path, step: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.arange(5000.0)}, "loops": {}}, path)
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    return _save(tmp_path / "good.ckpt")


@pytest.mark.parametrize("damage,reason", [
    (lambda raw: raw[: len(raw) // 2], "is truncated or corrupt"),
    (lambda raw: raw[:-30], "is truncated or corrupt"),
    (lambda raw: b"", "is empty"),
    (lambda raw: os.urandom(len(raw)), "is not a PyTorch checkpoint"),
    (lambda raw: raw[:2000] + bytes(b ^ 0xFF for b in raw[2000:2100]) + raw[2100:], "fails its CRC check"),
])
def test_checkpoint_files_verify_names_the_damage(good, damage, reason):
    assert verify(good) is None
    good.write_bytes(damage(good.read_bytes()))
    why = verify(good)
    assert why and reason in why, why


def test_checkpoint_files_verify_accepts_the_legacy_format(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert verify(path) is None


def test_checkpoint_files_auto_falls_back_to_the_newest_good_one(tmp_path, caplog):
    ckpt = tmp_path / "checkpoints"
    older = _save(ckpt / "best-epoch=000.ckpt")
    _save(ckpt / "last.ckpt")
    os.utime(older, (1, 1))
    last = ckpt / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    cfg = load_config(None, [f"--output_dir={tmp_path}", "--resume=auto"])
    assert resume_path(cfg) == str(older)
    assert re.search(r"resume=auto: last\.ckpt is truncated or corrupt .*; resuming from the newest good checkpoint "
                     + re.escape(str(older)) + " instead", caplog.text)
    older.write_bytes(b"")
    os.utime(older, (1, 1))  # the write gave it a fresh mtime, which can be newer than last.ckpt's
    with pytest.raises(ConfigError, match=r"resume=auto: no readable checkpoint in .*checkpoints: last\.ckpt is "
                                          r"truncated or corrupt .* \(and 1 more\)"):
        resume_path(cfg)
    assert newest_good(tmp_path / "nowhere") == (None, [])


def test_checkpoint_files_leftovers_of_unfinished_saves_are_removed(tmp_path):
    ckpt = tmp_path / "checkpoints"
    keep = [_save(ckpt / "last.ckpt"), _save(ckpt / "best-epoch=001.ckpt"), _save(ckpt / "notes.ckpt.tmp")]
    gone = _save(ckpt / "last.ckpt.tmp12345")
    assert remove_leftovers(ckpt) == [gone]
    assert all(p.exists() for p in keep) and not gone.exists()


def test_checkpoint_resume_of_a_broken_file_is_one_line(tmp_path):
    make_shards(tmp_path / "d", [40])
    broken = _save(tmp_path / "broken.ckpt")
    broken.write_bytes(broken.read_bytes()[:700])
    r = subprocess.run([sys.executable, "-m", "ae_train", "fit", f"--output_dir={tmp_path}/out",
                        f"--data.train_shards={tmp_path}/d", "--data.val_shards=", f"--resume={broken}"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == ExitCode.BAD_INPUT, r.stderr
    assert r.stderr.splitlines() == [f"ae-train: error: resume: checkpoint {broken} is truncated or corrupt "
                                     f"(700 bytes: File is not a zip file)"]


def _flags(d: Path, *more: str) -> list[str]:
    return [f"--data.train_shards={d}", "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=2",
            "--trainer.max_epochs=2", "--debug=true", "--log.train_every=50", "--trainer.ddp_timeout_s=60", *more]


def _hashes(directory: Path, rank: int) -> dict[tuple[int, int], str]:
    """{(epoch, batch_idx): hash}; a batch index seen twice keeps the later hash."""
    out = {}
    for line in (directory / f"rank{rank}.txt").read_text().splitlines():
        epoch, idx, digest = line.split()
        out[int(epoch), int(idx)] = digest
    return out


def test_checkpoint_every_n_steps_sigkilled_rank_resumes_inside_the_epoch_with_the_same_batches(tmp_path):
    d = tmp_path / "d"
    make_shards(d, [500] * 8)
    ref, killed, resumed = (tmp_path / n for n in ("ref", "killed", "resumed"))
    for p in (ref, killed, resumed):
        p.mkdir()
    hashes = "--trainer.callbacks=ddp_helpers.BatchHashes"
    one = "--trainer.max_epochs=1"
    run = fit(tmp_path / "out_ref", *_flags(d, one, hashes), env={"AE_TEST_HASHES": str(ref)}, timeout=240)
    assert run.proc.returncode == 0, run.console + run.text("*.log")

    out = tmp_path / "out"
    every = ["--checkpoint.every_n_steps=25"]
    run = fit(out, *_flags(d, one, *every, hashes + ",ddp_helpers.KillRank1At"),
              env={"AE_TEST_HASHES": str(killed), "AE_TEST_KILL_AT": "0:180"}, timeout=240)
    assert run.proc.returncode == ExitCode.FAILED, run.console
    train = run.text("train_*.log")
    assert re.search(r"Rank 1 \(pid \d+\) exited with code -9 \(killed by SIGKILL\)", train)
    saved = [int(s) for s in re.findall(r"Saved step checkpoint \S+last\.ckpt at epoch 0 step (\d+)", train)]
    killed_at = 181  # rank 1 died after the step of batch 180 of epoch 0
    assert saved and saved[-1] <= killed_at and killed_at - saved[-1] <= 25, saved
    first = set(run.files("*.log"))

    run = fit(out, *_flags(d, one, *every, hashes, "--resume=auto"), env={"AE_TEST_HASHES": str(resumed)}, timeout=240)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    text = "".join(p.read_text() for p in run.files("train_*.log") if p not in first)
    assert f"Resuming from {out}/checkpoints/last.ckpt at epoch 0, step {saved[-1]}" in text
    done_in_epoch = saved[-1]
    for rank in (0, 1):
        want, before, after = _hashes(ref, rank), _hashes(killed, rank), _hashes(resumed, rank)
        # Batch i after the resume is batch i of the run never stopped; so is every batch before the kill.
        assert sorted(after) == [(0, i) for i in range(done_in_epoch, STEPS)]
        assert all(after[k] == want[k] for k in after), rank
        assert all(before[k] == want[k] for k in before), rank
        debug = next(p for p in run.files(f"debug_rank{rank}_*.log") if p not in first).read_text()
        assert f"EPOCH 0 TRAINING START ========== resumed at batch {done_in_epoch}" in debug
    ends = [[b for n, b in markers(next(p for p in run.files(f"debug_rank{r}_*.log") if p not in first).read_text())
             if n == "EPOCH 0 TRAINING END"] for r in (0, 1)]
    assert ends[0] == ends[1] == [str(STEPS)], ends


def test_checkpoint_kill_during_a_save_keeps_the_previous_last_ckpt(tmp_path):
    make_shards(tmp_path / "d", [200] * 4)
    out = tmp_path / "out"
    flags = _flags(tmp_path / "d", "--checkpoint.every_n_steps=10", "--trainer.max_epochs=1")
    run = fit(out, *flags, "--trainer.callbacks=ddp_helpers.KillRank0DuringSave", timeout=180)
    assert run.proc.returncode == ExitCode.FAILED, run.console
    assert re.search(r"Rank 0 \(pid \d+\) exited with code -9", run.text("train_*.log"))
    assert diagnose_run(run.logs)["verdict"].startswith("First failure: rank 0 was killed by SIGKILL, without a line of "
                                                        "its own (at ")
    last = out / "checkpoints" / "last.ckpt"
    assert verify(last) is None
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 10  # the 1st save, whole
    leftovers = list((out / "checkpoints").glob("last.ckpt.tmp*"))
    assert len(leftovers) == 1 and verify(leftovers[0]), "the killed save's partial file, never renamed"
    first = set(run.files("*.log"))

    run = fit(out, *flags, "--resume=auto", timeout=180)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    text = "".join(p.read_text() for p in run.files("train_*.log") if p not in first)
    assert f"Removed {leftovers[0]}, left by a checkpoint save that did not finish" in text
    assert f"Resuming from {last} at epoch 0, step 10" in text
    assert not leftovers[0].exists()


def test_checkpoint_full_disk_is_an_error_line_and_a_clean_stop(tmp_path):
    """The save's temporary file is made a link to /dev/full: the kernel's ENOSPC on a real write."""
    make_shards(tmp_path / "d", [500] * 8)  # one epoch of 250 steps: the failing save is a step save
    out = tmp_path / "out"
    proc = start(out, *_flags(tmp_path / "d", "--checkpoint.every_n_steps=20", "--trainer.max_epochs=1",
                              "--trainer.callbacks=ddp_helpers.SlowSteps"))
    logs = out / "logs"
    wait_for(logs / "train_*.log", r"Saved step checkpoint", 120)
    text = next(logs.glob("debug_rank0_*.log")).read_text()
    pid = int(re.search(r"Debug log of rank 0/2: host=\S+ pid=(\d+)", text).group(1))
    link = out / "checkpoints" / f"last.ckpt.tmp{pid}"
    while True:
        try:
            link.symlink_to("/dev/full")
            break
        except FileExistsError:  # a save is writing that name right now: link it for the next one
            time.sleep(0.005)
    console, _ = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.CHECKPOINT_WRITE_FAILED, console
    train = next(logs.glob("train_*.log")).read_text()
    errors = [ln for ln in train.splitlines() if "[ERROR]" in ln]
    assert len(errors) == 1, errors
    assert re.search(r"\[ERROR\] \[Rank 0/2\] Stopping: could not write checkpoint \S+/last\.ckpt: No space left on "
                     r"device; the checkpoints saved before are kept", errors[0])
    assert re.search(r"\[Launcher\] Rank [01] stopped the run \(exit code 4: a checkpoint could not be written\)", train)
    assert "Stopping: could not write checkpoint" in console
    rep = diagnose_run(logs)  # the failed save leads the verdict, with its cause
    assert re.match(r"First failure: rank 0 could not write checkpoint \S+/last\.ckpt: No space left on device \(at ",
                    rep["verdict"]), rep["verdict"]
    assert "usual cause: the disk is full" in rep["findings"][0]["message"]
    assert {c["kind"] for c in rep["failure"]["consequences"]} <= {"stopped_together", "run_stopped"}
    saved = [int(s) for s in re.findall(r"Saved step checkpoint \S+ at epoch \d+ step (\d+)", train)]
    last = out / "checkpoints" / "last.ckpt"
    assert verify(last) is None
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == saved[-1]
    assert not list((out / "checkpoints").glob("*.tmp*"))
