"""Shards as users have them, end to end: gzip-compressed .png/.cls shards made by GNU tar, served by a
real HTTP server (`pipe:curl` and `http://` URLs) into a 2-rank conv autoencoder; uneven `.npy` shards
in a bucket of a real S3-compatible server (moto in server mode); bad shape and member before any rank."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ae_train.exitcodes import ExitCode
from conftest import ROOT, fit, make_shards
from helpers import markers

SIZE = 16  # 3 x 16 x 16 images


def gnu_tar_image_shards(root: Path, prefix: str, shards: int, per_shard: int, seed: int) -> list[str]:
    """`.tar.gz` shards of `<key>.png` + `<key>.cls` written by Pillow and GNU tar + gzip, not by ae_train."""
    from PIL import Image

    from ae_train.data.make import synthetic_images

    images = synthetic_images(shards * per_shard, SIZE, 3, seed)
    names = []
    for s in range(shards):
        src = root / f"src-{prefix}-{s}"
        src.mkdir()
        for i in range(per_shard):
            img, label = next(images)
            Image.fromarray(img).save(src / f"{prefix}{s:03d}_{i:05d}.png")
            (src / f"{prefix}{s:03d}_{i:05d}.cls").write_text(str(label))
        name = f"{prefix}-{s:03d}.tar.gz"
        subprocess.run(f"tar --sort=name -cf - -C {src} . | gzip -6 > {root / name}", shell=True, check=True)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def served_images(http_root):
    root, base = http_root
    gnu_tar_image_shards(root, "train", 3, 100, seed=0)
    gnu_tar_image_shards(root, "val", 1, 64, seed=1)
    return root, base


def test_remote_conv_ae_on_gzip_png_over_http(served_images, tmp_path):
    root, base = served_images
    out = tmp_path / "out"
    run = fit(out, f"--data.train_shards=pipe:curl -s {base}/train-{{000..002}}.tar.gz",
              f"--data.val_shards={base}/val-000.tar.gz", "--data.sample_key=png", "--model.arch=conv",
              "--model.input_dim=0", "--model.conv_channels=8,16", "--model.latent_dim=16", "--model.lr=0.005",
              "--data.batch_size=16", "--data.num_workers=2", "--trainer.max_epochs=3", "--debug=true",
              "--log.train_every=2")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    train_log = run.text("train_*.log")
    assert "each 'png' holds 768 values (image 3x16x16)" in train_log
    assert not re.search(r"\[(ERROR|CRITICAL)\]", run.text("*.log")), run.text("*.log")
    # No index beside the shards: the launcher counted them once and saved the counts in the run dir.
    assert "counted 3 of 3 shards by reading them" in train_log and (out / "shard_counts.json").is_file()
    ranks = [run.text(f"debug_rank{r}_*.log") for r in (0, 1)]
    for text in ranks:
        assert f"Opening shard pipe:curl -s {base}/train-" in text
        assert f"Opening shard {base}/val-000.tar.gz" in text
        assert re.search(r"COMPLETED iteration, total samples: \d+", text)
    ends = [[b for name, b in markers(t) if name.endswith("TRAINING END")] for t in ranks]
    assert ends[0] == ends[1] and len(ends[0]) == 3, ends
    val = [float(v) for v in re.findall(r"Epoch \d+ val: loss=([\d.]+)", train_log)]
    assert len(val) == 3 and val[-1] < val[0], val


def _bad(tmp_path: Path, *flags: str) -> str:
    r = subprocess.run([sys.executable, "-m", "ae_train", "fit", f"--output_dir={tmp_path}/out", *flags],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)  # the timeout: a hang guard
    assert r.returncode == ExitCode.BAD_INPUT, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ae-train: error: ") and "Traceback" not in r.stderr, lines
    assert not list(tmp_path.rglob("debug_rank*.log")), "no rank may start"
    return lines[0]


def test_remote_wrong_width_and_missing_member_stop_before_any_rank(served_images, tmp_path):
    _, base = served_images
    shards = [f"--data.train_shards={base}/train-{{000..002}}.tar.gz", "--data.val_shards="]
    line = _bad(tmp_path, *shards, "--data.sample_key=png", "--model.arch=mlp", "--model.input_dim=64")
    assert f"model.input_dim is 64 but member 'png' of {base}/train-000.tar.gz holds 768 values (image 3x16x16)" in line
    line = _bad(tmp_path, *shards, "--data.sample_key=jpg")
    assert "none of the 3 shards holds a readable sample with 'jpg'" in line and f"{base}/train-000.tar.gz" in line


def test_remote_missing_url_is_named_with_the_http_status(served_images, tmp_path):
    _, base = served_images
    line = _bad(tmp_path, f"--data.train_shards={base}/nope-{{000..001}}.tar.gz", "--data.val_shards=",
                "--data.sample_key=png")
    assert f"{base}/nope-000.tar.gz" in line and "404" in line, line


def test_remote_uneven_npy_shards_from_s3(s3_env, tmp_path):
    import boto3

    sizes = [200, 13, 1, 77, 300]
    local = make_shards(tmp_path / "local", sizes)
    (tmp_path / "local" / "ae_index.json").unlink()  # no index in the bucket: counted by streaming
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ae-shards")
    for p in local:
        s3.upload_file(p, "ae-shards", f"uneven/{Path(p).name}")
    run = fit(tmp_path / "out", "--data.train_shards=s3://ae-shards/uneven/train-{000000..000004}.tar",
              "--data.val_shards=", "--data.batch_size=8", "--data.num_workers=2", "--trainer.max_epochs=2",
              "--debug=true", env=s3_env)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    ranks = [run.text(f"debug_rank{r}_*.log") for r in (0, 1)]
    assert all("Opening shard s3://ae-shards/uneven/train-" in t for t in ranks)
    ends = [[b for name, b in markers(t) if name.endswith("TRAINING END")] for t in ranks]
    assert ends[0] == ends[1] and len(ends[0]) == 2 and int(ends[0][0]) == sum(sizes) // 16, ends
    assert not re.search(r"\[(ERROR|CRITICAL)\]", run.text("*.log"))


def test_remote_index_beside_s3_shards_is_written_and_used(s3_env, tmp_path):
    import boto3

    local = make_shards(tmp_path / "local", [30, 20])
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ae-indexed")
    for p in local:
        s3.upload_file(p, "ae-indexed", f"d/{Path(p).name}")
    spec = "s3://ae-indexed/d/train-{000000..000001}.tar"
    r = subprocess.run([sys.executable, "-m", "ae_train", "index", spec], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0 and "wrote s3://ae-indexed/d/ae_index.json" in r.stdout, r.stdout + r.stderr
    from ae_train.data.shards import sample_counts

    import logging
    seen = []
    handler = logging.Handler()
    handler.emit = lambda rec: seen.append(rec.getMessage())
    logging.getLogger("ae_train").addHandler(handler)
    logging.getLogger("ae_train").setLevel(logging.INFO)
    try:
        counts, problems = sample_counts([f"s3://ae-indexed/d/train-00000{i}.tar" for i in (0, 1)], "x.npy", "k")
    finally:
        logging.getLogger("ae_train").removeHandler(handler)
    assert counts == [30, 20] and problems == {}
    assert not any("counting samples" in m for m in seen), seen  # read from the index, nothing streamed


def test_remote_npy_batches_equal_the_local_fast_path(http_root, tmp_path):
    """The streamed path (http, no shuffle) yields the same batches as the local fast path."""
    import torch
    from torch.utils.data import DataLoader

    from ae_train.data.reader import ShardBatches

    root, base = http_root
    paths = make_shards(root / "same", [37, 50, 9], dim=16)
    urls = [f"{base}/same/{Path(p).name}" for p in paths]
    counts = [37, 50, 9]

    def batches(u):
        ds = ShardBatches(u, counts, "train_shards", "x.npy", 16, 8, 0, 0, 1, 0, False)
        return torch.cat(list(DataLoader(ds, batch_size=None, num_workers=0))).numpy()

    np.testing.assert_array_equal(batches(urls), batches(paths))
