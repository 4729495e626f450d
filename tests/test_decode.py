"""Member decoding by extension: arrays, tensors, images into preallocated uint8 slots, labels refused."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ae_train.data.decode import SampleSpec, decode, decode_into, decoder_of, spec_of
from ae_train.data.tario import ShardError


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format=fmt)
    return out.getvalue()


def test_decode_choice_by_extension():
    assert decoder_of("png") == decoder_of("JPG") == decoder_of("jpeg") == "image"
    assert decoder_of("x.npy") == "npy" and decoder_of("pth") == decoder_of("latent.pt") == "torch"
    with pytest.raises(ValueError, match="labels or text"):
        decoder_of("cls")
    with pytest.raises(ValueError, match="no decoder for 'wav'"):
        decoder_of("wav")


def test_decode_images_as_uint8_chw():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    got = decode("image", _png(rgb))
    assert got.dtype == np.uint8 and got.shape == (3, 5, 7)
    np.testing.assert_array_equal(got, rgb.transpose(2, 0, 1))
    grey = rgb[..., 0]
    assert decode("image", _png(grey)).shape == (1, 5, 7)
    smooth = np.broadcast_to(np.linspace(0, 250, 7, dtype=np.uint8)[None, :, None], (5, 7, 3)).copy()
    jpg = decode("image", _png(smooth, "JPEG"))
    assert jpg.shape == (3, 5, 7) and np.abs(jpg.astype(int) - smooth.transpose(2, 0, 1)).mean() < 8
    spec = spec_of("image", got)
    assert spec == SampleSpec((3, 5, 7), "uint8", "image") and spec.describe() == "105 values (image 3x5x7)"
    batch = np.zeros((2, 3, 5, 7), np.uint8)
    decode_into(spec, _png(rgb), batch[1])
    np.testing.assert_array_equal(batch[1], rgb.transpose(2, 0, 1))
    assert not batch[0].any()
    with pytest.raises(ShardError, match=r"holds 36 values \(3x3x4\), the first sample of the split holds 105"):
        decode_into(spec, _png(rgb[:3, :4]), batch[0])


def test_decode_arrays_and_tensors():
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    buf = io.BytesIO()
    np.save(buf, a)
    got = decode("npy", buf.getvalue())
    np.testing.assert_array_equal(got, a)
    assert spec_of("npy", got).describe() == "12 values (3x4)"
    t = io.BytesIO()
    torch.save(torch.arange(6, dtype=torch.float64), t)
    np.testing.assert_array_equal(decode("torch", t.getvalue()), np.arange(6, dtype=np.float32))
    out = np.empty(12, np.float32)
    decode_into(SampleSpec((12,), "float32", "npy"), buf.getvalue(), out)
    np.testing.assert_array_equal(out, a.ravel())


def test_decode_broken_members_are_shard_errors():
    with pytest.raises(ShardError, match="cannot decode image"):
        decode("image", b"\x89PNG not really")
    with pytest.raises(ShardError, match="not a readable .npy array"):
        decode("npy", b"garbage")
    with pytest.raises(ShardError, match="not a readable tensor file"):
        decode("torch", b"garbage")
    buf = io.BytesIO()
    np.save(buf, np.array(["a", "b"]))
    with pytest.raises(ShardError, match="is not numeric"):
        decode("npy", buf.getvalue())
