"""What one day of ``improvement_snapshots`` costs after a month of history: the simulator's
world (``--accounts`` x 40 creatives, 31 days) is ingested, the daily statistics and the
snapshots of the first 30 days are built, the patterns and the DNA of day 31, then the step for
day 31 is timed ``--repeats`` times in this process (medians), with its peak memory.

    python -m compound_learning.benchmarks.trajectory_cost --accounts 300 \\
        --url postgresql+psycopg2://postgres@127.0.0.1:5432/traj_bench

The URL's database must exist and be empty. To compare with an earlier commit, run the same
command from a checkout of it on a fresh database (BENCHMARKS.md, "Trajectory power").
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from compound_learning import steps
    from compound_learning.config import CycleSettings, load_settings
    from compound_learning.core.simulate import WorldConfig, simulate
    from compound_learning.ingestion import ingest_frame
    from compound_learning.storage.store import Store

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--url", required=True, help="an empty database (SQLAlchemy URL)")
    args = p.parse_args(argv)

    data, _ = simulate(WorldConfig(days=31, accounts=args.accounts, creatives_per_account=40, seed=5))
    first, last = date(2024, 1, 1), date(2024, 1, 31)
    settings = replace(
        load_settings(), database_url=args.url, artifacts_dir=Path(tempfile.mkdtemp()), partition_start=first
    )
    store = Store(args.url)
    ingest_frame(data, store=store, settings=settings, today=date(2100, 1, 1))
    ctx = steps.CycleContext(store, settings, CycleSettings.from_settings(settings))
    steps.run_days(ctx, first, last, only=["daily_stats"])
    steps.run_days(ctx, first, last - timedelta(days=1), only=["improvement_snapshots"])
    steps.run_day(ctx, last, only=["learning_patterns", "creative_dna"])
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        steps.run_day(ctx, last, only=["improvement_snapshots"])
        seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{len(data):,} rows ({len(data) // 31:,} a day), {args.accounts} accounts: improvement_snapshots for day 31 "
        f"{statistics.median(seconds):.2f} s (median of {args.repeats}: {', '.join(f'{s:.2f}' for s in seconds)}), "
        f"{1000 * statistics.median(seconds) / args.accounts:.1f} ms an account; peak RSS {peak:,.0f} MB"
    )
    store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
