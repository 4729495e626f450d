"""Using a trained model: `ae-train evaluate` agrees with the logged val_loss, `ae-train encode` writes
one latent per input sample on 2 ranks, `ae-train export` programs load in plain PyTorch and match."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from ae_train.exitcodes import ExitCode
from conftest import BS, ROOT, fit, make_shards


def ae_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ae_train", *args], capture_output=True, text=True, timeout=180,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("use")
    make_shards(tmp / "d", [30, 13, 7])
    make_shards(tmp / "d", [32, 32], prefix="val", seed=1)  # 64 = 2 ranks x 4 batches of 8: nothing dropped
    run = fit(tmp / "out", f"--data.train_shards={tmp}/d/train-{{000000..000002}}.tar",
              f"--data.val_shards={tmp}/d/val-{{000000..000001}}.tar", f"--data.batch_size={BS}",
              "--data.num_workers=1", "--trainer.max_epochs=2")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    return tmp, run


def test_use_evaluate_agrees_with_val_loss(trained):
    tmp, run = trained
    ckpt = run.out / "checkpoints" / "last.ckpt"
    out = tmp / "eval.json"
    r = ae_train("evaluate", "--ckpt", str(ckpt), "--shards", f"{tmp}/d/val-{{000000..000001}}.tar", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["samples"] == 64 and [s["samples"] for s in result["shards"]] == [32, 32]
    rows = list(csv.DictReader(open(next((run.out / "metrics").rglob("metrics.csv")))))
    val_loss = [float(row["val_loss"]) for row in rows if row.get("val_loss")][-1]
    assert result["mse"] == pytest.approx(val_loss, rel=1e-5), (result["mse"], val_loss)
    r = ae_train("evaluate", "--ckpt", str(ckpt), "--shards", f"{tmp}/d/val-000000.tar", "--out", str(out))
    assert r.returncode == ExitCode.BAD_INPUT and "exists; evaluate never replaces a file" in r.stderr


def test_use_evaluate_images_reports_psnr_and_ssim(image_run, tmp_path):
    """The checkpoint carries data.image_size: evaluate resizes as validation did, and agrees with it."""
    ckpt = image_run.out / "checkpoints" / "last.ckpt"
    val = next(p for p in (image_run.out.parent / "d").glob("val-*.tar"))
    out = tmp_path / "eval.json"
    r = ae_train("evaluate", "--ckpt", str(ckpt), "--shards", str(val), "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^mse [\d.]+, psnr [\d.]+ dB, ssim -?[\d.]+ over 32 samples of 1 shard", r.stdout, re.M), r.stdout
    result = json.loads(out.read_text())
    shard = result["shards"][0]
    assert result["samples"] == shard["samples"] == 32 and {"mse", "psnr", "ssim"} <= set(shard)
    rows = list(csv.DictReader(open(next((image_run.out / "metrics").rglob("metrics.csv")))))
    last = [row for row in rows if row.get("val_loss")][-1]
    assert result["mse"] == pytest.approx(float(last["val_loss"]), rel=1e-4)
    assert result["psnr"] == pytest.approx(float(last["val_psnr"]), rel=1e-4)
    export = tmp_path / "export"
    r = ae_train("export", "--ckpt", str(ckpt), "--out", str(export))
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((export / "export.json").read_text())
    assert meta["input_shape"] == [3, 32, 32] and meta["preprocess"]["image_size"] == [32, 32]
    assert meta["preprocess"]["image_mode"] == "RGB"


def test_use_encode_writes_every_sample_once_on_two_ranks(trained):
    from ae_train.data.stream import open_samples
    from ae_train.inference import load_model

    tmp, run = trained
    ckpt = run.out / "checkpoints" / "last.ckpt"
    out = tmp / "latents"
    r = ae_train("encode", "--ckpt", str(ckpt), "--shards", f"{tmp}/d/train-{{000000..000002}}.tar", "--out", str(out),
                 "--devices", "2", "--batch-size", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    index = json.loads((out / "ae_index.json").read_text())["shards"]
    assert {k: v["exts"] for k, v in index.items()} == {f"train-00000{i}.tar": {"latent.npy": n}
                                                        for i, n in enumerate([30, 13, 7])}
    model = load_model(str(ckpt))
    for i in range(3):
        stream, samples = open_samples(str(tmp / "d" / f"train-00000{i}.tar"))
        inputs = {k: np.load(__import__("io").BytesIO(p["x.npy"])) for k, p in samples}
        stream.close()
        stream, samples = open_samples(str(out / f"train-00000{i}.tar"))
        latents = {k: np.load(__import__("io").BytesIO(p["latent.npy"])) for k, p in samples}
        stream.close()
        assert list(latents) == list(inputs)  # the same keys, in order, each once
        x = torch.from_numpy(np.stack(list(inputs.values())))
        np.testing.assert_allclose(np.stack(list(latents.values())), model.encoder(x).detach().numpy(), atol=1e-6)
    logs = (out / "logs")
    assert len(list(logs.glob("debug_rank*_*.log"))) == 2 and len(list(logs.glob("train_*.log"))) == 1
    assert "COMPLETED iteration, total samples" in "".join(p.read_text() for p in logs.glob("debug_rank*.log"))
    r = ae_train("encode", "--ckpt", str(ckpt), "--shards", f"{tmp}/d/train-000000.tar", "--out", str(out))
    assert r.returncode == ExitCode.BAD_INPUT and "exists; encode never replaces a shard" in r.stderr


def test_use_export_loads_in_plain_pytorch_and_matches(trained):
    from ae_train.inference import load_model

    tmp, run = trained
    ckpt = run.out / "checkpoints" / "last.ckpt"
    r = ae_train("export", "--ckpt", str(ckpt), "--out", str(tmp / "exported"))
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((tmp / "exported" / "export.json").read_text())
    assert meta["encoder"] == "encoder.pt2" and meta["input_shape"] == [16]
    x = torch.randn(5, 16)
    np.save(tmp / "x.npy", x.numpy())
    probe = ("import sys, numpy as np, torch\n"
             "assert 'ae_train' not in sys.modules\n"
             f"enc = torch.export.load('{tmp}/exported/encoder.pt2').module()\n"
             f"dec = torch.export.load('{tmp}/exported/decoder.pt2').module()\n"
             f"z = enc(torch.from_numpy(np.load('{tmp}/x.npy')))\n"
             f"np.save('{tmp}/z.npy', z.detach().numpy()); np.save('{tmp}/xh.npy', dec(z).detach().numpy())\n"
             "assert 'ae_train' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    model = load_model(str(ckpt))
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp / "z.npy"), model.encoder(x).numpy(), atol=1e-6)
        np.testing.assert_allclose(np.load(tmp / "xh.npy"), model(x).numpy(), atol=1e-6)
    with torch.no_grad():
        latents = model.predict_step(x, 0)
    np.testing.assert_allclose(latents.numpy(), np.load(tmp / "z.npy"), atol=1e-6)
