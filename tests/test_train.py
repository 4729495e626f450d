"""End-to-end: real 2-rank CPU DDP runs over real tar shards, asserting on the log files they write."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BS, EPOCHS, ROOT, fit, make_shards
from helpers import markers

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] \[(Rank \d+/\d+(?: Worker \d+/\d+)?|Launcher)\] ")


def sh(cmd: str, cwd: Path) -> str:
    """Run one of the guide's shell commands verbatim in the logs directory."""
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=30).stdout


def expected_order(epochs: int) -> list[str]:
    order = ["SANITY CHECK START", "SANITY CHECK END"]
    for e in range(epochs):
        order += [f"EPOCH {e} TRAINING START", f"EPOCH {e} TRAINING END",
                  f"EPOCH {e} VALIDATION START", f"EPOCH {e} VALIDATION END"]
    return order


@pytest.fixture(scope="module")
def quiet_run(uneven_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("quiet_run") / "out"
    run = fit(out, f"--data.train_shards={uneven_shards}/train-{{000000..000004}}.tar",
              f"--data.val_shards={uneven_shards}/val-*.tar", f"--data.batch_size={BS}", "--data.num_workers=2",
              f"--trainer.max_epochs={EPOCHS}", "--debug=false", "--log.train_every=5", "--log.val_every=2")
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    return run


def test_fit_one_timestamp_for_all_files(debug_run):
    names = [p.name for p in debug_run.files("*.log")]
    stamps = {re.search(r"(\d{8}_\d{6})\.log$", n).group(1) for n in names}
    assert len(stamps) == 1, names
    ts = stamps.pop()
    assert sorted(names) == [f"debug_rank0_{ts}.log", f"debug_rank1_{ts}.log", f"train_{ts}.log"]


def test_fit_every_line_has_the_format(debug_run):
    """Every stamped line has the format; continuation lines (the config, Lightning's model summary) follow
    a record. A file whose first line is no record fails: a changed format cannot pass unseen."""
    for path in debug_run.files("*.log"):
        lines = path.read_text().splitlines()
        assert lines and LINE.match(lines[0]), f"{path.name} starts with {lines[:1]}"
        for line in lines:
            if line and line[0].isdigit() and line[:4].isdigit() and line[4] == "-":
                assert LINE.match(line), f"{path.name}: {line}"


def test_fit_markers_in_order_with_equal_batches(debug_run):
    per_rank = {}
    for rank in (0, 1):
        found = markers(debug_run.text(f"debug_rank{rank}_*.log"))
        assert [name for name, _ in found] == expected_order(EPOCHS), found
        per_rank[rank] = [(n, b) for n, b in found if n.endswith("END") and "SANITY" not in n]
    assert per_rank[0] == per_rank[1]
    # 591 samples over 2 ranks of batch 8: 36 batches each, the 15 left over are dropped and logged
    assert ("EPOCH 0 TRAINING END", "36") in per_rank[0]
    assert "dropped 15 samples" in debug_run.text("debug_rank0_*.log")


def test_fit_workers_log_into_their_rank_file(debug_run):
    for rank in (0, 1):
        text = debug_run.text(f"debug_rank{rank}_*.log")
        tags = set(re.findall(r"\] \[(Rank \d+/2(?: Worker \d/2)?)\] ", text))
        assert tags == {f"Rank {rank}/2", f"Rank {rank}/2 Worker 0/2", f"Rank {rank}/2 Worker 1/2"}, tags
    assert "Worker" not in debug_run.text("train_*.log")


def test_fit_ring_workers_serve_every_epoch(debug_run):
    """A real 2-rank run of 2 epochs with validation: each rank starts 2 training and 2 validation workers
    once (the batch ring's workers serve every epoch), and those same workers read both epochs."""
    for rank in (0, 1):
        text = debug_run.text(f"debug_rank{rank}_*.log")
        started = re.findall(rf"\[Rank {rank}/2 Worker (\d)/2\] Worker started pid=(\d+)", text)
        assert len(started) == 4 and len({pid for _, pid in started}) == 4, started  # train x 2, val x 2
        for split in ("train_shards", "val_shards"):
            epochs = re.findall(rf"\[Rank {rank}/2 Worker \d/2\] Processing \d+/\d+ files from {split} \(epoch (\d+)", text)
            assert {int(e) for e in epochs} >= {0, EPOCHS - 1}, (split, epochs)


def test_fit_completed_samples_add_up(debug_run):
    text = debug_run.text("debug_rank*_*.log")
    for epoch in range(EPOCHS):
        totals = [int(n) for n in re.findall(
            rf"COMPLETED iteration, total samples: (\d+) \(epoch {epoch}, batches \d+, shards \d+, errors 0, [\d.]+s, train_shards\)", text)]
        assert len(totals) == 4 and sum(totals) == 2 * 36 * BS, totals  # 2 ranks x 2 workers, 36 batches a rank


def test_fit_warning_on_rank1_reaches_train_log(debug_run):
    train = debug_run.text("train_*.log")
    assert re.search(r"\[WARNING\] \[Rank 1/2\] .*rank-one test warning", train), train
    rank1 = debug_run.text("debug_rank1_*.log")
    assert "rank-one test warning" in rank1
    assert re.search(r"\[INFO\] \[Rank 1/2\] stray print from rank 1", rank1)
    assert "stray print" not in debug_run.console
    assert "rank-one test warning" not in debug_run.console


def test_fit_train_log_has_config_summaries_and_checkpoints(debug_run):
    train = debug_run.text("train_*.log")
    assert "Config:\noutput_dir:" in train
    for epoch in range(EPOCHS):
        assert re.search(rf"Epoch {epoch} train: loss=\d+\.\d+ batches=36 time=", train)
        assert re.search(rf"Epoch {epoch} val: loss=\d+\.\d+ batches=5", train)
    assert "Saved checkpoint" in train and (debug_run.out / "checkpoints" / "last.ckpt").is_file()
    assert "Training step" not in train and "Opening shard" not in train
    cfg = (debug_run.out / "config.yaml").read_text()
    assert "batch_size: 8" in cfg and list(debug_run.out.glob("config_*.yaml"))


def test_fit_console_shows_only_key_lines(debug_run):
    console = debug_run.console
    assert "Monitor logs with: tail -f" in console and "debug_rank*_" in console
    assert "Epoch 1 train:" in console and "Saved checkpoint" in console
    for noise in ("Processing", "Training step", "EPOCH 0 TRAINING START", "GPU available", "Gloo", "Worker"):
        assert noise not in console, noise


def test_fit_guide_commands_find_their_lines(debug_run):
    d = debug_run.logs
    assert "Epoch 1 train:" in sh("timeout 1 tail -f train_*.log", d)
    assert "Rank 0/2" in sh("timeout 1 tail -f debug_rank0_*.log", d)
    both = sh("timeout 1 tail -f debug_rank*.log", d)
    assert "==> debug_rank0_" in both and "==> debug_rank1_" in both
    epochs = sh('grep "EPOCH" debug_rank0_*.log', d).splitlines()
    assert len(epochs) == 4 * EPOCHS
    # train and val: 2 ranks x 2 workers each per epoch (+ the sanity check's workers that finished)
    assert EPOCHS * 8 <= len(sh('grep "COMPLETED" debug_rank*.log', d).splitlines()) <= EPOCHS * 8 + 4
    processing = sh('grep "Processing.*files" debug_rank0_*.log', d)
    assert re.search(r"\[Rank 0/2 Worker 0/2\] Processing \d+/5 files from train_shards", processing)
    assert "Training finished" in sh("tail train_*.log", d)
    assert sh("tail -n 20 debug_rank*.log", d).count("==> debug_rank") == 2
    start_end = sh('grep "EPOCH.*START\\|EPOCH.*END" debug_rank0_*.log', d).splitlines()
    assert [markers(line)[0][0] for line in start_end] == expected_order(EPOCHS)[2:]
    assert len(sh('grep "Processing.*files" debug_rank*.log', d).splitlines()) == EPOCHS * 8 + 4
    assert EPOCHS * 8 <= len(sh('grep "COMPLETED iteration" debug_rank*.log', d).splitlines()) <= EPOCHS * 8 + 4
    steps = sh('grep "Processed.*training batches" debug_rank0_*.log', d)
    assert re.search(r"Training step 0, loss=\d+\.\d+ \| Processed 1 training batches .*samples/s, data wait", steps)
    assert len(steps.splitlines()) == EPOCHS * 8  # batches 0, 5, ..., 35
    assert len(sh('grep "Validation step" debug_rank0_*.log', d).splitlines()) == EPOCHS * 3 + 1  # + sanity check
    assert sh("grep ERROR train_*.log", d) == "" and sh('grep "ERROR.*shard" debug_rank*.log', d) == ""


def test_fit_debug_false_keeps_markers_drops_detail(debug_run, quiet_run):
    text = quiet_run.text("debug_rank*_*.log")
    for detail in ("[DEBUG]", "Opening shard", "Finished shard", "Training step", "Validation step"):
        assert detail not in text, detail
    for rank in (0, 1):
        assert [n for n, _ in markers(quiet_run.text(f"debug_rank{rank}_*.log"))] == expected_order(EPOCHS)
    assert "COMPLETED iteration" in text and re.search(r"Processing \d/5 files from train_shards", text)
    assert len(text) < len(debug_run.text("debug_rank*_*.log")) / 2


@pytest.mark.parametrize("sizes,batches", [([5], 1), ([200, 13, 1, 77, 300], 2)])
def test_fit_uneven_layouts_finish_with_equal_batches(tmp_path, sizes, batches):
    """One tiny shard (padding) and the uneven five with a large batch: 2 ranks x 2 workers, no hang."""
    make_shards(tmp_path / "d", sizes)
    bs = 8 if sizes == [5] else 128
    run = fit(tmp_path / "out", f"--data.train_shards={tmp_path}/d", "--data.val_shards=", f"--data.batch_size={bs}",
              "--data.num_workers=2", "--trainer.max_epochs=2", "--debug=true", timeout=150)
    assert run.proc.returncode == 0, run.console + run.text("*.log")
    ends = [[(n, b) for n, b in markers(run.text(f"debug_rank{r}_*.log")) if n.endswith("TRAINING END")] for r in (0, 1)]
    assert ends[0] == ends[1] == [(f"EPOCH {e} TRAINING END", str(batches)) for e in range(2)]
    if sizes == [5]:
        assert "padded 11" in run.text("debug_rank0_*.log")


def test_fit_read_error_is_logged_everywhere_and_ranks_stay_equal(error_run):
    """A shard corrupted after indexing: ERROR names the shard in the rank's debug log and the train log."""
    run, bad = error_run
    errors = sh('grep "ERROR.*shard" debug_rank*.log', run.logs)
    assert f"Error reading shard {bad}" in errors
    assert f"Error reading shard {bad}" in sh("grep ERROR train_*.log", run.logs)
    ends = [[b for n, b in markers(run.text(f"debug_rank{r}_*.log")) if n.endswith("TRAINING END")] for r in (0, 1)]
    assert ends[0] == ends[1] == ["10"]


def _repo_files() -> set[str]:
    """Every file under the repository (ignored ones too), but .git and bytecode caches."""
    found = set()
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in (".git", "__pycache__")]
        found.update(os.path.relpath(os.path.join(d, f), ROOT) for f in files)
    return found


def test_fit_train_ae_sh_demo_runs_from_the_readme(tmp_path):
    """The README's run command: ./train_ae.sh with no config makes the demo shards and trains (the demo
    data made under tmp_path through AE_DEMO_DATA: nothing is written into the repository)."""
    before = _repo_files()
    demo = tmp_path / "demo"
    r = subprocess.run(["./train_ae.sh", f"--output_dir={tmp_path}/out", "--trainer.max_epochs=1"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable, AE_DEMO_DATA=str(demo)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (demo / "ae_index.json").is_file()
    assert "Epoch 0 train:" in r.stdout and "Training finished: 1 epochs" in r.stdout
    logs = sorted(p.name for p in (tmp_path / "out" / "logs").glob("*.log"))
    assert len(logs) == 3 and logs[0].startswith("debug_rank0_") and logs[2].startswith("train_")
    rank0 = (tmp_path / "out" / "logs" / logs[0]).read_text()
    assert "[DEBUG]" in rank0  # train_ae.sh turns debug mode on
    assert f"Opening shard {demo}/train-" in rank0 and f"Opening shard {demo}/val-" in rank0
    assert (tmp_path / "out" / "metrics").is_dir() and (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()
    assert _repo_files() - before == set()
