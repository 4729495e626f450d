"""Member decoding by extension, as webdataset decodes: what one sample's input member holds.

`.npy` and `.pth`/`.pt` hold arrays (float32 batches of the array's shape); `.png`, `.jpg`/`.jpeg`
and the other Pillow formats hold images (uint8 batches of C x H x W: 1 channel for grey, 3 for RGB,
4 for RGBA; other modes are converted to RGB). `.cls`/`.txt`/`.json` are labels and metadata: they
travel with a sample but are no input. `data.sample_key` names the input member by its full
extension (`png`, `x.npy`); the last part (`npy`) picks the decoder.

Images are decoded straight into a slot of a preallocated batch (`decode_into`), so a worker hands
over one uint8 array per batch and the pixels are scaled to [0, 1] on the device. With
`data.image_size` the spec carries the preprocessing (size, mode, training augmentation) and images
of any size and mode are made that one shape (preprocess.py); without it they are taken as stored.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import preprocess
from .npyrows import npy_layout
from .tario import Member, ShardError

IMAGE_EXTS = ("png", "jpg", "jpeg", "ppm", "pgm", "pbm", "bmp", "webp", "tif", "tiff", "gif")
ARRAY_EXTS = ("npy", "pth", "pt")
LABEL_EXTS = ("cls", "cls2", "txt", "text", "json", "index", "label")


def decoder_of(sample_key: str) -> str:
    """'image', 'npy' or 'torch' for the input member's extension; ValueError for anything else."""
    last = sample_key.lower().rsplit(".", 1)[-1]
    if last in IMAGE_EXTS:
        return "image"
    if last == "npy":
        return "npy"
    if last in ("pth", "pt"):
        return "torch"
    if last in LABEL_EXTS:
        raise ValueError(f"'{sample_key}' members hold labels or text, not an input to reconstruct; "
                         f"name the input member (e.g. png, jpg, x.npy)")
    raise ValueError(f"no decoder for '{sample_key}' members (inputs: {', '.join(IMAGE_EXTS + ARRAY_EXTS)})")


@dataclass(frozen=True)
class SampleSpec:
    """What every sample's input is: its shape and the dtype batches carry, and for images resized on
    the way (`resize` set) the mode they are converted to and the training augmentation of the split."""
    shape: tuple[int, ...]
    dtype: str  # "uint8" (images, scaled on the device) or "float32"
    decoder: str  # "image", "npy" or "torch"
    resize: tuple[int, int] | None = None  # (H, W): data.image_size; None: images as stored
    mode: str = ""  # "RGB" or "L" with resize
    random_crop: bool = False  # training split only
    random_flip: bool = False  # training split only

    @cached_property  # read for every sample decoded
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def describe(self) -> str:
        """`784 values (1x28x28)`, `64 values`, the way error lines name what the data holds."""
        dims = "x".join(map(str, self.shape))
        what = "image " if self.decoder == "image" else ""
        return f"{self.size} values" + (f" ({what}{dims})" if len(self.shape) > 1 else "")

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "decoder": self.decoder,
                "resize": list(self.resize) if self.resize else None, "mode": self.mode,
                "random_crop": self.random_crop, "random_flip": self.random_flip}

    @classmethod
    def from_dict(cls, d: dict) -> "SampleSpec":
        resize = d.get("resize")
        return cls(tuple(d["shape"]), d["dtype"], d["decoder"], tuple(resize) if resize else None, d.get("mode", ""),
                   bool(d.get("random_crop")), bool(d.get("random_flip")))


def _image(data: bytes):
    try:
        from PIL import Image
    except ImportError:  # declared as a dependency; a broken environment is named, not a traceback
        raise ShardError("image members need Pillow (pip install pillow)") from None
    try:
        img = Image.open(io.BytesIO(data))
        if img.mode not in ("L", "RGB", "RGBA"):
            img = img.convert("RGB")
        arr = np.asarray(img)  # (H, W) or (H, W, C) uint8
    except Exception as e:  # Pillow raises many types for broken images
        raise ShardError(f"cannot decode image ({type(e).__name__}: {e})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W), a view


def _npy(data: bytes) -> np.ndarray:
    # The fast path's header parser (headers repeat: parsed once), then a view of the payload.
    try:
        dtype, shape, at = npy_layout(data, Member("member", 0, len(data)))
    except ShardError as e:
        why = str(e).replace("member member: ", "").replace("member member is not a .npy array (bad magic)", "bad magic")
        raise ShardError(f"not a readable .npy array: {why}") from None
    if dtype.kind not in "fiub":
        raise ShardError(f"dtype {dtype} is not numeric")
    return np.frombuffer(data, dtype, int(np.prod(shape, dtype=np.int64)), at).reshape(shape)


def _torch(data: bytes) -> np.ndarray:
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickles that are not plain tensors are refused by weights_only
        raise ShardError(f"not a readable tensor file ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise ShardError(f"holds a {type(obj).__name__}, not a tensor")
    if obj.is_complex():
        raise ShardError(f"dtype {obj.dtype} is not supported")
    return obj.detach().float().numpy()


def decode(decoder: str, data: bytes) -> np.ndarray:
    """One member's array: (C, H, W) uint8 for images, the stored shape for arrays."""
    if decoder == "image":
        return _image(data)
    if decoder == "npy":
        return _npy(data)
    return _torch(data)


def spec_of(decoder: str, arr: np.ndarray) -> SampleSpec:
    if decoder == "image":
        return SampleSpec(tuple(arr.shape), "uint8", decoder)
    return SampleSpec(tuple(int(d) for d in arr.shape) or (1,), "float32", decoder)


def decode_into(spec: SampleSpec, data: bytes, out: np.ndarray, key: str = "",
                seed: tuple[int, int] | None = None) -> None:
    """Decode one member into `out` (a slot of a batch, shape spec.shape); a sample whose shape
    differs from the first sample's is a ShardError that says both. `seed` (seed, epoch) with the
    sample's `key` draws its training augmentation when the spec has any; None: none (deterministic)."""
    at, flip = None, False
    if seed is not None and (spec.random_crop or spec.random_flip):
        y, x, coin = preprocess.draw(seed[0], seed[1], key)
        at, flip = ((y, x) if spec.random_crop else None), coin and spec.random_flip
    if spec.resize is not None:
        try:
            preprocess.image_into(data, out, spec.mode, at, flip)
        except Exception as e:  # Pillow raises many types for broken images
            raise ShardError(f"cannot decode image ({type(e).__name__}: {e})") from None
        return
    arr = decode(spec.decoder, data)
    if arr.size != spec.size or (spec.decoder == "image" and arr.shape != spec.shape):
        got = "x".join(map(str, arr.shape)) or "scalar"
        hint = "; set data.image_size to resize images of differing sizes and modes" if spec.decoder == "image" else ""
        raise ShardError(f"holds {arr.size} values ({got}), the first sample of the split holds {spec.describe()}"
                         + hint)
    out[...] = arr[..., ::-1].reshape(spec.shape) if flip else arr.reshape(spec.shape)
