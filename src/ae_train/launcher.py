"""The launcher: checks everything a rank would trip on, then starts one process per local rank.

It runs before any rank: bad config, missing shards, an unwritable output_dir, an output_dir another
live run holds (runlock), a missing or broken checkpoint, or a callback that cannot be built fail here
in seconds with one line. Then it owns the run's timestamp, writes the resolved config,
starts the ranks with Lightning's environment variables (LOCAL_RANK, NODE_RANK, WORLD_SIZE,
MASTER_ADDR/PORT; Lightning's DDP strategy sees processes created externally and does not re-launch),
and watches them: a rank that dies takes the others down at once instead of leaving them in a
collective until the DDP timeout, and the train log says which rank went and how.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import checkpoint_files, lightning_args, logs, runlock
from .config import Config, ConfigError, resume_path, to_yaml
from .data import splits
from .data.shards import COUNTS_ENV, DataError, list_shards
from .launchwatch import LauncherWatchdog

log = logging.getLogger(__name__)
LAUNCHER_ENV = "AE_TRAIN_LAUNCHER"  # the launcher's pid, for the ranks we start; absent under torchrun/srun
CHECKPOINT_WRITE_FAILED = 4  # rank exit code: a checkpoint could not be written (train.py)
# Exit codes of ranks that stopped the run on purpose, together, after saying why in an ERROR line.
STOPPED = {3: "too many unreadable shards", CHECKPOINT_WRITE_FAILED: "a checkpoint could not be written"}
CONFIG_MARK = "# written by ae-train: the resolved config of the latest run\n"
COUNTS_CACHE = "shard_counts.json"  # in output_dir: counts this run's launcher made by reading shards


def resolve_devices(cfg: Config) -> None:
    import torch

    gpus = torch.cuda.device_count() if cfg.trainer.accelerator != "cpu" else 0
    if cfg.trainer.accelerator == "auto":
        cfg.trainer.accelerator = "gpu" if gpus else "cpu"
    if cfg.trainer.accelerator in ("gpu", "cuda") and not gpus:
        raise ConfigError("trainer.accelerator: gpu requested but no CUDA device is visible")
    if cfg.trainer.devices == "auto":
        cfg.trainer.devices = str(gpus if cfg.trainer.accelerator in ("gpu", "cuda") else 2)
    if cfg.trainer.accelerator in ("gpu", "cuda") and int(cfg.trainer.devices) > gpus:
        raise ConfigError(f"trainer.devices: {cfg.trainer.devices} requested, {gpus} GPU(s) visible")


def check_output_dir(cfg: Config) -> Path:
    out = Path(cfg.output_dir)
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        probe = out / "logs" / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir {cfg.output_dir} is not writable: {e.strerror or e}") from None
    return out / "logs"


def write_config(cfg: Config, out: Path, ts: str) -> None:
    text = to_yaml(cfg)
    (out / f"config_{ts}.yaml").write_text(CONFIG_MARK + text)
    latest = out / "config.yaml"
    # config.yaml is ours to update; a file the user put there is never overwritten.
    if not latest.exists() or latest.read_text().startswith(CONFIG_MARK):
        latest.write_text(CONFIG_MARK + text)
    else:
        log.warning("Left %s as it is (not written by ae-train); this run's config is config_%s.yaml", latest, ts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"code {code}"
    return f"code {code}"


class _Held(logging.Handler):
    """Records of the cheap checks (a run lock taken over), kept until the train log exists."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _cheap_checks(cfg: Config) -> tuple[Path, dict[str, list[str]], int | None, str | None]:
    """What fails in well under a second, without torch or reading a shard: one line on bad input.
    Returns the logs dir, each split's shard URLs, the run lock (node 0) and the checkpoint to resume."""
    nodes, node_rank = cfg.trainer.num_nodes, int(os.environ.get("NODE_RANK", 0))
    if nodes > 1 and not os.environ.get("MASTER_ADDR"):
        raise ConfigError(f"trainer.num_nodes={nodes}: set MASTER_ADDR (node 0's address) and NODE_RANK on every node")
    if not 0 <= node_rank < nodes:
        raise ConfigError(f"NODE_RANK={node_rank} is outside 0..{nodes - 1} (trainer.num_nodes={nodes})")
    listed = {name: list_shards(getattr(cfg.data, name), f"data.{name}")
              for name in splits.SPLITS if getattr(cfg.data, name).strip()}
    logs_dir = check_output_dir(cfg)
    # One run per output_dir: node 0's launcher holds the lock (other nodes join node 0's run).
    lock = runlock.acquire(cfg.output_dir) if node_rank == 0 else None
    ckpt = resume_path(cfg)  # before any rank: a missing, broken or about-to-be-overwritten checkpoint
    return logs_dir, listed, lock, ckpt


def _resolve_data(cfg: Config, listed: dict[str, list[str]]) -> splits.DataFacts:
    """Counts (reusing those an earlier run of this output_dir made) and first samples of each split."""
    cache = Path(cfg.output_dir) / COUNTS_CACHE
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        known = {}
    before = len(known)
    facts = splits.resolve(cfg, known, listed)
    if len(known) != before:  # counts this run made by reading shards: the next run reuses them
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
        log.info("Saved the sample counts of %d shard(s) to %s", len(known) - before, cache)
    return facts


def launch(cfg: Config, argv: list[str]) -> int:
    held = _Held()
    logging.getLogger().addHandler(held)
    logging.getLogger().setLevel(logging.INFO)
    try:
        logs_dir, listed, lock, ckpt = _cheap_checks(cfg)
    finally:
        logging.getLogger().removeHandler(held)
    nodes, node_rank = cfg.trainer.num_nodes, int(os.environ.get("NODE_RANK", 0))
    # From here on the run has a train log (tail -f finds it at once); the console shows the checks
    # once they take a while, and a check that fails is still one `ae-train: error:` line.
    ts = logs.new_run_timestamp(logs_dir)
    train_log = logs.setup_launcher_logging(logs_dir, ts, train_log=node_rank == 0, hold_console=True)
    if node_rank == 0:
        log.info("Logs: %s and %s", train_log, logs_dir / f"debug_rank*_{ts}.log", extra=logs.CONSOLE)
        log.info("Monitor logs with: tail -f %s", train_log, extra=logs.CONSOLE)
    for record in held.records:
        logging.getLogger(record.name).handle(record)
    if lock is not None:  # ours now: what a save cut short left behind can go
        for p in checkpoint_files.remove_leftovers(Path(cfg.output_dir) / "checkpoints"):
            log.warning("Removed %s, left by a checkpoint save that did not finish", p)
    log.info("Checking the data of run %s before starting ranks", ts, extra=logs.CONSOLE)
    try:
        with LauncherWatchdog(cfg.log.hang_timeout_s):
            facts = _resolve_data(cfg, listed)
            # A callback or logger that cannot be built (a bad argument): one line here, not in every rank.
            lightning_args.build(cfg.trainer.callbacks, "trainer.callbacks")
            lightning_args.build(cfg.trainer.logger, "trainer.logger", {"save_dir": cfg.output_dir})
            resolve_devices(cfg)
    except (ConfigError, DataError) as e:
        log.error("%s", e, extra=logs.FILE_ONLY)
        logs.release_console(show=False)
        e.logged = True
        raise
    logs.release_console()
    devices = int(cfg.trainer.devices)
    world = devices * nodes
    if node_rank == 0:
        log.info("Starting training: %d rank(s) on %d node(s), %s, run %s", world, nodes, cfg.trainer.accelerator, ts,
                 extra=logs.CONSOLE)
        log.info("Config:\n%s", to_yaml(cfg).rstrip())
        write_config(cfg, Path(cfg.output_dir), ts)
    else:
        log.info("Node %d: starting ranks %d-%d; node 0 (%s) names the run", node_rank, node_rank * devices,
                 node_rank * devices + devices - 1, os.environ["MASTER_ADDR"], extra=logs.CONSOLE)
    counts_file = logs_dir / f".shard_counts_{ts}.json"
    facts.save(str(counts_file))

    env = dict(os.environ, **{
        logs.RUN_TS_ENV: ts, COUNTS_ENV: str(counts_file), LAUNCHER_ENV: str(os.getpid()),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": os.environ.get("MASTER_PORT", "29500" if nodes > 1 else str(_free_port())),
        "WORLD_SIZE": str(world), "NODE_RANK": str(node_rank),
    })
    resolved = [f"--trainer.devices={devices}", f"--trainer.accelerator={cfg.trainer.accelerator}",
                f"--model.input_dim={cfg.model.input_dim}",
                f"--model.input_shape={','.join(map(str, cfg.model.input_shape))}"]
    if ckpt:  # the checkpoint verified above (resume=auto may have passed over a broken last.ckpt)
        resolved.append(f"--resume={ckpt}")
    cmd = [sys.executable, "-m", "ae_train", "fit", *argv, *resolved]
    procs: dict[int, subprocess.Popen] = {}
    for local in range(devices):
        # The ranks inherit the run lock: it is held until the last process of the run is gone.
        procs[node_rank * devices + local] = subprocess.Popen(cmd, env=dict(env, LOCAL_RANK=str(local)),
                                                              preexec_fn=_rank_preexec,
                                                              pass_fds=(lock,) if lock is not None else ())
    return _watch(procs, counts_file)


def _rank_preexec() -> None:
    """In each rank before exec: its own process group (so its DataLoader workers can be stopped with
    it) and SIGTERM if the launcher dies (no orphan ranks holding GPUs). A process group of its own is
    a background job of the terminal: with `stty tostop` its first console line would stop it
    (SIGTTOU) and hang the run, so terminal job-control stops are ignored (writes then go through)."""
    os.setpgrp()
    for stop in (signal.SIGTTOU, signal.SIGTTIN):  # SIG_IGN survives exec
        signal.signal(stop, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


PREEMPTED = {128 + signal.SIGTERM, 128 + signal.SIGINT}  # a rank that saved last.ckpt and stopped


def _watch(procs: dict[int, subprocess.Popen], counts_file: Path, stop_grace_s: float = 120.0) -> int:
    """Wait for the ranks. A rank that fails stops the rest at once; SIGTERM/SIGINT are passed on so
    every rank saves last.ckpt at the same step and exits. Ranks that stop the run together on purpose
    (exit codes in STOPPED) are given 30 s to do so; the launcher exits with their code."""
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        if len(received) > 1:
            return  # the watch loop kills the ranks now
        signalled_at.append(time.monotonic())
        log.warning("Received %s; asking %d rank(s) to save last.ckpt and stop (a second signal kills them)",
                    signal.Signals(signum).name, len(procs), extra=logs.CONSOLE)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signalled_at: list[float] = []

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    failed: tuple[int, int] | None = None
    preempted = False
    stopped: tuple[int, float] | None = None  # (exit code, when) of ranks that stopped the run together
    try:
        while True:
            running = any(p.poll() is None for p in procs.values())
            for rank, p in procs.items():
                code = p.poll()
                if code in (None, 0) or failed is not None:
                    continue
                if code in PREEMPTED:
                    preempted = True
                    continue
                if code in STOPPED:  # every rank stops at the same point on its own; its ERROR line says why
                    if stopped is None:
                        stopped = (code, time.monotonic())
                        log.info("Rank %d stopped the run (exit code %d: %s)", rank, code, STOPPED[code],
                                 extra=logs.CONSOLE)
                    continue
                failed = (rank, code)
                log.error("Rank %d (pid %d) exited with %s; stopping the other ranks", rank, p.pid, _describe_exit(code))
                _stop(procs)
            if not running:
                break
            if failed is None and stopped is not None and time.monotonic() - stopped[1] > 30:
                log.error("Ranks did not stop within 30 s of the others; killing them")
                failed = (-1, -signal.SIGKILL)
                _stop(procs, grace_s=0)
            if failed is None and signalled_at and (
                    len(received) > 1 or time.monotonic() - signalled_at[0] > stop_grace_s):
                log.error("Ranks did not stop %s; killing them",
                          "after a second signal" if len(received) > 1 else f"within {stop_grace_s:.0f} s of the signal")
                failed = (-1, -signal.SIGKILL)
                _stop(procs, grace_s=0)
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs.values():  # DataLoader workers of a killed rank: gone with its process group
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        counts_file.unlink(missing_ok=True)
    if stopped is not None:
        return stopped[0]
    if failed is not None:
        return 1
    if received or preempted:
        log.info("Stopped by %s; continue with --resume=auto", signal.Signals(received[0]).name if received else "signal",
                 extra=logs.CONSOLE)
        return 128 + (received[0] if received else signal.SIGTERM)
    log.info("All %d rank(s) finished", len(procs))
    return 0


def _stop(procs: dict[int, subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM to the ranks, then SIGKILL to their process groups (a rank blocked in a collective
    whose peer died cannot act on SIGTERM)."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(0.1)
    for p in procs.values():
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

