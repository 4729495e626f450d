"""`ae-train collect <logs_dir>`: the guide's "need help" list as one tar.gz to attach to a report.

Everything under `ae_diag_<ts>/` in the archive: the run's logs, the run's config*.yaml, the last 100 lines
of each log, nvidia-smi output (or a note that it is absent), a CPU/memory snapshot of the run's processes
read from /proc, package versions, and the diagnose report (text and JSON). Standard library only, like
diagnose, and no import of torch: versions come from installed package metadata. It works on a live run,
so a log may grow or shrink while it is copied; the archive stays valid either way.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ae_train.data.tarwriter import TarWriter
from ae_train.diagnose import DiagnoseError, diagnose_run, format_report, resolve_run
from ae_train.exitcodes import ExitCode
from ae_train.rundir import RunDir

TAIL_LINES = 100
PACKAGES = ("torch", "pytorch-lightning", "lightning", "webdataset", "numpy", "ae-train", "matplotlib")


def tail_lines(path: Path, n: int = TAIL_LINES) -> bytes:
    """The last n lines, read backwards in blocks: a 1 GB log costs a few reads, not a pass."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


def _add_text(tar: TarWriter, arcname: str, text: str) -> None:
    tar.add(arcname, text.encode("utf-8", "replace"))


def _nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return f"nvidia-smi not found on PATH on {socket.gethostname()}: no GPU snapshot (CPU-only host?)\n"
    out = []
    # The plain view shows utilisation and memory; the query lists which PIDs hold each GPU.
    for cmd in ([exe], [exe, "--query-compute-apps=gpu_uuid,pid,process_name,used_memory", "--format=csv"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            out.append(f"$ {' '.join(cmd)}  (exit {r.returncode})\n{r.stdout}{r.stderr}")
        except (OSError, subprocess.TimeoutExpired) as e:  # a wedged driver can hang nvidia-smi too
            out.append(f"$ {' '.join(cmd)}\nfailed: {e}\n")
    return "\n".join(out)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def _proc(pid: int) -> str:
    """One process from /proc: state, memory, CPU time, and wchan (the kernel function a blocked
    process sleeps in: pipe_read or a futex wait says a lot about a hang)."""
    status, stat = _read(f"/proc/{pid}/status"), _read(f"/proc/{pid}/stat")
    if status is None or stat is None:
        return "  not running (or not visible) now\n"
    keep = ("Name", "State", "PPid", "Threads", "VmRSS", "VmHWM", "VmSwap", "voluntary_ctxt_switches",
            "nonvoluntary_ctxt_switches")
    lines = [f"  {ln}" for ln in status.splitlines() if ln.split(":")[0] in keep]
    fields = stat[stat.rfind(")") + 2:].split()  # after `pid (comm)`: field 3 onwards
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, start = int(fields[11]) / tick, int(fields[12]) / tick, int(fields[19]) / tick
    uptime = float((_read("/proc/uptime") or "0").split()[0])
    lines.append(f"  cpu user {utime:.1f}s system {stime:.1f}s; started {uptime - start:.0f}s ago")
    cmd = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
    lines.append(f"  wchan: {(_read(f'/proc/{pid}/wchan') or '?').strip() or '-'}")
    lines.append(f"  cmdline: {cmd[:500] or '?'}")
    return "\n".join(lines) + "\n"


def _processes(report: dict) -> str:
    host = socket.gethostname()
    out = [f"host {host} at {time.strftime('%Y-%m-%d %H:%M:%S')}",
           f"loadavg: {(_read('/proc/loadavg') or '?').strip()}"]
    mem = _read("/proc/meminfo") or ""
    out += [ln for ln in mem.splitlines() if ln.split(":")[0] in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")]
    out.append("PIDs from the debug log headers and `Worker started` lines (a PID may since be reused by "
               "another process: check the cmdline):")
    for r in report.get("ranks", []):
        where = r.get("host")
        for pid, who in r.get("pids", {}).items():
            out.append(f"pid {pid} ({who}, host {where or '?'}):")
            if where and where.split(".")[0] != host.split(".")[0]:
                out.append(f"  on another host: run ae-train collect on {where} for it\n")
            else:
                out.append(_proc(int(pid)))
    if not any(r.get("pids") for r in report.get("ranks", [])):
        out.append("no PIDs found in the logs")
    return "\n".join(out) + "\n"


def _versions() -> str:
    out = [f"python {sys.version.split()[0]} ({sys.executable})", f"platform {platform.platform()}"]
    for name in PACKAGES:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return "\n".join(out) + "\n"


def collect(logs_dir, run: str | None = None, output=None) -> Path:
    """Write the bundle; raises DiagnoseError for bad input or an existing output file."""
    logs, run, files = resolve_run(logs_dir, run)
    rundir = RunDir.of_logs(logs)
    out = Path(output) if output else rundir.bundle(run)
    top = f"ae_diag_{run}"
    try:
        raw = open(out, "xb")  # "x": never overwrite, even when another collect races us
    except FileExistsError:
        raise DiagnoseError(f"{out} exists; not overwriting it (choose another name with -o)") from None
    except OSError as e:
        raise DiagnoseError(f"cannot create {out}: {e}") from None
    notes = []
    try:
        with raw, TarWriter(raw, gz=True) as tar:
            paths = ([files["train"]] if files["train"] else []) + [files["debug"][r] for r in sorted(files["debug"])]
            for p in paths:
                tar.add_file(p, f"{top}/logs/{p.name}")
                _add_text(tar, f"{top}/tail/{p.name}.tail.txt",
                          tail_lines(p).decode("utf-8", "replace"))
            configs = rundir.configs()
            for p in configs:
                tar.add_file(p, f"{top}/config/{p.name}")
            if not configs:
                notes.append(f"no config*.yaml in {rundir.root}")
            _add_text(tar, f"{top}/nvidia-smi.txt", _nvidia_smi())
            try:
                report = diagnose_run(logs, run)
                _add_text(tar, f"{top}/diagnose.txt", format_report(report) + "\n")
                _add_text(tar, f"{top}/diagnose.json", json.dumps(report, indent=1) + "\n")
            except Exception:  # a diagnose bug must not cost the user the rest of the bundle
                report = {}
                notes.append("diagnose failed: see diagnose_error.txt")
                _add_text(tar, f"{top}/diagnose_error.txt", traceback.format_exc())
            _add_text(tar, f"{top}/processes.txt", _processes(report))
            _add_text(tar, f"{top}/versions.txt", _versions())
            _add_text(tar, f"{top}/MANIFEST.txt", "\n".join(
                [f"ae-train collect of run {run} from {logs} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}",
                 "logs/ the run's log files; tail/ the last 100 lines of each; config/ the run's config*.yaml;",
                 "nvidia-smi.txt; processes.txt (CPU/memory of the run's PIDs); versions.txt; diagnose.txt/.json",
                 *notes]) + "\n")
    except BaseException:
        out.unlink(missing_ok=True)  # no half-written bundle left behind
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    """`ae-train collect` (argv: the arguments after `collect`)."""
    ap = argparse.ArgumentParser(prog="ae-train collect", description="Bundle a run's logs and a snapshot for a bug report.")
    ap.add_argument("logs_dir", help="the run's logs directory (<output_dir>/logs)")
    ap.add_argument("--run", help="run timestamp YYYYmmdd_HHMMSS (default: the latest)")
    ap.add_argument("-o", "--output", help="bundle path (default: <logs_dir>/../ae_diag_<ts>.tar.gz)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = collect(args.logs_dir, args.run, args.output)
    except (DiagnoseError, OSError) as e:
        print(f"ae-train collect: error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(out)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
