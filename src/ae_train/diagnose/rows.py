"""One row per rank for `ae-train diagnose`: the parsed records as the report's JSON row, and the text
that says where a rank stopped (the evidence each finding quotes)."""
from __future__ import annotations

from typing import NamedTuple

from ae_train import logformat as lf
from ae_train.diagnose.parse import PHASES, RankLog
from ae_train.diagnose.records import fmt_age, fmt_time, line_time, text, worker_of
from ae_train.diagnose.speed import rank_shards, rank_split

WAIT_TEXT = {"data": "main thread waits for DataLoader workers", "io": "blocked in file I/O",
             "collective": "in backward/a collective: waits for other ranks or compute"}
# With debug off the finest progress is an epoch: its expected gap is the last epoch's length / this.
EPOCH_GAP_DIV = 1.5
RAW_SAME = 100  # a raw alert whose first characters are in the last ERROR says nothing new (a traceback's end)
DUMPS_SHOWN, FRAMES_SHOWN = 2, 3  # per rank detail: the latest dumps, their innermost frames


class Times(NamedTuple):
    """The float times of one rank the rules compare (the row holds them as text)."""
    last: float | None              # last progress line
    pos: tuple                      # (epoch, phase order): how far the rank got
    gap: float | None               # the usual seconds between two progress lines
    marker: float | None            # time of the last marker
    open: list                      # times of the shards opened without a Finished


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
    batches = {"train": r.train_end[ep].batches if ep in r.train_end else
               step["batches"] if step and step["epoch"] == ep else None,
               "val": r.val_end[ep].batches if ep in r.val_end else
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
        "epoch": ep, "phase": phase, "phase_text": PHASES[phase].text,
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
    times = Times(last=lp, pos=(ep if ep is not None else -1, PHASES[phase].order), gap=gap,
                  marker=r.marker and r.marker.time, open=[line_time(x) for x in r.pending.values()])
    return row, times


# ---- what a rank's row says ----
def main_dump(row: dict) -> dict | None:
    """The rank's latest dump of its main process (workers dump into the same file, with their own pid)."""
    for d in reversed(row["stack_dumps"]):
        if (d["pid"] == row["pid"]) if d["pid"] and row["pid"] else "worker" not in d["who"]:
            return d
    return None


def sides(rows: dict, live: list) -> tuple[list, list]:
    """Split ranks by their main process's latest dump: waiting in a collective, or somewhere else."""
    coll, other = [], []
    for r in live:
        d = main_dump(rows[r])
        if d is not None:
            (coll if d["waits"] == "collective" else other).append(r)
    return coll, other


def new_raw(row: dict) -> bool:
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


def detail(row: dict) -> str:
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
    if new_raw(row):
        parts.append(f"printed: {row['raw_alert']}")
    return f"rank {row['rank']}: " + "; ".join(parts)
