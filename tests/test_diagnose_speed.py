"""Straggler diagnosis on real 2-rank DDP runs where one rank is made slow for real (tests/slow_helpers.py).

Three runs of one epoch over the same 16 small shards, each step with 10 ms of forward on every rank:
balanced; rank 1's shard opens take 0.6 s (slow storage: its input is the straggler); rank 1's forward
takes 40 ms (a compute straggler). Each run's progress lines, epoch summary and diagnose report are
checked. Thresholds are wide (a straggler here shows 60+ points apart): timing noise must not decide.
"""
from __future__ import annotations

import json
import re

import pytest

from conftest import BS, fit, make_shards
from ae_train.diagnose import diagnose_run, main

SPLIT = re.compile(r"data wait ([\d.]+)%, forward ([\d.]+)%, backward ([\d.]+)%, optimizer ([\d.]+)%, other ([\d.]+)%")
RUNS = {"balanced": ("0.01,0.01", "0"), "slow_input": ("0.01,0.01", "0,0.6"), "slow_compute": ("0.01,0.04", "0")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed_shards")
    make_shards(d, [32] * 16)
    return d


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    out = {}
    for name, (forward, opens) in RUNS.items():
        run = fit(tmp_path_factory.mktemp(name) / "out", f"--data.train_shards={shards}", "--data.val_shards=",
                  f"--data.batch_size={BS}", "--data.num_workers=2", "--trainer.max_epochs=1", "--debug=true",
                  "--log.train_every=4", "--trainer.callbacks=slow_helpers.SlowForward,slow_helpers.SlowShardOpen",
                  env={"AE_TEST_FORWARD_S": forward, "AE_TEST_OPEN_S": opens}, timeout=150)
        assert run.proc.returncode == 0, run.console + run.text("*.log")
        out[name] = run
    return out


def kinds(report: dict) -> list[str]:
    return [f["kind"] for f in report["findings"]]


def test_diagnose_speed_progress_lines_and_epoch_summary_carry_the_split(runs):
    run = runs["balanced"]
    for rank in (0, 1):
        steps = re.findall(r"Training step \d+, .*", run.text(f"debug_rank{rank}_*.log"))
        assert len(steps) == 8  # batches 0, 4, ..., 28 of 32
        for line in steps:
            shares = [float(x) for x in SPLIT.search(line).groups()]
            assert sum(shares) == pytest.approx(100, abs=0.3) and line.endswith("% (cpu clock), rss " +
                                                                               line.split("rss ")[1])
            assert shares[1] > 0 and shares[2] > 0 and shares[3] > 0  # every cut point was reached
    summary = re.search(r"Epoch 0 train: .*\(all ranks\); time split slowest rank (\d): (.*); fastest rank (\d): (.*)",
                        run.text("train_*.log"))
    assert summary and {summary.group(1), summary.group(3)} == {"0", "1"}
    for text in (summary.group(2), summary.group(4)):
        assert sum(float(x) for x in SPLIT.fullmatch(text).groups()) == pytest.approx(100, abs=0.3)


def test_diagnose_speed_balanced_run_has_no_straggler(runs):
    rep = diagnose_run(runs["balanced"].logs)
    assert rep["speed"]["verdict"] == "no_straggler", rep["findings"]
    assert kinds(rep) == ["finished", "no_straggler"]
    assert rep["verdict"].startswith("Run finished cleanly")


def test_diagnose_speed_slow_input_rank_is_named_with_its_shards(runs, shards):
    run = runs["slow_input"]
    rep = diagnose_run(run.logs)
    f = rep["findings"][0]
    assert f["kind"] == "input_straggler" and f["ranks"] == [1], rep["findings"]
    assert f["message"].startswith("Rank 1 waits for data ") and "its input is the straggler" in f["message"]
    slowest = rep["ranks"][1]["shards_read"]["slowest"]
    assert slowest[0]["seconds"] >= 0.6 and slowest[0]["url"].startswith(str(shards))  # the delayed open is in it
    assert f"slowest shards (Opening to Finished): {slowest[0]['url']}" in f["message"]
    # The fast rank waits for it in backward (the gradient all-reduce), not for data.
    split0, split1 = rep["ranks"][0]["time_split"], rep["ranks"][1]["time_split"]
    assert split0["backward"] > split1["backward"] and split1["data_wait"] > split0["data_wait"]
    assert re.search(r"time split slowest rank 1: data wait", run.text("train_*.log"))


def test_diagnose_speed_slow_forward_rank_is_a_compute_straggler(runs, tmp_path, capsys):
    run = runs["slow_compute"]
    assert main([str(run.logs), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    f = rep["findings"][0]
    assert f["kind"] == "compute_straggler" and f["ranks"] == [1], rep["findings"]
    assert re.match(r"Rank 1's forward takes \d+\.\dx the others", f["message"]) and "device cpu" in f["message"]
    assert "input_straggler" not in kinds(rep) and rep["speed"] == {"verdict": "compute_straggler", "ranks": [1],
                                                                   "source": "progress lines"}
    assert re.search(r"time split slowest rank 1: data wait [\d.]+%, forward", run.text("train_*.log"))
    pytest.importorskip("matplotlib")
    from ae_train.diagnose_plot import draw
    fig = draw(rep)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 2 and len(set(labels)) == len(labels)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "silent (no progress)" not in legend  # a finished run ends where it ended
    assert fig.axes[1].get_title() == "time split" and len(fig.axes[1].patches) == 2 * 5  # a bar per rank
