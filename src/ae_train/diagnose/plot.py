"""`ae-train diagnose --plot timeline.png`: one lane per rank over time, so the stuck rank shows at a glance.

Phases are colored bands between the epoch markers; the stretch from a rank's last progress to the
newest line of the run is hatched (silent), unless the rank or the run finished; hang alerts, errors
and stack dumps are markers. Beside the lanes, each rank's time split (data wait, forward, backward,
optimizer, other) as one bar. Time labels are as fine as needed to be all different. Drawn from the
report alone (no second pass over the logs). matplotlib is an optional extra, imported here only.
"""
from __future__ import annotations

from datetime import datetime

from ae_train.diagnose.parse import PHASES

COLORS = {"starting": "#d9d9d9", "sanity": "#c7b3e5", "after_sanity": "#e6dcf5", "training": "#7fb3e6",
          "train_end": "#f4a259", "validation": "#8fd18f", "val_end": "#f6d55c", "finished": "#bdbdbd"}
SPLIT_COLORS = {"data_wait": "#d62728", "forward": "#1f77b4", "backward": "#9e9e9e", "optimizer": "#2ca02c",
                "other": "#e0e0e0"}
SPLIT_TEXT = {"data_wait": "data wait", "forward": "forward", "backward": "backward (with waits for other ranks)",
              "optimizer": "optimizer", "other": "other"}
# Tick label formats, coarsest first: the first that tells all ticks apart is used.
TIME_FORMATS = ("%H:%M", "%H:%M:%S", "%H:%M:%S.%f", "%H:%M:%S.%f")  # the third cut to milliseconds
MARKS = {"hang": ("X", "#d62728", "HANG SUSPECTED"), "error": ("|", "#ff7f0e", "error"),
         "dump": ("v", "#7b3294", "stack dump")}


class PlotUnavailable(RuntimeError):
    pass


def _dt(s: str | None) -> datetime | None:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") if s else None


def time_labels(times: list[datetime]) -> list[str]:
    """Labels for tick times, as coarse as keeps them all different; the date too when it changes."""
    day = "%m-%d " if len({t.date() for t in times}) > 1 else ""
    for i, fmt in enumerate(TIME_FORMATS):
        labels = [t.strftime(day + fmt) for t in times]
        if i == 2:
            labels = [x[:-3] for x in labels]  # milliseconds
        if len(set(labels)) == len(labels):
            break
    return labels


def plot_timeline(report: dict, path: str) -> None:
    fig = draw(report)
    import matplotlib.pyplot as plt  # draw() imported it, or raised PlotUnavailable
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def draw(report: dict):
    """The figure: lanes (axes 0) and the split bars (axes 1)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display on a login node
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
        import matplotlib.ticker as mticker
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as e:
        raise PlotUnavailable(f'--plot needs matplotlib ({e}): pip install "ae-train[plot]"') from None

    class UniqueTimes(mticker.Formatter):
        def format_ticks(self, values):
            return time_labels([mdates.num2date(v).replace(tzinfo=None) for v in values])

        def __call__(self, x, pos=None):
            return time_labels([mdates.num2date(x).replace(tzinfo=None)])[0]

    ranks = report["ranks"]
    end = _dt(report["newest_time"]) or _dt(report["now"])
    fig, (ax, ax_split) = plt.subplots(1, 2, figsize=(15, 1.6 + 0.45 * max(len(ranks), 1)),
                                       gridspec_kw={"width_ratios": [5, 1], "wspace": 0.04})
    seen_phases, seen_marks = set(), set()
    for y, r in enumerate(ranks):
        last = _dt(r["last_time"])
        marks = [(_dt(t), ph) for t, ph in r["timeline"]]
        bands: dict = {}
        # Each marker opens a band that lasts until the next marker, the last one until the last progress.
        for (t0, ph), (t1, _) in zip(marks, marks[1:] + [(last, None)]):
            if t0 and t1 and t1 >= t0:
                bands.setdefault(ph, []).append((mdates.date2num(t0), max(mdates.date2num(t1) - mdates.date2num(t0), 1e-7)))
        for ph, spans in bands.items():  # one call per phase and lane keeps thousands of epochs quick
            ax.broken_barh(spans, (y - 0.35, 0.7), facecolors=COLORS.get(ph, "#999999"), edgecolor="none")
            seen_phases.add(ph)
        done = report["state"] == "finished" or r["phase"] == "finished"  # no silence after the end
        if last and end and end > last and not done:
            ax.broken_barh([(mdates.date2num(last), mdates.date2num(end) - mdates.date2num(last))], (y - 0.35, 0.7),
                           facecolors="white", edgecolor="#555555", hatch="///", linewidth=0.5)
            seen_phases.add("silent")
        events = [(_dt(t), k) for t, k in r["alerts"]] + [(_dt(d["time"]), "dump") for d in r["stack_dumps"]]
        for kind, (m, color, _) in MARKS.items():
            xs = [mdates.date2num(t) for t, k in events if k == kind and t]
            if xs:
                ax.plot(xs, [y] * len(xs), linestyle="none", marker=m, color=color, markersize=9 if kind != "error" else 12)
                seen_marks.add(kind)
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([f"rank {r['rank']}" + (f" ({r['host']})" if r["host"] else "") for r in ranks])
    ax.set_ylim(len(ranks) - 0.5, -0.5)  # rank 0 on top
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7))
    ax.xaxis.set_major_formatter(UniqueTimes())
    seen_split = _split_bars(ax_split, ranks)
    handles = [Patch(facecolor=COLORS[p], label=PHASES[p].text) for p in COLORS if p in seen_phases]
    if "silent" in seen_phases:
        handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="///", label="silent (no progress)"))
    handles += [Line2D([], [], linestyle="none", marker=MARKS[k][0], color=MARKS[k][1], label=MARKS[k][2]) for k in MARKS
                if k in seen_marks]
    handles += [Patch(facecolor=SPLIT_COLORS[p], label=f"split: {SPLIT_TEXT[p]}") for p in SPLIT_COLORS if seen_split]
    if handles:  # beside the split bars, which are beside the lanes
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.22, 1.0), fontsize=8, frameon=False)
    verdict = report.get("verdict") or ""
    ax.set_title(f"run {report['run']}: {verdict[:110] + ('...' if len(verdict) > 110 else '')}", fontsize=9)
    return fig


def _split_bars(ax, ranks: list[dict]) -> bool:
    """One stacked bar per rank, in the lanes' order: where its time went (latest progress lines)."""
    seen = False
    for y, r in enumerate(ranks):
        sp = r.get("time_split") or {}
        left = 0.0
        for part, color in SPLIT_COLORS.items():
            if sp.get(part) is not None:
                ax.barh(y, sp[part], left=left, height=0.7, color=color, edgecolor="none")
                left, seen = left + sp[part], True
    ax.set_xlim(0, 100)
    ax.set_ylim(len(ranks) - 0.5, -0.5)
    ax.set_yticks([])
    ax.set_xlabel("% of step time", fontsize=8)
    ax.set_title("time split" if seen else "time split (no progress lines)", fontsize=9)
    return seen
