"""Reconstructions: at every validation end (not the sanity check), rank 0 draws a fixed set of
validation inputs and what the model makes of them, into `<output_dir>/reconstructions/epoch_<NNN>.png`.

Images: the inputs in the top row, their reconstructions (clamped to [0, 1]) below, small images
enlarged to at least 64 pixels. Vectors and other arrays: one panel per input, its values as a line
(blue) against the reconstruction's (orange). Drawn with Pillow (no plotting library needed), the
path and the time it took in the train log, and the picture added to TensorBoard when that logger
is active. The inputs are the first ones of rank 0's first validation (copied out of the batch
once); the work is one forward pass of them and one small PNG per validation, off the training step.
A file already there (a resumed run, a second validation in one epoch) is never replaced: the new
one's name adds the global step.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from .. import logformat as lf
from ..atomic import atomic_write

log = logging.getLogger(__name__)
MIN_TILE = 64  # images smaller than this are enlarged (nearest) to be seen
GAP = 2  # pixels between tiles
PANEL = (256, 56)  # a vector's panel, width x height
LEGEND = 14  # pixels above the panels: "input" in blue, "reconstruction" in orange
INPUT_RGB, RECON_RGB = (31, 119, 180), (255, 127, 14)


class Reconstructions(Callback):
    def __init__(self, directory: str | Path, count: int = 8) -> None:
        if count < 1:
            raise ValueError(f"Reconstructions: count must be >= 1, got {count}")
        self.directory, self.count = Path(directory), count
        self._inputs: torch.Tensor | None = None  # (n, *shape) as the batches hold them, on the CPU (rank 0)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        have = 0 if self._inputs is None else len(self._inputs)
        if have < self.count and isinstance(batch, torch.Tensor):
            # A copy: the batch may be a ring slot that the next batch overwrites.
            taken = batch[:self.count - have].detach().to("cpu", copy=True)
            self._inputs = taken if self._inputs is None else torch.cat([self._inputs, taken])

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        psnr = trainer.callback_metrics.get("val_psnr")  # every rank: the first read may be a collective
        if not trainer.is_global_zero or self._inputs is None:
            return
        t0 = time.perf_counter()
        epoch = trainer.current_epoch
        try:
            picture = self._draw(pl_module)
            path = self._write(picture, epoch, trainer.global_step)
            self._to_tensorboard(trainer, picture)
        except Exception as e:  # a full disk or a model that cannot run on 8 inputs: say so, train on
            log.warning(lf.RECONSTRUCTIONS_FAILED.template, epoch, f"{type(e).__name__}: {e}")
            return
        psnr_text = f", val_psnr {float(psnr):.2f} dB" if psnr is not None else ""
        log.info(lf.RECONSTRUCTIONS.template, epoch, path, len(self._inputs), psnr_text,
                 1000 * (time.perf_counter() - t0))

    def _draw(self, pl_module: pl.LightningModule):
        images = self._inputs.dtype == torch.uint8 and self._inputs.dim() == 4
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                x = pl_module.inputs(self._inputs.to(pl_module.device))
                x_hat = pl_module(x).float()
        finally:
            pl_module.train(was_training)
        x, x_hat = x.float().cpu().numpy(), x_hat.cpu().numpy()
        return _image_grid(x, x_hat) if images else _vector_panels(x, x_hat)

    def _write(self, picture, epoch: int, step: int) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"epoch_{epoch:03d}.png"
        if path.exists():
            path = self.directory / f"epoch_{epoch:03d}_step_{step:07d}.png"
        if path.exists():
            path = self.directory / f"epoch_{epoch:03d}_step_{step:07d}_{os.getpid()}.png"
        with atomic_write(path) as f:
            picture.save(f, format="PNG", compress_level=1)
        return path

    def _to_tensorboard(self, trainer: pl.Trainer, picture) -> None:
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
                logger.experiment.add_image("val/reconstructions", pixels, trainer.global_step, dataformats="HWC")


def _image_grid(x: np.ndarray, x_hat: np.ndarray):
    """Inputs (n, C, H, W) in [0, 1] in one row, reconstructions below: a Pillow image."""
    from PIL import Image

    n, c, h, w = x.shape
    zoom = max(1, -(-MIN_TILE // max(h, w)))  # ceil: small images enlarged by a whole factor
    th, tw = h * zoom, w * zoom
    grid = np.full((2 * th + GAP, n * tw + (n - 1) * GAP, c), 255, np.uint8)
    for row, batch in enumerate((x, np.clip(x_hat, 0, 1))):
        tiles = (batch * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)  # (n, H, W, C)
        tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
        for i, tile in enumerate(tiles):
            top, left = row * (th + GAP), i * (tw + GAP)
            grid[top:top + th, left:left + tw] = tile
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
    if mode is None:  # other channel counts: the first one, grey
        grid, mode = grid[..., :1], "L"
    return Image.fromarray(grid[..., 0] if mode == "L" else grid, mode)


def _vector_panels(x: np.ndarray, x_hat: np.ndarray):
    """One panel per input: its values (flattened) as a blue line, the reconstruction's in orange."""
    from PIL import Image, ImageDraw

    n = len(x)
    x, x_hat = x.reshape(n, -1), x_hat.reshape(n, -1)
    width, height = PANEL
    picture = Image.new("RGB", (width, LEGEND + n * height + (n - 1) * GAP), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    draw.text((4, 1), "input", fill=INPUT_RGB)
    draw.text((48, 1), "reconstruction", fill=RECON_RGB)
    at = np.linspace(0, x.shape[1] - 1, min(x.shape[1], width - 8)).round().astype(int)  # at most one value a pixel
    xs = np.linspace(4, width - 4, len(at)) if len(at) > 1 else np.array([width / 2])
    for i in range(n):
        top = LEGEND + i * (height + GAP)
        lo, hi = float(min(x[i, at].min(), x_hat[i, at].min())), float(max(x[i, at].max(), x_hat[i, at].max()))
        span = hi - lo or 1.0
        draw.line([(0, top - 1), (width, top - 1)], fill=(200, 200, 200))
        for values, colour in ((x[i, at], INPUT_RGB), (x_hat[i, at], RECON_RGB)):
            ys = top + height - 4 - (values - lo) / span * (height - 8)
            points = list(zip(xs.tolist(), ys.tolist()))
            draw.line(points if len(points) > 1 else points * 2, fill=colour, width=1)
    return picture
