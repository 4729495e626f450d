"""Which accelerator and how many devices a run uses: `auto` resolved against what this machine has.

The launcher resolves them before any rank starts (a GPU asked for and not there is one line); a rank
started by torchrun or srun, where no launcher ran, resolves them itself.
"""
from __future__ import annotations

from ..config import Config
from ..errors import ConfigError


def resolve_devices(cfg: Config) -> None:
    """Replace `auto` in cfg.trainer.accelerator/devices; ConfigError when the GPUs asked for are not visible."""
    gpus = 0
    if cfg.trainer.accelerator != "cpu":  # torch only where a GPU may be asked for: ~1 s before ranks start
        import torch
        gpus = torch.cuda.device_count()
    if cfg.trainer.accelerator == "auto":
        cfg.trainer.accelerator = "gpu" if gpus else "cpu"
    if cfg.trainer.accelerator in ("gpu", "cuda") and not gpus:
        raise ConfigError("trainer.accelerator: gpu requested but no CUDA device is visible")
    if cfg.trainer.devices == "auto":
        cfg.trainer.devices = str(gpus if cfg.trainer.accelerator in ("gpu", "cuda") else 2)
    if cfg.trainer.accelerator in ("gpu", "cuda") and int(cfg.trainer.devices) > gpus:
        raise ConfigError(f"trainer.devices: {cfg.trainer.devices} requested, {gpus} GPU(s) visible")
