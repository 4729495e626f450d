"""`ae-train bench-data` on small real shards: the table, the verdict, and bad input in one line."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ae_train.benchdata import main as bench_main
from ae_train.config import ConfigError
from ae_train.data.shards import DataError
from ae_train.exitcodes import ExitCode
from conftest import ROOT, make_shards


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ae_train", "bench-data", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    make_shards(d, [300, 300, 250, 150])
    cfg = d / "bench.yaml"
    cfg.write_text(f"data:\n  train_shards: {d}/train-{{000000..000003}}.tar\n  val_shards: ''\n"
                   "  batch_size: 16\n  num_workers: 2\nmodel:\n  input_dim: 16\n")
    return cfg


def test_benchdata_prints_the_table_and_a_verdict(config):
    r = _bench("--config", str(config), "--seconds=1", "--data.batch_size=32")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.startswith("bench-data: 4 shards, 1,000 samples")
    assert "batch 32" in out.splitlines()[0]
    header = re.search(r"^run +workers +samples/s +MB/s +batches/s +read +decode +batching +read hidden +time +epochs$",
                       out, re.M)
    assert header, out
    rows = re.findall(r"^(one process|workers) +(\d+) +([\d,]+) +([\d,]+) +([\d,.]+) +(\d+)% +(\d+)% +(\d+)% "
                      r"+(-?\d+)% +([\d.]+)s +([\d.]+)$", out, re.M)
    assert [(name, workers) for name, workers, *_ in rows] == [("one process", "0"), ("workers", "2")], out
    for _, _, rate, mbps, batches, read, decode, batching, hidden, seconds, epochs in rows:
        assert int(rate.replace(",", "")) > 0 and int(mbps.replace(",", "")) > 0 and float(batches.replace(",", "")) > 0
        assert float(epochs) >= 1 and float(seconds) >= 1
        assert 98 <= int(read) + int(decode) + int(batching) <= 102  # rounded shares of the loader's time
        assert int(hidden) <= 100
    assert re.search(r"^verdict: 2 workers \(data.num_workers\) deliver [\d,]+ samples/s per rank \([\d,]+ batches "
                     r"of 32/s\): the GPU waits for data when its training step takes less than [\d.]+ ms; most loader "
                     r"time goes to (read|decode|batching) \(\d+%\)(; one process alone reads [\d.]+x faster here, but it loads "
                     r"in the training step's own thread: the workers, loading while the step runs, are faster for any "
                     r"step longer than [\d.]+ ms)?$",
                     out, re.M), out


def test_benchdata_bad_input_is_one_line(config, tmp_path):
    cases = [
        (["--config", str(tmp_path / "nope.yaml")], ConfigError, "config file not found"),
        (["--config", str(config), "--seconds=soon"], ConfigError, "--seconds: expected a number of seconds"),
        (["--config", str(config), "--data.batch_sise=3"], ConfigError, "unknown config key 'data.batch_sise'"),
        (["--config", str(config), f"--data.train_shards={tmp_path}/none-*.tar"], DataError, "no shards match"),
    ]
    for args, error, text in cases:
        with pytest.raises(error, match=re.escape(text)):
            bench_main(args)  # fails before any data is read: safe in-process
    r = _bench(*cases[1][0])  # through the cli: one line on stderr, exit 2
    assert r.returncode == ExitCode.BAD_INPUT and r.stderr.startswith("ae-train: error: --seconds") and r.stderr.count("\n") == 1
    r = _bench("--config", str(config), "--device=tpu")
    assert r.returncode == ExitCode.BAD_INPUT and r.stderr == "ae-train: error: --device: expected cpu or cuda[:N], got 'tpu'\n", r.stderr


def test_benchdata_train_steps_measure_the_data_wait(config):
    """The training-steps run (made by default where CUDA is), here with --device=cpu: real steps fed by
    the workers through the batch ring, with the share of the time the host waited for batches."""
    r = _bench("--config", str(config), "--seconds=1", "--data.batch_size=32", "--device=cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^steps: cpu: 2 workers feeding the mlp autoencoder \(batch 32, 32-true\): ([\d,]+) samples/s, "
                  r"([\d,.]+) steps/s; data wait ([\d.]+)% of the time$", r.stdout, re.M)
    assert m, r.stdout
    assert int(m[1].replace(",", "")) > 0 and float(m[2].replace(",", "")) > 0
    assert 0 <= float(m[3]) < 100  # slow CPU steps: the workers keep ahead, the host rarely waits
