"""Shared fixtures: real tar shards on disk and real `ae-train fit` runs as subprocesses.

Lightning re-runs sys.argv in each rank, so training never runs inside pytest: each run is a
`python -m ae_train fit ...` subprocess with a timeout, and the tests read the log files it wrote.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ae_train.data.make import synthetic, write_shards

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# pytest -n 2 (pyproject's addopts) runs two test files at a time (--dist loadgroup, a group per file):
# the files that share an expensive session fixture (a real run) share a group, so it is made once.
SHARED_RUNS = {name: group for group, names in {
    "runs": ("test_docs", "test_reconstructions", "test_train", "test_use", "test_watchdog"),  # debug/image/error/hang
    "elastic_runs": ("test_last_checkpoint", "test_ledger", "test_resume"),
}.items() for name in names}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.stem
        item.add_marker(pytest.mark.xdist_group(SHARED_RUNS.get(module, module)))
DIM = 16
BS = 8
EPOCHS = 2


def make_shards(directory: Path, sizes: list[int], prefix: str = "train", dim: int = DIM, seed: int = 0) -> list[str]:
    data = synthetic(sum(sizes), dim, 4, seed)
    return write_shards(str(directory), prefix, data, sizes)


def img2dataset_shards(directory: Path, prefix: str, sizes: list[int], seed: int,
                       shorter: tuple[int, int] = (36, 60)) -> list[str]:
    """Plain `.tar` shards as img2dataset writes them (resize_mode=keep_ratio): `<key>.jpg` of varied
    sizes, every 7th grey and every 11th CMYK, with `<key>.txt` (a caption) and `<key>.json` (metadata)
    beside; written with Pillow and tarfile, not by ae_train (no ae_index.json: the launcher counts)."""
    import io
    import json
    import tarfile

    import numpy as np
    from PIL import Image

    from ae_train.data.make import noise_textures, photo_like

    rng, textures = np.random.default_rng(seed), noise_textures(4, 128, seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths, n = [], 0
    for s, count in enumerate(sizes):
        path = directory / f"{prefix}-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(count):
                img = Image.fromarray(photo_like(rng, textures, shorter))
                img = img.convert("L") if n % 7 == 3 else img.convert("CMYK") if n % 11 == 5 else img
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                key = f"{s:05d}{n:04d}"
                meta = {"key": key, "width": img.width, "height": img.height, "caption": f"image {n}"}
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"image {n}".encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                n += 1
        paths.append(str(path))
    return paths


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    out: Path

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.logs.glob(pattern))

    def text(self, pattern: str) -> str:
        return "".join(p.read_text() for p in self.files(pattern))

    @property
    def console(self) -> str:
        return self.proc.stdout + self.proc.stderr


def fit(out: Path, *flags: str, timeout: float = 180, env: dict | None = None) -> Run:
    """Run `ae-train fit` (launcher + 2 CPU ranks by default) and wait for it."""
    cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", "--trainer.accelerator=cpu",
           "--trainer.devices=2", f"--model.input_dim={DIM}", "--model.latent_dim=4",
           "--model.hidden_dims=32", *flags]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    return Run(proc, out)


@pytest.fixture(scope="session")
def uneven_shards(tmp_path_factory) -> Path:
    """The issue's uneven layout: 5 shards of 200, 13, 1, 77, 300 samples, plus 2 val shards."""
    d = tmp_path_factory.mktemp("uneven")
    make_shards(d, [200, 13, 1, 77, 300])
    make_shards(d, [50, 31], prefix="val", seed=1)
    return d


@pytest.fixture(scope="session")
def debug_run(uneven_shards, tmp_path_factory) -> Run:
    """The main run: uneven shards, 2 ranks x 2 workers, debug mode, the sample ledger, a warning and a print on rank 1."""
    out = tmp_path_factory.mktemp("debug_run") / "out"
    run = fit(out, f"--data.train_shards={uneven_shards}/train-{{000000..000004}}.tar",
              f"--data.val_shards={uneven_shards}/val-*.tar", f"--data.batch_size={BS}", "--data.num_workers=2",
              f"--trainer.max_epochs={EPOCHS}", "--debug=true", "--log.train_every=5", "--log.val_every=2",
              "--log.sample_ledger=true", "--trainer.callbacks=ddp_helpers.WarnOnRank1")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    return run


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> Run:
    """The image autoencoder as users train it: img2dataset-style JPEG shards of varied sizes and modes
    (grey, CMYK among RGB, .txt/.json beside), resized to 32x32 with random crops and flips, 2 ranks,
    2 epochs; 32 validation samples = 2 ranks x 2 batches of 8, none dropped."""
    tmp = tmp_path_factory.mktemp("image_run")
    img2dataset_shards(tmp / "d", "train", [40, 40], seed=0)
    img2dataset_shards(tmp / "d", "val", [32], seed=1)
    run = fit(tmp / "out", f"--data.train_shards={tmp}/d/train-*.tar", f"--data.val_shards={tmp}/d/val-00000.tar",
              "--data.sample_key=jpg", "--model.arch=conv", "--data.image_size=32", "--data.random_crop=true",
              "--data.random_flip=true", "--model.input_dim=0", "--model.conv_channels=8,16",
              f"--data.batch_size={BS}", "--data.num_workers=1", f"--trainer.max_epochs={EPOCHS}")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    return run


@pytest.fixture(scope="session")
def error_run(tmp_path_factory) -> tuple[Run, Path]:
    """A run where one shard was corrupted after it was indexed (same size): found at read time."""
    tmp = tmp_path_factory.mktemp("error_run")
    paths = make_shards(tmp / "d", [40, 40, 40, 40])
    bad = Path(paths[2])
    raw = bytearray(bad.read_bytes())
    raw[512 * 3:512 * 6] = b"\xff" * (512 * 3)
    bad.write_bytes(bytes(raw))
    run = fit(tmp / "out", f"--data.train_shards={tmp}/d", "--data.val_shards=", "--data.batch_size=8",
              "--data.num_workers=2", "--trainer.max_epochs=1", "--debug=true", "--data.max_shard_errors=1",
              timeout=150)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    return run, bad


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """An empty logs directory of a run directory (tmp_path/out/logs), for logs a test writes."""
    d = tmp_path / "out" / "logs"
    d.mkdir(parents=True)
    return d


class Background(subprocess.Popen):
    """A live run whose console goes to a file: a pipe nobody reads while the test waits for log lines
    fills up (the launcher's stack dumps on a slow start are tens of kB) and would block the run."""

    def __init__(self, cmd: list[str], console: Path, **kwargs):
        self.console_file = open(console, "w+")
        super().__init__(cmd, stdout=self.console_file, stderr=subprocess.STDOUT, text=True, **kwargs)

    def communicate(self, input=None, timeout=None):
        self.wait(timeout=timeout)
        self.console_file.seek(0)
        return self.console_file.read(), None


def start(out: Path, *flags: str) -> Background:
    """`ae-train fit` in the background, for tests that signal or inspect a live run."""
    cmd = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", "--trainer.accelerator=cpu",
           "--trainer.devices=2", f"--model.input_dim={DIM}", "--model.latent_dim=4", "--model.hidden_dims=32", *flags]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    out.parent.mkdir(parents=True, exist_ok=True)
    return Background(cmd, out.parent / f"{out.name}.console.txt", env=env, cwd=ROOT)


def wait_for(path_glob: Path, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(re.search(pattern, p.read_text()) for p in path_glob.parent.glob(path_glob.name)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{pattern} not seen in {path_glob} within {timeout}s")


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()]


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of pids is alive; returns those still alive after timeout (a hang guard)."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def pids_in(text: str) -> list[int]:
    """Rank and worker PIDs named in logs (debug log headers and `Worker started` lines)."""
    return [int(p) for p in re.findall(r"(?:Debug log of rank \d+/\d+: host=\S+ pid=|Worker started pid=)(\d+)", text)]


@dataclass
class HangRun:
    logs: Path
    console: str
    returncode: int
    rank_pid: int
    worker_pid: int


@pytest.fixture(scope="session")
def hang_run(tmp_path_factory) -> HangRun:
    """A run that stalls once on rank 0 (watchdog alert, then progress resumed) and gets SIGUSR1 on
    rank 1 and one of its workers; it finishes normally."""
    tmp = tmp_path_factory.mktemp("hang_run")
    make_shards(tmp / "d", [200] * 4)
    out = tmp / "out"
    proc = start(out, f"--data.train_shards={tmp}/d", "--data.val_shards=", "--data.batch_size=8",
                 "--data.num_workers=2", "--trainer.max_epochs=2", "--log.hang_timeout_s=3",
                 "--trainer.callbacks=ddp_helpers.SlowSteps,ddp_helpers.PauseRank0Once")
    logs = out / "logs"
    try:
        wait_for(logs / "debug_rank1_*.log", r"EPOCH 0 TRAINING START", 90)
        text = next(logs.glob("debug_rank1_*.log")).read_text()
        rank_pid = int(re.search(r"Debug log of rank 1/2: host=\S+ pid=(\d+)", text).group(1))
        worker_pid = int(re.findall(r"\[Rank 1/2 Worker 0/2\] Worker started pid=(\d+)", text)[-1])
        os.kill(rank_pid, signal.SIGUSR1)
        os.kill(worker_pid, signal.SIGUSR1)
        console, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return HangRun(logs, console, proc.returncode, rank_pid, worker_pid)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], url: str, cwd: Path | None = None) -> subprocess.Popen:
    """A real server as a subprocess, polled until it answers."""
    import urllib.request
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return proc
        except Exception as e:  # not up yet (refused), or up and answering an HTTP error
            if getattr(e, "code", None):
                return proc
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server {cmd} did not answer at {url}")


@pytest.fixture(scope="session")
def http_root(tmp_path_factory):
    """(directory, base URL) of `python -m http.server` serving that directory."""
    root = tmp_path_factory.mktemp("http_root")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], base + "/", cwd=root)
    yield root, base
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def s3_env():
    """An S3-compatible server (moto in server mode) and the AWS environment that reaches it."""
    pytest.importorskip("boto3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = _serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], endpoint + "/")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.kill()
    proc.wait()


def flaky_server(*flags: str) -> tuple[subprocess.Popen, str]:
    """(process, base URL) of tests/flaky_http.py: a real server (`--root DIR`) or proxy (`--upstream URL`)
    that cuts responses halfway, ignores ranges or answers 503 as its flags say. Kill it when done."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    return _serve([sys.executable, str(TESTS / "flaky_http.py"), "--port", str(port), *flags], base + "/_stats"), base


def server_stats(base: str) -> dict:
    """The flaky server's GET counts per path: gets, whole (200), ranged (206), cut."""
    import json
    import urllib.request
    with urllib.request.urlopen(base + "/_stats", timeout=10) as r:
        return json.loads(r.read())


ELASTIC_SIZES = [600, 313, 77, 500, 517]  # 2007 samples: 125 batches of 8 per rank on 2 ranks (7 dropped)


@dataclass
class ElasticRuns:
    """A run stopped and resumed on another world, as issue 18 checks it (weights that never change)."""
    out: Path
    shards: Path
    first: Run  # 3 epochs on 2 ranks x 2 workers, the sample ledger on
    after_first: tuple[int, list[str]]  # last.ckpt's global step and the checkpoint files after it
    stopped: tuple[str, int]  # (console, exit code) of the run continued to 5 epochs, SIGTERM inside epoch 3
    refused: subprocess.CompletedProcess  # the mid-epoch resume with another batch size
    other_model: subprocess.CompletedProcess  # a resume whose config builds another model
    resumed: Run  # --resume=auto on 1 rank x 1 worker, to the end of epoch 4
    resumed_wall: float  # seconds the resumed run took, start to exit
    nothing: subprocess.CompletedProcess  # --resume=auto once more: nothing left to train


@pytest.fixture(scope="session")
def elastic_runs(tmp_path_factory) -> ElasticRuns:
    tmp = tmp_path_factory.mktemp("elastic")
    make_shards(tmp / "d", ELASTIC_SIZES)
    out = tmp / "out"
    flags = [f"--data.train_shards={tmp}/d", "--data.val_shards=", "--data.batch_size=8", "--model.lr=1e-30",
             "--log.sample_ledger=true", "--debug=true", "--log.train_every=10"]
    first = fit(out, *flags, "--data.num_workers=2", "--trainer.max_epochs=3")
    assert first.proc.returncode == 0, first.console + first.text("*.log")
    import torch
    step = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    after_first = (step, sorted(p.name for p in (out / "checkpoints").iterdir()))
    proc = start(out, *flags, "--data.num_workers=2", "--trainer.max_epochs=5", "--resume=auto",
                 "--trainer.callbacks=ddp_helpers.SlowSteps")
    try:
        wait_for(out / "logs" / "debug_rank1_*.log", r"Training step 20, .*epoch 3,", 150)
        proc.send_signal(signal.SIGTERM)
        console, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    base = [sys.executable, "-m", "ae_train", "fit", f"--output_dir={out}", "--trainer.accelerator=cpu",
            f"--model.input_dim={DIM}", "--model.latent_dim=4", "--model.hidden_dims=32", *flags, "--resume=auto"]
    refused = subprocess.run([*base, "--trainer.devices=1", "--trainer.max_epochs=5", "--data.batch_size=16"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    other_model = subprocess.run([*base, "--trainer.devices=1", "--trainer.max_epochs=5", "--model.latent_dim=6"],
                                 capture_output=True, text=True, timeout=60, cwd=ROOT)
    t0 = time.monotonic()
    resumed = fit(out, *flags, "--trainer.devices=1", "--data.num_workers=1", "--trainer.max_epochs=5", "--resume=auto")
    wall = time.monotonic() - t0
    nothing = subprocess.run([*base, "--trainer.devices=1", "--trainer.max_epochs=5"], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
    return ElasticRuns(out, tmp / "d", first, after_first, (console, proc.returncode), refused, other_model, resumed,
                       wall, nothing)
