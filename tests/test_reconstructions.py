"""Reconstructions: a picture per validation (not the sanity check) written by rank 0, logged, and in
TensorBoard: images above their reconstructions, vectors as lines against theirs."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ae_train import logformat as lf
from ae_train.callbacks.reconstructions import GAP, LEGEND, MIN_TILE, PANEL, Reconstructions


def _lines(run) -> list[re.Match]:
    found = [lf.RECONSTRUCTIONS.pattern.search(line.encode()) for line in run.text("train_*.log").splitlines()]
    return [m for m in found if m]


def test_reconstructions_of_images_every_validation(image_run):
    logs = image_run.text("*.log")
    assert not re.search(r"\[(ERROR|CRITICAL)\]", logs), logs
    assert "each 'jpg' holds 3072 values (image 3x32x32)" in logs
    pictures = sorted((image_run.out / "reconstructions").glob("*.png"))
    assert [p.name for p in pictures] == ["epoch_000.png", "epoch_001.png"]  # not the sanity check's
    found = _lines(image_run)
    assert [(int(m[1]), m[2].decode(), int(m[3])) for m in found] == [(e, str(p), 8) for e, p in enumerate(pictures)]
    assert all("val_psnr" in line for line in image_run.text("train_*.log").splitlines() if "Reconstructions" in line)
    with Image.open(pictures[1]) as img:  # 8 tiles of 32 px enlarged to 64, inputs above reconstructions
        assert img.mode == "RGB" and img.size == (8 * MIN_TILE + 7 * GAP, 2 * MIN_TILE + GAP)
        grid = np.asarray(img)
    inputs, recons = grid[:MIN_TILE], grid[MIN_TILE + GAP:]
    assert inputs.std() > 20 and not np.array_equal(inputs, recons)
    first = np.asarray(Image.open(pictures[0]))[:MIN_TILE]
    assert np.array_equal(first, inputs)  # the same fixed validation inputs every epoch
    assert "Reconstructions" not in image_run.text("debug_rank1_*.log")  # rank 0 only


def test_reconstructions_in_tensorboard(image_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((image_run.out / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    assert "val/reconstructions" in acc.Tags()["images"]
    shown = acc.Images("val/reconstructions")
    assert len(shown) == 2 and shown[0].width == 8 * MIN_TILE + 7 * GAP
    assert "val_psnr" in acc.Tags()["scalars"]


def test_reconstructions_of_vectors_as_lines(debug_run):
    pictures = sorted((debug_run.out / "reconstructions").glob("*.png"))
    assert [p.name for p in pictures] == ["epoch_000.png", "epoch_001.png"]
    with Image.open(pictures[0]) as img:
        assert img.size == (PANEL[0], LEGEND + 8 * PANEL[1] + 7 * GAP)
        pixels = np.asarray(img).reshape(-1, 3)
    colours = {tuple(c) for c in pixels}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # input and reconstruction lines
    assert [m[1] for m in _lines(debug_run)] == [b"0", b"1"]
    assert "val_psnr" not in debug_run.text("train_*.log")


def test_reconstructions_count_is_checked():
    with pytest.raises(ValueError, match="count must be >= 1"):
        Reconstructions("out", count=0)
