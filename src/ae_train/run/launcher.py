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

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .. import checkpoint_files, lightning_args, logs
from .. import logformat as lf
from ..config import Config, to_yaml
from ..data import splits
from ..data.resume import OrderState, mismatch, shards_digest
from ..data.shards import COUNTS_ENV, list_shards
from ..errors import ConfigError
from ..exitcodes import PREEMPTED, STOPPED_ON_PURPOSE, ExitCode, stopped_by
from ..rundir import RunDir
from . import runlock
from .devices import resolve_devices
from .launchwatch import LauncherWatchdog
from .orphans import LAUNCHER_ENV

log = logging.getLogger(__name__)


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


def _node_rank() -> int:
    return int(os.environ.get("NODE_RANK", 0))


def _cheap_checks(cfg: Config, run: RunDir) -> tuple[dict[str, list[str]], int | None, str | None]:
    """What fails in well under a second, without torch or reading a shard: one line on bad input.
    Returns each split's shard URLs, the run lock (node 0) and the checkpoint to resume."""
    nodes, node_rank = cfg.trainer.num_nodes, _node_rank()
    if nodes > 1 and not os.environ.get("MASTER_ADDR"):
        raise ConfigError(f"trainer.num_nodes={nodes}: set MASTER_ADDR (node 0's address) and NODE_RANK on every node")
    if not 0 <= node_rank < nodes:
        raise ConfigError(f"NODE_RANK={node_rank} is outside 0..{nodes - 1} (trainer.num_nodes={nodes})")
    listed = {name: list_shards(getattr(cfg.data, name), f"data.{name}")
              for name in splits.SPLITS if getattr(cfg.data, name).strip()}
    run.prepare()
    # One run per output_dir: node 0's launcher holds the lock (other nodes join node 0's run).
    lock = runlock.acquire(cfg.output_dir) if node_rank == 0 else None
    ckpt = checkpoint_files.resume_path(cfg)  # before any rank: a missing, broken or about-to-be-overwritten checkpoint
    return listed, lock, ckpt


def _checks_held(cfg: Config, run: RunDir) -> tuple[dict[str, list[str]], int | None, str | None, _Held]:
    """The cheap checks, their log records held back (there is no train log yet)."""
    held = _Held()
    logging.getLogger().addHandler(held)
    logging.getLogger().setLevel(logging.INFO)
    try:
        return (*_cheap_checks(cfg, run), held)
    finally:
        logging.getLogger().removeHandler(held)


def _open_train_log(run: RunDir, held: _Held) -> str:
    """The run's timestamp and train log (tail -f finds it at once); the held records go into it. The
    console shows the checks once they take a while, and a check that fails is still one
    `ae-train: error:` line."""
    node_rank = _node_rank()
    ts = run.new_timestamp()
    train_log = logs.setup_launcher_logging(run.logs, ts, train_log=node_rank == 0, hold_console=True)
    if node_rank == 0:
        log.info(lf.LOGS_AT.template, train_log, run.debug_logs(ts), extra=logs.CONSOLE)
        log.info(lf.MONITOR.template, train_log, extra=logs.CONSOLE)
    for record in held.records:
        logging.getLogger(record.name).handle(record)
    return ts


def _remove_leftovers(run: RunDir) -> None:
    """The run lock is ours now: what a save cut short left behind can go."""
    for p in checkpoint_files.remove_leftovers(run.checkpoints):
        log.warning(lf.LEFTOVER_REMOVED.template, p)


def _resolve_data(cfg: Config, run: RunDir, listed: dict[str, list[str]]) -> splits.DataFacts:
    """Counts (reusing those an earlier run of this output_dir made) and first samples of each split."""
    known = run.load_counts()
    before = len(known)
    facts = splits.resolve(cfg, known, listed)
    if len(known) != before:  # counts this run made by reading shards: the next run reuses them
        run.save_counts(known)
        log.info(lf.COUNTS_SAVED.template, len(known) - before, run.counts_cache)
    return facts


def _max_steps(cfg: Config) -> int:
    steps = cfg.trainer.extra.get("max_steps", -1)
    return steps if isinstance(steps, int) else -1


def _nothing_to_train(cfg: Config, progress: checkpoint_files.Progress | None) -> bool:
    """The checkpoint to resume already reached trainer.max_epochs (or max_steps): one line, no ranks, no logs."""
    said = progress and checkpoint_files.nothing_to_train(progress, cfg.trainer.max_epochs, _max_steps(cfg))
    if said:
        logs.print_note(said[0] % said[1])
    return bool(said)


# The model keys that make a checkpoint's weights fit a model (AutoEncoder's hyperparameters of the same names).
MODEL_SHAPE = ("arch", "input_dim", "input_shape", "latent_dim", "hidden_dims", "conv_channels", "activation")


def _check_model_fits(cfg: Config, ckpt: str, progress: checkpoint_files.Progress | None) -> None:
    """The checkpoint's weights fit the model this config builds (after the data set its input)."""
    hp = progress.hparams if progress is not None else None
    if not hp:
        return
    keys = [k for k in MODEL_SHAPE if k in hp and not (k == "hidden_dims" and cfg.model.arch == "conv")
            and not (k == "conv_channels" and cfg.model.arch == "mlp")]
    differ = [k for k in keys if _plain(hp[k]) != _plain(getattr(cfg.model, k))]
    if differ:
        was = ", ".join(f"model.{k}={_plain(hp[k])}" for k in differ)
        now = ", ".join(f"{_plain(getattr(cfg.model, k))}" for k in differ)
        flags = " ".join(f"--model.{k}={_flag(hp[k])}" for k in differ)
        raise ConfigError(f"resume: {ckpt} holds a model with {was}; this run's config has {now}: resume with {flags}, "
                          "or start afresh with another --output_dir")


def _plain(value):
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else value


def _flag(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _check_epoch_goes_on(cfg: Config, ckpt: str, progress: checkpoint_files.Progress | None,
                         facts: splits.DataFacts) -> None:
    """A checkpoint inside an epoch goes on in that epoch's data order: the batch size and the shards must
    be the ones it was planned with (data/resume.py); another world is fine."""
    if progress is None or progress.order is None:
        return
    try:
        state = OrderState.from_dict(progress.order)
    except (KeyError, TypeError, ValueError):
        return  # not ours to judge: the ranks go on as Lightning restores it
    train = facts.splits["train_shards"]
    why = mismatch(state, cfg.data.batch_size, shards_digest(train.urls, train.counts), progress.batches_done)
    if why:
        raise ConfigError(f"resume: {ckpt}: {why}; the rest of that epoch cannot be planned exactly: resume with the "
                          "earlier value (change it at an epoch end), or from a checkpoint saved at an epoch end")


def _slow_checks(cfg: Config, run: RunDir, listed: dict[str, list[str]], ts: str,
                 progress: checkpoint_files.Progress | None = None, ckpt: str | None = None) -> splits.DataFacts:
    """Reading shards, building callbacks and loggers, finding devices: under the launcher's watchdog.
    A failure is logged to the train log and raised (the console shows it as one line)."""
    log.info(lf.CHECKING.template, ts, extra=logs.CONSOLE)
    try:
        with LauncherWatchdog(cfg.log.hang_timeout_s):
            facts = _resolve_data(cfg, run, listed)
            _check_model_fits(cfg, ckpt, progress)
            _check_epoch_goes_on(cfg, ckpt, progress, facts)
            # A callback or logger that cannot be built (a bad argument): one line here, not in every rank.
            lightning_args.build(cfg.trainer.callbacks, "trainer.callbacks")
            lightning_args.build(cfg.trainer.logger, "trainer.logger", {"save_dir": cfg.output_dir})
            resolve_devices(cfg)
    except ConfigError as e:  # DataError is the same type
        log.error("%s", e, extra=logs.FILE_ONLY)
        logs.release_console(show=False)
        e.logged = True
        raise
    logs.release_console()
    return facts


def _announce_start(cfg: Config, run: RunDir, ts: str) -> None:
    """Node 0 names the run and writes its config; other nodes say which ranks they start."""
    devices, nodes, node_rank = int(cfg.trainer.devices), cfg.trainer.num_nodes, _node_rank()
    if node_rank == 0:
        log.info(lf.STARTING.template, devices * nodes, nodes, cfg.trainer.accelerator, ts, extra=logs.CONSOLE)
        resolved = to_yaml(cfg)
        log.info(lf.CONFIG.template, resolved.rstrip())
        run.write_config(resolved, ts)
    else:
        log.info(lf.NODE_STARTING.template, node_rank, node_rank * devices, node_rank * devices + devices - 1,
                 os.environ["MASTER_ADDR"], extra=logs.CONSOLE)


def _start_ranks(cfg: Config, argv: list[str], ts: str, counts_file: Path, lock: int | None,
                 ckpt: str | None) -> dict[int, subprocess.Popen]:
    """One `ae-train fit` per local device, with Lightning's environment variables and the resolved
    values (devices, input shape, the checkpoint) as flags."""
    devices, nodes, node_rank = int(cfg.trainer.devices), cfg.trainer.num_nodes, _node_rank()
    env = dict(os.environ, **{
        logs.RUN_TS_ENV: ts, COUNTS_ENV: str(counts_file), LAUNCHER_ENV: str(os.getpid()),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": os.environ.get("MASTER_PORT", "29500" if nodes > 1 else str(_free_port())),
        "WORLD_SIZE": str(devices * nodes), "NODE_RANK": str(node_rank),
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
                                                              preexec_fn=rank_preexec,
                                                              pass_fds=(lock,) if lock is not None else ())
    return procs


def launch(cfg: Config, argv: list[str]) -> int:
    run = RunDir.of(cfg)
    listed, lock, ckpt, held = _checks_held(cfg, run)
    progress = checkpoint_files.read_progress(ckpt) if ckpt else None
    if _nothing_to_train(cfg, progress):
        return ExitCode.OK
    ts = _open_train_log(run, held)
    if lock is not None:
        _remove_leftovers(run)
    facts = _slow_checks(cfg, run, listed, ts, progress, ckpt)
    _announce_start(cfg, run, ts)
    counts_file = run.launch_counts(ts)
    facts.save(str(counts_file))
    try:
        return watch(_start_ranks(cfg, argv, ts, counts_file, lock, ckpt))
    finally:
        counts_file.unlink(missing_ok=True)


def rank_preexec() -> None:
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


class _Watch:
    """What the watch has seen: signals received, a rank that failed, ranks that stopped the run on
    purpose, ranks that saved last.ckpt and stopped."""

    def __init__(self, procs: dict[int, subprocess.Popen], stop_grace_s: float):
        self.procs, self.stop_grace_s = procs, stop_grace_s
        self.received: list[int] = []
        self.signalled_at: float | None = None
        self.failed: tuple[int, int] | None = None
        self.stopped: tuple[int, float] | None = None  # (exit code, when) of ranks that stopped the run together
        self.preempted = False

    def forward(self, signum, _frame) -> None:
        """SIGTERM/SIGINT to the launcher: every rank saves last.ckpt at the same step and exits."""
        self.received.append(signum)
        if len(self.received) > 1:
            return  # the watch loop kills the ranks now
        self.signalled_at = time.monotonic()
        log.warning(lf.RECEIVED.template, signal.Signals(signum).name, len(self.procs), extra=logs.CONSOLE)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def see_exits(self) -> None:
        """A rank that failed stops the rest at once; the others' exits are noted."""
        for rank, p in self.procs.items():
            code = p.poll()
            if code in (None, 0) or self.failed is not None:
                continue
            if code in PREEMPTED:
                self.preempted = True
                continue
            if code in STOPPED_ON_PURPOSE:  # every rank stops at the same point on its own; its ERROR line says why
                if self.stopped is None:
                    self.stopped = (code, time.monotonic())
                    log.info(lf.RANK_STOPPED.template, rank, code, STOPPED_ON_PURPOSE[code], extra=logs.CONSOLE)
                continue
            self.failed = (rank, code)
            log.error(lf.EXITED.template, rank, p.pid, _describe_exit(code))
            _stop(self.procs)

    def kill_overdue(self) -> None:
        """Ranks that do not stop when they should (after the others stopped the run, after a signal) are killed."""
        if self.failed is None and self.stopped is not None and time.monotonic() - self.stopped[1] > 30:
            self._kill(lf.NOT_STOPPED_AFTER_OTHERS.template)
        if self.failed is None and self.signalled_at is not None and (
                len(self.received) > 1 or time.monotonic() - self.signalled_at > self.stop_grace_s):
            self._kill(lf.NOT_STOPPED_AFTER_SIGNAL.template, "after a second signal" if len(self.received) > 1
                       else f"within {self.stop_grace_s:.0f} s of the signal")

    def _kill(self, template: str, *args) -> None:
        log.error(template, *args)
        self.failed = (-1, -signal.SIGKILL)
        _stop(self.procs, grace_s=0)

    def exit_code(self) -> int:
        """The launcher's exit code, said in the train log when the run ended well or was stopped."""
        if self.stopped is not None:
            return ExitCode(self.stopped[0])
        if self.failed is not None:
            return ExitCode.FAILED
        if self.received or self.preempted:
            log.info(lf.STOPPED_BY.template, signal.Signals(self.received[0]).name if self.received else "signal",
                     extra=logs.CONSOLE)
            return stopped_by(self.received[0] if self.received else signal.SIGTERM)
        log.info(lf.ALL_FINISHED.template, len(self.procs))
        return ExitCode.OK


def watch(procs: dict[int, subprocess.Popen], stop_grace_s: float = 120.0) -> int:
    """Wait for the ranks. A rank that fails stops the rest at once; SIGTERM/SIGINT are passed on so
    every rank saves last.ckpt at the same step and exits. Ranks that stop the run together on purpose
    (exit codes in STOPPED_ON_PURPOSE) are given 30 s to do so; the launcher exits with their code."""
    w = _Watch(procs, stop_grace_s)
    old = {s: signal.signal(s, w.forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            running = any(p.poll() is None for p in procs.values())
            w.see_exits()
            if not running:
                break
            w.kill_overdue()
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs.values():  # DataLoader workers of a killed rank: gone with its process group
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return w.exit_code()


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

