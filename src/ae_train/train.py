"""One rank of a training run: wire config, logging, data, model, callbacks and the Trainer together."""
from __future__ import annotations

import importlib
import logging
import os
import platform
import socket
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.exceptions import SIGTERMException

from . import logs
from .callbacks.checkpoint import LoggedModelCheckpoint
from .callbacks.debug import DebugCallback
from .callbacks.preemption import PreemptionCallback
from .callbacks.shard_errors import ShardErrorLimit, TooManyShardErrors
from .callbacks.summary import EpochSummary
from .callbacks.watchdog import HangWatchdog
from .config import Config, ConfigError, resume_path, to_yaml
from .data.datamodule import ShardDataModule
from .launcher import LAUNCHER_ENV
from .model import AutoEncoder

log = logging.getLogger(__name__)
# Lightning's own use of a deprecated torch API, once per rank and fit: noise in every train log.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


def rank_layout(cfg: Config) -> tuple[int, int, int, int]:
    """(global rank, world size, local rank, node rank) from the launcher's environment."""
    devices = int(cfg.trainer.devices)
    world = int(os.environ.get("WORLD_SIZE", devices * cfg.trainer.num_nodes))
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    rank = int(os.environ.get("RANK", node * devices + local))
    return rank, world, local, node


def _user_callbacks(paths: list[str]) -> list[pl.Callback]:
    out = []
    for dotted in paths:
        module, _, name = dotted.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), name)())
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"trainer.callbacks: cannot load '{dotted}': {e}") from None
    return out


def main(cfg: Config) -> int:
    rank, world, local_rank, node_rank = rank_layout(cfg)
    logs_dir = Path(cfg.output_dir) / "logs"
    ts = os.environ.get(logs.RUN_TS_ENV) or logs.new_run_timestamp(logs_dir)
    os.environ[logs.RUN_TS_ENV] = ts
    paths = logs.setup_rank_logging(logs_dir, ts, rank, world, cfg.debug)
    gpu = cfg.trainer.accelerator in ("gpu", "cuda")
    device = torch.cuda.get_device_name(local_rank) if gpu else "cpu"
    log.info("Debug log of rank %d/%d: host=%s pid=%d local_rank=%d node_rank=%d device=%s run=%s "
             "python=%s torch=%s lightning=%s", rank, world, socket.gethostname(), os.getpid(), local_rank,
             node_rank, device, ts, platform.python_version(), torch.__version__, pl.__version__)
    if rank == 0 and LAUNCHER_ENV not in os.environ:
        log.info("Config:\n%s", to_yaml(cfg).rstrip())
        log.info("Logs: %s and %s", paths["train"], logs_dir / f"debug_rank*_{ts}.log", extra=logs.CONSOLE)
        log.info("Monitor logs with: tail -f %s", paths["train"], extra=logs.CONSOLE)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = ShardDataModule(cfg.data, cfg.model.input_dim, cfg.seed, rank)
    model = AutoEncoder(cfg.model.input_dim, cfg.model.latent_dim, cfg.model.hidden_dims, cfg.model.activation,
                        cfg.model.lr, cfg.model.weight_decay, cfg.model.warmup_steps,
                        total_steps=datamodule.steps_per_epoch(world) * cfg.trainer.max_epochs)
    has_val = bool(cfg.data.val_shards.strip())
    ckpt_dir = Path(cfg.output_dir) / "checkpoints"
    shard_errors = ShardErrorLimit(cfg.data.max_shard_errors)
    preemption = PreemptionCallback(ckpt_dir)
    callbacks = [
        *_user_callbacks(cfg.trainer.callbacks),
        shard_errors,
        EpochSummary(shard_errors),
        preemption,
        HangWatchdog(cfg.log.hang_timeout_s),
        # Last of the per-batch hooks: its clock starts after every other callback's batch work, so
        # "data wait" is the time spent fetching the next batch only.
        DebugCallback(cfg.log.train_every, cfg.log.val_every, cfg.debug),
        LoggedModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=1,
                              monitor="val_loss" if has_val else "train_loss", mode="min",
                              filename="best-{epoch:03d}"),
    ]
    strategy = "auto"
    if world > 1:
        strategy = DDPStrategy(process_group_backend="nccl" if gpu else "gloo",
                               timeout=timedelta(seconds=cfg.trainer.ddp_timeout_s))
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=int(cfg.trainer.devices),
        num_nodes=cfg.trainer.num_nodes,
        strategy=strategy,
        max_epochs=cfg.trainer.max_epochs,
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val or None,
        logger=CSVLogger(cfg.output_dir, name="metrics", version=ts),
        callbacks=callbacks,
        default_root_dir=cfg.output_dir,
        enable_progress_bar=False,  # the console shows key lines only; progress is in the debug logs
        use_distributed_sampler=False,  # the epoch plan already splits data by rank
        limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=2 if has_val else 0,
        log_every_n_steps=1,  # metrics are per epoch; this only silences the too-few-batches warning
    )
    t0 = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_path(cfg))
    except SIGTERMException:
        return preemption.exit_code  # last.ckpt saved and logged; resume with --resume=auto
    except TooManyShardErrors as e:
        log.error("Stopping: %s", e)
        return 3
    log.info("Training finished: %d epochs in %.1fs", trainer.current_epoch, time.perf_counter() - t0,
             extra=logs.CONSOLE)
    return 0
