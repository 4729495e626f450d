"""Straggler diagnosis (diagnose/speed.py): the rules on logs written through the writers' templates
(ae_train.logformat, see helpers.RankWriter), then real 2-rank DDP runs where one rank is made slow for real (tests/slow_helpers.py).

Four runs of one epoch over the same 16 small shards, each step with 10 ms of forward on every rank:
balanced; rank 1's shard opens take 0.6 s (slow storage: its input is the straggler); rank 1's forward
takes 40 ms (a compute straggler); rank 0 spends 30 ms in a callback after each optimizer step (a
straggler the others wait for at the start of the next step, in Lightning's per-step broadcast). Each run's progress lines, epoch summary and diagnose report are
checked. Thresholds are wide (a straggler here shows 60+ points apart): timing noise must not decide.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import BS, fit, make_shards
from helpers import NOW, T0, RankWriter, finding, kinds, train_log
from ae_train import logformat as lf
from ae_train.diagnose import diagnose_run, format_report, main

SPLIT = re.compile(r"data wait ([\d.]+)%, forward ([\d.]+)%, backward ([\d.]+)%, optimizer ([\d.]+)%, other ([\d.]+)%")
# name: (forward seconds per rank, shard open delay per rank, batch-end delay per rank)
RUNS = {"balanced": ("0.01,0.01", "0", "0"), "slow_input": ("0.01,0.01", "0,0.6", "0"),
        "slow_compute": ("0.01,0.04", "0", "0"), "slow_batch_end": ("0.01,0.01", "0", "0.03,0")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed_shards")
    make_shards(d, [32] * 16)
    return d


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    out = {}
    for name, (forward, opens, batch_end) in RUNS.items():
        run = fit(tmp_path_factory.mktemp(name) / "out", f"--data.train_shards={shards}", "--data.val_shards=",
                  f"--data.batch_size={BS}", "--data.num_workers=2", "--trainer.max_epochs=1", "--debug=true",
                  "--log.train_every=4", "--trainer.callbacks=slow_helpers.SlowForward,slow_helpers.SlowShardOpen,slow_helpers.SlowBatchEnd",
                  env={"AE_TEST_FORWARD_S": forward, "AE_TEST_OPEN_S": opens, "AE_TEST_BATCH_END_S": batch_end},
                  timeout=150)
        assert run.proc.returncode == 0, run.console + run.text("*.log")
        out[name] = run
    return out


def split(data, fwd, bwd, opt=2.0, clock="cpu clock") -> tuple[str, str]:
    """A progress line's split as the writer formats it, and its clock."""
    return lf.format_split([data, fwd, bwd, opt, 100 - data - fwd - bwd - opt]), clock


def speed_run(logs: Path, splits: list[tuple[str, str]], read_s=None, world: int | None = None) -> list[RankWriter]:
    """A finished run whose ranks write the given progress-line splits (rank r: splits[r])."""
    world = world or len(splits)
    rls = [RankWriter(logs, r, world) for r in range(world)]
    for rl in rls:
        for ep in range(2):
            rl.epoch(ep, split=splits[rl.rank][0], clock=splits[rl.rank][1],
                     read_s=read_s and (lambda b, r=rl.rank: read_s(r, b)))
        rl.log("INFO", lf.FINISHED_RUN, 2, 35.2)
    return rls


def test_diagnose_speed_input_straggler_names_rank_and_its_slowest_shards(logs):
    # Rank 1 of 3 waits for data; its shard of batch 5 took 9 s from Opening to Finished, the rest 1 s.
    speed_run(logs, [split(2, 30, 60), split(71, 20, 5), split(3, 30, 59)],
              read_s=lambda r, b: 9.0 if (r, b) == (1, 5) else 2.5 if r == 1 else 1.0)
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "input_straggler" and f["ranks"] == [1] and f["severity"] == "warning"
    assert f["message"].startswith("Rank 1 waits for data 71% of the time (others 2-3%): its input is the straggler")
    assert "the others wait for it in backward, where ranks sync (59-60% vs its 5%)" in f["message"]
    assert "slowest shards (Opening to Finished): /data/train-0101005.tar 9.00s, /data/train-0100005.tar 9.00s" in f["message"]
    assert rep["speed"] == {"verdict": "input_straggler", "ranks": [1], "source": "progress lines"}
    row = rep["ranks"][1]
    assert row["time_split"]["data_wait"] == 71.0 and row["time_split"]["clock"] == "cpu clock"
    assert row["shards_read"]["count"] == 16 and row["shards_read"]["slowest"][0]["seconds"] == 9.0
    assert "71 20 5 2 2" in format_report(rep)


def test_diagnose_speed_compute_straggler_names_part_ratio_and_host(logs):
    speed_run(logs, [split(2, 20, 70), split(2, 20, 70), split(2, 46, 45, clock="cuda events"), split(2, 21, 69)])
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "compute_straggler" and f["ranks"] == [2]
    assert f["message"].startswith("Rank 2's forward takes 2.3x the others (46% of the time vs 20-21%): compute "
                                   "straggler (host node1, device cpu)")
    assert "the others wait for it in backward, where ranks sync (69-70% vs its 45%)" in f["message"]
    assert "input_straggler" not in kinds(rep)


def test_diagnose_speed_all_ranks_waiting_for_data_is_the_input_path(logs):
    speed_run(logs, [split(52, 20, 20), split(48, 22, 22)], read_s=lambda r, b: 4.0 if (r, b) == (0, 3) else 1.0)
    rep = diagnose_run(logs, now=NOW)
    f = rep["findings"][0]
    assert f["kind"] == "input_bottleneck" and f["ranks"] == [0, 1]
    assert f["message"].startswith("All ranks wait for data 48-52% of the time: the input path is the bottleneck "
                                   "(measure it with `ae-train bench-data")
    assert "/data/train-0000003.tar 4.00s (rank 0)" in f["message"]
    assert rep["speed"]["verdict"] == "input_bottleneck" and rep["speed"]["ranks"] == []


@pytest.mark.parametrize("splits", [
    [split(2, 30, 60), split(9, 28, 55), split(4, 31, 58)],  # noisy but balanced
    [split(25, 25, 40), split(33, 24, 33)],                  # everyone waits a little: no one is behind
])
def test_diagnose_speed_balanced_ranks_get_no_straggler(logs, splits):
    speed_run(logs, splits)
    rep = diagnose_run(logs, now=NOW)
    assert kinds(rep) == ["finished", "no_straggler"] and rep["verdict"].startswith("Run finished cleanly")
    assert finding(rep, "no_straggler")["message"].startswith(f"No straggler: the {len(splits)} ranks are balanced")
    assert rep["speed"]["verdict"] == "no_straggler"


def test_diagnose_speed_first_line_of_an_epoch_and_time_weights(logs):
    # Rank 1's batch-0 lines (start-up) say 95% data wait and are left out; its steady lines alternate
    # a slow window (90% data wait, 100 samples/s) and a fast one (10%, 1000 samples/s): time-weighted 83%.
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.start(lf.TRAINING % 0)
        for b in range(0, 9, 2):
            d, rate = (95, 50) if b == 0 else (90, 100) if b % 4 == 2 else (10, 1000)
            d = d if rl.rank == 1 else 3
            rl.step(b, 0, b + 1, *split(d, 5, 90 - d), rate=rate, loss=0.1)
    rep = diagnose_run(logs, now=NOW)
    assert rep["ranks"][1]["time_split"]["data_wait"] == pytest.approx(82.7, abs=0.1)
    assert rep["ranks"][1]["time_split"]["lines"] == 4
    assert finding(rep, "input_straggler")["ranks"] == [1]


def test_diagnose_speed_debug_off_uses_the_epoch_summary(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.start(lf.TRAINING % 0)
        rl.end(lf.TRAINING % 0, 8, 1.23)
    train_log(logs, [(T0 + 5, "INFO", lf.RANK_TAG % (0, 2), lf.EPOCH_TRAIN, 0, 0.1, 8, 1.23, 9756, 0, "",
                      lf.SPLIT_TWO % (1, split(2, 64, 20)[0], 0, split(2, 21, 63)[0]))])
    rep = diagnose_run(logs, now=NOW)
    f = finding(rep, "compute_straggler")
    assert f["ranks"] == [1] and "forward takes 3.0x the others" in f["message"]
    assert rep["speed"]["source"] == "train log, epoch 0 summary"


def test_diagnose_speed_not_judged_from_a_hung_run_as_balanced(logs):
    rls = [RankWriter(logs, r, 2) for r in range(2)]
    for rl in rls:
        rl.train(0, end=rl.rank != 1, split=split(3, 30, 60)[0])
    rep = diagnose_run(logs, now=NOW)
    assert kinds(rep)[0] == "ddp_sync" and "no_straggler" not in kinds(rep)


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
    from ae_train.diagnose.plot import draw
    fig = draw(rep)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 2 and len(set(labels)) == len(labels)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "silent (no progress)" not in legend  # a finished run ends where it ended
    assert fig.axes[1].get_title() == "time split" and len(fig.axes[1].patches) == 2 * 5  # a bar per rank


def test_diagnose_speed_slow_after_the_step_is_waited_for_in_backward_not_data(runs):
    rep = diagnose_run(runs["slow_batch_end"].logs)
    f = rep["findings"][0]
    assert f["kind"] == "compute_straggler" and f["ranks"] == [0], rep["findings"]
    assert f["message"].startswith("Rank 0's time outside forward, backward and optimizer")
    # Rank 1 waits for rank 0 at the next step's start (before fetching its batch): that is not data wait.
    split0, split1 = rep["ranks"][0]["time_split"], rep["ranks"][1]["time_split"]
    assert split1["backward"] > 2 * split0["backward"] and split1["data_wait"] < split1["backward"]
    assert "input_straggler" not in [x["kind"] for x in rep["findings"]]


def test_diagnose_speed_on_a_running_run(logs):
    rls = [RankWriter(logs, r, 2, t=NOW - 30) for r in range(2)]
    for rl in rls:
        rl.train(0, end=False, split=split(64, 20, 10)[0] if rl.rank == 0 else split(3, 20, 70)[0])
    rep = diagnose_run(logs, now=NOW)
    assert rep["state"] == "running"
    assert kinds(rep)[:1] == ["input_straggler"] and finding(rep, "input_straggler")["ranks"] == [0]
