"""MLP autoencoder: MSE reconstruction, AdamW, linear warm-up then cosine decay."""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _mlp(widths: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:  # no activation on the bottleneck or the reconstruction
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class AutoEncoder(pl.LightningModule):
    def __init__(self, input_dim: int, latent_dim: int, hidden_dims: list[int], activation: str = "gelu",
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 100, total_steps: int = 1000):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim], activation)
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), input_dim], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, input_dim) -> (B, input_dim)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.mse_loss(self(batch), batch)
        # on_epoch accumulation stays on the device; the epoch mean is reduced across ranks once.
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.mse_loss(self(batch), batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        # total_steps comes from the epoch plan (exact); asking the trainer for it here would build
        # the train iterator before a resumed run restored its position in the epoch.
        total = max(1, hp.total_steps)
        warmup = min(hp.warmup_steps, total // 10 + 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
