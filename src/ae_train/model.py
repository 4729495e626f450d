"""Autoencoders (MLP or convolutional): MSE reconstruction, AdamW, linear warm-up then cosine decay.

Batches arrive as float32 arrays or uint8 images; images are scaled to [0, 1] here, on the device,
so workers hand over a quarter of the bytes. `mlp` flattens any input to a vector and shapes the
reconstruction back; `conv` takes C x H x W: stride-2 convolutions down to `latent_dim`, the mirror
image up, the output cropped to the input size (the stride-2 path rounds sizes up). For images the
validation also logs `val_psnr`: the mean per-image PSNR (dB, torchmetrics) of the reconstructions
clamped to [0, 1], the images one would look at.
"""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio

from .batch import samples_of

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _mlp(widths: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:  # no activation on the bottleneck or the reconstruction
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class _Crop(nn.Module):
    """(B, C, H', W') -> (B, C, H, W) with H' >= H, W' >= W: the decoder's output at the input size."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :self.height, :self.width]


def _conv(shape: tuple[int, int, int], channels: list[int], latent_dim: int, activation: str):
    c, h, w = shape
    enc: list[nn.Module] = []
    prev, sizes = c, [(h, w)]
    for ch in channels:
        enc += [nn.Conv2d(prev, ch, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
        prev = ch
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))  # stride 2, padding 1: ceil(h / 2)
    bh, bw = sizes[-1]
    flat = prev * bh * bw
    encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, latent_dim))  # (B, C, H, W) -> (B, latent)
    dec: list[nn.Module] = [nn.Linear(latent_dim, flat), nn.Unflatten(1, (prev, bh, bw))]
    outs = [*reversed(channels[:-1]), c]
    for i, ch in enumerate(outs):
        dec.append(nn.ConvTranspose2d(prev, ch, 3, stride=2, padding=1, output_padding=1))  # doubles H, W
        if i < len(outs) - 1:
            dec.append(ACTIVATIONS[activation]())
        prev = ch
    decoder = nn.Sequential(*dec, _Crop(h, w))  # (B, latent) -> (B, C, bh * 2^L, bw * 2^L) -> (B, C, H, W)
    return encoder, decoder


class AutoEncoder(pl.LightningModule):
    def __init__(self, input_dim: int, latent_dim: int, hidden_dims: list[int], activation: str = "gelu",
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 100, total_steps: int = 1000,
                 arch: str = "mlp", input_shape: list[int] | None = None, conv_channels: list[int] | None = None,
                 sample_key: str = "x.npy", decoder: str = "npy", image_size: list[int] | None = None,
                 image_mode: str = ""):
        # sample_key, decoder, image_size and image_mode are not used here: saved with the weights, they
        # tell `encode`, `evaluate` and `export` what one input is (the member, uint8 images vs float
        # arrays, and how images were resized and converted: data.image_size, data.image_mode).
        super().__init__()
        self.save_hyperparameters()
        self.input_shape = tuple(input_shape or (input_dim,))
        if arch == "conv":
            if len(self.input_shape) != 3:
                raise ValueError(f"arch=conv needs a C x H x W input shape, got {self.input_shape}")
            self.encoder, self.decoder = _conv(self.input_shape, list(conv_channels or [32, 64, 128]), latent_dim,
                                               activation)
        else:
            # (B, *shape) -> (B, input_dim) -> (B, latent) -> (B, input_dim) -> (B, *shape)
            self.encoder = nn.Sequential(nn.Flatten(), _mlp([input_dim, *hidden_dims, latent_dim], activation))
            self.decoder = nn.Sequential(_mlp([latent_dim, *reversed(hidden_dims), input_dim], activation),
                                         nn.Unflatten(1, self.input_shape))

    @staticmethod
    def inputs(batch) -> torch.Tensor:
        """float inputs of a batch (a tensor, or a KeyedBatch with the sample ledger on): uint8 pixels
        scaled to [0, 1] (on the batch's device)."""
        x = samples_of(batch)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))  # (B, *shape) -> (B, *shape)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = self.inputs(batch)
        loss = nn.functional.mse_loss(self(x), x)
        # on_epoch accumulation stays on the device; the epoch mean is reduced across ranks once.
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = self.inputs(batch)
        x_hat = self(x)
        loss = nn.functional.mse_loss(x_hat, x)
        self.log("val_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        if samples_of(batch).dtype == torch.uint8:  # images: PSNR per image, averaged over the epoch's samples on all ranks
            psnr = peak_signal_noise_ratio(x_hat.clamp(0, 1), x, data_range=1.0, reduction="none",
                                           dim=tuple(range(1, x.dim())))
            self.log("val_psnr", psnr.mean(), on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        return loss

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.encoder(self.inputs(batch))  # (B, *shape) -> (B, latent_dim)

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
