"""What shards and executors buy: one day of the Dagster job at agency scale, run with each
``--configs`` entry (``executor:shards``) in turn, beside the one-process run (``in_process:1``,
the baseline, first).

The history is that of ``cycle_scale`` (``--days`` days of ``--rows`` rows, rolled forward), in a
fresh PostgreSQL database; then the measured day is ingested once and ``compound-learning cycle``
runs it once per configuration, each in a process of its own (the job's shape is read from the
environment at import), on one persistent SQLite Dagster instance. Each configuration rewrites
the same day's tables, so each does the same work. Printed as JSON: the run's wall seconds, the
seconds of each step from the run's event log, the three sharded steps' wall seconds (first
start to last end of their steps), the ratio to the baseline, and the peak RSS of the largest
process of the configuration.

    python -m compound_learning.benchmarks.scale_out --rows 100000 --days 8 \\
        --pg-url postgresql://postgres@127.0.0.1/postgres --configs in_process:1,multiprocess:1,multiprocess:2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from compound_learning import steps
from compound_learning.benchmarks.cycle_scale import FIRST_DAY, build_history
from compound_learning.benchmarks.scale import Postgres
from compound_learning.benchmarks.scale_data import day_frame
from compound_learning.config import CycleSettings, load_settings
from compound_learning.ingestion import ingest_frame
from compound_learning.storage.store import Store

FRESH_DATABASE = "cl_bench_scale_out"
SHARDED = tuple(steps.SHARDED_STEPS)
# Runs the command given after it, passes its output through and prints, last on stderr, the
# peak RSS (kB) of the largest process under it: each configuration's own peak (the benchmark's
# RUSAGE_CHILDREN would carry the largest of every configuration run before).
_PEAK_OF_CHILD = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _step_seconds(home: Path, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's (start, end) timestamps, from the instance's event log."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        spans: dict[str, list[float]] = {}
        for kind in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS):
            for record in instance.all_logs(run_id, of_type=kind):
                spans.setdefault(record.step_key, []).append(record.timestamp)
        return {key: (min(ts), max(ts)) for key, ts in spans.items()}


def run_config(executor: str, shards: int, day, url: str, home: Path, artifacts: Path) -> dict:
    """``compound-learning cycle`` for ``day`` in a child process with this executor and shards."""
    env = {
        **os.environ,
        "COMPOUND_LEARNING_DATABASE_URL": url,
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(artifacts),
        "COMPOUND_LEARNING_PARTITION_START": str(FIRST_DAY),
        "COMPOUND_LEARNING_EXECUTOR": executor,
        "COMPOUND_LEARNING_SHARDS": str(shards),
        "DAGSTER_HOME": str(home),
    }
    command = [sys.executable, "-c", _PEAK_OF_CHILD, sys.executable, "-m", "compound_learning.cli"]
    command += ["cycle", "--start", str(day), "--json"]
    started = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{executor}:{shards} failed:\n{out.stdout}\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout)
    spans = _step_seconds(home, result["run_id"])
    # a sharded asset's steps are keyed "<asset>.<asset>_prepare", "<asset>.<asset>_shard[...]", ...
    sharded = [span for key, span in spans.items() if key.split(".")[0] in SHARDED]
    peak_kb = int(out.stderr.strip().splitlines()[-1].split()[1])
    return {
        "config": f"{executor}:{shards}",
        "wall_seconds": round(wall, 1),
        "sharded_steps_seconds": round(max(e for _, e in sharded) - min(s for s, _ in sharded), 1),
        "steps": {key: round(end - start, 1) for key, (start, end) in sorted(spans.items(), key=lambda kv: kv[1])},
        # the largest process the child waited for (the CLI itself or one step process)
        "peak_mb_largest_process": round(peak_kb / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per day (200 creatives per account)")
    parser.add_argument("--days", type=int, default=8, help="days of history before the measured day")
    parser.add_argument("--pg-url", required=True, help="a PostgreSQL server: a fresh database is made and dropped")
    parser.add_argument("--configs", default="in_process:1,multiprocess:1,multiprocess:2", help="executor:shards,...")
    args = parser.parse_args()
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    if configs[0] != ("in_process", 1):
        configs.insert(0, ("in_process", 1))  # the baseline, always measured in the same run
    tmp = Path(tempfile.mkdtemp(prefix="scale_out_"))
    (tmp / "dagster.yaml").touch()
    server = Postgres(args.pg_url)
    url = server.fresh(FRESH_DATABASE)
    settings = replace(load_settings(), database_url=url, artifacts_dir=tmp / "artifacts")
    store = Store(url)
    ctx = steps.CycleContext(store, settings, CycleSettings.from_settings(settings))
    try:
        print(json.dumps({"rows": args.rows, "history_days": args.days, **build_history(ctx, args.rows, args.days)}))
        day = FIRST_DAY + timedelta(days=args.days)
        ingest_frame(day_frame(args.rows, day), store=store, settings=settings, today=day + timedelta(days=365))
        baseline = None
        for executor, shards in configs:
            figures = run_config(executor, shards, day, url, tmp, tmp / "artifacts")
            baseline = baseline or figures
            figures["ratio_wall_to_baseline"] = round(figures["wall_seconds"] / baseline["wall_seconds"], 2)
            figures["ratio_sharded_to_baseline"] = round(
                figures["sharded_steps_seconds"] / baseline["sharded_steps_seconds"], 2
            )
            print(json.dumps(figures), flush=True)
    finally:
        store.dispose()
        server.drop(FRESH_DATABASE)


if __name__ == "__main__":
    main()
