"""Charts rendered server-side with matplotlib (no JavaScript, no CDN): PNG bytes."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def trajectory_chart(series: list[dict], traj: dict) -> bytes:
    """Daily ROAS, its 7-day average, the baseline, and the projection band."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    days = [s["date"] for s in series if s["roas"] is not None]
    roas = [s["roas"] for s in series if s["roas"] is not None]
    if days:
        import pandas as pd

        d = pd.to_datetime(days)
        ax.plot(d, roas, ".", color="#9aa5b1", label="daily ROAS")
        ax.plot(d, pd.Series(roas).rolling(7, min_periods=1).mean(), color="#1f4e79", label="7-day average")
        if traj.get("initial_roas"):
            ax.axhline(traj["initial_roas"], color="#888", ls="--", lw=1, label="baseline (first week)")
        horizons = [h for h in (30, 90) if traj.get(f"projected_{h}d_roas") is not None]  # others withheld
        if horizons:
            last = d.max()
            xs = [last] + [last + pd.Timedelta(days=h) for h in horizons]
            mid = [traj[f"projected_{h}d_roas"] for h in horizons]
            lo = [traj[f"projected_{h}d_roas_ci"][0] for h in horizons]
            hi = [traj[f"projected_{h}d_roas_ci"][1] for h in horizons]
            if traj.get("projection_holds_level"):  # a level, not a path from the last week
                start = (mid[0], lo[0], hi[0])
            else:
                current = traj.get("current_roas") or roas[-1]
                start = (current, current, current)
            mid, lo, hi = [start[0], *mid], [start[1], *lo], [start[2], *hi]
            ax.plot(xs, mid, color="#c0504d", label="projection")
            ax.fill_between(xs, lo, hi, color="#c0504d", alpha=0.15, label="95% interval")
    ax.set_ylabel("ROAS")
    ax.set_title(f"ROAS trajectory ({traj.get('learning_status', 'no data')})")
    # beside the plot, not over the data
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


def patterns_chart(patterns: list[dict]) -> bytes:
    """Forest plot: lift and 95% interval of each pattern."""
    items = [p for p in patterns if p["lift"] is not None and p["ci_low"] is not None][:15]
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(items), 3) + 1))
    for i, p in enumerate(reversed(items)):
        color = "#2e7d32" if p["lift"] > 0 else "#c62828"
        ax.plot([p["ci_low"] * 100, p["ci_high"] * 100], [i, i], color=color, lw=2)
        ax.plot(p["lift"] * 100, i, "o", color=color)
    labels = [f"{p['metric']}: " + ", ".join(f"{k}={v}" for k, v in p["attributes"].items()) for p in reversed(items)]
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.axvline(0, color="#555", lw=1)
    ax.set_xlabel("lift vs the dimension's average value (%), 95% interval")
    ax.set_title("Significant patterns" if items else "No significant pattern yet")
    return _png(fig)


def graph_chart(graph: dict) -> bytes:
    """The knowledge graph's attribute values around their metrics, edges by type."""
    nodes = [n for n in graph["nodes"] if n["node_type"] in ("attribute_value", "metric")][:30]
    ids = {n["node_id"] for n in nodes}
    fig, ax = plt.subplots(figsize=(9, 7))
    pos = {}
    metrics = [n for n in nodes if n["node_type"] == "metric"]
    values = [n for n in nodes if n["node_type"] != "metric"]
    for i, n in enumerate(metrics):
        pos[n["node_id"]] = (
            0.4 * math.cos(2 * math.pi * i / max(len(metrics), 1)),
            0.4 * math.sin(2 * math.pi * i / max(len(metrics), 1)),
        )
    for i, n in enumerate(values):
        angle = 2 * math.pi * i / max(len(values), 1)
        pos[n["node_id"]] = (1.2 * math.cos(angle), 1.2 * math.sin(angle))
    colors = {
        "improves": "#2e7d32",
        "hurts": "#c62828",
        "synergy": "#1565c0",
        "antagonism": "#ef6c00",
        "contradicts": "#6a1b9a",
    }  # co-occurrence edges are left out: they say what was launched together, not what works
    for r in graph["relationships"]:
        if r["source"] in ids and r["target"] in ids and r["type"] in colors:
            (x1, y1), (x2, y2) = pos[r["source"]], pos[r["target"]]
            ax.plot([x1, x2], [y1, y2], color=colors[r["type"]], lw=0.6 + 2 * r["confidence"] ** 4, alpha=0.7)
    for n in nodes:
        x, y = pos[n["node_id"]]
        ax.scatter(
            [x],
            [y],
            s=(900 if n["node_type"] == "metric" else 80 + 400 * n["importance"]),
            color="#1f4e79" if n["node_type"] == "metric" else "#90caf9",
            zorder=3,
            edgecolors="white",
        )
        if n["node_type"] == "metric":  # the metric's name inside its node
            name = {"ctr": "CTR", "cvr": "CVR", "roas": "ROAS"}.get(n["label"], n["label"])
            ax.annotate(name, (x, y), fontsize=8, ha="center", va="center", color="white", weight="bold", zorder=4)
        else:  # outside the ring, away from the centre, so labels do not sit on edges or each other
            sx, sy = (0 if abs(c) <= 0.05 else (1 if c > 0 else -1) for c in (x, y))
            ax.annotate(
                n["label"],
                (x, y),
                fontsize=7,
                ha={1: "left", -1: "right", 0: "center"}[sx],
                va={1: "bottom", -1: "top", 0: "center"}[sy],
                xytext=(8 * sx, 8 * sy),
                textcoords="offset points",
            )
    for kind, color in colors.items():
        ax.plot([], [], color=color, label=kind)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_axis_off()
    ax.set_title(f"Knowledge graph as of {graph.get('as_of')}")
    return _png(fig)
