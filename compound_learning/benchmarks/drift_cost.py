"""What the drift test (``core.drift``) adds to ``learning_patterns``: ``--days`` days of
``--rows`` agency rows (``scale_data``) with daily snapshots for the last 16 of them, then the
step for the next day run with the drift window at 14 days and at 0 (off), alternating,
``--repeats`` times each (medians), with the process's peak memory.

    python -m compound_learning.benchmarks.drift_cost --rows 10000 --days 30 [--url URL]

The step with the window at 0 is the bare baseline: the same roll-forward and fits without the
split of the evidence and its extra fit.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from compound_learning import steps
    from compound_learning.benchmarks import print_step_figures
    from compound_learning.benchmarks.cycle_scale import FIRST_DAY
    from compound_learning.benchmarks.scale_data import day_frame
    from compound_learning.config import CycleSettings, DriftSettings, load_settings
    from compound_learning.ingestion import ingest_frame
    from compound_learning.storage.store import Store

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--url", help="an empty database (default: a fresh SQLite file)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="drift_cost_"))
    settings = replace(load_settings(), database_url=args.url or f"sqlite:///{tmp}/b.db", artifacts_dir=tmp / "a")
    store = Store(settings.database_url)
    base = CycleSettings.from_settings(settings)
    on = steps.CycleContext(store, settings, base)
    off = steps.CycleContext(store, settings, replace(base, drift=DriftSettings(window_days=0)))
    for i in range(args.days + 1):
        day = FIRST_DAY + timedelta(days=i)
        ingest_frame(day_frame(args.rows, day), store=store, settings=settings, today=date(2100, 1, 1))
        steps.run_day(on, day, only=["daily_stats"])
        if i >= args.days - 16:  # the daily snapshots the test reads back
            steps.run_day(on, day, only=["learning_patterns"])
    day = FIRST_DAY + timedelta(days=args.days)
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for name, ctx in (("off", off), ("on", on)):
            started = time.perf_counter()
            summary = steps.run_step(ctx, "learning_patterns", day)
            seconds[name].append(round(time.perf_counter() - started, 2))
    on_s, off_s = statistics.median(seconds["on"]), statistics.median(seconds["off"])
    figures = {
        "cumulative_cells": summary["cumulative_cells"],
        "drift_z": summary["drift_z"],
        "learning_patterns_seconds_drift_off": off_s,
        "learning_patterns_seconds_drift_on": on_s,
        "ratio": round(on_s / off_s, 3),
    }
    print_step_figures(args.rows, args.days, figures, seconds)
    store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
