"""A trained model over shards: every sample exactly once, in shard order, with its key and members.

Shared by `ae-train encode` and `ae-train evaluate`. Unlike training (which equalizes batches across
ranks by dropping and padding), nothing is dropped or repeated here: a shard's samples are read with
the streaming walk, the input member decoded as in training, in batches of up to `batch_size`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .data.decode import SampleSpec, decode_into
from .data.stream import open_samples
from .errors import ConfigError
from .model import AutoEncoder

log = logging.getLogger(__name__)


def load_model(ckpt: str, device: str = "cpu") -> AutoEncoder:
    """The LightningModule of a checkpoint (`AutoEncoder.load_from_checkpoint`), in eval mode."""
    if not Path(ckpt).is_file():
        raise ConfigError(f"--ckpt: checkpoint not found: {ckpt}")
    try:
        model = AutoEncoder.load_from_checkpoint(ckpt, map_location=device, weights_only=False)
    except Exception as e:  # a truncated file, another model's checkpoint: one line, not a traceback
        raise ConfigError(f"--ckpt: cannot load {ckpt}: {type(e).__name__}: {e}") from None
    return model.eval()


def spec_of_model(model: AutoEncoder) -> SampleSpec:
    """What the model was trained on (saved in its hyperparameters), as the reader's SampleSpec."""
    hp = model.hparams
    decoder = hp.get("decoder", "npy")
    resize = tuple(hp["image_size"]) if hp.get("image_size") else None  # the training run's data.image_size
    return SampleSpec(tuple(model.input_shape), "uint8" if decoder == "image" else "float32", decoder, resize,
                      hp.get("image_mode", "") if resize else "")


def shard_batches(url: str, sample_key: str, spec: SampleSpec, batch_size: int):
    """(keys, other members [{ext: bytes}], inputs (n, *shape)) per batch of one shard, all samples
    holding `sample_key` once, in order."""
    stream, samples = open_samples(url)
    try:
        keys, others, batch = [], [], np.empty((batch_size, *spec.shape), spec.dtype)
        for key, parts in samples:
            data = parts.pop(sample_key, None)
            if data is None:
                continue
            decode_into(spec, data, batch[len(keys)])
            keys.append(key)
            others.append(parts)
            if len(keys) == batch_size:
                yield keys, others, batch
                keys, others, batch = [], [], np.empty_like(batch)
        if keys:
            yield keys, others, batch[:len(keys)]
    finally:
        stream.close()


@torch.no_grad()
def encode_batch(model: AutoEncoder, batch: np.ndarray) -> np.ndarray:
    x = model.inputs(torch.from_numpy(batch).to(model.device))
    return model.encoder(x).float().cpu().numpy()  # (n, latent_dim)


@torch.no_grad()
def squared_errors(model: AutoEncoder, batch: np.ndarray) -> np.ndarray:
    """Per-sample mean squared reconstruction error, (n,) float64."""
    return scores(model, batch)["mse"]


SSIM_KERNEL = 11  # torchmetrics' default Gaussian window; smaller images use the largest odd size that fits


@torch.no_grad()
def scores(model: AutoEncoder, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample scores, each (n,) float64: `mse` (as val_loss measures it) for every input; for images
    (uint8 batches) also `psnr` (dB) and `ssim` of the reconstruction clamped to [0, 1], by torchmetrics
    (`ssim` left out for images under 3 pixels a side)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x = model.inputs(torch.from_numpy(batch).to(model.device))
    x_hat = model(x).float()
    x = x.float()
    out = {"mse": ((x_hat - x) ** 2).reshape(len(x), -1).mean(dim=1).double().cpu().numpy()}
    if batch.dtype != np.uint8 or x.dim() != 4:
        return out
    x_hat = x_hat.clamp(0, 1)
    out["psnr"] = peak_signal_noise_ratio(x_hat, x, data_range=1.0, reduction="none",
                                          dim=(1, 2, 3)).double().cpu().numpy()
    side = min(x.shape[-2:])
    kernel = min(SSIM_KERNEL, side if side % 2 else side - 1)
    if kernel >= 3:
        out["ssim"] = structural_similarity_index_measure(x_hat, x, data_range=1.0, kernel_size=kernel,
                                                          reduction="none").double().cpu().numpy()
    return out
