"""The compound principle measured: the cost of one daily cycle at day 30 vs day 365.

A long world is ingested, then every day's steps run in order on a fresh SQLite store (or the
URL given); the seconds of each step are printed for a few days along the way. If the cycle
were O(history), day 365 would cost ~12x day 30.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

from compound_learning import steps
from compound_learning.config import CycleSettings, load_settings
from compound_learning.core.simulate import WorldConfig, simulate
from compound_learning.ingestion import ingest_frame
from compound_learning.storage.store import Store

REPORT_DAYS = (30, 90, 180, 365)


def run(days: int = 365, accounts: int = 20, creatives: int = 150, url: str | None = None) -> dict:
    tmp = tempfile.mkdtemp(prefix="cycle_cost_")
    settings = replace(
        load_settings(), database_url=url or f"sqlite:///{tmp}/bench.db", artifacts_dir=Path(tmp) / "art"
    )
    store = Store(settings.database_url)
    data, _ = simulate(WorldConfig(days=days, accounts=accounts, creatives_per_account=creatives, seed=1))
    start = time.perf_counter()
    ingest_frame(data, store=store, settings=settings, today=date(2100, 1, 1))
    out = {"rows": len(data), "ingest_seconds": round(time.perf_counter() - start, 2), "days": {}}
    ctx = steps.CycleContext(store, settings, CycleSettings.from_settings(settings))
    first = date(2024, 1, 1)
    for i in range(days):
        day = first + timedelta(days=i)
        result = steps.run_day(ctx, day)
        timing = {name: summary["seconds"] for name, summary in result.items()}
        if i + 1 in REPORT_DAYS:
            rows_today = int((data["date"] == day.isoformat()).sum())
            out["days"][i + 1] = {
                "rows_that_day": rows_today,
                "total_seconds": round(sum(timing.values()), 2),
                **timing,
            }
            print(json.dumps({f"day {i + 1}": out["days"][i + 1]}), flush=True)
    store.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--creatives", type=int, default=150, help="creatives per account over the whole period")
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    print(json.dumps(run(args.days, args.accounts, args.creatives, args.url), indent=2))


if __name__ == "__main__":
    main()
