"""Why a run is slow (the straggler rules): `ae-train diagnose` compares the ranks' time splits and names
the straggler.

Every progress line splits its interval into data wait, forward, backward, optimizer and other
(callbacks/step_split.py). In DDP all ranks go at the pace of the slowest: the fast ranks spend the
difference in backward, waiting for it in the gradient all-reduce. So a straggler shows as the rank
with the most time outside backward, and the part where its excess lies says why: data wait (its
input is slow), forward/optimizer/other (its compute is slow: host, GPU, noisy neighbour). Every rank
waiting for data a large share of the time means the input path itself is the bottleneck.
The shares are the time-weighted mean of the latest progress lines of each rank (each line covers
log.train_every batches, so its time is 1 / its samples/s). The first line of an epoch holds its
start-up and is left out: a rank with no other line has no split yet. With no split from progress
lines (debug off) the train log's last epoch summary (slowest and fastest rank) is used. The slowest
shards are the Opening-to-Finished times of the debug logs.
"""
from __future__ import annotations

import statistics

from ae_train import logformat as lf
from ae_train.diagnose.parse import RankLog
from ae_train.diagnose.records import TrainLog, text

PARTS = ("data_wait", "forward", "backward", "optimizer", "other")
GAP = 15.0         # percentage points by which a straggler's share exceeds the others' median ...
RATIO = 1.5        # ... and how many times the others' it is at least
INPUT_TIMES = 2.0  # an input straggler also waits for data at least this many times the others' median
BOTTLENECK = 30.0  # every rank waits for data at least this share of the time: the input path is the bottleneck
WHAT = {"forward": "forward", "optimizer": "optimizer step",
        "other": "time outside forward, backward and optimizer (LR scheduler, logging, callbacks)"}


def parse_split(s: str) -> dict | None:
    m = lf.SPLIT.search(s)
    if not m:
        return None
    values = [float(m.group(1))] + [float(v) if v is not None else None for v in m.group(2, 3, 4, 5)]
    return {**dict(zip(PARTS, values)), "clock": m.group(6)}


def rank_split(r: RankLog) -> dict | None:
    """The mean split of the rank's latest progress lines, or None without any."""
    found = []
    for line in r.steps:
        st = lf.TRAINING_STEP.pattern.search(line)
        extra = text(st.group(6) or b"") if st else ""
        sp, rate = parse_split(extra), lf.RATE.search(extra)
        if sp:
            sp["w"] = 1 / float(rate.group(1)) if rate and float(rate.group(1)) > 0 else 1.0
            found.append((st.group(1) == b"0", sp))
    steady = [sp for first, sp in found if not first]  # a run's start-up alone says nothing about stragglers
    if not steady:
        return None
    out, total = {}, sum(sp["w"] for sp in steady)
    for p in PARTS:
        known = [sp for sp in steady if sp[p] is not None]
        out[p] = round(sum(sp[p] * sp["w"] for sp in known) / total, 1) if len(known) == len(steady) else None
    return {**out, "clock": steady[-1]["clock"], "lines": len(steady), "source": "progress lines"}


def rank_shards(r: RankLog) -> dict:
    slow = []
    for d, _, line in sorted(r.slow_shards, reverse=True):
        m = lf.FINISHED_SHARD.pattern.search(line)
        slow.append({"url": text(m.group(1)) if m else "?", "seconds": round(d, 3)})
    return {"count": r.shard_n, "slowest": slow}


def _from_summary(train: TrainLog | None, rows: dict) -> dict:
    """Debug off: the train log's last epoch summary holds the slowest and the fastest rank's split."""
    m = lf.EPOCH_TRAIN.pattern.search(train.epoch_split.text if train and train.epoch_split else "")
    out = {}
    for rank, part in ((m.group(2), m.group(3)), (m.group(4), m.group(5))) if m else ():
        sp = parse_split(part or "")
        if rank is not None and sp and int(rank) in rows:
            out[int(rank)] = {**{p: sp[p] for p in PARTS}, "clock": None, "lines": 0,
                              "source": f"train log, epoch {m.group(1)} summary"}
    return out


def _pct(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}%"


def _shards_text(rows: list[dict]) -> str:
    # By seconds only: equal (rounded) times keep each rank's own order, the finer one its list was made in.
    slow = sorted(((s["seconds"], s["url"], row["rank"]) for row in rows for s in row["shards_read"]["slowest"]),
                  key=lambda x: -x[0])[:3]
    if not slow:
        return ""
    many = len(rows) > 1
    return "; slowest shards (Opening to Finished): " + ", ".join(
        f"{url} {sec:.2f}s" + (f" (rank {rank})" if many else "") for sec, url, rank in slow)


def _where(row: dict) -> str:
    return f"host {row['host'] or '?'}, device {row['device'] or '?'}"


def speed_findings(rows: dict, train: TrainLog | None, add, quiet: bool) -> dict:
    """Adds the straggler findings through `add`; returns the report's `speed` summary.
    `quiet`: an error is already reported (a hang, a crash), so "no straggler" would only be noise."""
    splits = {r: row["time_split"] for r, row in rows.items() if row["time_split"]}
    if not splits:
        splits = _from_summary(train, rows)
        for r, sp in splits.items():
            rows[r]["time_split"] = sp
    if not splits:
        return {"verdict": None, "ranks": [], "source": None}
    source = next(iter(splits.values()))["source"]
    data = {r: s["data_wait"] for r, s in splits.items()}
    full = {r: s for r, s in splits.items() if s["backward"] is not None}
    found: dict = {}

    def others(r: int, part: str, among: dict) -> list[float]:
        return [s[part] for q, s in among.items() if q != r]

    for r in sorted(splits):
        rest = others(r, "data_wait", splits)
        if rest and data[r] - statistics.median(rest) >= GAP and data[r] >= INPUT_TIMES * statistics.median(rest):
            found[r] = "input_straggler"
            msg = f"Rank {r} waits for data {data[r]:.0f}% of the time (others {_pct(rest)}): its input is the straggler"
            if r in full and len(full) > 1:
                msg += (f"; the others wait for it in backward, where ranks sync ({_pct(others(r, 'backward', full))} "
                        f"vs its {full[r]['backward']:.0f}%)")
            add("warning", "input_straggler", [r], msg + _shards_text([rows[r]]) + f" ({_where(rows[r])})")
    for r in sorted(full):
        if r in found or len(full) < 2:
            continue
        own = {q: 100 - s["backward"] for q, s in full.items()}  # time not spent waiting for other ranks
        if own[r] - statistics.median(v for q, v in own.items() if q != r) < GAP:
            continue
        med = {c: statistics.median(others(r, c, full)) for c in WHAT}
        c = max(WHAT, key=lambda c: full[r][c] - med[c])
        ratio = full[r][c] / max(med[c], 0.5)
        if ratio < RATIO:
            continue
        found[r] = "compute_straggler"
        add("warning", "compute_straggler", [r], f"Rank {r}'s {WHAT[c]} takes {ratio:.1f}x the others ({full[r][c]:.0f}% "
            f"of the time vs {_pct(others(r, c, full))}): compute straggler ({_where(rows[r])}); the others wait for it "
            f"in backward, where ranks sync ({_pct(others(r, 'backward', full))} vs its {full[r]['backward']:.0f}%)")
    if not found and min(data.values()) >= BOTTLENECK:
        found = {r: "input_bottleneck" for r in splits}
        who = "All ranks wait" if len(splits) > 1 else f"Rank {next(iter(splits))} waits"
        add("warning", "input_bottleneck", list(splits), f"{who} for data {_pct(list(data.values()))} of the time: the "
            "input path is the bottleneck (measure it with `ae-train bench-data --config <your config>`)"
            + _shards_text([rows[r] for r in splits]))
    elif not found and len(splits) > 1 and not quiet:
        add("info", "no_straggler", list(splits), f"No straggler: the {len(splits)} ranks are balanced (data wait "
            f"{_pct(list(data.values()))}" + "".join(f", {p} {_pct([s[p] for s in full.values()])}" for p in
                                                    ("forward", "backward") if full)
            + f" of the time; from the {source})")
    kinds = set(found.values())
    verdict = "no_straggler" if not found and len(splits) > 1 else None
    if kinds:
        verdict = "input_bottleneck" if kinds == {"input_bottleneck"} else \
            "input_straggler" if "input_straggler" in kinds else "compute_straggler"
    return {"verdict": verdict, "ranks": sorted(r for r, k in found.items() if k != "input_bottleneck"),
            "source": source}


def split_cell(row: dict) -> str:
    """`71 10 5 3 11`: the rank's data/fwd/bwd/opt/other shares for the text table."""
    sp = row["time_split"]
    if not sp:
        return "-"
    return " ".join("-" if sp[p] is None else f"{sp[p]:.0f}" for p in PARTS)
