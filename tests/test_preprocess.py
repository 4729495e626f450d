"""Images made one size and mode: any Pillow mode converted, shorter side resized and cropped, JPEGs
decoded at a reduced DCT scale close to a full decode, augmentation drawn per sample; differing images
without data.image_size stopped before any rank with a line naming it."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ae_train.config import DataConfig
from ae_train.data import preprocess
from ae_train.data.decode import SampleSpec, decode_into
from ae_train.data.make import noise_textures, photo_like
from ae_train.data.shards import DataError
from ae_train.data.splits import image_spec, probe
from ae_train.data.tario import ShardError
from ae_train.exitcodes import ExitCode
from conftest import ROOT, img2dataset_shards


def _encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, quality=90) if fmt == "JPEG" else img.save(out, format=fmt)
    return out.getvalue()


def _spec(size=(16, 16), mode="RGB", crop=False, flip=False) -> SampleSpec:
    return SampleSpec((preprocess.CHANNELS[mode], *size), "uint8", "image", size, mode, crop, flip)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return photo_like(np.random.default_rng(0), noise_textures(1, 256, 0), (150, 180))


def test_preprocess_converts_every_mode(photo):
    rgb = Image.fromarray(photo)
    cases = {"RGB": rgb, "L": rgb.convert("L"), "CMYK": rgb.convert("CMYK"), "P": rgb.convert("P"),
             "RGBA": rgb.convert("RGBA"), "LA": rgb.convert("LA"), "1": rgb.convert("1"),
             "I;16": Image.fromarray(np.full((40, 70), 40000, np.uint16))}
    for name, img in cases.items():
        fmt = "JPEG" if name in ("RGB", "L", "CMYK") else "TIFF" if name == "I;16" else "PNG"
        data = _encoded(img, fmt)
        for mode in ("RGB", "L"):
            spec = _spec((12, 20), mode)
            out = np.zeros(spec.shape, np.uint8)
            decode_into(spec, data, out)
            assert out.shape == ((3 if mode == "RGB" else 1), 12, 20) and out.any(), (name, mode)
    out = np.zeros((1, 12, 20), np.uint8)
    decode_into(_spec((12, 20), "L"), _encoded(cases["I;16"], "TIFF"), out)
    assert (out == 40000 >> 8).all()  # 16-bit grey scaled to 8 bits, not clipped to 255
    with pytest.raises(ShardError, match="cannot decode image"):
        decode_into(_spec(), b"\xff\xd8 not a jpeg", np.zeros((3, 16, 16), np.uint8))


def test_preprocess_resizes_the_shorter_side_and_crops_the_centre(photo):
    img = Image.fromarray(photo[:120, :144])  # the photo's shorter side is over 144
    for size in ((30, 30), (20, 36), (15, 15)):  # scales whose resized sides are whole pixels
        out = np.zeros((3, *size), np.uint8)
        decode_into(_spec(size), _encoded(img, "PNG"), out)
        # The practitioner's way: resize the whole image so it covers, then crop the centre.
        scale = max(size[0] / 120, size[1] / 144)
        big = img.resize((round(144 * scale), round(120 * scale)), Image.Resampling.BICUBIC)
        left, top = (big.width - size[1]) // 2, (big.height - size[0]) // 2
        ref = np.asarray(big.crop((left, top, left + size[1], top + size[0]))).transpose(2, 0, 1)
        assert _psnr(out, ref) > 45, size  # the same pixels, up to rounding


def test_preprocess_keeps_the_aspect_and_crops_on_whole_pixels():
    for w, h, size in ((290, 256, (64, 64)), (256, 377, (64, 64)), (181, 150, (24, 40)), (150, 181, (40, 24))):
        left, top, right, bottom = preprocess.crop_box(w, h, *size, None)
        scale = max(size[0] / h, size[1] / w)
        assert right - left == pytest.approx(size[1] / scale) and bottom - top == pytest.approx(size[0] / scale)
        # the window's corner is a whole pixel of the image scaled by `scale`, near the centre
        assert left * scale == pytest.approx(round(left * scale)) and top * scale == pytest.approx(round(top * scale))
        assert abs(left + right - w) * scale <= 1 + 1e-9 and abs(top + bottom - h) * scale <= 1 + 1e-9
        assert 0 <= left and right <= w and 0 <= top and bottom <= h


def test_preprocess_jpeg_at_its_dct_scale_is_a_window_of_the_reduced_decode(photo):
    import simplejpeg

    data = _encoded(Image.fromarray(photo).resize((300, 256), Image.Resampling.BICUBIC), "JPEG")  # H 256, W 300
    reduced = simplejpeg.decode_jpeg(data, "RGB", min_height=64, min_width=75)  # 1/4: 64 x 75
    assert reduced.shape == (64, 75, 3)
    out = np.zeros((3, 64, 64), np.uint8)
    decode_into(_spec((64, 64)), data, out)
    left = (75 - 64) // 2  # the scaled image is 64 x 75 exactly: its centre window, no resampling
    assert np.array_equal(out, reduced[:, left:left + 64].transpose(2, 0, 1))


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_preprocess_jpeg_reduced_decode_close_to_full_decode(photo, decoder, monkeypatch):
    if decoder == "pillow":  # Pillow's draft: CMYK JPEGs always, every JPEG where simplejpeg is missing
        monkeypatch.setattr(preprocess, "simplejpeg", None)
    for mode, image, sizes in (("RGB", photo, ((16, 16), (40, 40))), ("CMYK", photo, ((16, 16), (40, 40))),
                               ("RGB", photo[:128, :160], ((32, 32), (16, 20)))):  # exactly 1/4 and 1/8: a slice
        data = _encoded(Image.fromarray(image).convert(mode), "JPEG")
        for size in sizes:
            out = np.zeros((3, *size), np.uint8)
            decode_into(_spec(size), data, out)
            full = Image.open(io.BytesIO(data)).convert("RGB")  # full-size decode, then the same resize and crop
            box = preprocess.crop_box(full.width, full.height, *size, None)
            ref = np.asarray(full.resize(size[::-1], Image.Resampling.BICUBIC, box=box)).transpose(2, 0, 1)
            assert _psnr(out, ref) > 30, (mode, size)


def test_preprocess_augmentation_is_drawn_per_sample(photo):
    data = _encoded(Image.fromarray(photo[:100]), "JPEG")  # wide: the crop has room to move
    spec, plain = _spec(crop=True, flip=True), _spec()

    def made(spec, key, seed):
        out = np.zeros(spec.shape, np.uint8)
        decode_into(spec, data, out, key, seed)
        return out

    centre = made(plain, "a", None)
    assert np.array_equal(made(spec, "a", None), centre)  # no seed (validation, evaluate): the centre
    assert np.array_equal(made(plain, "a", (0, 0)), centre)  # a spec without augmentation ignores the seed
    first = {key: made(spec, key, (7, 3)) for key in map(str, range(12))}
    assert all(np.array_equal(made(spec, k, (7, 3)), v) for k, v in first.items())  # whoever reads it
    assert len({v.tobytes() for v in first.values()}) > 6  # crops and flips differ between samples
    assert any(not np.array_equal(made(spec, k, (7, 4)), v) for k, v in first.items())  # and between epochs
    draws = [preprocess.draw(7, 3, str(k)) for k in range(400)]
    assert 150 < sum(flip for _, _, flip in draws) < 250
    assert all(0 <= y <= 1 and 0 <= x <= 1 for y, x, _ in draws)
    flip_only = _spec(flip=True)
    flipped = next(made(flip_only, k, (7, 3)) for k in map(str, range(50)) if preprocess.draw(7, 3, k)[2])
    assert np.array_equal(flipped, centre[:, :, ::-1])


def test_preprocess_differing_images_need_image_size(tmp_path):
    urls = img2dataset_shards(tmp_path, "train", [12], seed=0)
    with pytest.raises(DataError, match=r"data\.train_shards: images differ in size or mode: .* set data\.image_size"):
        probe(urls, "jpg", "data.train_shards", 30, DataConfig())
    cfg = DataConfig(image_size=[20, 24], image_mode="L", random_crop=True, random_flip=True)
    spec, url = probe(urls, "jpg", "data.train_shards", 30, cfg)
    assert (spec, url) == (image_spec(cfg, training=True), urls[0])
    assert spec.shape == (1, 20, 24) and spec.random_crop and spec.random_flip
    val, _ = probe(urls, "jpg", "data.val_shards", 30, cfg)
    assert val.shape == spec.shape and not (val.random_crop or val.random_flip)


def test_preprocess_image_size_from_flags_and_files(tmp_path):
    from ae_train.config import load_config

    assert load_config(None, ["--data.image_size=32"]).data.image_size == [32]
    assert load_config(None, ["--data.image_size=32,48"]).data.image_size == [32, 48]
    (tmp_path / "c.yaml").write_text("data:\n  image_size: 32\n  image_mode: L\n")
    cfg = load_config(str(tmp_path / "c.yaml"), [])
    assert cfg.data.image_size == [32] and image_spec(cfg.data, training=False).shape == (1, 32, 32)
    assert preprocess.size_hw([32, 48]) == (32, 48) and preprocess.size_hw([]) is None


@pytest.mark.parametrize("flag,message", [
    ("--data.image_size=0", "data.image_size must be a size in pixels >= 1 (an int, or [H, W]), got 0"),
    ("--data.image_mode=CMYK", "data.image_mode must be RGB or L, got 'CMYK'"),
    ("--data.random_crop=true", "data.random_crop needs data.image_size (the crop size)"),
])
def test_preprocess_bad_values_are_one_line(tmp_path, flag, message):
    cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={tmp_path}/out", "--data.sample_key=jpg",
           "--model.arch=conv", flag]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == ExitCode.BAD_INPUT and r.stderr.strip() == f"ae-train: error: {message}", r.stderr
    assert not (tmp_path / "out").exists()
