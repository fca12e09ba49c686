"""The day's roll-up inside PostgreSQL (storage.rollup) writes the rows the pandas path writes.

Each test runs a step twice on the same store, once with ``rollup_in_database`` off (pandas)
and once on (SQL), and compares the tables row by row; together they cover a day with missing
revenue, a day without data between two with data, forgetting on (decayed cells dropped), and a
restatement (the SQL path sees the change and drops the stale snapshots).
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from compound_learning import steps
from compound_learning.config import load_settings
from compound_learning.core import recommend, stats
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import START, day_rows, make_context, make_store, small_world

DAYS = 8
EMPTY_DAY = START + timedelta(days=4)  # no rows that day: forgetting still applies


@pytest.fixture
def loaded_pg(pg_url, env):
    """A PostgreSQL store holding a small world with one day left out and one account that sends
    no conversions or revenue (unknown, not zero)."""
    data, _ = small_world(days=DAYS, accounts=4, creatives=12, seed=3)
    data = data[pd.to_datetime(data["date"]).dt.date != EMPTY_DAY].copy()
    env(pg_url)
    silent = data["account_id"] == "acct_001"
    for part in (data[~silent], data[silent].drop(columns=["conversions", "revenue"])):
        ingest_frame(part, store=make_store(pg_url), settings=load_settings(), today=date(2025, 1, 1))
    return pg_url, data


def _both_paths(url: str, run, tables, day: date, **cfg) -> tuple[list[pd.DataFrame], list[pd.DataFrame], dict]:
    """``run(ctx, day)`` in pandas, then in SQL; each path's tables for ``day``, and the SQL summary."""
    out = []
    summaries = []
    for in_database in (False, True):
        ctx = make_context(url, rollup_in_database=in_database, **cfg)
        summaries.append(run(ctx, day))
        out.append([day_rows(ctx.store, table, column, day) for table, column in tables])
    return out[0], out[1], summaries


def _assert_same_rows(pandas_rows: pd.DataFrame, sql_rows: pd.DataFrame, name: str) -> None:
    assert len(sql_rows) == len(pandas_rows), name
    pd.testing.assert_frame_equal(
        sql_rows.reset_index(drop=True),
        pandas_rows.reset_index(drop=True),
        check_dtype=False,
        check_exact=False,
        rtol=1e-12,
        obj=name,
    )


def _planner_knows(url: str, table, column: str, day: date, conn=None) -> bool:
    """Whether PostgreSQL's planner statistics of ``table.column`` hold ``day`` (``ANALYZE`` ran
    after it was written: ``Database.refresh_statistics``), as ``conn`` sees them if given."""
    import sqlalchemy as sa

    if conn is None:
        store = make_store(url)
        with store.engine.connect() as own:
            return _planner_knows(url, table, column, day, own)
    values = conn.execute(
        sa.text(
            "SELECT coalesce(most_common_vals::text, '') || coalesce(histogram_bounds::text, '') "
            "FROM pg_stats WHERE tablename = :table AND attname = :column"
        ),
        {"table": table.name, "column": column},
    ).scalar()
    return values is not None and day.isoformat() in values


def test_a_new_snapshot_day_is_known_to_the_planner_before_the_collapse_reads_it(loaded_pg):
    """Inside the roll-forward's transaction the statistics already hold the new day: taken
    before it, they say it has no rows, and the collapse's IN-subquery over it was planned as a
    nested loop that re-aggregated the whole day for each of its cells (nine minutes and more for
    a 2.8M-cell snapshot)."""
    url, _ = loaded_pg
    ctx = make_context(url)
    nxt = START + timedelta(days=1)
    steps.run_days(ctx, START, nxt, only=["daily_stats"])
    steps._prepare_patterns(ctx, START)
    assert not _planner_knows(url, t.creative_cumulative_stats, "as_of", nxt)
    with ctx.store.transaction() as conn:
        ctx.store.roll_forward_in_database(conn, START, nxt, 1.0)
        assert _planner_knows(url, t.creative_cumulative_stats, "as_of", nxt, conn)


def test_daily_stats_in_sql_equal_pandas(loaded_pg):
    url, data = loaded_pg
    tables = [(t.creative_daily_stats, "date"), (t.attribute_daily_stats, "date")]
    assert make_context(url).store.rolls_up_in_database(True)
    for offset in range(DAYS):
        day = START + timedelta(days=offset)
        pandas_rows, sql_rows, (pandas_summary, sql_summary) = _both_paths(url, steps.compute_daily_stats, tables, day)
        for (table, _), a, b in zip(tables, pandas_rows, sql_rows, strict=True):
            _assert_same_rows(a, b, f"{table.name} {day}")
        # the same figures, and the second run of a day saw nothing change
        assert {k: v for k, v in sql_summary.items() if k != "seconds"} == {
            **{k: v for k, v in pandas_summary.items() if k != "seconds"},
            "changed_since_last_run": False,
        }
        expected = data[pd.to_datetime(data["date"]).dt.date == day]
        assert sql_summary["source_rows"] == len(expected)
        assert _planner_knows(url, t.creative_daily_stats, "date", day) == (day != EMPTY_DAY)
    pairs = make_store(url).read_frame(t.attribute_daily_stats.select())
    assert (pairs["dimension2"] != stats.NO_DIMENSION).any()
    assert pairs["revenue"].isna().any() and pairs["revenue"].notna().any()


@pytest.mark.parametrize("half_life", [0.0, 0.3])  # 0.3: a cell loses 90% a day
def test_roll_forward_in_sql_equals_pandas(loaded_pg, half_life):
    url, _ = loaded_pg
    steps.run_days(make_context(url), START, START + timedelta(days=DAYS - 1), only=["daily_stats"])
    snapshot = [(t.creative_cumulative_stats, "as_of")]
    for offset in range(DAYS):
        day = START + timedelta(days=offset)
        (pandas_rows,), (sql_rows,), (pandas_summary, sql_summary) = _both_paths(
            url, steps._prepare_patterns, snapshot, day, half_life_days=half_life
        )
        _assert_same_rows(pandas_rows, sql_rows, f"snapshot {day}")
        # the next steps' reads of the day are planned knowing it
        assert _planner_knows(url, t.creative_cumulative_stats, "as_of", day)
        # without forgetting the days between weekly full snapshots store the increments since
        full = bool(half_life) or offset == 0 or day.weekday() == 6
        assert sql_summary["snapshot_full"] is full and pandas_summary["snapshot_full"] is full
        assert sql_summary["snapshot_rows_written"] == len(sql_rows)
        cells = make_store(url).read_snapshot(day)
        assert sql_summary["cumulative_cells"] == len(cells) == pandas_summary["cumulative_cells"]
        assert sql_summary["creatives"] == len(cells[["account_id", "creative_id"]].drop_duplicates())
        if not full:
            assert len(sql_rows) < len(cells)
        if offset:  # day 0 has no snapshot before it: the pandas path starts the knowledge
            assert sql_summary["days_rolled_forward"] == 1
    if half_life:  # after the empty day the cells of creatives that stopped are forgotten
        assert min(sql_rows["impressions"]) >= 1.0


def test_restatement_is_seen_by_the_sql_path(loaded_pg, env):
    url, data = loaded_pg
    ctx = make_context(url)
    days = [START + timedelta(days=i) for i in range(3)]
    steps.run_days(ctx, days[0], days[-1], only=["daily_stats", "learning_patterns"])
    store = ctx.store
    assert store.latest_cumulative() == days[-1]
    again = steps.compute_daily_stats(ctx, days[1])
    assert again["changed_since_last_run"] is False
    assert store.latest_cumulative() == days[-1], "an unchanged day dropped the snapshots"
    restated = data[pd.to_datetime(data["date"]).dt.date == days[1]].head(3).copy()
    restated["clicks"] = restated["clicks"] + 1
    restated["impressions"] = restated["impressions"] + 10
    ingest_frame(restated, store=store, settings=load_settings(), today=date(2025, 1, 1))
    summary = steps.compute_daily_stats(ctx, days[1])
    assert summary["changed_since_last_run"] is True
    assert store.latest_cumulative() == days[0], "the stale snapshots were kept"
    row = day_rows(store, t.creative_daily_stats, "date", days[1])
    first = restated.iloc[0]
    mine = row[(row["account_id"] == first["account_id"]) & (row["creative_id"] == first["creative_id"])]
    assert int(mine["clicks"].iloc[0]) == int(first["clicks"])


def test_day_summary_counts_in_the_database(db_url, env):
    data, _ = small_world(days=3, accounts=3, creatives=8, seed=5)
    env(db_url)
    ingest_frame(data, store=make_store(db_url), settings=load_settings(), today=date(2025, 1, 1))
    ctx = make_context(db_url)
    day = START + timedelta(days=1)
    summary = steps.check_performance_day(ctx, day)
    rows = data[pd.to_datetime(data["date"]).dt.date == day]
    assert summary["rows"] == len(rows)
    assert summary["accounts"] == rows["account_id"].nunique()
    assert summary["creatives"] == rows["creative_id"].nunique()
    assert summary["impressions"] == int(rows["impressions"].sum())
    assert summary["clicks"] == int(rows["clicks"].sum())
    assert summary["spend"] == pytest.approx(float(rows["spend"].sum()))
    assert summary["data_version"] >= 1 and summary["invariant_violations"] == 0
    empty = steps.check_performance_day(ctx, START - timedelta(days=1))
    assert empty["rows"] == 0 and empty["spend"] == 0.0 and empty["data_version"] == 0


def test_fatigue_slope_in_sql_equals_pandas(loaded_pg):
    """The recommendations' fatigue slope from sums the database computes equals the one fitted
    in pandas on the window's rows: the same within-creative sums, so the same slope."""
    url, _ = loaded_pg
    ctx = make_context(url, rollup_in_database=False)
    for offset in range(DAYS):
        steps.compute_daily_stats(ctx, START + timedelta(days=offset))
    end = START + timedelta(days=DAYS - 1)
    rows = ctx.store.read_range(
        t.creative_daily_stats, START, end, columns=["account_id", "creative_id", "date", "impressions", "clicks"]
    )
    in_sql, in_pandas = ctx.store.fatigue_sums_in_database(START, end), recommend.fatigue_sums(rows)
    assert in_sql[0] > 0 and in_sql[1] != 0
    assert in_sql == pytest.approx(in_pandas, rel=1e-9)
    on, off = (steps._fatigue(make_context(url, rollup_in_database=flag), end) for flag in (True, False))
    assert on["fatigue"] == pytest.approx(off["fatigue"], rel=1e-9, abs=1e-12)
    assert ctx.store.fatigue_sums_in_database(end + timedelta(days=30), end + timedelta(days=40)) == (0.0, 0.0)
