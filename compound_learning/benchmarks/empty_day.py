"""A cycle on a day with no data next to the bare baseline: one trivial asset materialized in
process on the same Dagster instance. Each run is a fresh Python process timed from start to
exit (imports included, as a scheduled run pays them); the two alternate, medians reported.

    python -m compound_learning.benchmarks.empty_day [--repeats 5]
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
from pathlib import Path

TRIVIAL = """
import dagster as dg

@dg.asset
def one():
    return 1

instance = dg.DagsterInstance.get()
assert dg.materialize([one], instance=instance).success
"""

EMPTY_DAY = """
from datetime import date
import dagster as dg
from compound_learning.orchestration.launch import run_in_process

out = run_in_process(date(2026, 1, 5), date(2026, 1, 5), instance=dg.DagsterInstance.get())
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


def run(repeats: int = 5) -> dict:
    with tempfile.TemporaryDirectory(prefix="empty_day_") as tmp:  # the instance and databases go with it
        return _measure(Path(tmp), repeats)


def _measure(home: Path, repeats: int) -> dict:
    (home / "dagster.yaml").write_text(
        f"storage:\n  sqlite:\n    base_dir: {home}/dagster\ntelemetry:\n  enabled: false\n"
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COMPOUND_LEARNING_DATABASE_URL": f"sqlite:///{home}/cl.db",
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(home / "artifacts"),
        "COMPOUND_LEARNING_PARTITION_START": "2026-01-01",
    }
    _timed(TRIVIAL, env), _timed(EMPTY_DAY, env)  # warm the file cache and create the databases
    trivial, empty = [], []
    for _ in range(repeats):
        trivial.append(_timed(TRIVIAL, env))
        empty.append(_timed(EMPTY_DAY, env))
    t_s = statistics.median(s for s, _ in trivial)
    e_s = statistics.median(s for s, _ in empty)
    return {
        "repeats": repeats,
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
    print(json.dumps(run(parser.parse_args().repeats), indent=2))


if __name__ == "__main__":
    main()
