"""`ae-train make-shards` for images: a directory of images (classes from sub-directories) and the
synthetic image demo, which `configs/images_demo.yaml` trains with the conv autoencoder."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ae_train.data.stream import open_samples
from ae_train.exitcodes import ExitCode
from conftest import ROOT, fit


def ae_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ae_train", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_make_image_shards_from_a_directory(tmp_path):
    src = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (src / cls).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(src / cls / f"{i}.png")
    r = ae_train("make-shards", "--from-images", str(src), "--out", str(tmp_path / "out"), "--per-shard", "5")
    assert r.returncode == 0 and "wrote 3 shards (14 images)" in r.stdout, r.stdout + r.stderr
    index = json.loads((tmp_path / "out" / "ae_index.json").read_text())["shards"]
    assert [index[f"train-00000{i}.tar.gz"]["exts"] for i in range(3)] == [{"png": 5, "cls": 5}, {"png": 5, "cls": 5},
                                                                          {"png": 4, "cls": 4}]
    labels, pixels = [], []
    for i in range(3):
        stream, samples = open_samples(str(tmp_path / "out" / f"train-00000{i}.tar.gz"))
        for _, parts in samples:
            labels.append(int(parts["cls"]))
            pixels.append(parts["png"])
        stream.close()
    assert labels == [0] * 7 + [1] * 7
    assert pixels[0] == (src / "cats" / "0.png").read_bytes()  # the files as they are, not re-encoded
    r = ae_train("make-shards", "--from-images", str(tmp_path / "nope"), "--out", str(tmp_path / "o2"))
    assert r.returncode == ExitCode.BAD_INPUT and r.stderr.strip() == f"ae-train: error: --from-images: directory not found: {tmp_path}/nope"


def test_make_images_demo_trains_with_its_config(tmp_path):
    data = tmp_path / "images_demo"
    r = ae_train("make-shards", "--images-demo", "--out", str(data))
    assert r.returncode == 0 and "wrote 4 shards (2000 images)" in r.stdout, r.stderr
    run = fit(tmp_path / "out", "--config", str(ROOT / "configs" / "images_demo.yaml"), "--model.input_dim=0",
              f"--data.train_shards={data}/train-{{000000..000003}}.tar.gz", f"--data.val_shards={data}/val-000000.tar.gz",
              "--trainer.max_epochs=2", timeout=240)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    train = run.text("train_*.log")
    assert "each 'png' holds 3072 values (image 3x32x32)" in train and re.search(r"arch: conv", train)
    assert "input_shape:\n  - 3\n  - 32\n  - 32" in (Path(tmp_path / "out") / "config.yaml").read_text()
    val = [float(v) for v in re.findall(r"Epoch \d+ val: loss=([\d.]+)", train)]
    assert len(val) == 2 and val[1] < val[0], val
