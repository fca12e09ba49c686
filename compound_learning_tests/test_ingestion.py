"""Ingestion: the data contract, upserts, quarantine, refusal of bad files (SQLite + PostgreSQL)."""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from compound_learning import steps
from compound_learning.config import load_settings
from compound_learning.core.contract import ContractError
from compound_learning.ingestion import ingest_file, ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import make_context, make_store, run_cli

TODAY = date(2024, 3, 1)


def _ingest(df, url, env, **kw):
    env(url)
    return ingest_frame(df, store=make_store(url), settings=load_settings(), today=TODAY, **kw)


def _table(url, table) -> pd.DataFrame:
    return make_store(url).read_frame(sa.select(table))


def test_good_file_loads_and_same_file_twice_changes_nothing(db_url, env, world):
    data, _ = world
    first = _ingest(data, db_url, env)
    assert first["accepted"] == len(data) and first["rejected"] == 0
    assert first["inserted"] == len(data) and first["replaced"] == 0
    assert first["days_touched"] == sorted(data["date"].unique().tolist())
    assert set(first["attribute_columns"]) == {"hook_type", "template", "audience", "format", "cta"}
    before = _table(db_url, t.performance).sort_values(["account_id", "creative_id", "date"]).reset_index(drop=True)

    second = _ingest(data, db_url, env)
    assert second["inserted"] == 0 and second["replaced"] == 0 and second["unchanged"] == len(data)
    assert second["days_touched"] == []
    after = _table(db_url, t.performance).sort_values(["account_id", "creative_id", "date"]).reset_index(drop=True)
    assert len(after) == len(data)
    pd.testing.assert_frame_equal(before.drop(columns=["updated_at"]), after.drop(columns=["updated_at"]))


def test_restated_rows_replace_old_values_and_touch_only_their_day(db_url, env, world):
    data, _ = world
    _ingest(data, db_url, env)
    day = data["date"].unique()[3]
    restated = data[data["date"] == day].head(5).copy()
    restated["clicks"] = restated["clicks"] // 2
    restated["revenue"] = restated["revenue"] + 10
    out = _ingest(restated, db_url, env)
    assert out["replaced"] == 5 and out["inserted"] == 0
    assert out["days_touched"] == [day]
    stored = _table(db_url, t.performance)
    stored["date"] = pd.to_datetime(stored["date"]).dt.strftime("%Y-%m-%d")
    merged = restated.merge(stored, on=["account_id", "creative_id", "date"], suffixes=("", "_db"))
    assert (merged["clicks"] == merged["clicks_db"]).all()
    assert len(stored) == len(data)


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_load(db_url, env):
    rows = pd.DataFrame(
        [
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c1",
                "impressions": "100",
                "clicks": "5",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c2",
                "impressions": "100",
                "clicks": "500",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c3",
                "impressions": "-1",
                "clicks": "0",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-13-45",
                "account_id": "a",
                "creative_id": "c4",
                "impressions": "100",
                "clicks": "1",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2023-12-31",
                "account_id": "a",
                "creative_id": "c5",
                "impressions": "100",
                "clicks": "1",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2030-01-01",
                "account_id": "a",
                "creative_id": "c6",
                "impressions": "100",
                "clicks": "1",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c7",
                "impressions": None,
                "clicks": "1",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c8",
                "impressions": "100",
                "clicks": "1",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c8",
                "impressions": "200",
                "clicks": "1",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c9",
                "impressions": "100",
                "clicks": "2",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c9",
                "impressions": "100",
                "clicks": "2",
                "spend": "3",
                "hook_type": "q",
            },
            {
                "date": "2024-01-02",
                "account_id": "a",
                "creative_id": "c10",
                "impressions": "10.5",
                "clicks": "2",
                "spend": "3",
                "hook_type": "q",
            },
        ]
    )
    out = _ingest(rows, db_url, env)
    assert out["accepted"] == 2  # c1 and one copy of the exact duplicate c9
    reasons = out["rejected_by_reason"]
    assert reasons["clicks exceed impressions"] == 1
    assert reasons["impressions is negative"] == 1
    assert reasons["date is not a valid YYYY-MM-DD date"] == 1
    assert reasons["date is before the partition start 2024-01-01"] == 1
    assert reasons["date is in the future (after 2024-03-01)"] == 1
    assert reasons["impressions is missing or not a number"] == 1
    assert reasons["duplicate key (account_id, creative_id, date) with different values in the same input"] == 2
    assert reasons["exact duplicate row in the same input"] == 1
    assert reasons["impressions is not a whole number"] == 1
    q = _table(db_url, t.quarantine)
    assert len(q) == 10
    assert json.loads(q.loc[q["reason"] == "clicks exceed impressions", "row"].iloc[0])["creative_id"] == "c2"
    assert sorted(_table(db_url, t.performance)["creative_id"]) == ["c1", "c9"]
    # Optional metrics that are absent are unknown (NULL), not zero.
    assert _table(db_url, t.performance)["revenue"].isna().all()


def test_file_missing_required_column_is_refused_whole(tmp_path, sqlite_url, env, world):
    data, _ = world
    env(sqlite_url)
    good = tmp_path / "good.csv"
    data.head(20).to_csv(good, index=False)
    ingest_file(good, store=make_store(sqlite_url), settings=load_settings(), today=TODAY)
    bad = tmp_path / "bad.csv"
    data.drop(columns=["clicks"]).to_csv(bad, index=False)
    with pytest.raises(ContractError, match=r"missing required column\(s\) \['clicks'\]"):
        ingest_file(bad, store=make_store(sqlite_url), settings=load_settings(), today=TODAY)
    assert len(_table(sqlite_url, t.performance)) == 20
    assert len(_table(sqlite_url, t.ingest_batches)) == 1  # nothing recorded for the refused file


def test_cli_ingest_reports_json_and_refuses_unreadable_files(tmp_path, sqlite_url, world):
    data, _ = world
    path = tmp_path / "perf.csv"
    data.head(50).assign(new_dimension="x").to_csv(path, index=False)
    run = run_cli(sqlite_url, "ingest", str(path), "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["accepted"] == 50 and "new_dimension" in summary["attribute_columns"]
    assert summary["days_touched"]

    (tmp_path / "empty.csv").write_text("")
    run = run_cli(sqlite_url, "ingest", str(tmp_path / "empty.csv"))
    assert run.returncode == 2 and "empty" in run.stderr and "nothing was written" in run.stderr
    run = run_cli(sqlite_url, "ingest", str(tmp_path / "nope.csv"))
    assert run.returncode == 2 and "not found" in run.stderr


def test_cli_reset_needs_yes_and_keeps_raw_data_unless_all(sqlite_url, env, world):
    data, _ = world
    _ingest(data.head(30), sqlite_url, env)
    store = make_store(sqlite_url)
    steps.compute_daily_stats(make_context(sqlite_url), date(2024, 1, 1))

    def cli(*args):
        return run_cli(sqlite_url, *args)

    refused = cli("reset")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert store.count_rows(t.creative_daily_stats) > 0
    assert cli("reset", "--yes").returncode == 0
    assert store.count_rows(t.creative_daily_stats) == 0 and store.count_rows(t.performance) == 30
    assert cli("reset", "--yes", "--all").returncode == 0
    assert store.count_rows(t.performance) == 0 and store.count_rows(t.quarantine) == 0
