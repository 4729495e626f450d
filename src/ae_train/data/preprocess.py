"""Images made one size and mode, as image autoencoder recipes prepare them: the shorter side resized
(antialiased) to cover `data.image_size`, the centre cropped (a random crop in training with
`data.random_crop`), any mode converted to `data.image_mode`, optionally flipped horizontally.

The geometry (`crop_box`): one scale for both sides, the smallest that covers H x W (the aspect is
kept exactly), and the crop window on whole pixels of the scaled image. Resize and crop are one
Pillow `resize` with that source box (the crop's footprint in the image), so only the pixels kept
are computed. JPEGs are first decoded at the smallest DCT scale that still covers the target:
libjpeg-turbo's scaled IDCT skips most of the full-size work. YCbCr and grey JPEGs go through
simplejpeg (any n/8 scale, header parsed in C, colour converted by libjpeg: 12 to 25% less CPU than
Pillow's draft here, docs/BENCHMARKS.md); others (CMYK, ...) through Pillow's `Image.draft` (1/2,
1/4, 1/8). The box is mapped onto the reduced image exactly. Where the DCT scale is the cover scale
itself (sides of 256 px at 64, 512 at 128, 128 at 64), the window is whole pixels of the reduced
decode and a slice replaces the resize: the decode is all the work (and it is closer to a full
decode + resize than a second resampling would be: BENCHMARKS.md, "Images"). Pixels go straight into
the caller's slot of a preallocated batch, as uint8 C x H x W.

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

try:
    import simplejpeg  # libjpeg-turbo's scaled decode at any n/8, straight to RGB or grey
except ImportError:  # a dependency; without it Pillow's draft (1/2, 1/4, 1/8) does the same job a bit slower
    simplejpeg = None

RESAMPLE = "BICUBIC"  # antialiased in Pillow (its support widens with the downscale factor)
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


def _spare(scaled: float, out: int) -> float:
    """What a scaled side has beyond the output (>= 0), a whole number where float noise hides one."""
    spare = max(0.0, scaled - out)
    return float(round(spare)) if abs(spare - round(spare)) < 1e-6 else spare


def crop_box(width: int, height: int, out_h: int, out_w: int, at: tuple[float, float] | None) -> tuple[float, ...]:
    """The source box (left, top, right, bottom) whose resize to (out_w, out_h) is "shorter side resized
    to cover, then cropped": one scale for both sides (the aspect kept exactly), the crop window on
    whole pixels of the scaled image, the centre when `at` is None, else at fractions (y, x) of the
    free range. Where a JPEG's reduced DCT scale is that scale (256 px sides at 64), the window is whole
    pixels of the reduced decode: a slice, no resampling."""
    scale = max(out_h / height, out_w / width)  # the resize factor that covers both sides
    spare_x, spare_y = _spare(width * scale, out_w), _spare(height * scale, out_h)  # scaled pixels left over
    free_x, free_y = math.floor(spare_x), math.floor(spare_y)  # whole pixels the window can move by
    if at is None:  # the whole-pixel window nearest the centre (the lower one on a tie, as `(big - out) // 2`)
        left, top = min(free_x, math.ceil(spare_x / 2 - 0.5)), min(free_y, math.ceil(spare_y / 2 - 0.5))
    else:
        top, left = round(at[0] * free_y), round(at[1] * free_x)
    box = (left / scale, top / scale, (left + out_w) / scale, (top + out_h) / scale)
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


def _turbo_scaled(data: bytes, mode: str, height: int, width: int, need_h: int, need_w: int):
    """(pixels (h, w, C) uint8, DCT scale n/8) of a YCbCr or grey JPEG decoded by libjpeg-turbo
    (simplejpeg) at the smallest scale n/8 whose size covers (need_h, need_w), converted to `mode` by
    libjpeg itself; None where it cannot (a decoding error): Pillow's path takes it."""
    need_h, need_w = min(need_h, height), min(need_w, width)  # never an IDCT upscale: Pillow enlarges
    n = next(n for n in range(1, 9) if -(-height * n // 8) >= need_h and -(-width * n // 8) >= need_w)
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB" if mode == "RGB" else "GRAY",
                                        min_height=-(-height * n // 8), min_width=-(-width * n // 8))
    except ValueError:
        return None
    h, w = pixels.shape[:2]
    if (h, w) != (-(-height * n // 8), -(-width * n // 8)):  # a scale other than n/8: take its own
        n = 8 * w / width
    return pixels, n / 8


def _window(box: tuple[float, ...], out_h: int, out_w: int) -> tuple[int, int] | None:
    """(top, left) when `box` is exactly an out_h x out_w window on whole pixels (the reduced decode
    already has the target scale, as 256 px images at 64 do): a slice then, no resampling."""
    left, top, right, bottom = box
    exact = abs(right - left - out_w) < 1e-6 and abs(bottom - top - out_h) < 1e-6
    if exact and abs(left - round(left)) < 1e-6 and abs(top - round(top)) < 1e-6:
        return round(top), round(left)
    return None


def _into(pixels: np.ndarray, out: np.ndarray, flip: bool) -> None:
    """(H, W) or (H, W, C) pixels into the (C, H, W) slot, mirrored when `flip`."""
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    out[...] = (pixels[:, ::-1] if flip else pixels).transpose(2, 0, 1)


def _pillow_drafted(img, mode: str, need_h: int, need_w: int) -> float:
    """Pillow's draft: a JPEG set to decode at the smallest of 1, 1/2, 1/4, 1/8 that covers (need_h,
    need_w), to `mode` where libjpeg converts (YCbCr to RGB or L); returns that scale (1 otherwise)."""
    if img.format != "JPEG":
        return 1.0
    width = img.size[0]
    drafted = img.draft(mode if img.mode in ("RGB", "L") else None, (max(1, need_w), max(1, need_h)))
    return drafted[1][2] / width if drafted is not None else 1.0  # its box: the reduced image in source pixels


def image_into(data: bytes, out: np.ndarray, mode: str, at: tuple[float, float] | None = None,
               flip: bool = False) -> None:
    """Decode an image member into `out` (C, H, W) uint8: shorter side resized to cover H x W, cropped
    (centre, or at fractions `at`), converted to `mode`, mirrored when `flip`. Pillow's exceptions go
    to the caller."""
    from PIL import Image

    _, out_h, out_w = out.shape
    img = pixels = None
    if simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            colorspace = ""
        if colorspace in ("YCbCr", "Gray"):  # CMYK, YCCK (Adobe inversion), ...: Pillow's path
            cover = max(out_h / height, out_w / width)
            turbo = _turbo_scaled(data, mode, height, width, math.ceil(height * cover), math.ceil(width * cover))
            if turbo is not None:
                pixels, scale = turbo
    if pixels is None:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        cover = max(out_h / height, out_w / width)
        scale = _pillow_drafted(img, mode, math.ceil(height * cover), math.ceil(width * cover))
    box = tuple(v * scale for v in crop_box(width, height, out_h, out_w, at))  # in the reduced image's pixels
    if pixels is not None:
        window = _window(box, out_h, out_w)
        if window is not None:
            top, left = window
            _into(pixels[top:top + out_h, left:left + out_w], out, flip)
            return
        img = Image.frombuffer(mode, (pixels.shape[1], pixels.shape[0]), pixels, "raw", mode, 0, 1)
    box = (box[0], box[1], min(box[2], img.size[0]), min(box[3], img.size[1]))
    img = _to_mode(img, mode)  # CMYK, palette, 16-bit, RGBA, ...: before the resize (values, not indices)
    img = img.resize((out_w, out_h), getattr(Image.Resampling, RESAMPLE), box=box)
    _into(np.asarray(img), out, flip)
