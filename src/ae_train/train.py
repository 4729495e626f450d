"""One rank of a training run: wire config, logging, data, model, callbacks and the Trainer together."""
from __future__ import annotations

import importlib.util
import logging
import os
import platform
import socket
import time
import warnings
from datetime import timedelta

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.exceptions import SIGTERMException

from . import checkpoint_files, lightning_args, logs
from . import logformat as lf
from .callbacks.checkpoint import LoggedModelCheckpoint
from .callbacks.debug import DebugCallback
from .callbacks.last_checkpoint import LastCheckpoint
from .callbacks.ledger import SampleLedger
from .callbacks.nonfinite import NonFiniteGuard, NonFiniteLoss
from .callbacks.preemption import PreemptionCallback
from .callbacks.progress import ConsoleProgressBar, console_is_terminal
from .callbacks.reconstructions import Reconstructions
from .callbacks.shard_errors import ShardErrorLimit, TooManyShardErrors
from .callbacks.summary import EpochSummary
from .callbacks.watchdog import HangWatchdog
from .checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from .config import Config, to_yaml
from .data import splits
from .data.datamodule import ShardDataModule
from .data.shards import COUNTS_ENV
from .data.splits import DataFacts
from .errors import ConfigError
from .exitcodes import ExitCode
from .model import AutoEncoder
from .run import procgroup
from .run.devices import resolve_devices
from .run.orphans import LAUNCHER_ENV, ParentWatch, launcher_pid
from .rundir import METRICS, TENSORBOARD, RunDir

log = logging.getLogger(__name__)
# Lightning's own use of a deprecated torch API, once per rank and fit: noise in every train log.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
# Expected on every resume: the checkpoints of this run are in checkpoints/ (a fresh run into them is refused).
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def cluster_environment(cfg: Config):
    """The environment that started this rank, in Lightning's order: SLURM (srun), torchrun, or ours."""
    from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=False)
    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment()
    return LightningEnvironment()


def rank_layout(cfg: Config, env) -> tuple[int, int, int, int]:
    """(global rank, world size, local rank, node rank) of this process."""
    from lightning_fabric.plugins.environments import LightningEnvironment

    if not isinstance(env, LightningEnvironment):
        return env.global_rank(), env.world_size(), env.local_rank(), env.node_rank()
    devices = int(cfg.trainer.devices)
    local, node = env.local_rank(), env.node_rank()
    return node * devices + local, devices * cfg.trainer.num_nodes, local, node


def agree_on_run_timestamp(cfg: Config, env, rank: int, world: int, local_rank: int) -> str:
    """One timestamp for every rank on every node: rank 0's, sent to all over the process group.

    Each node's launcher (or torchrun) starts at its own moment, so clocks cannot name the run. The
    default process group is made here, before Lightning would make it (Lightning then uses it): a
    gloo backend carries the string, NCCL the training tensors. procgroup.join makes it on a store of
    this attempt only (a torchrun restart reads nothing of the dead attempt) and says HANG SUSPECTED,
    naming the stage and the ranks not connected, when set-up blocks for log.hang_timeout_s.
    """
    run = RunDir.of(cfg)
    mine = os.environ.get(logs.RUN_TS_ENV) if rank == 0 else None
    if world == 1:
        return mine or run.new_timestamp()
    import torch.distributed as dist

    gpu = cfg.trainer.accelerator in ("gpu", "cuda")
    if gpu:
        torch.cuda.set_device(local_rank)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.main_address, str(env.main_port)
    watch = procgroup.join("cpu:gloo,cuda:nccl" if gpu else "gloo", rank, world, env.main_address, env.main_port,
                           timedelta(seconds=cfg.trainer.ddp_timeout_s), cfg.log.hang_timeout_s)
    try:
        if rank == 0 and not mine:
            run.logs.mkdir(parents=True, exist_ok=True)
            mine = run.new_timestamp()
        box = [mine]
        dist.broadcast_object_list(box, src=0)
    finally:
        watch.done()
    return box[0]


def _metric_loggers(cfg: Config, ts: str) -> list:
    """CSV always (metrics/<ts>/metrics.csv); the user's loggers (trainer.logger), or TensorBoard
    when it is installed and the user named none."""
    loggers = [CSVLogger(cfg.output_dir, name=METRICS, version=ts)]
    if cfg.trainer.logger:
        return loggers + lightning_args.build(cfg.trainer.logger, "trainer.logger", {"save_dir": cfg.output_dir})
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from pytorch_lightning.loggers import TensorBoardLogger
        loggers.append(TensorBoardLogger(cfg.output_dir, name=TENSORBOARD, version=ts))
    return loggers


def _optimizer_steps(cfg: Config, batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run (the LR schedule's length): accumulation and max_steps count."""
    steps = batches_per_epoch * cfg.trainer.max_epochs
    accumulate = cfg.trainer.extra.get("accumulate_grad_batches", 1)
    steps //= accumulate if isinstance(accumulate, int) and accumulate > 0 else 1
    max_steps = cfg.trainer.extra.get("max_steps", -1)
    return min(steps, max_steps) if isinstance(max_steps, int) and max_steps > 0 else steps

def _data_facts(cfg: Config, rank: int, world: int) -> DataFacts:
    """The launcher's data facts; under torchrun/srun rank 0 resolves them once and sends them to all."""
    if os.environ.get(COUNTS_ENV) or world == 1:
        return splits.facts_for_rank(cfg)
    import torch.distributed as dist

    box: list = [None]
    if rank == 0:
        try:
            box = [splits.resolve(cfg).to_json()]
        except ConfigError as e:  # DataError is the same type
            box = [e]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    facts = DataFacts.from_json(box[0])
    splits.fit_model(cfg.model, facts.splits["train_shards"].spec, facts.splits["train_shards"].spec_from)
    return facts


def _model(cfg: Config, facts: DataFacts, total_steps: int) -> AutoEncoder:
    m = cfg.model
    spec = facts.splits["train_shards"].spec
    if m.arch == "mlp" and spec.decoder == "image":
        log.info(lf.MLP_ON_IMAGES.template, "x".join(map(str, spec.shape)), spec.size)
    return AutoEncoder(m.input_dim, m.latent_dim, m.hidden_dims, m.activation, m.lr, m.weight_decay, m.warmup_steps,
                       total_steps=total_steps, arch=m.arch, input_shape=m.input_shape, conv_channels=m.conv_channels,
                       sample_key=cfg.data.sample_key, decoder=spec.decoder,
                       image_size=list(spec.resize) if spec.resize else None, image_mode=spec.mode)


def _announce(cfg: Config, run: RunDir, ts: str, rank: int, world: int, local_rank: int, node_rank: int,
              gpu: bool) -> None:
    """The debug log's header; where the logs are (console) and the config, when no launcher did it already."""
    device = torch.cuda.get_device_name(local_rank) if gpu else "cpu"
    log.info(lf.HEADER.template, rank, world, socket.gethostname(), os.getpid(), local_rank,
             node_rank, device, ts, platform.python_version(), torch.__version__, pl.__version__)
    if rank == 0 and LAUNCHER_ENV not in os.environ:  # torchrun or srun: no launcher did this
        resolved = to_yaml(cfg)
        log.info(lf.CONFIG.template, resolved.rstrip())
        log.info(lf.LOGS_AT.template, run.train_log(ts), run.debug_logs(ts), extra=logs.CONSOLE)
        log.info(lf.MONITOR.template, run.train_log(ts), extra=logs.CONSOLE)
        run.write_config(resolved, ts)
    elif node_rank > 0 and local_rank == 0:  # other nodes' consoles: only errors, and where the logs are
        log.info(lf.NODE_WRITES.template, node_rank, socket.gethostname(), rank,
                 rank + int(cfg.trainer.devices) - 1, run.debug_logs(ts), extra=logs.NODE_CONSOLE)


def main(cfg: Config) -> int:
    # First of all: a rank whose launcher is gone must not outlive it, even while blocked in C.
    ParentWatch(cfg.checkpoint.parent_death_grace_s, launcher_pid()).start()
    resolve_devices(cfg)  # `auto` under torchrun/srun, where no launcher resolved it
    env = cluster_environment(cfg)
    rank, world, local_rank, node_rank = rank_layout(cfg, env)
    run = RunDir.of(cfg)
    ts = agree_on_run_timestamp(cfg, env, rank, world, local_rank)
    os.environ[logs.RUN_TS_ENV] = ts
    logs.setup_rank_logging(run.logs, ts, rank, world, cfg.debug)
    gpu = cfg.trainer.accelerator in ("gpu", "cuda")
    _announce(cfg, run, ts, rank, world, local_rank, node_rank, gpu)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    facts = _data_facts(cfg, rank, world)
    datamodule = ShardDataModule(cfg.data, facts, cfg.seed, rank, keys=cfg.log.sample_ledger)
    model = _model(cfg, facts, total_steps=_optimizer_steps(cfg, datamodule.steps_per_epoch(world)))
    has_val = bool(cfg.data.val_shards.strip())
    ckpt_dir = run.checkpoints
    shard_errors = ShardErrorLimit(cfg.data.max_shard_errors)
    preemption = PreemptionCallback(ckpt_dir)
    callbacks = [
        *lightning_args.build(cfg.trainer.callbacks, "trainer.callbacks"),
        NonFiniteGuard(cfg.log.train_every),  # first of ours: a NaN loss stops the run before anything logs or saves it
        shard_errors,
        EpochSummary(shard_errors),
        *([Reconstructions(run.reconstructions)] if has_val else []),
        preemption,
        HangWatchdog(cfg.log.hang_timeout_s),
        *([SampleLedger(run.ledger(rank, ts))] if cfg.log.sample_ledger else []),
        # Last of the per-batch hooks: its clock starts after every other callback's batch work, so
        # "data wait" is the time spent fetching the next batch only.
        DebugCallback(cfg.log.train_every, cfg.log.val_every, cfg.debug),
        LoggedModelCheckpoint(dirpath=ckpt_dir, save_top_k=1, monitor="val_loss" if has_val else "train_loss",
                              mode="min", filename="best-{epoch:03d}"),
        # After the best-* save: last.ckpt holds its state too.
        LastCheckpoint(ckpt_dir, cfg.checkpoint.every_n_steps, max(1, cfg.data.num_workers)),
    ]
    strategy = "auto"
    if world > 1:
        strategy = DDPStrategy(process_group_backend="nccl" if gpu else "gloo",
                               timeout=timedelta(seconds=cfg.trainer.ddp_timeout_s))
    progress_bar = cfg.trainer.enable_progress_bar and rank == 0 and console_is_terminal()
    if progress_bar:
        callbacks.append(ConsoleProgressBar())
    trainer_args = dict(
        plugins=[env, AtomicCheckpointIO()],
        accelerator="gpu" if gpu else "cpu",
        devices=int(cfg.trainer.devices),
        num_nodes=cfg.trainer.num_nodes,
        strategy=strategy,
        max_epochs=cfg.trainer.max_epochs,
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val or None,
        logger=_metric_loggers(cfg, ts),
        callbacks=callbacks,
        default_root_dir=cfg.output_dir,
        enable_progress_bar=progress_bar,  # the console shows key lines; progress is in the debug logs
        use_distributed_sampler=False,  # the epoch plan already splits data by rank
        limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=2 if has_val else 0,
        log_every_n_steps=1,  # metrics are per epoch; this only silences the too-few-batches warning
    )
    trainer = pl.Trainer(**{**trainer_args, **cfg.trainer.extra})  # any other Trainer argument: the user's
    t0 = time.perf_counter()
    try:
        # Our launcher verified the checkpoint and passes it as --resume=<path>; under torchrun/srun
        # every rank checks it and rank 0 reports a fallback.
        ckpt_path = checkpoint_files.resume_path(cfg, verify_given=LAUNCHER_ENV not in os.environ, warn=rank == 0)
        progress = checkpoint_files.read_progress(ckpt_path) if ckpt_path else None
        said = progress and checkpoint_files.nothing_to_train(progress, cfg.trainer.max_epochs,
                                                              cfg.trainer.extra.get("max_steps", -1))
        if said:  # under torchrun/srun (our launcher said so before starting ranks)
            if rank == 0:
                log.info(said[0], *said[1], extra=logs.CONSOLE)
            return ExitCode.OK
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        return preemption.exit_code  # last.ckpt saved and logged; resume with --resume=auto
    except CheckpointWriteError as e:  # raised on every rank at the same save; one ERROR line, from rank 0
        log.log(logging.ERROR if rank == 0 else logging.INFO, lf.CKPT_WRITE_FAILED.template, e)
        return ExitCode.CHECKPOINT_WRITE_FAILED
    except TooManyShardErrors as e:
        log.error(lf.STOPPING.template, e)
        return ExitCode.SHARD_ERRORS
    except NonFiniteLoss:  # raised on every rank at the same point; the rank that had it logged the ERROR
        return ExitCode.NON_FINITE
    log.info(lf.FINISHED_RUN.template, trainer.current_epoch, time.perf_counter() - t0, extra=logs.CONSOLE)
    return ExitCode.OK
