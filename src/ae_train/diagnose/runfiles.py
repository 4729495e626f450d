"""Which files make a run, and the one pass over them: `ae-train diagnose` and `ae-train collect` start here.

A run is its timestamp: `train_<ts>.log` and `debug_rank<N>_<ts>.log` in the logs directory (the latest run
by default); start-up logs left behind by ranks that never got through process-group set-up
(`startup_rank<N>_<ts>.log`) make a run of their own. Each file is read once by parse.py; the files are independent, so big runs spread them over
the CPUs.
"""
from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path

from ae_train import logformat as lf
from ae_train.diagnose.parse import RankLog, scan_train
from ae_train.diagnose.records import TrainLog
from ae_train.rundir import RunDir

log = logging.getLogger(__name__)


class DiagnoseError(Exception):
    """Bad input: the CLI prints it as one line and exits 2."""


def find_runs(logs_dir: Path) -> dict[str, dict]:
    """{ts: {"train": path|None, "debug": {rank: path}}} for every run with logs in logs_dir.

    Start-up logs left behind (`startup_rank<N>_<ts>.log`: ranks that never got through process-group
    set-up, so the attempt never named a run) count as one run per gap between real runs, keyed by the
    earliest of them, with each rank's newest start-up log as its debug log."""
    runs: dict[str, dict] = {}
    startups = []
    for p in logs_dir.iterdir():
        m = lf.RUN_FILE.fullmatch(p.name)
        if m and p.is_file():
            run = runs.setdefault(m.group(2), {"train": None, "debug": {}})
            if m.group(1) is None:
                run["train"] = p
            else:
                run["debug"][int(m.group(1))] = p
        elif (m := lf.STARTUP_FILE.fullmatch(p.name)) and p.is_file():
            startups.append((m.group(2), int(m.group(1)), p))
    keys, attempts = sorted(runs), {}
    for ts, rank, p in sorted(startups):  # ts order: a rank's newest start-up log is set last
        after = bisect.bisect_right(keys, ts)  # the real runs begun before it
        attempt = attempts.setdefault(after, {"train": None, "debug": {}, "key": ts})
        attempt["debug"][rank] = p
    for attempt in attempts.values():
        key = attempt.pop("key")
        if key in runs:  # started the very second a run was named: part of it
            for rank, p in attempt["debug"].items():
                runs[key]["debug"].setdefault(rank, p)
        else:
            runs[key] = attempt
    return runs


def resolve_run(logs_dir, run: str | None = None) -> tuple[Path, str, dict]:
    logs = Path(logs_dir)
    if not logs.is_dir():
        raise DiagnoseError(f"logs directory not found: {logs}")
    runs = find_runs(logs)
    if not runs and RunDir(logs).logs.is_dir():  # given the output dir instead of its logs/
        logs, runs = RunDir(logs).logs, find_runs(RunDir(logs).logs)
    if not runs:
        raise DiagnoseError(f"no train_<ts>.log or debug_rank<N>_<ts>.log files in {logs}")
    if run is None:
        run = max(runs)  # YYYYmmdd_HHMMSS sorts as time
    elif run not in runs:
        raise DiagnoseError(f"no logs of run {run} in {logs} (runs there: {', '.join(sorted(runs)[-5:])})")
    return logs, run, runs[run]


def _scan(item: tuple) -> RankLog | TrainLog:
    kind, path, rank = item
    return RankLog(path, rank).scan() if kind == "debug" else scan_train(path)


def scan_run(files: dict, jobs: int | None = None) -> tuple[list[RankLog], TrainLog | None]:
    """Every debug log of the run (by rank) and its train log. Files are independent: big runs spread them
    over the CPUs (a 2-core box halves the time)."""
    items = [("debug", p, r) for r, p in sorted(files["debug"].items())]
    items += [("train", files["train"], None)] if files["train"] else []
    jobs = min(len(items), jobs or os.cpu_count() or 1)
    scanned = None
    if jobs > 1 and sum(p.stat().st_size for _, p, _ in items) > 64 << 20:
        try:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(jobs) as ex:
                scanned = list(ex.map(_scan, items))
        except (OSError, RuntimeError) as e:  # no /dev/shm, no fork, a broken pool: do it here
            log.debug("parallel scan unavailable (%s), scanning sequentially", e)
    if scanned is None:
        scanned = [_scan(it) for it in items]
    train = scanned.pop() if files["train"] else None
    return scanned, train
