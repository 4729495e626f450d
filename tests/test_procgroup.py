"""Process-group set-up: a rank writes its start-up log from its first second, says HANG SUSPECTED naming
the stage and the ranks not yet connected while a peer is missing, diagnose and collect see that log, and
it becomes the rank's debug log once the peer comes. Ranks started by hand, as a launcher of one's own
would (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), one after the other. The torchrun restart (a store
per attempt) is tested in test_multinode.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from ae_train.collect import collect
from ae_train.diagnose import diagnose_run, format_report
from conftest import DIM, ROOT, TESTS, free_port, make_shards, wait_for


def _rank(local: int, out: Path, shards: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AE_TRAIN_", "TORCHELASTIC_", "SLURM_"))}
    env.update(LOCAL_RANK=str(local), NODE_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", f"--data.train_shards={shards}",
           "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=1", "--trainer.max_epochs=1",
           "--trainer.accelerator=cpu", "--trainer.devices=2", f"--model.input_dim={DIM}", "--model.latent_dim=4",
           "--model.hidden_dims=32", "--log.hang_timeout_s=2"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def test_procgroup_a_missing_peer_is_named_in_the_startup_log_then_the_run_goes_on(tmp_path):
    make_shards(tmp_path / "d", [64, 64])
    out, port = tmp_path / "out", free_port()
    logs = out / "logs"
    procs = [_rank(0, out, tmp_path / "d", port)]
    try:
        wait_for(logs / "startup_rank0_*.log", r"Stack dump of rank 0", 120)
        (startup,) = logs.glob("startup_rank0_*.log")
        text = startup.read_text()
        assert text.index("Start-up of rank 0/2: host=") < text.index("HANG SUSPECTED")
        assert re.search(r"started by a launcher of its own \(LOCAL_RANK/RANK set\)", text)
        assert f"Process-group set-up: serving the store at 127.0.0.1:{port}" in text
        assert re.search(r"\[ERROR\] \[Rank 0/2\] HANG SUSPECTED: no progress for \d+ s in process-group set-up, "
                         r"init_process_group \(gloo\): connecting every rank; ranks not yet connected: 1 \(last event: "
                         r"checked in at the store; connecting 2 ranks \(gloo\) at [\d-]+ [\d:]+\)", text), text
        # diagnose and collect see the rank that is stuck before the run has a name
        report = format_report(diagnose_run(logs))
        assert re.search(r"rank 0: .*HANG SUSPECTED .*process-group set-up, init_process_group \(gloo\): "
                         r"connecting every rank; ranks not yet connected: 1", report), report
        bundle = collect(logs, None, tmp_path / "bundle.tar.gz")
        with tarfile.open(bundle) as tar:
            assert any(n.endswith(f"/logs/{startup.name}") for n in tar.getnames()), tar.getnames()
        procs.append(_rank(1, out, tmp_path / "d", port))  # the peer comes: set-up goes on, the run finishes
        for p in procs:
            p.communicate(timeout=180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], procs[0].stdout
    assert not list(logs.glob("startup_rank*.log")), "start-up logs become debug logs"
    (debug0,) = logs.glob("debug_rank0_*.log")
    text = debug0.read_text()
    assert "Start-up of rank 0/2: " in text.splitlines()[0]  # the start-up log is its beginning
    order = [text.index(s) for s in ("Start-up of rank 0/2", "HANG SUSPECTED",
                                     "Process-group set-up: process group ready: 2 ranks (gloo)",
                                     "progress resumed after", "Debug log of rank 0/2", "Training finished")]
    assert order == sorted(order), order
    assert re.search(r"Start-up of rank 1/2: .*\n.*Process-group set-up: connecting to rank 0's store at 127.0.0.1:"
                     rf"{port}", next(logs.glob("debug_rank1_*.log")).read_text())
