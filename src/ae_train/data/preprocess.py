"""Images made one size and mode, as image autoencoder recipes prepare them: the shorter side resized
(antialiased) to cover `data.image_size`, the centre cropped (a random crop in training with
`data.random_crop`), any mode converted to `data.image_mode`, optionally flipped horizontally.

Resize and crop are one Pillow `resize` with a source box (the crop's footprint in the image), so
only the pixels kept are computed. JPEGs are first decoded at the smallest DCT scale (1/2, 1/4,
1/8) that still covers the target (`Image.draft`: libjpeg-turbo's scaled IDCT skips most of the
full-size work); the box is mapped onto the reduced image exactly. Pixels go straight into the
caller's slot of a preallocated batch, as uint8 C x H x W.

Augmentation is drawn per sample from a hash of (seed, epoch, sample key), never from a worker's
running random state: a sample gets the same crop and flip whichever rank or worker reads it, and
after a resume (even with another world size) as in a run never stopped.
"""
from __future__ import annotations

import hashlib
import io
import math
import struct

import numpy as np

RESAMPLE = "BICUBIC"  # antialiased in Pillow (its support widens with the downscale factor)
MODES = ("RGB", "L")
CHANNELS = {"RGB": 3, "L": 1}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def size_hw(image_size: list[int] | tuple[int, ...]) -> tuple[int, int] | None:
    """`data.image_size` as (H, W): one value is a square; empty is None (images as stored)."""
    if not image_size:
        return None
    return (int(image_size[0]), int(image_size[-1]))


def draw(seed: int, epoch: int, key: str) -> tuple[float, float, bool]:
    """(crop position y in [0, 1], x in [0, 1], flip) of one sample in one epoch: a hash, not an RNG stream."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    a, b = struct.unpack("<II", digest)
    return (a >> 1) / 0x7FFFFFFF, (b >> 1) / 0x7FFFFFFF, bool(a & 1)


def crop_box(width: int, height: int, out_h: int, out_w: int, at: tuple[float, float] | None) -> tuple[float, ...]:
    """The source box (left, top, right, bottom) whose resize to (out_w, out_h) is "shorter side resized
    to cover, then cropped": the image resized to whole pixels (round(w * s) x round(h * s)), cropped at
    whole-pixel offsets, the centre when `at` is None, else at fractions (y, x) of the free range."""
    scale = max(out_h / height, out_w / width)  # the resize factor that covers both sides
    big_w, big_h = max(out_w, round(width * scale)), max(out_h, round(height * scale))
    free_x, free_y = big_w - out_w, big_h - out_h
    if at is None:
        left, top = free_x // 2, free_y // 2
    else:
        top, left = round(at[0] * free_y), round(at[1] * free_x)
    sx, sy = big_w / width, big_h / height  # per side, as the whole-pixel resize has them
    box = (left / sx, top / sy, (left + out_w) / sx, (top + out_h) / sy)
    return (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))


def _to_mode(img, mode: str):
    """Any Pillow mode as `mode`: 16-bit grey scaled to 8 bits (Pillow would clip it), transparency
    dropped (as `.convert("RGB")` does), CMYK, palette and the rest converted by Pillow."""
    from PIL import Image

    if img.mode == mode:
        return img
    if img.mode in _SIXTEEN_BIT:
        grey = np.asarray(img).astype(np.uint32) >> 8  # 0..65535 -> 0..255
        img = Image.fromarray(np.minimum(grey, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA") or "A" in img.mode:
        img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
        if img.mode == "RGBA":
            img = img.convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def image_into(data: bytes, out: np.ndarray, mode: str, at: tuple[float, float] | None = None,
               flip: bool = False) -> None:
    """Decode an image member into `out` (C, H, W) uint8: shorter side resized to cover H x W, cropped
    (centre, or at fractions `at`), converted to `mode`, mirrored when `flip`. Pillow's exceptions go
    to the caller."""
    from PIL import Image

    _, out_h, out_w = out.shape
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    box = crop_box(width, height, out_h, out_w, at)
    if img.format == "JPEG":
        scale = max(out_h / height, out_w / width)
        # The smallest DCT scale that keeps both sides >= the resized size, decoded straight to `mode`
        # where libjpeg can (YCbCr -> RGB or L); `draft` returns the reduced image's box in source pixels.
        drafted = img.draft(mode if img.mode in ("RGB", "L") else None,
                            (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        if drafted is not None:
            factor = drafted[1][2] / width  # 1, 1/2, 1/4 or 1/8: the DCT scale, exact
            box = tuple(v * factor for v in box)
            box = (box[0], box[1], min(box[2], img.size[0]), min(box[3], img.size[1]))
    img = _to_mode(img, mode)  # CMYK, palette, 16-bit, RGBA, ...: before the resize (values, not indices)
    img = img.resize((out_w, out_h), getattr(Image.Resampling, RESAMPLE), box=box)
    pixels = np.asarray(img)  # (H, W) or (H, W, C)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if flip:
        pixels = pixels[:, ::-1]
    out[...] = pixels.transpose(2, 0, 1)
