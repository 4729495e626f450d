"""The verdict of `ae-train diagnose`: per-rank rows from the parsed records, then the guide's rules and more.

The guide's hang procedure (docs/LOGGING.md) automated, in its order: where each rank stopped (markers),
whether the ranks disagree (DDP synchronization) or all stopped at one point (which point names the
cause), which rank went silent, then the data checks (file spread, early finishers, batch counts, read
errors). Stuck means silent for `stall` seconds: the --stall-after default, raised when step lines are
sparse, lowered to the watchdog's own timeout once it has raised HANG SUSPECTED. Each rule is one
function that adds findings through `add(severity, kind, ranks, message)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ae_train import logformat as lf
from ae_train.diagnose.parse import PHASES, RankLog, TrainLog, fmt_age, fmt_time, line_time, text, worker_of, workers_in
from ae_train.diagnose.speed import rank_shards, rank_split, speed_findings

SEVERITY = {"error": 0, "warning": 1, "info": 2}
WAIT_TEXT = {"data": "main thread waits for DataLoader workers", "io": "blocked in file I/O",
             "collective": "in backward/a collective: waits for other ranks or compute"}
# Sparse logging (a step line every few minutes, or only epoch markers with debug off) must not read as a
# hang: stuck means this many times the usual gap between two progress lines, at least.
SPARSE_GAPS = 3
# With debug off the finest progress is an epoch: its expected gap is the last epoch's length / this.
EPOCH_GAP_DIV = 1.5
SIGKILL = -9  # the launcher itself only sends SIGKILL after SIGTERM went unheard: from outside, often the OOM killer
# Readers split shards into sample ranges, so one batch can make file counts differ by two: uneven means
# files and batches per worker both differ by more than this.
UNEVEN_SLACK = 1
# A worker COMPLETED "much earlier" than the slowest when it finished this many seconds and this share of
# the slowest's time sooner: short epochs differ by seconds from scheduling alone.
EARLY_MIN_S, EARLY_SHARE = 30.0, 0.5
# Every stuck rank's detail is listed up to this many ranks; beyond, only the likely culprits (readable).
DETAIL_ALL_MAX = 4
RAW_SAME = 100  # a raw alert whose first characters are in the last ERROR says nothing new (a traceback's end)
DUMPS_SHOWN, FRAMES_SHOWN = 2, 3  # per rank detail: the latest dumps, their innermost frames


class Times(NamedTuple):
    """The float times of one rank the rules compare (the row holds them as text)."""
    last: float | None              # last progress line
    pos: tuple                      # (epoch, phase order): how far the rank got
    gap: float | None               # the usual seconds between two progress lines
    marker: float | None            # time of the last marker
    open: list                      # times of the shards opened without a Finished


def _names(ranks) -> str:
    ranks = sorted(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _num(v: str | None):
    return int(v) if v and v.isdigit() else v


# ---- one rank's row ----
def _step(r: RankLog) -> dict | None:
    st = lf.TRAINING_STEP.pattern.search(r.last_step) if r.last_step else None
    return None if st is None else {
        "step": int(st.group(1)), "loss": text(st.group(2)), "batches": st.group(3) and int(st.group(3)),
        "epoch": st.group(4) and int(st.group(4)), "global_step": st.group(5) and int(st.group(5)),
        "extra": text(st.group(6) or b""), "time": fmt_time(line_time(r.last_step))}


def _workers(r: RankLog) -> dict:
    latest: dict = {}  # per split its latest iteration: workers may start an epoch before its marker
    for split, e in r.loads:
        latest[split] = max(e, latest.get(split, e))
    return {split: {"epoch": e, "started": len(r.loads[split, e]),
                    "completed": sum(1 for x in r.loads[split, e].values() if x.completed is not None)}
            for split, e in sorted(latest.items())}


def _unfinished(r: RankLog, now: float) -> list[dict]:
    out = []
    for tag, line in r.pending.items():
        t = line_time(line)
        m = lf.OPENING.pattern.search(line.rstrip(b"\r\n"))
        out.append({"worker": worker_of(tag), "url": text(m.group(1)) if m else "?", "opened": fmt_time(t),
                    "age_s": t and round(now - t, 1)})
    out.sort(key=lambda u: u["opened"] or "", reverse=True)
    return out


def rank_row(r: RankLog, now: float) -> tuple[dict, Times]:
    """The JSON row of one rank, plus the float times the rules need."""
    lp = line_time(r.last) if r.last else None
    step = _step(r)
    vs = lf.VAL_STEP.pattern.search(r.last_val) if r.last_val else None
    phase = r.phase
    if phase == "val_end" and r.step_n > r.marker_n and r.epoch not in r.train_end:
        phase = "training"  # validation ran inside the epoch (val_check_interval) and training went on
    ep = r.epoch
    batches = {"train": r.train_end[ep][1] if ep in r.train_end else
               step["batches"] if step and step["epoch"] == ep else None,
               "val": r.val_end[ep][1] if ep in r.val_end else
               int(vs.group(1)) + 1 if vs and vs.group(3) and int(vs.group(3)) == ep else None}
    gap = None
    if r.last_step and r.prev_step:
        a, b = line_time(r.prev_step), line_time(r.last_step)
        gap = b - a if a and b else None
    h, e, se = r.last_hang, r.last_error, r.last_shard_error
    row = {
        "rank": r.rank, "file": r.path.name, "lines": r.lines, "host": r.header.get("host"),
        "pid": _num(r.header.get("pid")),
        "local_rank": _num(r.header.get("local_rank")), "node_rank": _num(r.header.get("node_rank")),
        "device": r.header.get("device"),
        "last_time": fmt_time(lp), "age_s": lp and round(now - lp, 1), "lag_s": None,
        "epoch": ep, "phase": phase, "phase_text": PHASES[phase][1],
        "last_marker": r.marker and {"text": r.marker.text, "time": fmt_time(r.marker.time)},
        "last_step": step, "last_val_step": vs and {"step": int(vs.group(1)), "loss": text(vs.group(2)),
                                                    "time": fmt_time(line_time(r.last_val))},
        "batches": batches, "workers": _workers(r),
        "errors": r.errors, "last_error": e and {"time": fmt_time(e.time), "message": e.text},
        "shard_errors": r.shard_errors,
        "last_shard_error": se and {"time": fmt_time(se.time), "url": se.url, "message": se.message},
        "hang_alerts": r.hangs, "hang_active": r.hang_active,
        "last_hang": h and {"time": fmt_time(h.time), "seconds": h.seconds, "phase": h.phase, "last_event": h.last_event},
        "unfinished_shards": _unfinished(r, now),
        "time_split": rank_split(r), "shards_read": rank_shards(r),
        "stack_dumps": [{"file": r.path.name, "line": d.line, "time": fmt_time(d.time), "who": d.who, "pid": d.pid,
                         "reason": d.reason, "threads": d.threads, "waits": d.waits, "frames": d.frames}
                        for d in r.dumps],
        "checkpoint_pending": r.ckpt and {"time": fmt_time(r.ckpt.time), "path": r.ckpt.text},
        "finished": r.finished and r.finished.text, "raw_alert": r.raw_alert,
        "pids": {str(k): v for k, v in r.pids.items()},
        "timeline": [[fmt_time(m.time), m.kind] for m in r.timeline],
        "alerts": [[fmt_time(m.time), m.kind] for m in r.events],
    }
    if gap is None and len(r.starts) == 2:  # no step lines (debug off): an epoch is the finest progress seen
        gap = (r.starts[1] - r.starts[0]) / EPOCH_GAP_DIV
    times = Times(last=lp, pos=(ep if ep is not None else -1, PHASES[phase][0]), gap=gap,
                  marker=r.marker and r.marker.time, open=[line_time(x) for x in r.pending.values()])
    return row, times


# ---- what a rank's row says ----
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
    return bool(raw) and raw[:RAW_SAME] not in err


def _detail_shards(row: dict) -> list[str]:
    # A worker whose own stack dump is in file I/O is the one stuck on its shard; the other open
    # shards usually belong to workers paused with a full prefetch queue.
    in_io = {d["who"].rpartition("worker ")[2].split("/")[0] for d in row["stack_dumps"]
             if "worker" in d["who"] and d["waits"] == "io"}
    blocked = [u for u in row["unfinished_shards"] if u["worker"] is not None and str(u["worker"]) in in_io]
    parts = []
    for u in blocked or row["unfinished_shards"][:1]:
        who = "main process" if u["worker"] is None else f"worker {u['worker']}"
        what = "shard blocked in I/O (its worker's stack dump is in a read)" if blocked else \
            "last shard opened without a Finished line"
        parts.append(f"{what}: {u['url']} ({who}, opened {u['opened']})")
    return parts


def _detail(row: dict) -> str:
    """What is known about where one rank stopped: the evidence the user needs next."""
    parts = [f"{row['phase_text']}" + ("" if row["epoch"] is None else f" of epoch {row['epoch']}")]
    if row["last_step"]:
        parts.append(f"last training step {row['last_step']['step']} at {row['last_step']['time']}")
    if row["last_time"]:
        parts.append(f"last progress {row['last_time']} ({fmt_age(row['age_s'])} ago)")
    if row["unfinished_shards"]:
        parts += _detail_shards(row)
    if row["hang_alerts"]:
        h = row["last_hang"]
        parts.append(f"{row['hang_alerts']} HANG SUSPECTED alert(s), last at {h['time']}: no progress for {h['seconds']} s "
                     f"in {h['phase']} (last event: {h['last_event']})" + ("" if row["hang_active"] else ", since resumed"))
    for d in row["stack_dumps"][-DUMPS_SHOWN:]:
        what = WAIT_TEXT.get(d["waits"], "see the frames")
        inner = "; ".join(d["frames"][:FRAMES_SHOWN])
        parts.append(f"stack dump of {d['who']} at {d['file']}:{d['line']} ({what}{': ' + inner if inner else ''})")
    if row["checkpoint_pending"]:
        c = row["checkpoint_pending"]
        parts.append(f"began saving checkpoint {c['path']} at {c['time']} and never logged Saved")
    if _new_raw(row):
        parts.append(f"printed: {row['raw_alert']}")
    return f"rank {row['rank']}: " + "; ".join(parts)


# ---- the run ----
class Run(NamedTuple):
    """What every rule reads: rows and times by rank, the train log, and the clock."""
    rows: dict
    times: dict
    live: list                      # ranks with at least one time-stamped line
    train: TrainLog | None
    now: float
    stall: float                    # seconds of silence that count as stuck


def _stall(rows: dict, times: dict, live: list, stall_after: float) -> float:
    stall = max([stall_after] + [SPARSE_GAPS * times[r].gap for r in live if times[r].gap])
    # An open HANG SUSPECTED alert is the user's own timeout saying "stuck": trust it over the default.
    alerts = [int(rows[r]["last_hang"]["seconds"]) for r in live if rows[r]["hang_active"]
              and str(rows[r]["last_hang"]["seconds"]).isdigit()]
    return min([stall] + alerts)


def _launcher_findings(run: Run, add) -> tuple[list, bool]:
    """Ranks that exited badly and signals the launcher got; whether a rank crashed while the run moved."""
    stopped_by, crashed = [], False
    for t, msg in run.train.launcher if run.train else []:
        mm = lf.EXITED.pattern.match(msg.encode())
        if mm and int(mm.group(3)) != 0:
            r = int(mm.group(1))
            stopped_by.append(r)
            # A rank that died while the run still moved is a crash, not a hang: the launcher then stops the
            # others, and where they were says nothing. Died after a long silence: the hang rules still apply.
            before = [run.times[x].last for x in run.live if t and run.times[x].last <= t]
            if not before or t - max(before) < run.stall:
                crashed = True
            row = run.rows.get(r)
            why = f"\n    {_detail(row)}" if row else ""
            if row and row["last_error"]:
                why += f"; its last error: {row['last_error']['message']}"
            if int(mm.group(3)) == SIGKILL:
                why += ("\n    A SIGKILL from outside is usually the kernel's OOM killer (see dmesg) or the job "
                        "scheduler")
            add("error", "launcher", [r], f"Launcher: {msg} (at {fmt_time(t)}){why}")
        elif msg.startswith(lf.RECEIVED.head.decode()):
            stopped_by.append(-1)
            add("warning", "launcher", [], f"Launcher: {msg} (at {fmt_time(t)}): the run was stopped from outside")
    return stopped_by, crashed


def _launcher_checks(train: TrainLog | None, add) -> None:
    """The launcher's own phase (counting and probing shards before any rank): where it hangs, what it left out."""
    checks = train and train.checks
    if not checks:
        return
    for t, msg in checks.gave_up:
        add("warning", "launcher_checks", [], f"Launcher, before any rank started: {msg} (at {fmt_time(t)}); its samples "
            "are not in this run (a hung mount or server?)")
    if checks.hang and (checks.done is None or checks.done < checks.hang.time):
        t, msg = checks.hang
        stage = msg.split("(last event: ", 1)[-1].rstrip(")")
        add("error", "launcher_checks", [], f"The launcher is stuck in its checks, no rank started yet: {stage} "
            f"(HANG SUSPECTED at {fmt_time(t)}); the launcher's stack dump is in the train log")


def _ranks_apart(run: Run, leaders: list, behind: list, stuck: bool, add) -> None:
    """Ranks stopped at different points: the ones behind never reached the sync point the others wait at."""
    rows, times, now = run.rows, run.times, run.now
    lead_row = rows[leaders[0]]
    marker = (lead_row["last_marker"] or {}).get("text", "?").strip("= ")
    t_arr = min((times[r].marker for r in leaders if times[r].marker), default=None)
    behind_phases = {rows[r]["phase"] for r in behind}
    kind, why = "ddp_sync", "Ranks stopped at different points: DDP synchronization problem"
    if "val_end" in behind_phases:
        kind, why = "checkpoint_or_scheduler", "Stuck after VALIDATION END: checkpoint saving or the LR scheduler"
    elif "train_end" in behind_phases or lead_row["phase"] == "train_end":
        why = "Stuck between TRAINING END and VALIDATION START: DDP synchronization problem"
    elif lead_row["phase"] == "val_end":
        why = ("Stuck at the end of validation: DDP synchronization problem (uneven validation batches "
               "or a sync_dist metric)")
    lines = [f"{why}. Arrived (wrote {marker}{'' if t_arr is None else ' at ' + fmt_time(t_arr)}): "
             f"{_names(leaders)}. Not arrived: {_names(behind)}."]
    for r in sorted(behind):
        going = now - times[r].last < run.stall and not stuck
        lines.append(_detail(rows[r]) + (" -- still writing progress while the others wait: it has more batches "
                                         "than they do (uneven data across ranks) or is much slower" if going else ""))
    add("error", kind, behind, "\n    ".join(lines))


def _all_at_train_end(run: Run, ep, since: str, findings: list, add) -> None:
    add("error", "ddp_sync", run.live, f"All ranks stopped between TRAINING END and VALIDATION START of epoch {ep} "
        f"(nothing since {since}): DDP synchronization problem. Every rank arrived; a collective that not "
        "every rank calls, or calls in another order (epoch-end hooks, metric sync), blocks them.")
    coll, other = _sides(run.rows, run.live)
    if coll and other:
        findings[-1]["ranks"] = other
        findings[-1]["message"] += (f" Stack dumps: {_names(coll)} wait in a collective; {_names(other)} "
                                    "did not reach it:" + "".join("\n    " + _detail(run.rows[r]) for r in other))


def _all_after_val_end(run: Run, ep, since: str, add) -> None:
    ck = [_detail(run.rows[r]) for r in run.live if run.rows[r]["checkpoint_pending"]]
    if run.train and run.train.ckpt and not ck:
        ck = [f"train log: began saving checkpoint {run.train.ckpt.text} at {fmt_time(run.train.ckpt.time)} "
              "and never logged Saved"]
    add("error", "checkpoint_or_scheduler", run.live, f"All ranks stopped after EPOCH {ep} VALIDATION END (nothing "
        f"since {since}): checkpoint saving or the LR scheduler." + "".join("\n    " + c for c in ck))


def _culprit_score(run: Run, r: int, coll: list, other: list) -> int:
    """How much points at rank r having stopped first: waiting for data or blocked in I/O (its dump, its alert),
    a shard open for long, or not in a collective while others are."""
    row = run.rows[r]
    return (2 * any(d["waits"] in ("data", "io") for d in row["stack_dumps"])
            + 2 * ("data" in ((row["last_hang"] or {}).get("phase") or ""))
            + any(t is not None and run.now - t >= run.stall for t in run.times[r].open)
            + (bool(coll) and r in other))


def _all_in_phase(run: Run, ph: str, ep, since: str, findings: list, add) -> None:
    add("error", "stuck_in_phase", run.live, f"All ranks stopped in {PHASES[ph][1]}"
        + ("" if ep is None else f" of epoch {ep}") + f" (nothing since {since}).")
    coll, other = _sides(run.rows, run.live)
    score = {r: _culprit_score(run, r, coll, other) for r in run.live}
    top = max(score.values())
    culprits = [r for r in run.live if score[r] == top] if top else []
    if culprits and len(culprits) < len(run.live):
        findings[-1]["message"] += " Most likely stuck first, the others then wait for it in a collective:"
        findings[-1]["ranks"] = culprits
    else:
        culprits = run.live if len(run.live) <= DETAIL_ALL_MAX else []
    for r in culprits:
        findings[-1]["message"] += "\n    " + _detail(run.rows[r])


def _hang_findings(run: Run, stuck: bool, findings: list, add) -> bool:
    """Where the ranks stopped, when the run stopped or its leaders went silent. True when a finding places
    every live rank."""
    pos = {r: run.times[r].pos for r in run.live}
    lead = max(pos.values())
    leaders = [r for r in run.live if pos[r] == lead]
    behind = [r for r in run.live if pos[r] != lead]
    if behind and (stuck or all(run.now - run.times[r].last >= run.stall for r in leaders)):
        _ranks_apart(run, leaders, behind, stuck, add)
        return True
    if behind or not stuck:
        return False
    ph, ep = run.rows[leaders[0]]["phase"], run.rows[leaders[0]]["epoch"]
    since = fmt_time(max(run.times[r].last for r in run.live))
    if ph == "train_end":
        _all_at_train_end(run, ep, since, findings, add)
    elif ph == "val_end":
        _all_after_val_end(run, ep, since, add)
    else:
        _all_in_phase(run, ph, ep, since, findings, add)
    return True


def _silent_findings(run: Run, explained: set, newest_rank: float, add) -> None:
    """Any rank not placed above that is far behind the newest, or has an open HANG SUSPECTED alert."""
    for r in (r for r in run.live if r not in explained):
        lag = newest_rank - run.times[r].last
        if lag >= run.stall and len(run.live) > 1:
            add("error", "silent_rank", [r], f"Rank {r} has made no progress for {fmt_age(lag)} while other ranks "
                "went on: its data loading or compute is stuck.\n    " + _detail(run.rows[r]))
        elif run.rows[r]["hang_active"]:
            h = run.rows[r]["last_hang"]
            add("error", "hang_alert", [r], f"Rank {r} reports HANG SUSPECTED (no progress for {h['seconds']} s in "
                f"{h['phase']}, at {h['time']}): its data loading or compute is stuck.\n    " + _detail(run.rows[r]))


def _state_finding(run: Run, state: str, finished, idle, bad: bool, add) -> None:
    """The run's state in one line: finished, running fine, or silent without a rule that explains it."""
    if finished:
        add("info", "finished", list(run.rows), f"Run finished{'' if bad else ' cleanly'}: {finished.text} "
            f"(at {fmt_time(finished.time)})" + ("; see the errors above" if bad else ""))
    elif not bad and state == "running":
        add("info", "running", list(run.rows), f"No problem found: {len(run.live)} rank(s) progressing, newest line "
            f"{fmt_age(idle)} ago.")
    elif not bad and run.live:
        add("warning", "stalled", list(run.rows), f"No log line for {fmt_age(idle)} and no rule explains it; look at "
            "each rank's last lines (ae-train collect gathers them).")
    elif not run.live and not bad:
        add("warning", "empty", [], "The run's logs hold no log lines yet.")


def build(logs: Path, run_ts: str, ranks: list[RankLog], train: TrainLog | None, now: float,
          stall_after: float) -> dict:
    """The report: one JSON-ready row per rank, then the findings, errors first."""
    rows, times = {}, {}
    for r in ranks:
        rows[r.rank], times[r.rank] = rank_row(r, now)
    world = max([r.world or 0 for r in ranks] + [train and train.world or 0, max(rows, default=-1) + 1])
    missing = [r for r in range(world) if r not in rows]
    live = [r for r in rows if times[r].last is not None]
    newest_rank = max((times[r].last for r in live), default=None)
    train_t = line_time(train.last) if train and train.last else None
    newest = max([t for t in (newest_rank, train_t) if t is not None], default=None)
    for r in live:
        rows[r]["lag_s"] = round(newest_rank - times[r].last, 1)
    run = Run(rows, times, live, train, now, _stall(rows, times, live, stall_after))
    findings: list[dict] = []

    def add(sev: str, kind: str, who, msg: str) -> None:
        findings.append({"severity": sev, "kind": kind, "ranks": sorted(who), "message": msg})

    stopped_by, crashed = _launcher_findings(run, add)
    _launcher_checks(train, add)
    finished = (train and train.finished) or next((r.finished for r in ranks if r.finished), None)
    idle = None if newest is None else now - newest
    state = ("finished" if finished else "stopped" if stopped_by else
             "stalled" if idle is not None and idle >= run.stall else "running" if live else "empty")
    explained: set = set(live) if crashed else set()
    if not finished and live and not crashed and _hang_findings(run, state in ("stopped", "stalled"), findings, add):
        explained.update(live)
    if not finished:
        _silent_findings(run, explained, newest_rank, add)
    speed = speed_findings(rows, train, add, quiet=any(f["severity"] == "error" for f in findings))
    _data_findings(ranks, run, add)
    if missing:
        add("warning", "missing_ranks", missing, f"No debug log for {_names(missing)} (world size {world})"
            + (f"; the train log has {sum(train.hangs.get(r, 0) for r in missing)} hang alert(s) and "
               f"{sum(train.errors.get(r, 0) for r in missing)} error(s) from them" if train else ""))
    _state_finding(run, state, finished, idle, any(f["severity"] == "error" for f in findings), add)
    findings.sort(key=lambda f: (SEVERITY[f["severity"]], f["kind"] == "no_straggler"))  # the run's state first
    return {"logs_dir": str(logs), "run": run_ts, "now": fmt_time(now), "state": state, "world_size": world or None,
            "missing_ranks": missing, "stall_after_s": round(run.stall, 1), "newest_time": fmt_time(newest),
            "idle_s": idle and round(idle, 1),
            "train_log": train and {"file": train.file, "lines": train.lines,
                                    "last_time": fmt_time(train_t), "finished": train.finished and train.finished.text,
                                    "launcher": [[fmt_time(t), m] for t, m in train.launcher]},
            "ranks": [rows[r] for r in sorted(rows)], "findings": findings, "speed": speed,
            "verdict": findings[0]["message"].split("\n")[0] if findings else ""}


# ---- the guide's step 3: the data across all ranks ----
class Load(NamedTuple):
    rank: int
    tag: bytes
    load: object  # parse.WorkerLoad


def _uneven(split: str, ep: int, loads: list[Load]) -> str | None:
    files, planned = [x.load.files for x in loads], [x.load.planned for x in loads]
    if min(max(files) - min(files), max(planned) - min(planned)) <= UNEVEN_SLACK:
        return None
    hi, lo = max(loads, key=lambda x: x.load.planned), min(loads, key=lambda x: x.load.planned)
    return (f"{split} epoch {ep}: workers got {min(files)} to {max(files)} of {hi.load.of} files, "
            f"{min(planned)} to {max(planned)} batches (rank {hi.rank} worker {worker_of(hi.tag)}: "
            f"{hi.load.files} files, {hi.load.planned} batches; rank {lo.rank} worker {worker_of(lo.tag)}: "
            f"{lo.load.files} files, {lo.load.planned} batches)")


def _early(split: str, ep: int, loads: list[Load], run: Run) -> str | None:
    dur = [((x.load.completed if x.load.completed is not None else (run.times[x.rank].last or run.now))
            - x.load.started, x) for x in loads if x.load.started]
    if len(dur) < 2:
        return None
    dmax, xmax = max(dur, key=lambda d: d[0])
    found = None
    for d, x in dur:
        if x.load.completed is not None and dmax - d >= max(EARLY_MIN_S, EARLY_SHARE * dmax):
            found = (f"{split} epoch {ep}: rank {x.rank} worker {worker_of(x.tag)} COMPLETED after "
                     f"{fmt_age(d)} with {x.load.files} files, rank {xmax.rank} worker {worker_of(xmax.tag)} "
                     f"{'ran' if xmax.load.completed else 'is still running after'} {fmt_age(dmax)} with "
                     f"{xmax.load.files} files")
    return found


def _batch_counts(split: str, ep: int, loads: list[Load], nranks: int) -> str | None:
    per_rank: dict = {}  # rank -> [workers, workers COMPLETED, batches done]
    for x in loads:
        per_rank.setdefault(x.rank, [workers_in(x.tag), 0, 0])
        per_rank[x.rank][1] += 1 if x.load.batches is not None else 0
        per_rank[x.rank][2] += x.load.batches or 0
    done = {r: v[2] for r, v in per_rank.items() if v[1] >= v[0]}  # every worker of the rank COMPLETED
    if len(done) == nranks > 1 and len(set(done.values())) > 1:
        return f"{split} epoch {ep}: " + ", ".join(f"rank {r} {b}" for r, b in sorted(done.items()))
    return None


def _latest(found: dict, split: str, ep: int, msg: str | None) -> None:
    """Keep per split the message of its latest epoch."""
    if msg is not None and ep >= found.get(split, (-1,))[0]:
        found[split] = (ep, msg)


def _data_findings(ranks: list[RankLog], run: Run, add) -> None:
    """File spread, early finishers, batch counts, read errors."""
    by: dict = {}  # (split, epoch) -> [Load]
    for r in ranks:
        for key, recs in r.loads.items():
            by.setdefault(key, []).extend(Load(r.rank, tag, rec) for tag, rec in recs.items())
    uneven, early, batches = {}, {}, {}
    for (split, ep), loads in by.items():
        _latest(uneven, split, ep, _uneven(split, ep, loads))
        _latest(early, split, ep, _early(split, ep, loads, run))
        _latest(batches, split, ep, _batch_counts(split, ep, loads, len(run.rows)))
    if uneven:
        add("warning", "uneven_assignment", [], "Uneven file assignment across workers (latest epoch shown): "
            + "; ".join(v[1] for v in uneven.values()))
    if batches:
        add("warning", "uneven_batches", [], "Ranks got different numbers of batches (a DDP rank with fewer batches ends "
            "the epoch first and waits in a collective the others never reach): " + "; ".join(v[1] for v in batches.values()))
    if early:
        add("warning", "early_completion", [], "Workers COMPLETED much earlier than others: " + "; ".join(v[1] for v in early.values()))
    _error_findings(run.rows, add)


def _error_findings(rows: dict, add) -> None:
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
