"""The day's row-level work inside PostgreSQL beside the same work in pandas, on the same rows.

A fresh PostgreSQL database gets two days of ``scale_data`` rows (plain numpy, not the
simulator); day 1's statistics and cumulative snapshot are built once. Then day 2's three
row-level steps run in fresh interpreters, alternating ``rollup_in_database`` on (set-based SQL,
``storage.rollup``) and off (the rows read into pandas), ``--repeats`` times each:
``performance_data``'s summary (off: the day's rows read and summed, as the step did before),
``daily_stats``, and the roll-forward that prepares ``learning_patterns``. Each run rewrites the
same partitions from the same inputs, so each does the same work. Printed as JSON: medians of
each step's seconds, the ratio SQL / pandas, and each client process's peak RSS (VmHWM) (the server's
own memory is not in it: that is the point of moving the work there).

    python -m compound_learning.benchmarks.rollup --rows 1000000 --repeats 3 \\
        --pg-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

from compound_learning import steps
from compound_learning.benchmarks.cycle_scale import FIRST_DAY
from compound_learning.benchmarks.scale import Postgres, own_peak_mb
from compound_learning.benchmarks.scale_data import day_frame
from compound_learning.config import CycleSettings, load_settings
from compound_learning.ingestion import ingest_frame
from compound_learning.storage.store import Store

FRESH_DATABASE = "cl_bench_rollup"


def _summary_from_rows(ctx: steps.CycleContext, day: date) -> dict:
    """What ``performance_data`` did before its aggregate moved into the database: read the
    day's rows and sum them in pandas (the baseline of the step's SQL summary)."""
    rows = ctx.store.performance_for_day(day)
    return {"rows": len(rows), "spend": float(rows["spend"].sum()), "accounts": rows["account_id"].nunique()}


def _summary(ctx: steps.CycleContext, day: date) -> dict:
    if ctx.cfg.rollup_in_database:
        return steps.check_performance_day(ctx, day)
    return _summary_from_rows(ctx, day)


MEASURED = {
    "performance_data": _summary,
    "daily_stats": steps.compute_daily_stats,
    "roll_forward": steps._prepare_patterns,
}


def _context(url: str, in_database: bool) -> steps.CycleContext:
    settings = replace(load_settings(), database_url=url, artifacts_dir=Path(tempfile.mkdtemp()) / "art")
    cfg = replace(CycleSettings.from_settings(settings), rollup_in_database=in_database)
    return steps.CycleContext(Store(url), settings, cfg)


def child(url: str, day: date, in_database: bool) -> None:
    """One measured run (in its own interpreter): the three steps for ``day``; prints JSON."""
    ctx = _context(url, in_database)
    figures = {}
    for name, step in MEASURED.items():
        started = time.perf_counter()
        step(ctx, day)
        figures[name] = time.perf_counter() - started
    figures["peak_mb"] = own_peak_mb()
    ctx.store.dispose()
    print(json.dumps(figures))


def _run_child(url: str, day: date, in_database: bool) -> dict:
    command = [sys.executable, "-m", "compound_learning.benchmarks.rollup", "--child", url, str(day)]
    command += ["--in-database", "1" if in_database else "0"]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"measured run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _figure(run: dict, name: str) -> float:
    return sum(run[n] for n in MEASURED) if name == "total" else run[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per day (200 creatives per account)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pg-url", help="a PostgreSQL server: a fresh database is made and dropped")
    parser.add_argument("--child", nargs=2, metavar=("URL", "DAY"), help=argparse.SUPPRESS)
    parser.add_argument("--in-database", default="1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], date.fromisoformat(args.child[1]), args.in_database == "1")
        return
    if not args.pg_url:
        parser.error("--pg-url is required")
    server = Postgres(args.pg_url)
    url = server.fresh(FRESH_DATABASE)
    try:
        ctx = _context(url, in_database=False)
        second = FIRST_DAY + timedelta(days=1)
        started = time.perf_counter()
        for day in (FIRST_DAY, second):
            ingest_frame(day_frame(args.rows, day), store=ctx.store, settings=ctx.settings, today=date(2100, 1, 1))
        steps.compute_daily_stats(ctx, FIRST_DAY)
        steps._prepare_patterns(ctx, FIRST_DAY)
        ctx.store.dispose()
        print(json.dumps({"rows_per_day": args.rows, "setup_seconds": round(time.perf_counter() - started, 1)}))
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for _ in range(args.repeats):
            for in_database in (False, True):  # alternating, so drift in the machine's load hits both
                # each run rewrites the same partitions: vacuumed first, every run starts from the
                # same tables (not from the dead rows of the runs before it)
                server.psql_run(url, "VACUUM ANALYZE")
                runs[in_database].append(_run_child(url, second, in_database))
                print(json.dumps({"in_database": in_database, **runs[in_database][-1]}), flush=True)
        table = {}
        for name in [*MEASURED, "total", "peak_mb"]:
            sql, pandas = (statistics.median(_figure(r, name) for r in runs[side]) for side in (True, False))
            table[name] = {
                "sql": round(sql, 2),
                "pandas": round(pandas, 2),
                "ratio_sql_to_pandas": round(sql / pandas, 2),
            }
        print(json.dumps({"medians_of": args.repeats, **table}, indent=1))
    finally:
        server.drop(FRESH_DATABASE)


if __name__ == "__main__":
    main()
