"""What reusing the per-account fits of accounts without new evidence saves ``learning_patterns``:
``--days`` days of ``--rows`` agency rows (``scale_data``), then a day on which ``--idle-share``
of the accounts send nothing, the step run with the previous day's fit cache and without it
(the cache emptied: every account fitted, the bare baseline), alternating, ``--repeats`` times
each (medians), with the process's peak memory. Forgetting is off (the default), so an idle
account's cells are those of the day before.

    python -m compound_learning.benchmarks.fit_reuse --rows 10000 --days 14 --idle-share 0.5 [--url URL]
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--idle-share", type=float, default=0.5, help="share of the accounts with no rows on the day")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--url", help="an empty database (default: a fresh SQLite file)")
    args = p.parse_args(argv)
    if not 0 <= args.idle_share <= 1:
        p.error(f"--idle-share must be between 0 and 1, got {args.idle_share}")
    with tempfile.TemporaryDirectory(prefix="fit_reuse_") as tmp:  # the database goes with the run
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> int:
    from compound_learning import steps
    from compound_learning.benchmarks import print_step_figures
    from compound_learning.benchmarks.cycle_scale import FIRST_DAY
    from compound_learning.benchmarks.scale_data import day_frame
    from compound_learning.config import CycleSettings, load_settings
    from compound_learning.ingestion import ingest_frame
    from compound_learning.storage import schema as t
    from compound_learning.storage.store import Store

    settings = replace(load_settings(), database_url=args.url or f"sqlite:///{tmp}/b.db", artifacts_dir=tmp / "a")
    store = Store(settings.database_url)
    ctx = steps.CycleContext(store, settings, replace(CycleSettings.from_settings(settings), half_life_days=0.0))
    day = FIRST_DAY + timedelta(days=args.days)
    for i in range(args.days + 1):
        d = FIRST_DAY + timedelta(days=i)
        frame = day_frame(args.rows, d)
        if d == day:
            accounts = sorted(frame["account_id"].unique())
            idle = set(accounts[: round(len(accounts) * args.idle_share)])
            frame = frame[~frame["account_id"].isin(idle)]
        ingest_frame(frame, store=store, settings=settings, today=date(2100, 1, 1))
        steps.run_day(ctx, d, only=["daily_stats"])
    steps.run_day(ctx, day - timedelta(days=1), only=["learning_patterns"])
    cache = store.read_day(t.account_fit_cache, day - timedelta(days=1))
    seconds: dict[str, list[float]] = {"bare": [], "reuse": []}
    summaries = {}
    for _ in range(args.repeats):
        for name in ("bare", "reuse"):
            with store.transaction() as conn:
                store.delete_from(conn, t.account_fit_cache, day - timedelta(days=1))
                if name == "reuse":
                    store.write_day(conn, t.account_fit_cache, day - timedelta(days=1), cache.drop(columns="as_of"))
            started = time.perf_counter()
            summaries[name] = steps.run_step(ctx, "learning_patterns", day)
            seconds[name].append(round(time.perf_counter() - started, 2))
    reuse, bare = statistics.median(seconds["reuse"]), statistics.median(seconds["bare"])
    figures = {
        "accounts": len(accounts),
        "idle_accounts": len(idle),
        "cumulative_cells": summaries["reuse"]["cumulative_cells"],
        "account_fits_reused": summaries["reuse"]["account_fits_reused"],
        "learning_patterns_seconds_bare": bare,
        "learning_patterns_seconds_reuse": reuse,
        "ratio": round(reuse / bare, 3),
    }
    print_step_figures(args.rows, args.days, figures, seconds)
    store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
