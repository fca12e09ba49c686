"""Two concurrent materializations of one day on PostgreSQL do not double-count
(SQLite serializes writers and would hide the bug, so this runs on PostgreSQL only)."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pandas as pd
import sqlalchemy as sa

from compound_learning import steps
from compound_learning.config import load_settings
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import START, make_context, make_store


def _concurrently(fn, n=2):
    barrier = threading.Barrier(n)
    errors, results = [], []

    def worker():
        try:
            barrier.wait()
            results.append(fn())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results, errors


def test_concurrent_ingestion_of_the_same_file_counts_once(pg_url, env, world):
    env(pg_url)
    data, _ = world
    store, settings = make_store(pg_url), load_settings()
    results, errors = _concurrently(lambda: ingest_frame(data, store=store, settings=settings, today=date(2025, 1, 1)))
    assert not errors, errors
    assert sorted(r["inserted"] for r in results) == [0, len(data)]
    assert store.count_rows(t.performance) == len(data)


def test_concurrent_materializations_of_one_day_do_not_double_count(pg_url, env, world):
    env(pg_url)
    data, _ = world
    store, settings = make_store(pg_url), load_settings()
    ingest_frame(data, store=store, settings=settings, today=date(2025, 1, 1))
    ctx = make_context(pg_url)
    day = START + timedelta(days=4)
    for d in [START + timedelta(days=i) for i in range(4)]:
        steps.compute_daily_stats(ctx, d)
        steps.learn_patterns(ctx, d)

    def one_day():
        steps.compute_daily_stats(ctx, day)
        steps.learn_patterns(ctx, day)
        steps.build_knowledge_graph(ctx, day)
        steps.snapshot_improvement(ctx, day)

    _, errors = _concurrently(one_day)
    assert not errors, errors
    day_rows = data[data["date"] == day.isoformat()]
    assert store.count_rows(t.creative_daily_stats, date=day) == len(day_rows)
    cum = store.read_snapshot(day)
    assert not cum.duplicated(["account_id", "creative_id", "dow", "age_bucket"]).any()
    upto = data[pd.to_datetime(data["date"]).dt.date <= day]
    assert cum["clicks"].sum() == upto["clicks"].sum()  # counted once, not twice
    patterns = store.read_day(t.learning_patterns, day)
    assert not patterns["pattern_id"].duplicated().any()
    assert store.count_rows(t.improvement_snapshots, date=day) == day_rows["account_id"].nunique()


def test_advisory_lock_serializes_writers(pg_url):
    store = make_store(pg_url)
    order = []

    def hold(tag):
        with store.transaction(lock_key="same-partition") as conn:
            order.append(f"{tag}-in")
            conn.execute(sa.text("SELECT pg_sleep(0.3)"))
            order.append(f"{tag}-out")

    _, errors = _concurrently(lambda: hold(threading.get_ident()))
    assert not errors
    # never interleaved: in, out, in, out
    assert [o.split("-")[1] for o in order] == ["in", "out", "in", "out"]
