"""``POST /api/compound-learning/score`` timed from outside, on a warm server.

A simulated world is learned on a throw-away SQLite store (every cycle step, so a champion CTR
model exists); ``compound-learning serve`` is started on it as a separate process; after a
warm-up, sequential requests are timed from this process over loopback. Printed next to the
same server's ``GET /health`` (the framework and one database round trip: the bare floor of any
request) and the ``score`` read model called in-process (no HTTP), with the server's peak memory.

    python -m compound_learning.benchmarks.serving [--requests 300] [--days 28] [--accounts 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

from compound_learning import queries, steps
from compound_learning.config import CycleSettings, load_settings
from compound_learning.core.simulate import WorldConfig, simulate
from compound_learning.ingestion import ingest_frame
from compound_learning.storage.store import Store

CREATIVES = [
    {"hook_type": "question", "audience": "retargeting", "template": "ugc"},
    {"hook_type": "statistic", "format": "video"},
    {"hook_type": "never_seen", "cta": "shop_now"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _learn(root: Path, days: int, accounts: int) -> dict[str, str]:
    env = {
        "COMPOUND_LEARNING_DATABASE_URL": f"sqlite:///{root / 'bench.db'}",
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(root / "artifacts"),
        "COMPOUND_LEARNING_STATE_DIR": str(root / "state"),
    }
    settings = replace(
        load_settings(),
        database_url=env["COMPOUND_LEARNING_DATABASE_URL"],
        artifacts_dir=Path(env["COMPOUND_LEARNING_ARTIFACTS_DIR"]),
    )
    store = Store(settings.database_url)
    data, _ = simulate(WorldConfig(days=days, accounts=accounts, seed=11, start=date(2024, 1, 1)))
    ingest_frame(data, store=store, settings=settings, today=date(2100, 1, 1))
    ctx = steps.CycleContext(store, settings, replace(CycleSettings.from_settings(settings), min_new_clicks=0))
    steps.run_days(ctx, date(2024, 1, 1), date(2024, 1, 1) + timedelta(days=days - 1))
    store.dispose()
    return env


def _time(call, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=100)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(q[94], 2),
        "p99_ms": round(q[98], 2),
        "requests": len(ms),
    }


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def run(requests: int = 300, days: int = 28, accounts: int = 10) -> dict:
    with tempfile.TemporaryDirectory(prefix="cl_serving_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        env = _learn(root, days, accounts)
        learn_s = time.perf_counter() - started
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "compound_learning.cli", "serve", "--port", str(port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("the server did not start")
            bodies = [json.dumps({"account_id": "acct_001", "creative": c}).encode() for c in CREATIVES]

            def score(i=[0]):  # noqa: B006 - a counter to cycle through the creatives
                i[0] += 1
                req = urllib.request.Request(
                    f"{base}/api/compound-learning/score",
                    data=bodies[i[0] % len(bodies)],
                    headers={"content-type": "application/json"},
                )
                answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
                assert "error" not in answer["model"], answer["model"]

            def health():
                urllib.request.urlopen(f"{base}/health", timeout=30).read()

            _time(score, 20)  # warm: the champion is loaded and verified on the first request
            _time(health, 20)
            score_ms, health_ms = [], []
            for _ in range(requests // 50):  # alternate, so load drifts hit both alike
                score_ms += _time(score, 50)
                health_ms += _time(health, 50)
            store = Store(env["COMPOUND_LEARNING_DATABASE_URL"])
            in_process = _time(lambda: queries.score(store, "acct_001", CREATIVES[0]), 50)
            store.dispose()
            peak = _peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    s, h = _summary(score_ms), _summary(health_ms)
    return {
        "machine": {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]},
        "world": {"days": days, "accounts": accounts, "learn_seconds": round(learn_s, 1)},
        "score": s,
        "health_baseline": h,
        "score_in_process": _summary(in_process),
        "score_over_health_p50": round(s["p50_ms"] / h["p50_ms"], 2),
        "server_peak_rss_mb": peak,
        "target_p50_ms": 50,
        "target_met": s["p50_ms"] <= 50,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--accounts", type=int, default=10)
    args = parser.parse_args()
    result = run(args.requests, args.days, args.accounts)
    print(json.dumps(result, indent=2))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
