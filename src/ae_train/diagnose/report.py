"""The report of `ae-train diagnose`: the rules' verdict as a JSON-ready dict (`--json`, collect's
diagnose.json, the plot), and that dict as text for a terminal: the per-rank table, then the findings.
"""
from __future__ import annotations

from ae_train.diagnose import rootcause
from ae_train.diagnose.records import fmt_age, fmt_time
from ae_train.diagnose.rules import Verdict
from ae_train.diagnose.speed import split_cell

MARK = {"error": "!!", "warning": " !", "info": " -"}


def as_json(v: Verdict) -> dict:
    """The report's JSON form (its keys are a contract: scripts and collect's bundle read them)."""
    train = v.train
    return {"logs_dir": str(v.logs), "run": v.run, "now": fmt_time(v.now), "state": v.state,
            "world_size": v.world or None, "missing_ranks": v.missing, "stall_after_s": round(v.stall, 1),
            "newest_time": fmt_time(v.newest), "idle_s": v.idle and round(v.idle, 1),
            "train_log": train and {"file": train.file, "lines": train.lines, "last_time": fmt_time(v.train_t),
                                    "finished": train.finished and train.finished.text,
                                    "launcher": [[fmt_time(t), m] for t, m in train.launcher]},
            "ranks": [v.rows[r] for r in sorted(v.rows)], "findings": v.findings, "speed": v.speed,
            "failure": rootcause.report(v.failure),
            "verdict": v.findings[0]["message"].split("\n")[0] if v.findings else ""}


def format_text(report: dict) -> str:
    """The per-rank table, then the verdict, as plain text for a terminal."""
    out = [f"Run {report['run']} in {report['logs_dir']}: {len(report['ranks'])} debug log(s), world size "
           f"{report['world_size'] or '?'}, state {report['state']}, newest line {fmt_age(report['idle_s'])} ago"]
    tl = report["train_log"]
    if tl:
        out.append(f"train log: {tl['file']}, {tl['lines']} lines, last line {tl['last_time'] or '-'}")
    head = ("rank", "host", "last progress", "age", "behind", "epoch", "phase", "last marker", "step", "batches",
            "workers done", "errors", "hangs", "data/fwd/bwd/opt/other %", "open shard (no Finished)")
    rows = []
    for r in report["ranks"]:
        st, w = r["last_step"], r["workers"]
        open_ = r["unfinished_shards"][0] if r["unfinished_shards"] else None
        err = f"{r['errors'] + r['shard_errors']}" + (f" ({r['shard_errors']} shard)" if r["shard_errors"] else "")
        rows.append((str(r["rank"]), r["host"] or "?", (r["last_time"] or "-")[11:19], fmt_age(r["age_s"]), fmt_age(r["lag_s"]),
                     "-" if r["epoch"] is None else str(r["epoch"]), r["phase_text"],
                     (r["last_marker"] or {}).get("text", "-").strip("= "), "-" if st is None else str(st["step"]),
                     " ".join(f"{k[0]}{v}" for k, v in r["batches"].items() if v is not None) or "-",
                     " ".join(f"{k[0]}{v['completed']}/{v['started']}" for k, v in w.items()) or "-", err,
                     f"{r['hang_alerts']}" + ("!" if r["hang_active"] else ""), split_cell(r),
                     "-" if open_ is None else f"{open_['url']} (w{open_['worker']}, {fmt_age(open_['age_s'])} ago)"))
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h) for i, h in enumerate(head)]
    for row in (head, *rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for r in report["ranks"]:
        if r["last_shard_error"]:
            e = r["last_shard_error"]
            out.append(f"rank {r['rank']} last shard error: {e['url']}: {e['message']} ({e['time']})")
    out.append("")
    out.append("Verdict:")
    for f in report["findings"]:
        out.append(f"{MARK[f['severity']]} {f['message']}")
    return "\n".join(out)
