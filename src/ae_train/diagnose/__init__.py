"""`ae-train diagnose <logs_dir>`: read a run's logs and say which rank is stuck where, or what failed first, and why.

Standard library only and log files only: it has to start at once on a login node beside a hung job,
where importing torch takes longer than the diagnosis. Imports run one way: records (the typed
records) <- failures (what a failure line says) <- parse (log files -> per-rank records) <- runfiles
(which files make the run, the pass over them); parse <- speed (straggler rules) <- rows (a rank's row
of the table); parse <- rootcause (the first failure and what followed); speed, rows, rootcause <- rules
(records -> findings) <- report (JSON and text) <- this module (diagnose_run, the CLI); plot
(matplotlib, optional) draws the JSON report.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

from ae_train.diagnose.runfiles import DiagnoseError, find_runs, resolve_run, scan_run
from ae_train.diagnose.report import as_json, format_text
from ae_train.diagnose.rules import judge
from ae_train.exitcodes import ExitCode

__all__ = ["DiagnoseError", "diagnose_run", "find_runs", "format_report", "main", "resolve_run"]
STALL_AFTER = 300.0  # seconds without progress called stuck by default: longer than any normal step or save


def diagnose_run(logs_dir, run: str | None = None, *, now: float | None = None, stall_after: float = STALL_AFTER,
                 jobs: int | None = None) -> dict:
    """Scan every log of the run (latest by default) and return the report: a JSON-ready dict.
    `now` (epoch seconds) fixes the clock for tests; `stall_after` is the least silence called stuck;
    `jobs` caps the processes used on big runs (default: one per CPU)."""
    logs, run, files = resolve_run(logs_dir, run)
    t0, now = time.perf_counter(), time.time() if now is None else now
    ranks, train = scan_run(files, jobs)
    report = as_json(judge(logs, run, ranks, train, now, stall_after))
    report["scan_seconds"] = round(time.perf_counter() - t0, 3)
    return report


def format_report(report: dict) -> str:
    """The per-rank table, then the verdict, as plain text for a terminal."""
    return format_text(report)


def main(argv: list[str] | None = None) -> int:
    """`ae-train diagnose` (argv: the arguments after `diagnose`)."""
    ap = argparse.ArgumentParser(prog="ae-train diagnose",
                                 description="Find where a run is stuck, or what failed first, from its logs.")
    ap.add_argument("logs_dir", help="the run's logs directory (<output_dir>/logs)")
    ap.add_argument("--run", help="run timestamp YYYYmmdd_HHMMSS (default: the latest)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--plot", metavar="PNG", help="draw one lane per rank over time into this PNG")
    ap.add_argument("--stall-after", type=float, default=STALL_AFTER, metavar="S",
                    help="seconds without progress that count as stuck (default 300; raised for slow logging)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # fail before the long scan
        print('ae-train diagnose: error: --plot needs matplotlib: pip install "ae-train[plot]"', file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        report = diagnose_run(args.logs_dir, args.run, stall_after=args.stall_after)
    except DiagnoseError as e:
        print(f"ae-train diagnose: error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except OSError as e:
        print(f"ae-train diagnose: error: cannot read logs: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        print(json.dumps(report, indent=1) if args.json else format_report(report))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")
    if args.plot:
        from ae_train.diagnose.plot import PlotUnavailable, plot_timeline
        try:
            plot_timeline(report, args.plot)
        except (PlotUnavailable, OSError) as e:
            print(f"ae-train diagnose: error: {e}", file=sys.stderr)
            return ExitCode.BAD_INPUT
        print(f"timeline written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return ExitCode.OK
