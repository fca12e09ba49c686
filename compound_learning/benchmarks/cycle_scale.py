"""The daily cycle at agency scale: one day of ``--rows`` rows after ``--days`` days of history.

The history is ``scale_data`` days (plain numpy, not the simulator) ingested into a fresh
database; the daily statistics of every history day are computed, and the cumulative evidence is
rolled forward to the day before the measured one in one pass (what a backfill leaves). Then the
measured days run every step of the cycle in order, as the daily schedule would; each step's
seconds and the process's peak memory are printed as JSON.

    python -m compound_learning.benchmarks.cycle_scale --rows 100000 --days 90 \\
        [--pg-url postgresql://postgres@127.0.0.1/postgres] [--measure 2] [--half-life 0] [--lifetime 28] \\
        [--full-snapshots] [--collapse-after 28]

With ``--lifetime`` each creative runs that many days and a new one takes its slot (the same
daily volume, ever more creatives): day 365 against day 30 at the same volume shows how the
knowledge, and so a cycle, grows with the history.

With ``--pg-url`` the run gets a fresh database on that server (dropped afterwards); with
``--url`` it uses that database, which must be empty.

A year of history takes a quarter of an hour to build, so it can be built once and measured
from many times (say, a commit against the one before it, alternating); on PostgreSQL the history
is kept as a database of the server (``--pg-url ... --save-history cl_h90``, then ``--from-history
cl_h90``; drop it by hand when done):

    python -m compound_learning.benchmarks.cycle_scale --rows 10000 --lifetime 28 --half-life 0 \
        --days 364 --measure 0 --save-history /tmp/h364
    python -m compound_learning.benchmarks.cycle_scale --rows 10000 --lifetime 28 --half-life 0 \
        --days 364 --measure 1 --from-history /tmp/h364

``--from-history`` measures on a copy of the saved database (the saved one stays as it was);
``--rows``, ``--days`` and ``--lifetime`` must be those it was saved with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

from compound_learning import steps
from compound_learning.benchmarks.scale import Postgres
from compound_learning.benchmarks.scale_data import day_frame
from compound_learning.config import CycleSettings, load_settings
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning.storage import store as store_module
from compound_learning.storage.store import Store

FIRST_DAY = date(2026, 1, 1)
FRESH_DATABASE = "cl_bench_cycle"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_history(ctx: steps.CycleContext, rows: int, days: int, lifetime: int | None = None) -> dict:
    """Ingest ``days`` days, compute their daily statistics, roll the evidence to the day before
    the last one and learn there, then learn on the last one from a full snapshot."""
    started = time.perf_counter()
    for i in range(days):
        day = FIRST_DAY + timedelta(days=i)
        frame = day_frame(rows, day, lifetime_days=lifetime)
        ingest_frame(frame, store=ctx.store, settings=ctx.settings, today=date(2100, 1, 1))
        steps.run_day(ctx, day, only=["daily_stats"])
    ingested = time.perf_counter() - started
    last = FIRST_DAY + timedelta(days=days - 1)
    started = time.perf_counter()
    steps.run_day(ctx, last - timedelta(days=1), only=["learning_patterns"])
    first = time.perf_counter() - started
    # The last day's snapshot is stored full, as a daily run's are once a week: the creatives
    # that stopped long ago are collapsed there (with the terms of the day before's fits).
    started = time.perf_counter()
    chain, store_module.SNAPSHOT_CHAIN_DAYS = store_module.SNAPSHOT_CHAIN_DAYS, 1
    try:
        learned = steps.run_day(ctx, last, only=["learning_patterns"])["learning_patterns"]
    finally:
        store_module.SNAPSHOT_CHAIN_DAYS = chain
    return {
        "history_seconds": round(ingested, 1),
        "first_learning_seconds": round(first, 1),
        "last_learning_seconds": round(time.perf_counter() - started, 1),
        "creatives_collapsed": learned.get("creatives_collapsed", 0),
        "cells_collapsed": learned.get("cells_collapsed", 0),
    }


def measure(
    ctx: steps.CycleContext,
    rows: int,
    days: int,
    measure_days: int,
    profile: str | None = None,
    lifetime: int | None = None,
) -> list[dict]:
    """Ingest and run the full cycle for the ``measure_days`` days after the history (the last
    one under cProfile into ``profile``, if given)."""
    out = []
    for i in range(measure_days):
        day = FIRST_DAY + timedelta(days=days + i)
        started = time.perf_counter()
        frame = day_frame(rows, day, lifetime_days=lifetime)
        ingest_frame(frame, store=ctx.store, settings=ctx.settings, today=date(2100, 1, 1))
        ingest_seconds = time.perf_counter() - started
        if profile and i == measure_days - 1:
            import cProfile

            with cProfile.Profile() as profiler:
                result = steps.run_day(ctx, day)
            profiler.dump_stats(profile)
        else:
            result = steps.run_day(ctx, day)
        timing = {name: summary["seconds"] for name, summary in result.items()}
        learned = result["learning_patterns"]
        out.append(
            {
                "day": days + i + 1,
                "weekday": day.strftime("%a"),
                "rows": rows,
                "ingest_seconds": round(ingest_seconds, 2),
                "cycle_seconds": round(sum(timing.values()), 2),
                "cumulative_cells": learned["cumulative_cells"],
                "creatives_known": learned["creatives"],
                "snapshot_full": learned["snapshot_full"],
                "snapshot_rows_written": learned["snapshot_rows_written"],
                "collapsed_rows": ctx.store.count_rows(t.creative_cumulative_stats, dow=-1),
                **ctx.store.snapshot_storage(),
                "peak_mb": round(_peak_mb()),
                **timing,
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per day (200 creatives per account)")
    parser.add_argument("--days", type=int, default=90, help="days of history before the measured day")
    parser.add_argument("--measure", type=int, default=2, help="days measured after the history")
    parser.add_argument("--url", help="an empty database's URL (default: a fresh SQLite file)")
    parser.add_argument("--pg-url", help="a PostgreSQL server: the run makes a fresh database there and drops it")
    parser.add_argument("--profile", help="write a cProfile of the last measured day to this file")
    parser.add_argument("--half-life", type=float, help="forgetting half-life in days (0: off)")
    parser.add_argument(
        "--full-snapshots",
        action="store_true",
        help="store every day's cumulative snapshot in full (as before increments between weekly ones)",
    )
    parser.add_argument(
        "--collapse-after",
        type=int,
        help="days without running after which a creative is collapsed into one row (0: never; default: the setting)",
    )
    parser.add_argument(
        "--save-history",
        help="keep the history: SQLite, a new folder to copy the database into; with --pg-url, the name of a "
        "new database on that server to keep it in",
    )
    parser.add_argument(
        "--from-history", help="a --save-history folder or database: measure on a copy of it instead of building"
    )
    parser.add_argument(
        "--lifetime",
        type=int,
        help="days each creative runs before a new one takes its slot (default: the same creatives every day)",
    )
    args = parser.parse_args()
    if args.full_snapshots:
        store_module.SNAPSHOT_CHAIN_DAYS = 1  # no snapshot builds on an earlier one
    if (args.save_history or args.from_history) and args.url:
        raise SystemExit("--save-history and --from-history keep a SQLite file or a --pg-url database, not --url's")
    server = Postgres(args.pg_url) if args.pg_url else None
    if server and args.save_history and server.exists(args.save_history):
        raise SystemExit(f"--save-history: database {args.save_history} exists already")
    if server and args.from_history and not server.exists(args.from_history):
        raise SystemExit(f"--from-history: no database {args.from_history} on {args.pg_url}")
    tmp = tempfile.mkdtemp(prefix="cycle_scale_")
    if args.from_history and not server:
        shutil.copyfile(Path(args.from_history) / "bench.db", Path(tmp) / "bench.db")
    if server:  # a copy of the kept history is made by the server (CREATE DATABASE ... TEMPLATE)
        url = server.fresh(FRESH_DATABASE, template=args.from_history)
    else:
        url = args.url or f"sqlite:///{tmp}/bench.db"
    if args.from_history:
        os.sync()  # the copy's writes are not to land on the measured day's time
    settings = replace(load_settings(), database_url=url, artifacts_dir=Path(tmp) / "art")
    if args.half_life is not None:
        settings = replace(settings, half_life_days=args.half_life)
    store = Store(settings.database_url)
    if store.count_rows(t.performance) and not args.from_history:
        raise SystemExit(f"{url} already holds performance rows: the benchmark needs an empty database")
    cfg = CycleSettings.from_settings(settings)
    if args.collapse_after is not None:
        cfg = replace(cfg, collapse_after_days=args.collapse_after)
    ctx = steps.CycleContext(store, settings, cfg)
    try:
        if args.from_history:
            history = {"from_history": args.from_history}
        else:
            history = build_history(ctx, args.rows, args.days, args.lifetime)
        if args.save_history:
            store.dispose()
            if server:
                server.fresh(args.save_history, template=FRESH_DATABASE)
            else:
                Path(args.save_history).mkdir(parents=True)
                shutil.copyfile(Path(tmp) / "bench.db", Path(args.save_history) / "bench.db")
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "history_days": args.days,
                    "lifetime": args.lifetime,
                    "collapse_after_days": cfg.collapse_after_days,
                    **history,
                }
            )
        )
        measure(ctx, args.rows, args.days, args.measure, args.profile, args.lifetime)
    finally:
        store.dispose()
        if server:
            server.drop(FRESH_DATABASE)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
