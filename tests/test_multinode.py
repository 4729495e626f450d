"""Two "nodes" on localhost (one CPU rank each, gloo), started seconds apart: one run, one timestamp.

The launches are the documented ones, each script run as it is: scripts/torchrun_node.sh (torchrun),
train_ae.sh with NNODES/NODE_RANK/MASTER_ADDR (our launcher on each node) and scripts/slurm_train.sbatch,
whose srun line starts its tasks through a stand-in `srun` that gives each the environment SLURM gives.
And a torchrun restart (MAX_RESTARTS) after a rank was killed.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ae_train import logformat as lf
from conftest import DIM, ROOT, TESTS, free_port, make_shards
from helpers import markers

MODEL = [f"--model.input_dim={DIM}", "--model.latent_dim=4", "--model.hidden_dims=32"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mn_shards")
    make_shards(d, [120, 7, 64, 33])
    return d


def _two_nodes(cmds_envs: list[tuple[list[str], dict]], gap_s: float = 3.0) -> list[tuple[int, str]]:
    procs = []
    for i, (cmd, env) in enumerate(cmds_envs):
        if i:
            time.sleep(gap_s)  # the second node starts later: its clock must not name the run
        full = dict(os.environ, PYTHON=sys.executable, **env)
        full["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full, cwd=ROOT))
    out = []
    try:
        for p in procs:
            console, _ = p.communicate(timeout=180)
            out.append((p.returncode, console))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _check_one_run(logs: Path, results: list[tuple[int, str]]) -> str:
    for code, console in results:
        assert code == 0, console
    names = sorted(p.name for p in logs.glob("*.log"))
    ts = re.search(r"_(\d{8}_\d{6})\.log$", names[0]).group(1)
    assert names == [f"debug_rank0_{ts}.log", f"debug_rank1_{ts}.log", f"train_{ts}.log"], names
    ends = [[(n, b) for n, b in markers((logs / f"debug_rank{r}_{ts}.log").read_text()) if n.endswith("TRAINING END")]
            for r in (0, 1)]
    assert ends[0] == ends[1] and len(ends[0]) == 2, ends
    rank1 = (logs / f"debug_rank1_{ts}.log").read_text()
    assert re.search(rf"Debug log of rank 1/2: host=\S+ pid=\d+ local_rank=0 node_rank=1 device=cpu run={ts}", rank1)
    train = (logs / f"train_{ts}.log").read_text()
    assert train.count("Config:\n") == 1 and "Epoch 1 train:" in train
    node0, node1 = results[0][1], results[1][1]
    assert "Epoch 1 train:" in node0 and "Monitor logs with: tail -f" in node0
    assert re.search(rf"Node 1 \(\S+\) writes ranks 1-1 to \S+debug_rank\*_{ts}\.log", node1), node1
    assert "Epoch" not in node1 and "Saved checkpoint" not in node1
    return ts


def test_multinode_torchrun_two_nodes_one_timestamp(shards, tmp_path):
    out, port = tmp_path / "out", str(free_port())
    flags = [f"--output_dir={out}", f"--data.train_shards={shards}", "--data.val_shards=", "--data.batch_size=8",
             "--data.num_workers=2", "--trainer.max_epochs=2", "--trainer.accelerator=cpu", *MODEL]
    cmds = [(["scripts/torchrun_node.sh", *flags],
             {"NNODES": "2", "NODE_RANK": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "GPUS_PER_NODE": "1"})
            for n in (0, 1)]
    _check_one_run(out / "logs", _two_nodes(cmds))


def test_multinode_train_ae_sh_on_each_node(shards, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path}/out\ndata:\n  train_shards: {shards}\n  val_shards: ''\n  batch_size: 8\n"
                   f"model:\n  input_dim: {DIM}\n  latent_dim: 4\n  hidden_dims: [32]\n"
                   "trainer:\n  max_epochs: 2\n  devices: 1\n  accelerator: cpu\n")
    port = str(free_port())
    cmds = [(["./train_ae.sh", "--config", str(cfg)],
             {"NNODES": "2", "NODE_RANK": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for n in (0, 1)]
    results = _two_nodes(cmds)
    ts = _check_one_run(tmp_path / "out" / "logs", results)
    assert f"run {ts}" in results[0][1] and "Node 1: starting ranks 1-1; node 0 (127.0.0.1) names the run" in results[1][1]


# srun for the test: SLURM_NTASKS tasks of its command on this host, one task per "node", each with the
# variables SLURM sets per task; task i's console goes to $SRUN_TEST_OUT/task<i>.out, its exit code to .rc.
FAKE_SRUN = """#!/usr/bin/env bash
for ((i = 0; i < SLURM_NTASKS; i++)); do
  [ "$i" = 0 ] || sleep "$SRUN_TEST_GAP_S"  # the second node starts later: its clock must not name the run
  (SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i "$@" > "$SRUN_TEST_OUT/task$i.out" 2>&1
   echo $? > "$SRUN_TEST_OUT/task$i.rc") &
done
wait
"""


def test_multinode_slurm_sbatch_script_runs_its_srun_line(shards, tmp_path):
    """scripts/slurm_train.sbatch as sbatch runs it on the first node of a 2-node x 1-task allocation."""
    bin_dir, tasks, out = tmp_path / "bin", tmp_path / "tasks", tmp_path / "out"
    bin_dir.mkdir()
    tasks.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    flags = [f"--output_dir={out}", f"--data.train_shards={shards}", "--data.val_shards=", "--data.batch_size=8",
             "--trainer.max_epochs=2", "--trainer.accelerator=cpu", *MODEL]
    env = dict(os.environ, SLURM_NTASKS="2", SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE="1",
               SLURM_JOB_ID="4242", SLURM_JOB_NAME="ae_train", SLURM_NODELIST="localhost", SLURM_SUBMIT_DIR=str(ROOT),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), SRUN_TEST_OUT=str(tasks), SRUN_TEST_GAP_S="3",
               PATH=os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]]),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    script = subprocess.run(["bash", "scripts/slurm_train.sbatch", *flags], capture_output=True, text=True, timeout=240,
                            env=env, cwd=ROOT)
    assert script.returncode == 0, script.stdout + script.stderr
    results = [(int((tasks / f"task{i}.rc").read_text()), (tasks / f"task{i}.out").read_text()) for i in (0, 1)]
    ts = _check_one_run(out / "logs", results)
    cfg = (out / f"config_{ts}.yaml").read_text()  # the script's own flags, none of them given here
    assert "num_nodes: 2" in cfg and "devices: '1'" in cfg and "resume: auto" in cfg, cfg
    assert "[DEBUG]" in (out / "logs" / f"debug_rank1_{ts}.log").read_text()


def test_multinode_torchrun_restart_after_a_kill_resumes_and_finishes(shards, tmp_path):
    """scripts/torchrun_node.sh with MAX_RESTARTS=1 (the static rendezvous, one store for every attempt):
    rank 1 is SIGKILLed in the first attempt; the restarted attempt joins a store of its own, resumes from
    the step checkpoint, finishes, exit 0."""
    out = tmp_path / "out"
    flags = [f"--output_dir={out}", f"--data.train_shards={shards}", "--data.val_shards=", "--data.batch_size=8",
             "--data.num_workers=2", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
             "--checkpoint.every_n_steps=6", "--trainer.callbacks=ddp_helpers.KillRank1At", *MODEL]
    env = dict(os.environ, PYTHON=sys.executable, NNODES="1", NODE_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), GPUS_PER_NODE="2", MAX_RESTARTS="1", AE_TEST_KILL_AT="0:9",
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(["scripts/torchrun_node.sh", *flags], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    logs = out / "logs"
    assert r.returncode == 0, r.stdout + r.stderr + "".join(p.read_text() for p in logs.glob("*.log"))
    assert not list(logs.glob("startup_rank*.log")), "every rank of both attempts got through set-up"
    first, second = sorted({lf.RUN_FILE.fullmatch(p.name).group(2) for p in logs.glob("*.log")})
    killed = (logs / f"debug_rank1_{first}.log").read_text()
    assert "torchrun (restart 0 of 1" in killed and "Training finished" not in killed
    ranks = [(logs / f"debug_rank{n}_{second}.log").read_text() for n in (0, 1)]
    assert re.search(r"Start-up of rank 1/2: host=\S+ pid=\d+, started by torchrun \(restart 1 of 1", ranks[1])
    assert re.search(r"Process-group set-up: joined rank 0's store at 127\.0\.0\.1:\d+ \(torchrun restart 1\)", ranks[1])
    for text in ranks:  # the step checkpoint before the kill (batch 9): resumed there, in epoch 0
        assert re.search(r"Resuming from \S+last\.ckpt at epoch 0, step 6\b", text), text
        assert "TRAINING START ========== resumed at batch 6" in text
    assert "Training finished: 1 epochs" in (logs / f"train_{second}.log").read_text()
