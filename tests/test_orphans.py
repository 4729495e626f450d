"""No orphans: when the launcher (or torchrun's agent) dies by SIGKILL, every rank and DataLoader worker
is gone within 60 s, blocked or not; ranks that can still reach a step save last.ckpt first."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ae_train.run.orphans import descendants
from conftest import DIM, ROOT, TESTS, fit, make_shards, pids_in, start, wait_for, wait_gone

GONE_WITHIN_S = 60  # the bound, with the default checkpoint.parent_death_grace_s (30 s)
GRACE_S = 5  # a rank that sleeps through the stop is killed after this (shorter than the default: a faster test)


def _all_logs(out: Path) -> str:
    return "".join(p.read_text() for p in (out / "logs").glob("*.log"))


def _blocked_run_flags(d: Path) -> list[str]:
    return [f"--data.train_shards={d}", "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=2",
            "--trainer.max_epochs=2", "--log.hang_timeout_s=2", "--trainer.callbacks=ddp_helpers.BlockRank0InStep",
            f"--checkpoint.parent_death_grace_s={GRACE_S}"]


def _wait_blocked(out: Path) -> list[int]:
    """Rank 0 asleep inside a step, rank 1 stuck in the next step's first collective (the all-reduce of
    the stop flags): its watchdog's stack dump shows it."""
    logs = out / "logs"
    wait_for(logs / "debug_rank0_*.log", r"test: rank 0 blocks in a sleep", 120)
    wait_for(logs / "debug_rank1_*.log", r"HANG SUSPECTED[^\n]*\n[^\n]*Stack dump of rank 1[^\n]*\n[^\n]*MainThread[^\n]*\n"
             r"[^\n]*distributed_c10d\.py", 60)
    pids = sorted(set(pids_in(_all_logs(out))))
    assert len(pids) == 6, pids  # 2 ranks, 2 workers each
    return pids


def test_orphans_launcher_sigkilled_with_a_rank_blocked_and_one_in_a_collective(tmp_path):
    make_shards(tmp_path / "d", [400] * 4)
    out = tmp_path / "out"
    proc = start(out, *_blocked_run_flags(tmp_path / "d"))
    try:
        pids = _wait_blocked(out)
        proc.kill()  # SIGKILL: no handler runs, nothing is forwarded
        proc.wait()
        assert wait_gone(pids, GONE_WITHIN_S) == [], "ranks or workers outlived the launcher"
    finally:
        proc.kill()
    for rank in (0, 1):
        text = next((out / "logs").glob(f"debug_rank{rank}_*.log")).read_text()
        assert f"The process that started this rank (pid {proc.pid}) is gone; stopping" in text
    # Rank 0 sleeps through the SIGTERM; rank 1 may also leave on its own once its peer is gone.
    text = next((out / "logs").glob("debug_rank0_*.log")).read_text()
    assert re.search(rf"Not stopped within {GRACE_S} s of losing pid {proc.pid} .*; killing this rank and 2 process\(es\) "
                     "below it", text)


def test_orphans_launcher_sigkilled_while_training_ranks_save_and_go(tmp_path):
    make_shards(tmp_path / "d", [200] * 4)
    out = tmp_path / "out"
    flags = [f"--data.train_shards={tmp_path}/d", "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=2",
             "--trainer.max_epochs=2", "--debug=true", "--log.train_every=5", "--trainer.callbacks=ddp_helpers.SlowSteps"]
    proc = start(out, *flags)
    try:
        wait_for(out / "logs" / "debug_rank1_*.log", r"Training step 10, ", 120)
        pids = pids_in(_all_logs(out))
        proc.kill()
        proc.wait()
        assert wait_gone(pids, GONE_WITHIN_S) == []
    finally:
        proc.kill()
    train = next((out / "logs").glob("train_*.log")).read_text()
    m = re.search(r"\[Rank 0/2\] Received SIGTERM at epoch 0 step (\d+); saved (\S+)", train)
    assert m and m.group(2) == str(out / "checkpoints" / "last.ckpt"), train
    assert "killing this rank" not in _all_logs(out)  # they stopped by themselves, within the grace period
    first = set((out / "logs").glob("*.log"))

    run = fit(out, *flags, "--resume=auto", timeout=150)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    text = "".join(p.read_text() for p in run.files("train_*.log") if p not in first)
    assert f"Resuming from {out}/checkpoints/last.ckpt at epoch 0, step {m.group(1)}" in text
    assert re.search(rf"Took over the run lock of output_dir {out} from launcher pid {proc.pid} on host \S+ \(started "
                     r"[\d: -]+\): that run is no longer running", text)


def test_orphans_torchrun_agent_sigkilled(tmp_path):
    make_shards(tmp_path / "d", [400] * 4)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ae_train", "fit",
           f"--output_dir={out}", "--trainer.accelerator=cpu", "--trainer.devices=2", f"--model.input_dim={DIM}",
           "--model.latent_dim=4", "--model.hidden_dims=32", "--checkpoint.parent_death_grace_s=5",
           *_blocked_run_flags(tmp_path / "d")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        pids = _wait_blocked(out)
        ranks = descendants(proc.pid)
        assert set(pids) <= set(ranks), "torchrun's workers are the ranks"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_gone(pids, GONE_WITHIN_S) == []
    finally:
        proc.kill()
    text = next((out / "logs").glob("debug_rank1_*.log")).read_text()
    assert f"The process that started this rank (pid {proc.pid}) is gone" in text


def test_orphans_descendants_lists_children_and_grandchildren():
    p = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        def sleeps() -> list[bytes]:  # a forked child is bash until it has exec'd sleep: wait for both
            return [Path(f"/proc/{k}/cmdline").read_bytes() for k in descendants(p.pid)]

        deadline = time.monotonic() + 10
        while not (len(sleeps()) == 2 and all(c.startswith(b"sleep") for c in sleeps())) and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = descendants(p.pid)
        assert len(kids) == 2 and all(Path(f"/proc/{k}/cmdline").read_bytes().startswith(b"sleep") for k in kids)
        assert p.pid in descendants(os.getpid())
    finally:
        p.kill()
        p.wait()
