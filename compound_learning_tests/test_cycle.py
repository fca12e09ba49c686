"""The daily lineage graph through Dagster: a day, a range (single-run backfill), re-runs,
restatements, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa

from compound_learning import queries, steps
from compound_learning.config import load_settings
from compound_learning.ingestion import ingest_frame
from compound_learning.orchestration.launch import run_in_process as run_cycle
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import (
    DERIVED_BY_DAY,
    START,
    day_rows,
    make_context,
    make_store,
    table_differences,
)


def _load(url, env, data):
    env(url)
    return ingest_frame(data, store=make_store(url), settings=load_settings(), today=date(2025, 1, 1))


def test_range_then_day_materialize_everything(db_url, env, world, instance):
    data, _ = world
    _load(db_url, env, data)
    end = START + timedelta(days=9)
    out = run_cycle(START, end, instance=instance)
    assert out["status"] == "SUCCESS", out["message"]
    store = make_store(db_url)
    for table, column in DERIVED_BY_DAY:
        days = set(pd.to_datetime(store.read_frame(sa.select(table.c[column]).distinct())[column]).dt.date)
        assert end in days, f"{table.name} has nothing for {end}"
    patterns = store.read_day(t.learning_patterns, end)
    assert {"ctr", "cvr", "roas"} <= set(patterns["metric"])
    assert (patterns["account_id"] == "*").any() and (patterns["account_id"] != "*").any()
    assert patterns["state"].isin(["insufficient_data", "learning", "significant", "contradicted"]).all()
    assert store.registry()["status"].eq("champion").sum() == 1
    # one materialization per partition of the range, from one run
    mats = instance.fetch_materializations(dg.AssetKey("learning_patterns"), limit=100).records
    assert {m.partition_key for m in mats} == {(START + timedelta(days=i)).isoformat() for i in range(10)}
    assert len({m.run_id for m in mats}) == 1
    # each partition carries its own figures (an observation per day: Dagster copies a range's
    # materialization metadata to every partition)
    for i in (0, 9):
        key = (START + timedelta(days=i)).isoformat()
        obs = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("performance_data"), asset_partitions=[key]), limit=1
        ).records
        rows = obs[0].asset_observation.metadata["rows"].value
        assert rows == (data["date"] == key).sum()
    logs = store.cycle_logs()
    assert logs.iloc[0]["status"] == "SUCCESS" and str(logs.iloc[0]["partition_end"])[:10] == end.isoformat()

    nxt = end + timedelta(days=1)
    assert run_cycle(nxt, nxt, instance=instance)["status"] == "SUCCESS"
    summary = steps.learn_patterns(make_context(db_url), nxt)
    assert summary["days_rolled_forward"] == 1  # yesterday's knowledge + today's evidence


def test_same_day_twice_gives_identical_tables(sqlite_url, env, world, instance):
    data, _ = world
    _load(sqlite_url, env, data)
    day = START + timedelta(days=7)
    assert run_cycle(START, day, instance=instance)["status"] == "SUCCESS"
    store = make_store(sqlite_url)
    before = {tb.name: day_rows(store, tb, col, day) for tb, col in DERIVED_BY_DAY}
    registry = store.registry()
    assert run_cycle(day, day, instance=instance)["status"] == "SUCCESS"
    for tb, col in DERIVED_BY_DAY:
        pd.testing.assert_frame_equal(before[tb.name], day_rows(store, tb, col, day), obj=tb.name)
    pd.testing.assert_frame_equal(registry, store.registry())  # no retrain without new evidence


def test_restated_old_day_rebuilds_later_knowledge(sqlite_url, env, world):
    data, _ = world
    _load(sqlite_url, env, data)
    store, ctx = make_store(sqlite_url), make_context(sqlite_url)
    days = [START + timedelta(days=i) for i in range(8)]
    for d in days:
        steps.compute_daily_stats(ctx, d)
        steps.learn_patterns(ctx, d)
    before = store.read_day(t.learning_patterns, days[-1]).set_index("pattern_id")
    # Restate day 3: every creative's clicks halved.
    restated = data[data["date"] == days[2].isoformat()].copy()
    restated["clicks"] //= 2
    summary = _load(sqlite_url, env, restated)
    assert summary["days_touched"] == [days[2].isoformat()]
    stats = steps.compute_daily_stats(ctx, days[2])
    assert stats["changed_since_last_run"] is True
    assert store.latest_cumulative() == days[1]  # later caches dropped
    steps.learn_patterns(ctx, days[2])
    out = steps.learn_patterns(ctx, days[-1])
    assert out["days_rolled_forward"] == 5
    after = store.read_day(t.learning_patterns, days[-1]).set_index("pattern_id")
    cum = store.read_snapshot(days[-1])
    total_clicks = data[pd.to_datetime(data["date"]).dt.date <= days[-1]]["clicks"].sum()
    assert (
        cum["clicks"].sum()
        == total_clicks - (data[data["date"] == days[2].isoformat()]["clicks"] - restated["clicks"]).sum()
    )
    assert not after["log_effect"].equals(before["log_effect"])


def test_a_day_with_nothing_ingested_skips_the_learning_and_the_next_day_learns_as_if_it_had_run(
    db_url, env, world, instance, tmp_path, monkeypatch
):
    """A run for a day on which nothing was ingested succeeds without learning: performance_data
    reports its checks but is not materialized, every step after it is skipped, nothing is
    written, and the run and the cycle log say why. With forgetting on, the next day estimates
    over the gap what it estimates when the empty day was run step by step (what the job did
    before); only the persistence streaks no longer count the empty day as a cycle."""
    monkeypatch.setenv("COMPOUND_LEARNING_HALF_LIFE_DAYS", "7")
    data, _ = world
    gap, nxt = START + timedelta(days=5), START + timedelta(days=6)
    kept = data[pd.to_datetime(data["date"]).dt.date != gap]
    plain_url = f"sqlite:///{tmp_path / 'plain.db'}"
    _load(plain_url, env, kept)
    steps.run_days(make_context(plain_url), START, nxt)  # every day step by step, the empty one too
    _load(db_url, env, kept)
    assert run_cycle(START, gap - timedelta(days=1), instance=instance)["status"] == "SUCCESS"

    out = run_cycle(gap, gap, instance=instance)
    assert out["status"] == "SUCCESS" and out["message"].startswith(steps.NOTHING_INGESTED), out
    records = instance.get_records_for_run(out["run_id"]).records
    events = [r.event_log_entry.dagster_event for r in records if r.event_log_entry.is_dagster_event]
    skipped = {e.step_key for e in events if e.event_type == dg.DagsterEventType.STEP_SKIPPED}
    assert skipped == set(steps.CYCLE_STEPS) - {"performance_data"}
    assert not [e for e in events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
    checks = [e.event_specific_data for e in events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    assert sorted(c.check_name for c in checks) == ["quarantine_rate", "stored_rows_valid"]
    assert all(c.passed for c in checks)
    store = make_store(db_url)
    for table, column in DERIVED_BY_DAY:
        assert day_rows(store, table, column, gap).empty, f"{table.name} has rows for the empty day"
    log = store.cycle_logs().iloc[0]
    assert log["status"] == "SUCCESS" and steps.NOTHING_INGESTED in log["message"]
    assert json.loads(log["counts"])["steps_skipped"] == len(skipped)
    assert queries.dashboard(store)["last_cycles"][0]["message"] == out["message"]  # the CLI, API and page show it

    assert run_cycle(nxt, nxt, instance=instance)["status"] == "SUCCESS"
    plain = make_store(plain_url)
    learned = [t.account_baselines, t.creative_dna, t.cross_account_insights]
    ours, theirs = (
        {tb.name: day_rows(s, tb, "as_of", nxt) for tb in [*learned, t.learning_patterns]} for s in (store, plain)
    )
    # The estimates are the same; a claim's persistence counts cycles with evidence, and the
    # step-by-step run counted the empty day's re-test of unchanged evidence as one.
    streaks = {
        name: frame.pop("streak").abs()
        for name, frame in (("ours", ours[t.learning_patterns.name]), ("theirs", theirs[t.learning_patterns.name]))
    }
    states = ours[t.learning_patterns.name].pop("state"), theirs[t.learning_patterns.name].pop("state")
    assert not table_differences(ours, theirs), table_differences(ours, theirs)
    assert len(ours[t.learning_patterns.name]) and (streaks["theirs"] - streaks["ours"]).isin([0, 1]).all()
    differ = states[0] != states[1]
    assert differ.any() and set(states[0][differ]) == {"learning"} and set(states[1][differ]) == {"significant"}


def test_failed_run_is_logged_and_leaves_data_intact(sqlite_url, env, world, monkeypatch, instance):
    data, _ = world
    _load(sqlite_url, env, data)
    store = make_store(sqlite_url)

    def boom(*_a, **_k):
        raise RuntimeError("simulated failure in the learning step")

    monkeypatch.setitem(steps.CYCLE_STEPS, "learning_patterns", boom)
    out = run_cycle(START, START, instance=instance)
    assert out["status"] == "FAILURE"
    logs = store.cycle_logs()
    assert logs.iloc[0]["status"] == "FAILURE" and "simulated failure" in logs.iloc[0]["message"]
    assert store.count_rows(t.performance) == len(data)
    assert json.loads(logs.iloc[0]["counts"])["steps_failed"] >= 1


def test_data_quality_checks_show_on_their_assets(sqlite_url, env, world, instance):
    data, _ = world
    day = data["date"].min()
    bad = data[data["date"] == day].head(40).assign(clicks=-1, creative_id=lambda f: f["creative_id"] + "_bad")
    _load(sqlite_url, env, pd.concat([data, bad]))
    start = date.fromisoformat(day)
    assert run_cycle(start, start, instance=instance)["status"] == "SUCCESS"  # WARN does not block

    def last(asset, check):
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(asset), check), limit=1
        )
        return history[0].status.value

    assert last("daily_stats", "rows_match_source") == "SUCCEEDED"
    assert last("performance_data", "stored_rows_valid") == "SUCCEEDED"
    assert last("performance_data", "quarantine_rate") == "FAILED"

    # a day whose every row was refused is not a day without data: it is processed, and its
    # warning says what happened to its rows
    refused = START + timedelta(days=20)
    rows = data[data["date"] == day].head(5).assign(date=refused.isoformat(), impressions=-3)
    _load(sqlite_url, env, rows)
    out = run_cycle(refused, refused, instance=instance)
    assert out["status"] == "SUCCESS" and not out["message"], out
    logs = [r.user_message for r in instance.all_logs(out["run_id"]) if not r.is_dagster_event]
    assert f"{refused}: no valid rows for this day: all 5 rows given for it were quarantined" in logs, logs
    assert last("performance_data", "quarantine_rate") == "FAILED"
    materialized = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("learning_patterns"), asset_partitions=[refused.isoformat()]),
        limit=1,
    ).records
    assert materialized


def test_old_snapshots_are_pruned_but_weekly_restart_points_kept(sqlite_url, env, world):
    data, _ = world
    _load(sqlite_url, env, data)
    store, ctx = make_store(sqlite_url), make_context(sqlite_url, snapshot_daily_retention_days=3)
    days = [START + timedelta(days=i) for i in range(12)]
    for d in days:
        steps.compute_daily_stats(ctx, d)
        steps.learn_patterns(ctx, d)
    kept = _snapshot_days(store)
    assert kept == {d for d in days if d >= days[-1] - timedelta(days=3) or d.weekday() == 6}
    assert date(2024, 1, 7) in kept  # a Sunday
    # a restated old day rebuilds from the Sunday before it, not from scratch
    restated = data[data["date"] == "2024-01-09"].head(3).assign(clicks=0)
    _load(sqlite_url, env, restated)
    steps.compute_daily_stats(ctx, date(2024, 1, 9))
    assert steps.learn_patterns(ctx, date(2024, 1, 9))["days_rolled_forward"] == 2


def test_snapshots_stored_as_increments_read_as_the_full_ones(sqlite_url, env, world, tmp_path, monkeypatch):
    """Between weekly full snapshots a day stores only the increments of the cells that ran since
    the base; read back, each day's knowledge and what was learned from it are those of a run that
    stores every day in full."""
    from compound_learning.storage import store as store_module

    data, _ = world
    days = [START + timedelta(days=i) for i in range(10)]
    runs = {}
    for name, chain in (("increments", store_module.SNAPSHOT_CHAIN_DAYS), ("full", 1)):
        monkeypatch.setattr(store_module, "SNAPSHOT_CHAIN_DAYS", chain)
        url = sqlite_url if name == "increments" else f"sqlite:///{tmp_path / 'full.db'}"
        _load(url, env, data)
        ctx = make_context(url)
        summaries = {}
        for d in days:
            steps.compute_daily_stats(ctx, d)
            summaries[d] = steps.learn_patterns(ctx, d)
        runs[name] = (ctx.store, summaries)
    (store, summaries), (full_store, full_summaries) = runs["increments"], runs["full"]
    assert [d for d in days if summaries[d]["snapshot_full"]] == [days[0], date(2024, 1, 7)]  # the first day, a Sunday
    assert all(s["snapshot_full"] for s in full_summaries.values())
    for d in days:
        cells, expected = store.read_snapshot(d), full_store.read_snapshot(d)
        pd.testing.assert_frame_equal(cells, expected, check_dtype=False, rtol=1e-12, obj=str(d))
        assert summaries[d]["cumulative_cells"] == full_summaries[d]["cumulative_cells"] == len(expected)
        if not summaries[d]["snapshot_full"]:
            assert summaries[d]["snapshot_rows_written"] < len(expected)
    patterns = store.read_day(t.learning_patterns, days[-1]).set_index("pattern_id").sort_index()
    expected = full_store.read_day(t.learning_patterns, days[-1]).set_index("pattern_id").sort_index()
    assert list(patterns.index) == list(expected.index)
    for column in ("log_effect", "ci_low", "ci_high"):
        np.testing.assert_allclose(patterns[column], expected[column], rtol=1e-7, atol=1e-9, err_msg=column)
    totals = store.creative_totals(days[-1]).drop(columns="last_seen")
    pd.testing.assert_frame_equal(totals, full_store.creative_totals(days[-1]).drop(columns="last_seen"), rtol=1e-12)


def test_the_snapshot_of_a_bursts_first_day_outlives_the_daily_retention(sqlite_url, env, world):
    """Relearning after a burst splits the evidence at the end of the burst's first day, for as
    long as the burst is the latest: that day's snapshot is kept like a Sunday's."""
    data, _ = world
    _load(sqlite_url, env, data)
    store, ctx = make_store(sqlite_url), make_context(sqlite_url, snapshot_daily_retention_days=3)
    burst = date(2024, 1, 3)  # a Wednesday
    for d in [START + timedelta(days=i) for i in range(12)]:
        steps.compute_daily_stats(ctx, d)
        steps.learn_patterns(ctx, d)
        if d == burst:  # as the drift step records a burst's first day
            with store.transaction() as conn:
                conn.execute(t.evidence_drift.update().where(t.evidence_drift.c.as_of == d).values(burst_start=d))
    kept = _snapshot_days(store)
    assert burst in kept and date(2024, 1, 4) not in kept
    # the burst's day is stored as increments: the full snapshot it builds on is kept with it
    assert store.snapshot_base(burst) == START and START in kept
    upto = data[pd.to_datetime(data["date"]).dt.date <= burst]
    assert store.read_snapshot(burst)["clicks"].sum() == upto["clicks"].sum()


def _snapshot_days(store) -> set[date]:
    """The days with a cumulative snapshot, full or stored as increments."""
    stored = store.read_frame(sa.select(t.creative_cumulative_stats.c.as_of).distinct())["as_of"]
    registered = store.read_frame(sa.select(t.cumulative_snapshots.c.as_of))["as_of"]
    return set(pd.to_datetime(pd.concat([stored, registered])).dt.date)


def test_cli_cycle_over_a_range_reports_progress(sqlite_url, env, world):
    """Long commands say where they are: each step's days on stderr, with the time left."""
    from compound_learning_tests.conftest import run_cli

    data, _ = world
    _load(sqlite_url, env, data[data["date"] <= "2024-01-04"])
    run = run_cli(sqlite_url, "cycle", "--start", "2024-01-01", "--end", "2024-01-04")
    assert run.returncode == 0, run.stderr
    for step in ("performance_data", "learning_patterns", "improvement_snapshots"):
        # the estimate is the mean seconds of a day so far: a number, but not one a test can fix
        assert re.search(rf"{step}: day 4/4 \(2024-01-04\), about \d+ s left in this step", run.stderr), run.stderr


def test_an_account_without_new_evidence_reuses_its_fits_and_the_patterns_do_not_change(
    sqlite_url, env, world, monkeypatch
):
    """Without forgetting, an account that sent nothing on a day has the cells it had the day
    before: its per-account fits are not run again but taken from the fit cache, and the day's
    patterns are exactly those of fitting every account afresh. A change of the fitting code
    (its digest) fits everyone again."""
    data, _ = world
    last = pd.to_datetime(data["date"]).max().date()
    idle = ["acct_001", "acct_002"]
    quiet = data[~((pd.to_datetime(data["date"]).dt.date == last) & data["account_id"].isin(idle))]
    _load(sqlite_url, env, quiet)
    store, ctx = make_store(sqlite_url), make_context(sqlite_url)
    fitted: list[str] = []
    fit_accounts = steps.fit_accounts

    def spy(coded, settings, accounts=None):
        chosen = [a for a in map(str, coded.accounts) if accounts is None or accounts(a)]
        fitted.extend(chosen)
        return fit_accounts(coded, settings, accounts)

    monkeypatch.setattr(steps, "fit_accounts", spy)
    steps.run_days(ctx, START, last, only=["daily_stats"])
    steps.learn_patterns(ctx, last - timedelta(days=1))
    fitted.clear()
    summary = steps.learn_patterns(ctx, last)
    accounts = sorted(quiet["account_id"].unique())
    assert summary["account_fits_reused"] == len(idle) and summary["account_fits_cached"] == len(accounts)
    assert sorted(fitted) == sorted(set(accounts) - set(idle))  # the idle accounts were not fitted
    cached = day_rows(store, t.learning_patterns, "as_of", last)
    assert (cached["account_id"].isin(idle)).any()  # their patterns are there, from the cache

    # the same day with an empty cache: every account fitted, the same patterns to the bit
    with store.transaction() as conn:
        conn.execute(t.account_fit_cache.delete())
    fitted.clear()
    assert steps.learn_patterns(ctx, last)["account_fits_reused"] == 0
    assert sorted(fitted) == accounts
    pd.testing.assert_frame_equal(cached, day_rows(store, t.learning_patterns, "as_of", last))

    # another version of the fitting code: nothing is reused
    steps.learn_patterns(ctx, last - timedelta(days=1))
    monkeypatch.setattr(steps, "fit_code_version", lambda: "another version")
    assert steps.learn_patterns(ctx, last)["account_fits_reused"] == 0
