"""The verdict of `ae-train diagnose`: per-rank rows from the parsed records, then the guide's rules and more.

The guide's hang procedure (docs/LOGGING.md) automated, in its order: where each rank stopped (markers),
whether the ranks disagree (DDP synchronization) or all stopped at one point (which point names the
cause), which rank went silent, then the data checks (file spread, early finishers, batch counts, read
errors). Stuck means silent for `stall` seconds: the --stall-after default, raised when step lines are
sparse, lowered to the watchdog's own timeout once it has raised HANG SUSPECTED. Each rule is one
function that adds findings through `add(severity, kind, ranks, message)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ae_train import logformat as lf
from ae_train.diagnose import rootcause
from ae_train.diagnose.parse import PHASES, RankLog
from ae_train.diagnose.records import TrainLog, WorkerLoad, fmt_age, fmt_time, line_time, worker_of, workers_in
from ae_train.diagnose.rows import RAW_SAME, detail, new_raw, sides, rank_row
from ae_train.diagnose.speed import speed_findings

SEVERITY = {"error": 0, "warning": 1, "info": 2}
# Sparse logging (a step line every few minutes, or only epoch markers with debug off) must not read as a
# hang: stuck means this many times the usual gap between two progress lines, at least.
SPARSE_GAPS = 3
# Readers split shards into sample ranges, so one batch can make file counts differ by two: uneven means
# files and batches per worker both differ by more than this.
UNEVEN_SLACK = 1
# A worker COMPLETED "much earlier" than the slowest when it finished this many seconds and this share of
# the slowest's time sooner: short epochs differ by seconds from scheduling alone.
EARLY_MIN_S, EARLY_SHARE = 30.0, 0.5
# Every stuck rank's detail is listed up to this many ranks; beyond, only the likely culprits (readable).
DETAIL_ALL_MAX = 4


def _names(ranks) -> str:
    ranks = sorted(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


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


def _launcher_findings(run: Run, add) -> list:
    """Ranks the launcher saw exit badly or stop the run, and signals it got (the run was stopped from outside).
    A rank's exit itself is told by the failure finding (rootcause.py)."""
    stopped_by = []
    for t, msg in run.train.launcher if run.train else []:
        exited, stopped = lf.EXITED.pattern.match(msg.encode()), lf.RANK_STOPPED.pattern.match(msg.encode())
        if (exited and int(exited.group(3)) != 0) or stopped:
            stopped_by.append(int((exited or stopped).group(1)))
        elif msg.startswith(lf.RECEIVED.head.decode()):
            stopped_by.append(-1)
            add("warning", "launcher", [], f"Launcher: {msg} (at {fmt_time(t)}): the run was stopped from outside")
    return stopped_by


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
        stage = msg.split("(last event: ", 1)[-1]
        stage = stage[:-1] if stage.endswith(")") else stage  # one closing paren: "shard(s)" keeps its own
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
        lines.append(detail(rows[r]) + (" -- still writing progress while the others wait: it has more batches "
                                         "than they do (uneven data across ranks) or is much slower" if going else ""))
    add("error", kind, behind, "\n    ".join(lines))


def _all_at_train_end(run: Run, ep, since: str, findings: list, add) -> None:
    add("error", "ddp_sync", run.live, f"All ranks stopped between TRAINING END and VALIDATION START of epoch {ep} "
        f"(nothing since {since}): DDP synchronization problem. Every rank arrived; a collective that not "
        "every rank calls, or calls in another order (epoch-end hooks, metric sync), blocks them.")
    coll, other = sides(run.rows, run.live)
    if coll and other:
        findings[-1]["ranks"] = other
        findings[-1]["message"] += (f" Stack dumps: {_names(coll)} wait in a collective; {_names(other)} "
                                    "did not reach it:" + "".join("\n    " + detail(run.rows[r]) for r in other))


def _all_after_val_end(run: Run, ep, since: str, add) -> None:
    ck = [detail(run.rows[r]) for r in run.live if run.rows[r]["checkpoint_pending"]]
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
    add("error", "stuck_in_phase", run.live, f"All ranks stopped in {PHASES[ph].text}"
        + ("" if ep is None else f" of epoch {ep}") + f" (nothing since {since}).")
    coll, other = sides(run.rows, run.live)
    score = {r: _culprit_score(run, r, coll, other) for r in run.live}
    top = max(score.values())
    culprits = [r for r in run.live if score[r] == top] if top else []
    if culprits and len(culprits) < len(run.live):
        findings[-1]["message"] += " Most likely stuck first, the others then wait for it in a collective:"
        findings[-1]["ranks"] = culprits
    else:
        culprits = run.live if len(run.live) <= DETAIL_ALL_MAX else []
    for r in culprits:
        findings[-1]["message"] += "\n    " + detail(run.rows[r])


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
                "went on: its data loading or compute is stuck.\n    " + detail(run.rows[r]))
        elif run.rows[r]["hang_active"]:
            h = run.rows[r]["last_hang"]
            add("error", "hang_alert", [r], f"Rank {r} reports HANG SUSPECTED (no progress for {h['seconds']} s in "
                f"{h['phase']}, at {h['time']}): its data loading or compute is stuck.\n    " + detail(run.rows[r]))


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


class Verdict(NamedTuple):
    """What the rules found: the run's state, one JSON-ready row per rank, the findings (errors first)."""
    logs: Path
    run: str
    now: float
    state: str
    world: int
    missing: list
    stall: float
    newest: float | None
    idle: float | None
    train: TrainLog | None
    train_t: float | None           # the train log's last line
    rows: dict
    findings: list
    speed: dict
    failure: rootcause.RootCause | None = None  # the first failure and what followed


def judge(logs: Path, run_ts: str, ranks: list[RankLog], train: TrainLog | None, now: float,
          stall_after: float) -> Verdict:
    """Every rule over the run's records."""
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

    finished = (train and train.finished) or next((r.finished for r in ranks if r.finished), None)
    failure = rootcause.find(ranks, train, rows, times, live, run.stall)
    stopped_by = _launcher_findings(run, add)
    if failure and finished and not stopped_by:
        failure = None  # an error the run survived: not why it failed (the errors finding lists it)
    # The first failure leads, unless the run had stalled before it: then where it stalled comes first.
    crashed = failure is not None and failure.quiet is None
    if failure and crashed:
        _failure_finding(failure, add)
    _launcher_checks(train, add)
    idle = None if newest is None else now - newest
    state = ("finished" if finished else "stopped" if stopped_by or failure else
             "stalled" if idle is not None and idle >= run.stall else "running" if live else "empty")
    explained: set = set(live) if crashed else set()
    if not finished and live and not crashed and _hang_findings(run, state in ("stopped", "stalled"), findings, add):
        explained.update(live)
    if not finished:
        _silent_findings(run, explained, newest_rank, add)
    if failure and not crashed:
        _failure_finding(failure, add)
    speed = speed_findings(rows, train, add, quiet=any(f["severity"] == "error" for f in findings))
    _data_findings(ranks, run, add, failure)
    if missing:
        add("warning", "missing_ranks", missing, f"No debug log for {_names(missing)} (world size {world})"
            + (f"; the train log has {sum(train.hangs.get(r, 0) for r in missing)} hang alert(s) and "
               f"{sum(train.errors.get(r, 0) for r in missing)} error(s) from them" if train else ""))
    _state_finding(run, state, finished, idle, any(f["severity"] == "error" for f in findings), add)
    findings.sort(key=lambda f: (SEVERITY[f["severity"]], f["kind"] == "no_straggler"))  # the run's state first
    return Verdict(logs, run_ts, now, state, world, missing, run.stall, newest, idle, train, train_t, rows, findings,
                   speed, failure)


def _failure_finding(failure: rootcause.RootCause, add) -> None:
    rank = failure.first.rank
    add("error", "failure", [] if rank is None else [rank], rootcause.message(failure))


# ---- the guide's step 3: the data across all ranks ----
class Load(NamedTuple):
    rank: int
    tag: bytes
    load: WorkerLoad


class Took(NamedTuple):
    seconds: float
    x: Load


class Latest(NamedTuple):
    epoch: int
    message: str


@dataclass
class RankBatches:
    workers: int                    # the rank's DataLoader workers
    completed: int = 0              # of them, those that logged COMPLETED
    batches: int = 0                # batches they did


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
    dur = [Took((x.load.completed if x.load.completed is not None else (run.times[x.rank].last or run.now))
                - x.load.started, x) for x in loads if x.load.started]
    if len(dur) < 2:
        return None
    dmax, xmax = max(dur, key=lambda took: took.seconds)
    found = None
    for d, x in dur:
        if x.load.completed is not None and dmax - d >= max(EARLY_MIN_S, EARLY_SHARE * dmax):
            found = (f"{split} epoch {ep}: rank {x.rank} worker {worker_of(x.tag)} COMPLETED after "
                     f"{fmt_age(d)} with {x.load.files} files, rank {xmax.rank} worker {worker_of(xmax.tag)} "
                     f"{'ran' if xmax.load.completed else 'is still running after'} {fmt_age(dmax)} with "
                     f"{xmax.load.files} files")
    return found


def _batch_counts(split: str, ep: int, loads: list[Load], nranks: int) -> str | None:
    per_rank: dict = {}  # rank -> RankBatches
    for x in loads:
        rb = per_rank.setdefault(x.rank, RankBatches(workers_in(x.tag)))
        rb.completed += 1 if x.load.batches is not None else 0
        rb.batches += x.load.batches or 0
    done = {r: v.batches for r, v in per_rank.items() if v.completed >= v.workers}  # every worker COMPLETED
    if len(done) == nranks > 1 and len(set(done.values())) > 1:
        return f"{split} epoch {ep}: " + ", ".join(f"rank {r} {b}" for r, b in sorted(done.items()))
    return None


def _latest(found: dict, split: str, ep: int, msg: str | None) -> None:
    """Keep per split the message of its latest epoch."""
    if msg is not None and (split not in found or ep >= found[split].epoch):
        found[split] = Latest(ep, msg)


def _data_findings(ranks: list[RankLog], run: Run, add, failure: rootcause.RootCause | None) -> None:
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
            + "; ".join(v.message for v in uneven.values()))
    if batches:
        add("warning", "uneven_batches", [], "Ranks got different numbers of batches (a DDP rank with fewer batches ends "
            "the epoch first and waits in a collective the others never reach): " + "; ".join(v.message for v in batches.values()))
    if early:
        add("warning", "early_completion", [], "Workers COMPLETED much earlier than others: " + "; ".join(v.message for v in early.values()))
    _error_findings(run.rows, add, failure)


def _error_findings(rows: dict, add, failure: rootcause.RootCause | None) -> None:
    errs = {r: rows[r]["shard_errors"] for r in rows if rows[r]["shard_errors"]}
    if errs:
        last = max((rows[r]["last_shard_error"] for r in errs), key=lambda e: e["time"] or "")
        add("warning", "shard_errors", list(errs), f"{sum(errs.values())} shard read error(s) ("
            + ", ".join(f"rank {r}: {n}" for r, n in sorted(errs.items())) + f"); last: {last['url']}: {last['message']} at {last['time']}")
    told = {f.text[:RAW_SAME] for f in (failure.first, *failure.after)} if failure else set()

    def untold(row: dict) -> bool:  # an error line or a printed alert the failure finding does not show
        err = (row["last_error"] or {}).get("message")
        return (err is not None and err[:RAW_SAME] not in told) or (new_raw(row) and row["raw_alert"][:RAW_SAME]
                                                                      not in told)

    other = {r: rows[r] for r in rows if (rows[r]["errors"] or rows[r]["raw_alert"]) and untold(rows[r])}
    if other:
        add("warning", "errors", list(other), "Other errors: " + "; ".join(
            f"rank {r}: {row['errors']} ERROR line(s)" + (f", last at {row['last_error']['time']}: {row['last_error']['message']}"
                                                          if row["last_error"] else "")
            + (f", printed: {row['raw_alert']}" if new_raw(row) else "") for r, row in sorted(other.items())))
