"""The verdict of `ae-train diagnose`: per-rank rows from the parsed logs, then the guide's rules and more.

The guide's hang procedure (docs/LOGGING.md) automated, in its order: where each rank stopped (markers),
whether the ranks disagree (DDP synchronization) or all stopped at one point (which point names the
cause), which rank went silent, then the data checks (file spread, early finishers, batch counts, read
errors). Stuck means silent for `stall` seconds: the --stall-after default, raised when step lines are
sparse, lowered to the watchdog's own timeout once it has raised HANG SUSPECTED.
"""
from __future__ import annotations

from pathlib import Path

from ae_train.diagnose import EXITED, PHASES, SEVERITY, STEP, TAG, VAL_STEP, WAIT_TEXT, _age, _num, _Rank, _s, _t, _ts, _worker
from ae_train.diagnose_speed import rank_shards, rank_split, speed_findings, split_cell


def _names(ranks) -> str:
    ranks = sorted(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _rank_report(r: _Rank, now: float) -> tuple[dict, dict]:
    """The JSON row of one rank, plus the float times the rules need."""
    lp = _t(r.last) if r.last else None
    st = STEP.search(r.last_step) if r.last_step else None
    step = None if st is None else {
        "step": int(st.group(1)), "loss": _s(st.group(2)), "batches": st.group(3) and int(st.group(3)),
        "epoch": st.group(4) and int(st.group(4)), "global_step": st.group(5) and int(st.group(5)),
        "extra": _s(st.group(6) or b""), "time": _ts(_t(r.last_step))}
    vs = VAL_STEP.search(r.last_val) if r.last_val else None
    phase = r.phase
    if phase == "val_end" and r.step_n > r.marker_n and r.epoch not in r.train_end:
        phase = "training"  # validation ran inside the epoch (val_check_interval) and training went on
    ep = r.epoch
    batches = {"train": r.train_end[ep][1] if ep in r.train_end else
               step["batches"] if step and step["epoch"] == ep else None,
               "val": r.val_end[ep][1] if ep in r.val_end else
               int(vs.group(1)) + 1 if vs and vs.group(3) and int(vs.group(3)) == ep else None}
    latest: dict = {}  # per split its latest iteration: workers may start an epoch before its marker
    for split, e in r.loads:
        latest[split] = max(e, latest.get(split, e))
    workers = {split: {"epoch": e, "started": len(r.loads[split, e]),
                       "completed": sum(1 for x in r.loads[split, e].values() if x[3] is not None)}
               for split, e in sorted(latest.items())}
    unfinished = []
    for tag, line in r.pending.items():
        t, p = _t(line), line.find(b"Opening shard ") + 14
        unfinished.append({"worker": _worker(tag), "url": _s(line[p:line.rfind(b" (samples")] if b" (samples" in line
                                                           else line[p:]), "opened": _ts(t), "age_s": t and round(now - t, 1)})
    unfinished.sort(key=lambda u: u["opened"] or "", reverse=True)
    gap = None
    if r.last_step and r.prev_step:
        a, b = _t(r.prev_step), _t(r.last_step)
        gap = b - a if a and b else None
    h, e, se = r.last_hang, r.last_error, r.last_shard_error
    row = {
        "rank": r.rank, "file": r.path.name, "lines": r.lines, "host": r.header.get("host"),
        "pid": _num(r.header.get("pid")),
        "local_rank": _num(r.header.get("local_rank")), "node_rank": _num(r.header.get("node_rank")),
        "device": r.header.get("device"),
        "last_time": _ts(lp), "age_s": lp and round(now - lp, 1), "lag_s": None,
        "epoch": ep, "phase": phase, "phase_text": PHASES[phase][1],
        "last_marker": r.marker and {"text": r.marker[0], "time": _ts(r.marker[1])},
        "last_step": step, "last_val_step": vs and {"step": int(vs.group(1)), "loss": _s(vs.group(2)), "time": _ts(_t(r.last_val))},
        "batches": batches, "workers": workers,
        "errors": r.errors, "last_error": e and {"time": _ts(e[0]), "message": e[1]},
        "shard_errors": r.shard_errors, "last_shard_error": se and {"time": _ts(se[0]), "url": se[1], "message": se[2]},
        "hang_alerts": r.hangs, "hang_active": r.hang_active,
        "last_hang": h and {"time": _ts(h[0]), "seconds": h[1], "phase": h[2], "last_event": h[3]},
        "unfinished_shards": unfinished,
        "time_split": rank_split(r), "shards_read": rank_shards(r),
        "stack_dumps": [{"file": r.path.name, "line": d["line"], "time": _ts(d["time"]), "who": d["who"], "pid": d["pid"],
                         "reason": d["reason"], "threads": d["threads"], "waits": d["waits"], "frames": d["frames"]}
                        for d in r.dumps],
        "checkpoint_pending": r.ckpt and {"time": _ts(r.ckpt[0]), "path": r.ckpt[1]},
        "finished": r.finished and r.finished[1], "raw_alert": r.raw_alert,
        "pids": {str(k): v for k, v in r.pids.items()},
        "timeline": [[_ts(t), ph] for t, ph in r.timeline], "alerts": [[_ts(t), k] for t, k in r.events],
    }
    if gap is None and len(r.starts) == 2:  # no step lines (debug off): an epoch is the finest progress seen
        gap = (r.starts[1] - r.starts[0]) / 1.5
    f = {"lp": lp, "pos": (ep if ep is not None else -1, PHASES[phase][0]), "gap": gap,
         "marker_t": r.marker and r.marker[1], "open_t": [_t(l) for l in r.pending.values()]}
    return row, f


def _main_dump(row: dict) -> dict | None:
    """The rank's latest dump of its main process (workers dump into the same file, with their own pid)."""
    for d in reversed(row["stack_dumps"]):
        if (d["pid"] == row["pid"]) if d["pid"] and row["pid"] else "worker" not in d["who"]:
            return d
    return None


def _sides(rows: dict, live: list) -> tuple[list, list]:
    """Split ranks by their main process's latest dump: waiting in a collective, or somewhere else."""
    coll, other = [], []
    for r in live:
        d = _main_dump(rows[r])
        if d is not None:
            (coll if d["waits"] == "collective" else other).append(r)
    return coll, other


def _new_raw(row: dict) -> bool:
    """A raw alert line that the last ERROR does not already say (a traceback's last line often does)."""
    raw, err = row["raw_alert"], (row["last_error"] or {}).get("message", "")
    return bool(raw) and raw[:100] not in err


def _detail(row: dict) -> str:
    """What is known about where one rank stopped: the evidence the user needs next."""
    parts = [f"{row['phase_text']}" + ("" if row["epoch"] is None else f" of epoch {row['epoch']}")]
    if row["last_step"]:
        parts.append(f"last training step {row['last_step']['step']} at {row['last_step']['time']}")
    if row["last_time"]:
        parts.append(f"last progress {row['last_time']} ({_age(row['age_s'])} ago)")
    if row["unfinished_shards"]:
        # A worker whose own stack dump is in file I/O is the one stuck on its shard; the other open
        # shards usually belong to workers paused with a full prefetch queue.
        in_io = {d["who"].rpartition("worker ")[2].split("/")[0] for d in row["stack_dumps"]
                 if "worker" in d["who"] and d["waits"] == "io"}
        blocked = [u for u in row["unfinished_shards"] if u["worker"] is not None and str(u["worker"]) in in_io]
        for u in blocked or row["unfinished_shards"][:1]:
            who = "main process" if u["worker"] is None else f"worker {u['worker']}"
            what = "shard blocked in I/O (its worker's stack dump is in a read)" if blocked else \
                "last shard opened without a Finished line"
            parts.append(f"{what}: {u['url']} ({who}, opened {u['opened']})")
    if row["hang_alerts"]:
        h = row["last_hang"]
        parts.append(f"{row['hang_alerts']} HANG SUSPECTED alert(s), last at {h['time']}: no progress for {h['seconds']} s "
                     f"in {h['phase']} (last event: {h['last_event']})" + ("" if row["hang_active"] else ", since resumed"))
    for d in row["stack_dumps"][-2:]:
        what = WAIT_TEXT.get(d["waits"], "see the frames")
        inner = "; ".join(d["frames"][:3])
        parts.append(f"stack dump of {d['who']} at {d['file']}:{d['line']} ({what}{': ' + inner if inner else ''})")
    if row["checkpoint_pending"]:
        c = row["checkpoint_pending"]
        parts.append(f"began saving checkpoint {c['path']} at {c['time']} and never logged Saved")
    if _new_raw(row):
        parts.append(f"printed: {row['raw_alert']}")
    return f"rank {row['rank']}: " + "; ".join(parts)


def build(logs: Path, run: str, ranks: list[_Rank], train: dict | None, now: float, stall_after: float) -> dict:
    """The report: one JSON-ready row per rank, then the findings, errors first."""
    rows, fl = {}, {}
    for r in ranks:
        rows[r.rank], fl[r.rank] = _rank_report(r, now)
    world = max([r.world or 0 for r in ranks] + [train and train["world"] or 0, max(rows, default=-1) + 1])
    missing = [r for r in range(world) if r not in rows]
    live = [r for r in rows if fl[r]["lp"] is not None]
    newest_rank = max((fl[r]["lp"] for r in live), default=None)
    train_t = _t(train["last"]) if train and train["last"] else None
    newest = max([t for t in (newest_rank, train_t) if t is not None], default=None)
    for r in live:
        rows[r]["lag_s"] = round(newest_rank - fl[r]["lp"], 1)
    # Sparse logging (a step line every few minutes, or only epoch markers with debug off) must not read
    # as a hang: stuck means clearly longer than the usual gap between two progress lines.
    stall = max([stall_after] + [3 * fl[r]["gap"] for r in live if fl[r]["gap"]])
    # An open HANG SUSPECTED alert is the user's own timeout saying "stuck": trust it over the default.
    alerts = [int(rows[r]["last_hang"]["seconds"]) for r in live if rows[r]["hang_active"]
              and str(rows[r]["last_hang"]["seconds"]).isdigit()]
    stall = min([stall] + alerts)
    findings: list[dict] = []

    def add(sev: str, kind: str, who, msg: str) -> None:
        findings.append({"severity": sev, "kind": kind, "ranks": sorted(who), "message": msg})

    launcher = train["launcher"] if train else []
    stopped_by, crashed = [], False
    for t, msg in launcher:
        mm = EXITED.match(msg.encode())
        if mm and int(mm.group(3)) != 0:
            r = int(mm.group(1))
            stopped_by.append(r)
            # A rank that died while the run still moved is a crash, not a hang: the launcher then stops the
            # others, and where they were says nothing. Died after a long silence: the hang rules still apply.
            before = [fl[x]["lp"] for x in live if t and fl[x]["lp"] <= t]
            if not before or t - max(before) < stall:
                crashed = True
            why = f"\n    {_detail(rows[r])}" if r in rows else ""
            if r in rows and rows[r]["last_error"]:
                why += f"; its last error: {rows[r]['last_error']['message']}"
            if int(mm.group(3)) == -9:  # the launcher itself only sends SIGKILL after SIGTERM went unheard
                why += ("\n    A SIGKILL from outside is usually the kernel's OOM killer (see dmesg) or the job "
                        "scheduler")
            add("error", "launcher", [r], f"Launcher: {msg} (at {_ts(t)}){why}")
        elif msg.startswith("Received "):
            stopped_by.append(-1)
            add("warning", "launcher", [], f"Launcher: {msg} (at {_ts(t)}): the run was stopped from outside")
    _launcher_checks(train and train["checks"], add)
    finished = (train and train["finished"]) or next((r.finished for r in ranks if r.finished), None)
    idle = None if newest is None else now - newest
    state = ("finished" if finished else "stopped" if stopped_by else
             "stalled" if idle is not None and idle >= stall else "running" if live else "empty")
    explained: set = set(live) if crashed else set()
    if not finished and live and not crashed:
        pos = {r: fl[r]["pos"] for r in live}
        lead = max(pos.values())
        leaders = [r for r in live if pos[r] == lead]
        behind = [r for r in live if pos[r] != lead]
        stuck = state in ("stopped", "stalled")
        if behind and (stuck or all(now - fl[r]["lp"] >= stall for r in leaders)):
            lead_row = rows[leaders[0]]
            marker = (lead_row["last_marker"] or {}).get("text", "?").strip("= ")
            t_arr = min((fl[r]["marker_t"] for r in leaders if fl[r]["marker_t"]), default=None)
            behind_phases = {rows[r]["phase"] for r in behind}
            kind, why = "ddp_sync", "Ranks stopped at different points: DDP synchronization problem"
            if "val_end" in behind_phases:
                kind, why = "checkpoint_or_scheduler", "Stuck after VALIDATION END: checkpoint saving or the LR scheduler"
            elif "train_end" in behind_phases or lead_row["phase"] == "train_end":
                why = "Stuck between TRAINING END and VALIDATION START: DDP synchronization problem"
            elif lead_row["phase"] == "val_end":
                why = ("Stuck at the end of validation: DDP synchronization problem (uneven validation batches "
                       "or a sync_dist metric)")
            lines = [f"{why}. Arrived (wrote {marker}{'' if t_arr is None else ' at ' + _ts(t_arr)}): "
                     f"{_names(leaders)}. Not arrived: {_names(behind)}."]
            for r in sorted(behind):
                going = now - fl[r]["lp"] < stall and not stuck
                lines.append(_detail(rows[r]) + (" -- still writing progress while the others wait: it has more batches "
                                                 "than they do (uneven data across ranks) or is much slower" if going else ""))
            add("error", kind, behind, "\n    ".join(lines))
            explained.update(live)
        elif not behind and stuck:
            ph, ep = rows[leaders[0]]["phase"], rows[leaders[0]]["epoch"]
            since = _ts(max(fl[r]["lp"] for r in live))
            coll, other = _sides(rows, live)
            if ph == "train_end":
                add("error", "ddp_sync", live, f"All ranks stopped between TRAINING END and VALIDATION START of epoch {ep} "
                    f"(nothing since {since}): DDP synchronization problem. Every rank arrived; a collective that not "
                    "every rank calls, or calls in another order (epoch-end hooks, metric sync), blocks them.")
                if coll and other:
                    findings[-1]["ranks"] = other
                    findings[-1]["message"] += (f" Stack dumps: {_names(coll)} wait in a collective; {_names(other)} "
                                                "did not reach it:" + "".join("\n    " + _detail(rows[r]) for r in other))
            elif ph == "val_end":
                ck = [_detail(rows[r]) for r in live if rows[r]["checkpoint_pending"]]
                if train and train["ckpt"] and not ck:
                    ck = [f"train log: began saving checkpoint {train['ckpt'][1]} at {_ts(train['ckpt'][0])} and never logged Saved"]
                add("error", "checkpoint_or_scheduler", live, f"All ranks stopped after EPOCH {ep} VALIDATION END (nothing "
                    f"since {since}): checkpoint saving or the LR scheduler." + "".join("\n    " + c for c in ck))
            else:
                add("error", "stuck_in_phase", live, f"All ranks stopped in {PHASES[ph][1]}"
                    + ("" if ep is None else f" of epoch {ep}") + f" (nothing since {since}).")
                # Which rank stopped the others: the one waiting for data or blocked in I/O, or with a shard open for long.
                score = {r: 2 * any(d["waits"] in ("data", "io") for d in rows[r]["stack_dumps"])
                         + 2 * ("data" in ((rows[r]["last_hang"] or {}).get("phase") or ""))
                         + any(t is not None and now - t >= stall for t in fl[r]["open_t"])
                         + (bool(coll) and r in other) for r in live}
                top = max(score.values())
                culprits = [r for r in live if score[r] == top] if top else []
                if culprits and len(culprits) < len(live):
                    findings[-1]["message"] += " Most likely stuck first, the others then wait for it in a collective:"
                    findings[-1]["ranks"] = culprits
                else:
                    culprits = live if len(live) <= 4 else []
                for r in culprits:
                    findings[-1]["message"] += "\n    " + _detail(rows[r])
            explained.update(live)
    # Ranks a finding above already places (waiting at a sync point, or stuck with the run) are explained;
    # any other rank far behind the newest, or with an open HANG SUSPECTED alert, is stuck on its own.
    if not finished:
        for r in (r for r in live if r not in explained):
            lag = newest_rank - fl[r]["lp"]
            if lag >= stall and len(live) > 1:
                add("error", "silent_rank", [r], f"Rank {r} has made no progress for {_age(lag)} while other ranks "
                    "went on: its data loading or compute is stuck.\n    " + _detail(rows[r]))
            elif rows[r]["hang_active"]:
                h = rows[r]["last_hang"]
                add("error", "hang_alert", [r], f"Rank {r} reports HANG SUSPECTED (no progress for {h['seconds']} s in "
                    f"{h['phase']}, at {h['time']}): its data loading or compute is stuck.\n    " + _detail(rows[r]))
    speed = speed_findings(rows, train, add, quiet=any(f["severity"] == "error" for f in findings))
    _data_findings(ranks, rows, fl, now, add)
    if missing:
        add("warning", "missing_ranks", missing, f"No debug log for {_names(missing)} (world size {world})"
            + (f"; the train log has {sum(train['hangs'].get(r, 0) for r in missing)} hang alert(s) and "
               f"{sum(train['errors'].get(r, 0) for r in missing)} error(s) from them" if train else ""))
    bad = any(f["severity"] == "error" for f in findings)
    if finished:
        add("info", "finished", list(rows), f"Run finished{'' if bad else ' cleanly'}: {finished[1]} (at {_ts(finished[0])})"
            + ("; see the errors above" if bad else ""))
    elif not bad and state == "running":
        add("info", "running", list(rows), f"No problem found: {len(live)} rank(s) progressing, newest line {_age(idle)} ago.")
    elif not bad and live:
        add("warning", "stalled", list(rows), f"No log line for {_age(idle)} and no rule explains it; look at each rank's "
            "last lines (ae-train collect gathers them).")
    elif not live and not bad:
        add("warning", "empty", [], "The run's logs hold no log lines yet.")
    findings.sort(key=lambda f: (SEVERITY[f["severity"]], f["kind"] == "no_straggler"))  # the run's state first
    return {"logs_dir": str(logs), "run": run, "now": _ts(now), "state": state, "world_size": world or None,
            "missing_ranks": missing, "stall_after_s": round(stall, 1), "newest_time": _ts(newest),
            "idle_s": idle and round(idle, 1),
            "train_log": train and {"file": train["file"], "lines": train["lines"],
                                    "last_time": _ts(train_t), "finished": train["finished"] and train["finished"][1],
                                    "launcher": [[_ts(t), m] for t, m in launcher]},
            "ranks": [rows[r] for r in sorted(rows)], "findings": findings, "speed": speed,
            "verdict": findings[0]["message"].split("\n")[0] if findings else ""}


def _launcher_checks(checks: dict | None, add) -> None:
    """The launcher's own phase (counting and probing shards before any rank): where it hangs, what it left out."""
    if not checks:
        return
    for t, msg in checks["gave_up"]:
        add("warning", "launcher_checks", [], f"Launcher, before any rank started: {msg} (at {_ts(t)}); its samples "
            "are not in this run (a hung mount or server?)")
    if checks["hang"] and (checks["done"] is None or checks["done"] < checks["hang"][0]):
        t, msg = checks["hang"]
        stage = msg.split("(last event: ", 1)[-1].rstrip(")")
        add("error", "launcher_checks", [], f"The launcher is stuck in its checks, no rank started yet: {stage} "
            f"(HANG SUSPECTED at {_ts(t)}); the launcher's stack dump is in the train log")


def _data_findings(ranks: list[_Rank], rows: dict, fl: dict, now: float, add) -> None:
    """The guide's step 3 across all ranks: file spread, early finishers, batch counts, read errors."""
    by: dict = {}  # (split, epoch) -> [(rank, tag, rec)]
    for r in ranks:
        for key, recs in r.loads.items():
            by.setdefault(key, []).extend((r.rank, tag, rec) for tag, rec in recs.items())
    uneven, early, batches = {}, {}, {}
    for (split, ep), recs in by.items():
        # Readers split shards into sample ranges, so a file count alone can differ by two for one batch:
        # uneven means the files and the batches per worker both differ by more than one.
        files, planned = [x[2][0] for x in recs], [x[2][5] for x in recs]
        if min(max(files) - min(files), max(planned) - min(planned)) > 1 and ep >= uneven.get(split, (-1,))[0]:
            hi, lo = max(recs, key=lambda x: x[2][5]), min(recs, key=lambda x: x[2][5])
            uneven[split] = (ep, f"{split} epoch {ep}: workers got {min(files)} to {max(files)} of {hi[2][1]} files, "
                                 f"{min(planned)} to {max(planned)} batches (rank {hi[0]} worker {_worker(hi[1])}: "
                                 f"{hi[2][0]} files, {hi[2][5]} batches; rank {lo[0]} worker {_worker(lo[1])}: "
                                 f"{lo[2][0]} files, {lo[2][5]} batches)")
        dur = [((x[2][3] if x[2][3] is not None else (fl[x[0]]["lp"] or now)) - x[2][2], x) for x in recs if x[2][2]]
        if len(dur) > 1:
            dmax, xmax = max(dur, key=lambda d: d[0])
            for d, x in dur:
                if x[2][3] is not None and dmax - d >= max(30.0, 0.5 * dmax) and ep >= early.get(split, (-1,))[0]:
                    early[split] = (ep, f"{split} epoch {ep}: rank {x[0]} worker {_worker(x[1])} COMPLETED after "
                                        f"{_age(d)} with {x[2][0]} files, rank {xmax[0]} worker {_worker(xmax[1])} "
                                        f"{'ran' if xmax[2][3] else 'is still running after'} {_age(dmax)} with {xmax[2][0]} files")
        per_rank: dict = {}
        for rank, tag, rec in recs:
            m = TAG.match(tag)
            per_rank.setdefault(rank, [int(m.group(4)) if m and m.group(4) else 1, 0, 0])
            per_rank[rank][1] += 1 if rec[4] is not None else 0
            per_rank[rank][2] += rec[4] or 0
        done = {r: v[2] for r, v in per_rank.items() if v[1] >= v[0]}  # every worker of the rank COMPLETED
        if len(done) == len(rows) > 1 and len(set(done.values())) > 1 and ep >= batches.get(split, (-1,))[0]:
            batches[split] = (ep, f"{split} epoch {ep}: " + ", ".join(f"rank {r} {b}" for r, b in sorted(done.items())))
    if uneven:
        add("warning", "uneven_assignment", [], "Uneven file assignment across workers (latest epoch shown): "
            + "; ".join(v[1] for v in uneven.values()))
    if batches:
        add("warning", "uneven_batches", [], "Ranks got different numbers of batches (a DDP rank with fewer batches ends "
            "the epoch first and waits in a collective the others never reach): " + "; ".join(v[1] for v in batches.values()))
    if early:
        add("warning", "early_completion", [], "Workers COMPLETED much earlier than others: " + "; ".join(v[1] for v in early.values()))
    errs = {r: rows[r]["shard_errors"] for r in rows if rows[r]["shard_errors"]}
    if errs:
        last = max((rows[r]["last_shard_error"] for r in errs), key=lambda e: e["time"] or "")
        add("warning", "shard_errors", list(errs), f"{sum(errs.values())} shard read error(s) ("
            + ", ".join(f"rank {r}: {n}" for r, n in sorted(errs.items())) + f"); last: {last['url']}: {last['message']} at {last['time']}")
    other = {r: rows[r] for r in rows if rows[r]["errors"] or rows[r]["raw_alert"]}
    if other:
        add("warning", "errors", list(other), "Other errors: " + "; ".join(
            f"rank {r}: {row['errors']} ERROR line(s)" + (f", last at {row['last_error']['time']}: {row['last_error']['message']}"
                                                          if row["last_error"] else "")
            + (f", printed: {row['raw_alert']}" if _new_raw(row) else "") for r, row in sorted(other.items())))


def format_text(report: dict) -> str:
    """The per-rank table, then the verdict, as plain text for a terminal."""
    out = [f"Run {report['run']} in {report['logs_dir']}: {len(report['ranks'])} debug log(s), world size "
           f"{report['world_size'] or '?'}, state {report['state']}, newest line {_age(report['idle_s'])} ago"]
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
        rows.append((str(r["rank"]), r["host"] or "?", (r["last_time"] or "-")[11:19], _age(r["age_s"]), _age(r["lag_s"]),
                     "-" if r["epoch"] is None else str(r["epoch"]), r["phase_text"],
                     (r["last_marker"] or {}).get("text", "-").strip("= "), "-" if st is None else str(st["step"]),
                     " ".join(f"{k[0]}{v}" for k, v in r["batches"].items() if v is not None) or "-",
                     " ".join(f"{k[0]}{v['completed']}/{v['started']}" for k, v in w.items()) or "-", err,
                     f"{r['hang_alerts']}" + ("!" if r["hang_active"] else ""), split_cell(r),
                     "-" if open_ is None else f"{open_['url']} (w{open_['worker']}, {_age(open_['age_s'])} ago)"))
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h) for i, h in enumerate(head)]
    for row in (head, *rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for r in report["ranks"]:
        if r["last_shard_error"]:
            e = r["last_shard_error"]
            out.append(f"rank {r['rank']} last shard error: {e['url']}: {e['message']} ({e['time']})")
    out.append("")
    out.append("Verdict:")
    mark = {"error": "!!", "warning": " !", "info": " -"}
    for f in report["findings"]:
        out.append(f"{mark[f['severity']]} {f['message']}")
    return "\n".join(out)
