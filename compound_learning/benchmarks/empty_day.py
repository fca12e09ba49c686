"""A cycle on a day with no data next to the bare baseline: one trivial asset materialized in
process on the same Dagster instance. Each run is a fresh Python process timed from start to
exit (imports included, as a scheduled run pays them); the two alternate, medians reported.
With ``--history-days N`` the store first holds N days of simulated data, learned by one run,
and the empty day is the day after them. With ``--pg-url`` the instance and the store are
PostgreSQL databases of that server (production's setup), made and dropped by the benchmark.

    python -m compound_learning.benchmarks.empty_day [--repeats 5] [--history-days 14] \
        [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

TRIVIAL = """
import dagster as dg

@dg.asset
def one():
    return 1

instance = dg.DagsterInstance.get()
assert dg.materialize([one], instance=instance).success
"""

FIRST_DAY = date(2026, 1, 1)

EMPTY_DAY = """
from datetime import date
import dagster as dg
from compound_learning.orchestration.launch import run_in_process

out = run_in_process(date.fromisoformat("{day}"), date.fromisoformat("{day}"), instance=dg.DagsterInstance.get())
assert out["status"] == "SUCCESS", out
"""

HISTORY = """
from datetime import date
import dagster as dg
from compound_learning.core.simulate import WorldConfig, simulate
from compound_learning.ingestion import ingest_frame
from compound_learning.orchestration.launch import run_in_process

data, _ = simulate(WorldConfig(days={days}, accounts=6, creatives_per_account=25, start=date.fromisoformat("{first}")))
ingest_frame(data, today=date(2100, 1, 1))
out = run_in_process(date.fromisoformat("{first}"), date.fromisoformat("{last}"), instance=dg.DagsterInstance.get())
assert out["status"] == "SUCCESS", out
"""


# The process's own peak RSS in kB (VmHWM): ``ru_maxrss`` of a forked child carries its
# parent's peak on Linux when that is larger.
PRINT_PEAK_KB = "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])"


def _timed(script: str, env: dict) -> tuple[float, float]:
    """Wall seconds of a fresh interpreter running ``script``, and its peak RSS in MB."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script + "\n" + PRINT_PEAK_KB],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return seconds, int(proc.stdout.split()[-1]) / 1024


def _imported(module: str, env: dict) -> list[str]:
    """The heavy libraries a process has loaded after importing ``module``."""
    probe = (
        f"import sys, {module}\n"
        "heavy = ['sklearn', 'statsmodels', 'scipy', 'skops', 'fastapi', 'uvicorn', 'matplotlib']\n"
        "print(' '.join(h for h in heavy if h in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def run(repeats: int = 5, history_days: int = 0, pg_url: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="empty_day_") as tmp:  # the instance and databases go with it
        if not pg_url:
            storage = f"sqlite:\n    base_dir: {tmp}/dagster"
            return _measure(Path(tmp), repeats, history_days, storage, f"sqlite:///{tmp}/cl.db")
        from compound_learning.benchmarks.scale import Postgres

        server, names = Postgres(pg_url), ("cl_empty_day_instance", "cl_empty_day_store")
        instance_url, store_url = (server.fresh(name) for name in names)
        try:
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; Dagster's storage gets psycopg2 (deploy/)
            storage = f"postgres:\n    postgres_url: {instance_url.replace('postgresql://', 'postgresql+psycopg2://')}"
            return {**_measure(Path(tmp), repeats, history_days, storage, store_url), "storage": "postgresql"}
        finally:
            for name in names:
                server.drop(name)


def _measure(home: Path, repeats: int, history_days: int, storage: str, store_url: str) -> dict:
    (home / "dagster.yaml").write_text(f"storage:\n  {storage}\ntelemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COMPOUND_LEARNING_DATABASE_URL": store_url,
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(home / "artifacts"),
        "COMPOUND_LEARNING_PARTITION_START": str(FIRST_DAY),
    }
    day = FIRST_DAY + timedelta(days=history_days + 4)
    if history_days:
        last = FIRST_DAY + timedelta(days=history_days - 1)
        _timed(HISTORY.format(days=history_days, first=FIRST_DAY, last=last), env)
    empty_day = EMPTY_DAY.format(day=day)
    _timed(TRIVIAL, env), _timed(empty_day, env)  # warm the file cache and create the databases
    trivial, empty = [], []
    for _ in range(repeats):
        trivial.append(_timed(TRIVIAL, env))
        empty.append(_timed(empty_day, env))
    t_s = statistics.median(s for s, _ in trivial)
    e_s = statistics.median(s for s, _ in empty)
    return {
        "repeats": repeats,
        "storage": "sqlite",
        "history_days": history_days,
        "empty_day": str(day),
        "trivial_asset_seconds": round(t_s, 2),
        "trivial_asset_peak_mb": round(max(m for _, m in trivial)),
        "empty_day_seconds": round(e_s, 2),
        "empty_day_peak_mb": round(max(m for _, m in empty)),
        "ratio": round(e_s / t_s, 2),
        "target_ratio": 1.5,
        "libraries_loaded_by_the_definitions": _imported("compound_learning.definitions", env),
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--history-days", type=int, default=0, help="days of simulated data learned before it")
    parser.add_argument("--pg-url", help="a PostgreSQL server for the instance and the store (default: SQLite files)")
    args = parser.parse_args()
    print(json.dumps(run(args.repeats, args.history_days, args.pg_url), indent=2))


if __name__ == "__main__":
    main()
