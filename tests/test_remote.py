"""Shards as users have them, end to end: gzip-compressed .png/.cls shards made by GNU tar, served by a
real HTTP server (`pipe:curl` and `http://` URLs) into a 2-rank conv autoencoder; uneven `.npy` shards
in a bucket of a real S3-compatible server (moto in server mode); bad shape and member before any rank.
Remote reads that fail on the way (tests/flaky_http.py: a real server, or a proxy in front of moto, that
cuts responses halfway, ignores ranges, answers 503) are retried and resume where they broke."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ae_train.exitcodes import ExitCode
from conftest import ROOT, fit, flaky_server, make_shards, server_stats
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


# ---- remote reads that retry (data/remote.py) ----

@pytest.fixture(scope="module")
def cut_shards(tmp_path_factory) -> Path:
    """A plain and a gzip shard of 200 samples each (about 200 kB and 90 kB), no index beside them."""
    import gzip

    root = tmp_path_factory.mktemp("cut")
    plain, other = make_shards(root, [200, 200], prefix="cut")
    Path(other).with_suffix(".tar.gz").write_bytes(gzip.compress(Path(other).read_bytes()))
    Path(other).unlink()
    (root / "ae_index.json").unlink()
    return root


@pytest.fixture
def quick_retries():
    """data.read_retries=3 with a 0.05 s backoff for this test (the process-wide policy is put back)."""
    from ae_train.data import remote

    before = remote.retry_policy()
    remote.set_retry_policy(3, 0.05)
    yield remote
    remote.set_retry_policy(before.retries, before.backoff_s)


def _retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.getMessage().startswith("Retrying")]


def test_remote_cut_http_reads_resume_with_a_range_request(cut_shards, quick_retries, caplog):
    from ae_train.data.shards import count_stream
    from ae_train.data.source import read_small

    proc, base = flaky_server("--root", str(cut_shards), "--cut", "full")
    names = ["cut-000000.tar", "cut-000001.tar.gz"]
    try:
        with caplog.at_level("WARNING", logger="ae_train"):
            for name in names:
                assert read_small(f"{base}/{name}") == (cut_shards / name).read_bytes()
                # gzip: the compressed stream resumed at its offset, the decompressor never noticed
                assert count_stream(f"{base}/{name}") == count_stream(str(cut_shards / name))
        stats = server_stats(base)
    finally:
        proc.kill()
    assert stats["cut"] == stats["ranged"] == {f"/{n}": 2 for n in names}, stats
    lines = _retry_lines(caplog)
    assert len(lines) == 4, lines
    for line in lines:
        assert re.fullmatch(rf"Retrying shard {re.escape(base)}/cut-00000[01]\.tar(\.gz)? \(retry 1 of 3, "
                            r"data\.read_retries\) in [\d.]+s: curl exited with code 18: curl: \(18\) .*; "
                            r"resuming at byte \d+ by an HTTP range request", line), line


def test_remote_pipe_and_servers_without_ranges_read_again_and_skip(cut_shards, quick_retries, caplog):
    from ae_train.data.source import read_small

    proc, base = flaky_server("--root", str(cut_shards), "--cut", "first", "--ignore-range")
    try:
        with caplog.at_level("WARNING", logger="ae_train"):
            assert read_small(f"{base}/cut-000000.tar") == (cut_shards / "cut-000000.tar").read_bytes()
            data = read_small(f"pipe:curl -s {base}/cut-000001.tar.gz")
        stats = server_stats(base)
    finally:
        proc.kill()
    assert data == (cut_shards / "cut-000001.tar.gz").read_bytes()
    # http: cut, a range request answered with the whole file (curl 33), then read again; pipe: cut, run again
    assert stats["gets"] == {"/cut-000000.tar": 3, "/cut-000001.tar.gz": 2} and not stats["ranged"], stats
    lines = _retry_lines(caplog)
    assert len(lines) == 2 and "resuming at byte" in lines[0] and lines[1].startswith(
        f"Retrying shard pipe:curl -s {base}/cut-000001.tar.gz (retry 1 of 3, data.read_retries)"), lines
    assert re.search(r"pipe command '.*' exited with code 18; resuming at byte \d+ by reading again and skipping the "
                     "bytes already delivered", lines[1]), lines[1]


def test_remote_busy_server_is_retried_missing_and_exhausted_are_shard_errors(cut_shards, quick_retries, caplog):
    from ae_train.data.source import read_small

    busy, busy_base = flaky_server("--root", str(cut_shards), "--status-first", "503")
    broken, broken_base = flaky_server("--root", str(cut_shards), "--cut", "full", "--ignore-range")
    quick_retries.set_retry_policy(2, 0.05)
    try:
        with caplog.at_level("WARNING", logger="ae_train"):
            assert read_small(f"{busy_base}/cut-000000.tar") == (cut_shards / "cut-000000.tar").read_bytes()
            assert len(_retry_lines(caplog)) == 1 and "curl exited with code 22" in _retry_lines(caplog)[0]
            caplog.clear()
            # Not transient: no retry, the error as it was
            with pytest.raises(OSError, match=r"curl exited with code 22: .*404$"):
                read_small(f"{broken_base}/missing.tar")
            with pytest.raises(OSError, match=r"pipe command 'exit 3' exited with code 3$"):
                read_small("pipe:exit 3")
            assert _retry_lines(caplog) == []
            # Cut every time: retries in a row run out, and the error says so
            with pytest.raises(OSError, match=r"curl exited with code 18: .*; gave up after 2 retries "
                                              r"\(data\.read_retries=2\)"):
                read_small(f"{broken_base}/cut-000000.tar")
        assert len(_retry_lines(caplog)) == 2
        assert server_stats(busy_base)["gets"] == {"/cut-000000.tar": 2}
        assert server_stats(broken_base)["gets"]["/missing.tar"] == 1
    finally:
        busy.kill()
        broken.kill()


def test_remote_s3_get_cut_by_a_proxy_resumes_with_a_ranged_get(s3_env, cut_shards, quick_retries, caplog):
    """Through a real proxy in front of the moto server that cuts every whole-object GET halfway."""
    import boto3

    from ae_train.data.shards import count_stream
    from ae_train.data.source import read_small

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="ae-cut")
    for name in ("cut-000000.tar", "cut-000001.tar.gz"):
        s3.upload_file(str(cut_shards / name), "ae-cut", f"d/{name}")
    proc, base = flaky_server("--upstream", s3_env["AWS_ENDPOINT_URL"], "--cut", "full")
    quick_retries._CLIENT.clear()  # the process's S3 client: made again for the proxy's endpoint
    os.environ["AWS_ENDPOINT_URL"] = base
    try:
        with caplog.at_level("WARNING", logger="ae_train"):
            assert count_stream("s3://ae-cut/d/cut-000001.tar.gz") == count_stream(str(cut_shards / "cut-000001.tar.gz"))
            assert read_small("s3://ae-cut/d/cut-000000.tar") == (cut_shards / "cut-000000.tar").read_bytes()
            with pytest.raises(OSError, match=r"S3 NoSuchKey \(HTTP 404\)"):
                read_small("s3://ae-cut/d/missing.tar")
        stats = server_stats(base)
    finally:
        os.environ["AWS_ENDPOINT_URL"] = s3_env["AWS_ENDPOINT_URL"]
        quick_retries._CLIENT.clear()
        proc.kill()
    assert stats["cut"] == stats["ranged"] == {"/ae-cut/d/cut-000000.tar": 1, "/ae-cut/d/cut-000001.tar.gz": 1}, stats
    lines = _retry_lines(caplog)
    assert len(lines) == 2 and all("IncompleteRead" in ln and "by an S3 ranged GET" in ln for ln in lines), lines


def test_remote_two_ranks_over_a_server_that_cuts_every_whole_get(tmp_path):
    """Every GET of a whole shard (the launcher's count, each worker's read) is cut halfway: every read
    resumes with a range request, nothing is lost, nothing is an error."""
    import gzip

    from ae_train import logformat as lf

    root = tmp_path / "served"
    paths = make_shards(root, [120] * 4, prefix="mix")
    for p in paths[2:]:  # two of them gzip-compressed: resumed at the compressed offset
        Path(p + ".gz").write_bytes(gzip.compress(Path(p).read_bytes()))
        Path(p).unlink()
    (root / "ae_index.json").unlink()  # counted by the launcher: its reads are cut too
    proc, base = flaky_server("--root", str(root), "--cut", "full")
    urls = [f"{base}/{Path(p).name}" for p in paths[:2]] + [f"{base}/{Path(p).name}.gz" for p in paths[2:]]
    listing = tmp_path / "shards.txt"
    listing.write_text("\n".join(urls) + "\n")
    try:
        run = fit(tmp_path / "out", f"--data.train_shards={listing}", "--data.val_shards=", "--data.batch_size=8",
                  "--data.num_workers=2", "--trainer.max_epochs=1", "--debug=true", "--data.read_retry_backoff_s=0.1",
                  "--log.sample_ledger=true")
        stats = server_stats(base)
    finally:
        proc.kill()
    logs = run.text("*.log")
    assert run.proc.returncode == 0, run.console + logs
    assert not re.search(r"\[(ERROR|CRITICAL)\]", logs), logs
    train = run.text("train_*.log")
    for url in urls:
        assert re.search(rf"\[WARNING\] \[Launcher\] Retrying shard {re.escape(url)} \(retry 1 of 3", train), url
        assert re.search(rf"\[WARNING\] \[Rank [01]/2 Worker [01]/2\] Retrying shard {re.escape(url)} \(retry 1 of 3, "
                         r"data\.read_retries\) in [\d.]+s: curl exited with code 18: .*by an HTTP range request", train), url
    assert all(stats["cut"][f"/{u.rsplit('/', 1)[1]}"] >= 2 for u in urls), stats
    # Every planned sample delivered: each worker's COMPLETED total is its plan, the plan is every sample.
    planned = [int(m.group(5)) for m in lf.PROCESSING.pattern.finditer(logs.encode())]
    done = [int(m.group(1)) for m in lf.COMPLETED.pattern.finditer(logs.encode())]
    assert len(planned) == len(done) == 4 and sorted(planned) == sorted(done) and sum(done) == 480, (planned, done)
    assert "planned samples; padding" not in logs
    # The sample ledger holds every sample of the epoch once: 480 keys, each of the four shards' 120.
    from helpers import ledger_lines

    keys = [k for *_, ks in ledger_lines(run.logs) for k in ks]
    assert len(keys) == len(set(keys)) == 480
    assert {k.split("_")[0] for k in keys} == {f"mix{i:06d}" for i in range(4)}
