"""Root cause first: of every failure a run's logs show, the one that came first, and what followed from it.

A failing DDP run leaves a chain of lines: the rank that failed (its exception, a worker's death, a save
that could not be written), every other rank losing its connection to it, the launcher stopping the
rest. By time alone the chain can start anywhere: a rank unwinding its exception closes its
connections before its excepthook writes the line, so a peer's "Connection closed by peer" can come
first, and the launcher's line comes after the failed rank's teardown. So the failures of their own
(failures.OWN) are ordered by time across all ranks and their workers and the first leads; a peer's
view (PEER) leads only when no rank shows a failure of its own; the launcher's lines and ranks stopping
together (AFTER) never lead. A rank the launcher saw killed by a signal, with no line of its own, is a
failure of its own at the launcher's time. Times from different hosts are compared as written.
"""
from __future__ import annotations

from typing import NamedTuple

from ae_train import logformat as lf
from ae_train.diagnose import failures
from ae_train.diagnose.failures import AFTER, OWN, PEER, role
from ae_train.diagnose.parse import PHASES, RankLog
from ae_train.diagnose.records import Failure, TrainLog, fmt_age, fmt_time

MESSAGE_CHARS = 240   # an exception's message in the verdict (gloo's run to 300 characters)
AFTER_SHOWN = 10      # consequences listed in the text; the JSON has them all
EXCEPTIONS = ("exception", "worker_exception", "connect_failed", "lost_peer", "collective_timeout", "nccl")


class RootCause(NamedTuple):
    first: Failure
    after: list                 # [Failure]: what followed from it, in time order
    quiet: float | None         # seconds without progress on any rank before it: the run had stalled first


def _order(f: Failure) -> tuple:
    """Time first; at the same millisecond a stamped line before one that borrowed its time, then rank, line."""
    return (f.time if f.time is not None else float("inf"), f.approx, -1 if f.rank is None else f.rank, f.line)


def _from_row(f: Failure, row: dict | None) -> Failure:
    """Where a rank was that died without a line of its own: its row's last state."""
    f.note = f"the launcher's line: {f.text}"
    if row:
        st = row["last_step"]
        f.epoch, f.phase = row["epoch"], row["phase"]
        f.step = st and {"batch": st["step"], "epoch": st["epoch"], "global_step": st["global_step"],
                         "time": st["time"]}
        f.note += f"; its log ends at {row['last_time']}" if row["last_time"] else ""
        if ck := row["checkpoint_pending"]:
            f.note += f"; it was writing checkpoint {ck['path']} (Saving at {ck['time']}, never Saved)"
    return f


def _launcher_events(train: TrainLog | None, events: list, rows: dict) -> list:
    """The launcher's lines as failures: a rank's exit (a failure of its own when the rank wrote none: killed
    by a signal, or a silent exit), ranks that stopped the run together, ranks killed for not stopping."""
    out = []
    for t, msg in train.launcher if train else []:
        b = msg.encode()
        if mm := lf.EXITED.pattern.match(b):
            r, code = int(mm.group(1)), int(mm.group(3))
            seen = {role(f.kind) for f in events if f.rank == r}
            f = Failure("rank_exit", msg, time=t, rank=None, pid=int(mm.group(2)), code=code)
            if code < 0 and OWN not in seen:
                f.kind, f.rank, f.signal = "killed", r, failures.signal_name(-code)
                _from_row(f, rows.get(r))
            elif code > 0 and not seen:
                f.kind, f.rank = "exited", r
                _from_row(f, rows.get(r))
            out.append(f)
        elif lf.RANK_STOPPED.pattern.match(b):
            out.append(Failure("run_stopped", msg, time=t))
        elif b.startswith(lf.NOT_STOPPED_AFTER_SIGNAL.head):
            out.append(Failure("ranks_killed", msg, time=t))
    return out


def _first_shard(first: Failure, ranks: list[RankLog]) -> None:
    """The shard-error limit names the first unreadable shard, and the rank and worker that read it."""
    errs = [(r.first_shard_error, r.rank) for r in ranks if r.first_shard_error]
    if errs:
        se, rank = min(errs, key=lambda x: (x[0].time or float("inf"), x[1]))
        first.rank, first.worker, first.shard = rank, se.worker, se.url
        first.note = f"the first unreadable shard: {se.url}: {se.message} (at {fmt_time(se.time)})"


def find(ranks: list[RankLog], train: TrainLog | None, rows: dict, times: dict, live: list,
         stall: float) -> RootCause | None:
    """The first failure of the run and what followed, or None when the logs show no failure."""
    debug = {r.rank for r in ranks}
    events = [f for r in ranks for f in r.failures.kept]
    events += [f for rank, tr in (train.failures.items() if train else ()) if rank not in debug for f in tr.kept]
    events += _launcher_events(train, events, rows)
    for kind in failures.TOGETHER:  # every rank logs this stop: the first line is the failure
        for f in sorted((f for f in events if f.kind == kind), key=_order)[1:]:
            f.kind = "stopped_together"
    pool = [f for f in events if role(f.kind) == OWN] or [f for f in events if role(f.kind) == PEER]
    if not pool:
        return None
    first = min(pool, key=_order)
    if first.kind == "shard_limit":
        _first_shard(first, ranks)
    after = [f for f in events if f is not first]
    if any(f.kind in ("rank_exit", "killed", "exited") for f in events):
        # The launcher stopped the others: a rank without a line of its own just ends.
        told = {f.rank for f in events}
        after += [Failure("stopped", f"its log ends at {rows[r]['last_time']}: stopped by the launcher",
                          time=times[r].last, rank=r) for r in live if r not in told]
    after.sort(key=_order)
    return RootCause(first, after, _quiet_before(first, ranks, times, live, stall))


def _quiet_before(first: Failure, ranks: list[RankLog], times: dict, live: list, stall: float) -> float | None:
    """Seconds the run had made no progress when the first failure came, if that says it had stalled: a silence
    of `stall` where progress lines are dense enough to tell (a known gap between them), or after a HANG
    SUSPECTED alert. Sparse logging (debug off: epoch markers only) is no evidence of a stall."""
    newest = max((times[r].last for r in live if times[r].last is not None), default=None)
    if first.time is None or newest is None or first.time - newest < stall:
        return None
    alerted = any(m.kind == "hang" and m.time is not None and m.time <= first.time for r in ranks for m in r.events)
    return first.time - newest if alerted or any(times[r].gap for r in live) else None


# ---- the finding ----
def _cut(s: str | None) -> str:
    s = s or ""
    return s if len(s) <= MESSAGE_CHARS else s[:MESSAGE_CHARS - 3] + "..."


def _who(f: Failure) -> str:
    if f.rank is None:
        return "the launcher"
    who = f"rank {f.rank}" + ("" if f.worker is None else f" worker {f.worker}")
    return who + (f" (thread {f.thread})" if f.thread else "")


def _said(f: Failure) -> str:
    if not f.exception:
        return _cut(f.text)
    return _cut(f"{f.exception}: {f.message}" if f.message else f.exception)


def headline(f: Failure) -> str:
    """What failed, in words, starting with who."""
    who, k = _who(f), f.kind
    if k == "exception":
        return f"{who} raised {_said(f)}"
    if k == "worker_exception":
        return f"{who} raised {_cut(f.raised) if f.raised else f.exception} in its DataLoader worker process"
    if k == "worker_died":
        pid = "" if f.pid is None else f" (pid {f.pid})"
        if f.worker is None:
            who += " DataLoader worker"
        return f"{who}{pid} died: " + (f"killed by {f.signal}" if f.signal else "exited unexpectedly")
    if k == "killed":
        return f"{who} was killed by {f.signal or f'signal {-f.code}'}, without a line of its own"
    if k == "exited":
        return f"{who} exited with code {f.code} without logging an error"
    if k == "checkpoint_write":
        return f"{who} could not write checkpoint {_cut(f.message)}"
    if k == "preempt_save":
        return f"{who} could not save {_cut(f.message)} after {f.signal}"
    if k == "shard_limit":
        return f"the ranks stopped the run on unreadable shards: {_cut(f.message)}; {who} read the first"
    if k == "nonfinite_loss":
        return f"{who} had a non-finite loss {_cut(f.message)}; every rank stopped, nothing saved from it"
    if k == "nonfinite_weights":
        return f"{who} found non-finite weights {f.message} at a save; every rank stopped, nothing saved"
    if k == "stopping":
        return f"{who} stopped the run: {_cut(f.message)}"
    if k == "launcher_gone":
        return f"{who} lost the process that started it (pid {f.pid}): the launcher is gone"
    if k == "interrupted":
        return f"{who} was interrupted (KeyboardInterrupt)"
    if k == "connect_failed":
        return f"{who} could not connect to the other ranks: {_said(f)}"
    if k == "lost_peer":
        return f"{who} lost its connection to another rank: {_said(f)}"
    if k == "collective_timeout":
        return f"{who} timed out waiting for the other ranks in a collective: {_said(f)}"
    if k == "nccl":
        return f"{who} reports an NCCL error: {_said(f)}"
    if f.rank is None:
        return f"launcher: {f.text}"
    if k == "stopped_together":
        return f"{who} stopped with it: {_cut(f.text)}"
    if k == "saved_and_stopped":
        return f"{who} saved and stopped: {_cut(f.text)}"
    return f"{who}: {_cut(f.text)}"


def where(f: Failure) -> str:
    """When and where: time, epoch and phase, the last progress line before it, the open shard, the line."""
    parts = [("about " if f.approx else "at ") + (fmt_time(f.time) or "an unknown time")]
    if f.phase in PHASES:
        parts.append(PHASES[f.phase].text + ("" if f.epoch is None else f" of epoch {f.epoch}"))
    elif f.epoch is not None:
        parts.append(f"epoch {f.epoch}")
    if f.step and f.step["epoch"] == f.epoch:
        parts.append(f"last progress line: batch {f.step['batch']}, global step {f.step['global_step']}")
    if f.shard and f.kind != "shard_limit":
        parts.append(f"reading shard {f.shard}")
    if f.file:
        parts.append(f"{f.file}:{f.line}")
    return "; ".join(parts)


def cause(f: Failure, first: bool = False) -> str | None:
    """The usual cause of a failure; of a first failure that is only a peer's view, also that none went first."""
    if role(f.kind) == AFTER:
        return None
    return failures.cause(f) + ("; " + failures.NO_OWN_FAILURE if first and role(f.kind) == PEER else "")


def message(rc: RootCause) -> str:
    """The finding: the first failure on its first line, then how and why, then what followed."""
    f = rc.first
    lead = "First failure" if rc.quiet is None else f"Then, after {fmt_age(rc.quiet)} without progress on any rank"
    lines = [f"{lead}: {headline(f)} ({where(f)})"]
    if f.frame and f.kind in EXCEPTIONS:
        lines.append(f"raised at {f.frame}")
    if f.raised and f.kind in EXCEPTIONS and f.kind != "worker_exception" and not _said(f).startswith(f.raised[:60]):
        lines.append(f"its traceback begins with: {_cut(f.raised)}")
    if f.note:
        lines.append(f.note)
    lines.append(f"usual cause: {cause(f, first=True)}")
    if rc.after:
        lines.append("what followed from it (consequences, not the cause):")
        lines += [f"  {fmt_time(a.time) or '?'} {headline(a)}" for a in rc.after[:AFTER_SHOWN]]
        if len(rc.after) > AFTER_SHOWN:
            lines.append(f"  ... and {len(rc.after) - AFTER_SHOWN} more (--json lists them)")
    return "\n    ".join(lines)


def as_dict(f: Failure, first: bool = False) -> dict:
    """One failure in the JSON report."""
    return {"time": fmt_time(f.time), "approx_time": f.approx, "kind": f.kind, "role": role(f.kind),
            "rank": f.rank, "worker": f.worker, "what": headline(f), "line_text": f.text,
            "exception": f.exception, "message": f.message, "thread": f.thread, "pid": f.pid, "signal": f.signal,
            "exit_code": f.code, "epoch": f.epoch, "phase": f.phase, "step": f.step, "shard": f.shard,
            "frame": f.frame, "raised": f.raised, "note": f.note, "file": f.file or None, "line": f.line or None,
            "cause": cause(f, first)}


def report(rc: RootCause | None) -> dict | None:
    """The report's `failure`: the first failure, then its consequences in time order."""
    return rc and {"first": as_dict(rc.first, first=True), "quiet_before_s": rc.quiet and round(rc.quiet, 1),
                   "consequences": [as_dict(a) for a in rc.after]}
