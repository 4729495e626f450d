"""Write WebDataset shards and their sample-count index: `.npy` vectors in `.tar`, or images
(`.png`/`.jpg` with a `.cls` label) in `.tar.gz`.

Synthetic vectors are low-rank plus noise (x = z @ W + 0.05 * noise, z of `rank` dims), so an
autoencoder with a latent of at least `rank` dims can learn to reconstruct them. Synthetic images
are a coloured disc or square on a colour gradient (the label says which shape): few parameters
per image, so a small conv autoencoder learns them in a few epochs. Photo-like images (`photo_like`)
are crops of colour 1/f noise, the power spectrum of natural images: as JPEGs they cost what photos
cost to decode (benchmarks and tests of the resizing decoder).
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np

from .shards import count_shard, write_index
from .tarwriter import TarWriter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

log = logging.getLogger(__name__)


def synthetic(num: int, dim: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).standard_normal((rank, dim)) / np.sqrt(rank)  # shared by all splits
    z = rng.standard_normal((num, rank))
    return (z @ basis + 0.05 * rng.standard_normal((num, dim))).astype(np.float32)


def write_shards(out_dir: str, prefix: str, data: np.ndarray, sizes: list[int], sample_key: str = "x.npy") -> list[str]:
    """One shard per entry of `sizes` (samples each), named `<prefix>-000000.tar`, ...; returns paths."""
    if sum(sizes) > len(data):
        raise ValueError(f"{sum(sizes)} samples requested, {len(data)} available")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for i, n in enumerate(sizes):
        path = os.path.join(out_dir, f"{prefix}-{i:06d}.tar")
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; make-shards never overwrites shards")
        with open(path, "wb") as f, TarWriter(f, mtime=0) as tar:
            for j in range(start, start + n):
                tar.add_array(f"{prefix}{i:06d}_{j:09d}.{sample_key}", data[j])
        paths.append(path)
        start += n
    write_index({p: count_shard(p) for p in paths})
    return paths


def split_sizes(total: int, per_shard: int) -> list[int]:
    full, rest = divmod(total, per_shard)
    return [per_shard] * full + ([rest] if rest else [])


def synthetic_images(num: int, size: int, channels: int, seed: int):
    """(uint8 images (num, size, size, channels), labels): a disc (0) or square (1) on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    for _ in range(num):
        a, b, fg = rng.random((3, channels))
        img = a[None, None] * (1 - yy[..., None]) + b[None, None] * xx[..., None] * 0.7
        cy, cx = rng.uniform(0.25, 0.75, 2)
        r = rng.uniform(0.12, 0.3)
        label = int(rng.integers(2))
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if label == 0 else \
            (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
        img[inside] = fg
        yield (np.clip(img, 0, 1) * 255).astype(np.uint8), label


def noise_textures(count: int, size: int, seed: int) -> list[np.ndarray]:
    """`count` colour 1/f noise images (size x size x 3 uint8), channels correlated as in photos."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    freq = np.sqrt(fx ** 2 + fy ** 2)
    freq[0, 0] = 1.0
    amp = 1.0 / freq  # power ~ 1/f^2

    def spectrum():
        return rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)

    out = []
    for _ in range(count):
        shared = spectrum()
        chans = [np.fft.irfft2((0.8 * shared + 0.45 * spectrum()) * amp, s=(size, size)) for _ in range(3)]
        img = np.stack([(c - c.mean()) / (c.std() + 1e-9) for c in chans], -1) * 48 + rng.uniform(70, 180, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def photo_like(rng: np.random.Generator, textures: list[np.ndarray], shorter: tuple[int, int],
               max_ratio: float = 1.5) -> np.ndarray:
    """A crop (H, W, 3) of one of `textures`: shorter side in [shorter[0], shorter[1]], the longer up to
    `max_ratio` times it (capped by the texture), either orientation, as `keep_ratio` downloads are."""
    tex = textures[int(rng.integers(len(textures)))]
    short = int(rng.integers(shorter[0], shorter[1] + 1))
    long = min(int(short * rng.uniform(1.0, max_ratio)), tex.shape[1])
    h, w = (short, long) if rng.random() < 0.5 else (long, short)
    y, x = int(rng.integers(tex.shape[0] - h + 1)), int(rng.integers(tex.shape[1] - w + 1))
    return tex[y:y + h, x:x + w]


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(out, format="PNG")
    return out.getvalue()


def write_image_shards(out_dir: str, prefix: str, samples, sizes: list[int]) -> list[str]:
    """`samples` yields (member ext, image bytes, label); one `.tar.gz` per entry of `sizes`, each
    sample `<key>.<ext>` + `<key>.cls`, written as a stream (gzip over tar, no temporary copy)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths, it, j = [], iter(samples), 0
    for i, n in enumerate(sizes):
        path = os.path.join(out_dir, f"{prefix}-{i:06d}.tar.gz")
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; make-shards never overwrites shards")
        with open(path, "wb") as f, TarWriter(f, gz=True, mtime=0) as tar:
            for _ in range(n):
                ext, data, label = next(it)
                key = f"{prefix}{i:06d}_{j:09d}"
                tar.add(f"{key}.{ext}", data)
                tar.add(f"{key}.cls", str(label).encode())
                j += 1
        paths.append(path)
    write_index({p: count_shard(p) for p in paths})
    return paths


def synthetic_image_samples(num: int, size: int, channels: int, seed: int):
    for img, label in synthetic_images(num, size, channels, seed):
        yield "png", _png(img), label


def folder_image_samples(directory: str) -> tuple[list, int]:
    """The image files under `directory` (sorted), their bytes as they are (no re-encoding), the label
    the index of their sub-directory (ImageFolder's rule; 0 when flat)."""
    root = Path(directory)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    label = {c: i for i, c in enumerate(classes)}

    def gen():
        for p in files:
            yield p.suffix.lower().lstrip("."), p.read_bytes(), label[p.parent.relative_to(root).as_posix()]
    return gen(), len(files)
