"""A rank's first second: its own log file before torch is imported and before the process group exists.

Importing torch and Lightning takes seconds, and the process group can block for much longer (a peer
that never comes, a restarted torchrun attempt): a rank must not be silent meanwhile. A rank that our
launcher started on one node (and rank 0 of any launch of ours) knows the run's timestamp from the
start and writes its debug log at once. Any other rank (torchrun, srun, ranks of nodes > 0) learns it
from rank 0 over the process group, so until then it writes `startup_rank<N>_<ts>.log`, <ts> its own
start time, which becomes its debug log once the ranks agree (logs.setup_rank_logging). No torch or
Lightning here (the config is loaded already, the logging setup is light): the whole point is to come
before the heavy imports.
"""
from __future__ import annotations

import logging
import os
import socket

from .. import logformat as lf
from .. import logs
from ..config import Config
from ..rundir import RunDir
from .orphans import LAUNCHER_ENV

log = logging.getLogger(__name__)


def rank_from_env(cfg: Config) -> tuple[int, int, str]:
    """(global rank, world size, what started it) from the environment, in Lightning's order of
    cluster environments (SLURM, torchrun, ours); train.rank_layout is the word that counts later."""
    env = os.environ
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return (int(env.get("SLURM_PROCID", 0)), int(env["SLURM_NTASKS"]),
                f"srun (job {env.get('SLURM_JOB_ID', '?')}, task {env.get('SLURM_PROCID', '?')})")
    if all(k in env for k in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")):
        return (int(env["RANK"]), int(env.get("WORLD_SIZE", 1)),
                f"torchrun (restart {env.get('TORCHELASTIC_RESTART_COUNT', '0')} of "
                f"{env.get('TORCHELASTIC_MAX_RESTARTS', '0')}, run id {env.get('TORCHELASTIC_RUN_ID', '?')})")
    devices = int(cfg.trainer.devices) if cfg.trainer.devices.isdigit() else 1
    world = int(env.get("WORLD_SIZE", devices * cfg.trainer.num_nodes))
    local, node = int(env.get("LOCAL_RANK", 0)), int(env.get("NODE_RANK", 0))
    rank = int(env["RANK"]) if "RANK" in env else node * max(1, world // cfg.trainer.num_nodes) + local
    who = f"ae-train's launcher (pid {env[LAUNCHER_ENV]})" if LAUNCHER_ENV in env else \
        "a launcher of its own (LOCAL_RANK/RANK set)"
    return rank, world, who


def open_rank_log(cfg: Config) -> None:
    """The rank's log from now on: its debug log when the run's timestamp is known, else its start-up log."""
    rank, world, who = rank_from_env(cfg)
    run = RunDir.of(cfg)
    run.prepare()  # logs/ writable, or one line naming output_dir
    ts = os.environ.get(logs.RUN_TS_ENV)
    # Our launcher's timestamp is the run's on one node; on several, only rank 0's counts.
    if ts and LAUNCHER_ENV in os.environ and (cfg.trainer.num_nodes == 1 or rank == 0):
        logs.setup_rank_logging(run.logs, ts, rank, world, cfg.debug)
    else:
        logs.setup_startup_logging(run.logs, rank, world)
    log.info(lf.STARTUP.template, rank, world, socket.gethostname(), os.getpid(), who)
