"""The contract's bounds (issue 11, items 1, 4, 5, 7): every input is accepted or refused the same
way on SQLite and PostgreSQL, with a reason that names the rule, and nothing stored is touched."""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from compound_learning.config import load_settings
from compound_learning.core.contract import MAX_ATTRIBUTE_NAME_LENGTH, MAX_COUNT, MAX_ID_LENGTH, ContractError
from compound_learning.ingestion import ingest_file
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import make_store

TODAY = date(2024, 3, 1)
HEADER = "date,account_id,creative_id,impressions,clicks,spend,hook_type"
GOOD = "2024-01-02,a,c0,100,5,3,q"


def _ingest(tmp_path, url, env, text: str, name: str = "in.csv") -> dict:
    env(url)
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return ingest_file(path, store=make_store(url), settings=load_settings(), today=TODAY)


def _stored(url) -> pd.DataFrame:
    frame = make_store(url).read_frame(sa.select(t.performance))
    return frame.drop(columns=["updated_at", "batch_id"]).sort_values(["creative_id"]).reset_index(drop=True)


def _lines(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def test_out_of_range_counts_and_money_are_quarantined_by_name(tmp_path, db_url, env):
    _ingest(tmp_path, db_url, env, _lines(GOOD), "first.csv")
    before = _stored(db_url)
    out = _ingest(
        tmp_path,
        db_url,
        env,
        _lines(
            "2024-01-02,a,c1,1e308,5,3,q",
            "2024-01-02,a,c2,9223372036854775808,5,3,q",
            "2024-01-02,a,c3,1e19,5,3,q",
            f"2024-01-02,a,c4,{MAX_COUNT},5,3,q",  # the bound itself is allowed
            "2024-01-02,a,c5,100,5,1e308,q",
            "2024-01-02,a,c0,1e19,5,3,q",  # a restatement of a stored row that breaks the contract
        ),
    )
    assert out["accepted"] == 1 and out["rejected"] == 5
    reasons = out["rejected_by_reason"]
    assert reasons[f"impressions is above the contract's maximum of {MAX_COUNT:,}"] == 4
    assert reasons["spend is above the contract's maximum of 1,000,000,000,000"] == 1
    assert out["rejected_lines"]["spend is above the contract's maximum of 1,000,000,000,000"] == [6]
    stored = _stored(db_url)
    assert stored["impressions"].min() >= 0 and stored["impressions"].max() == MAX_COUNT
    pd.testing.assert_frame_equal(stored[stored["creative_id"] == "c0"].reset_index(drop=True), before)


def test_long_and_control_character_values_are_refused_the_same_on_both_databases(tmp_path, db_url, env):
    long_id = "x" * (MAX_ID_LENGTH + 1)
    out = _ingest(
        tmp_path,
        db_url,
        env,
        _lines(
            f"2024-01-02,{long_id},c1,100,5,3,q",
            f"2024-01-02,a,{long_id},100,5,3,q",
            f"2024-01-02,a,c3,100,5,3,{'v' * 201}",
            "2024-01-02,a\x00b,c4,100,5,3,q",
            "2024-01-02,a,c5,100,5,3,q\x01",
            f"2024-01-02,{'é' * MAX_ID_LENGTH},c6,100,5,3,{'ü' * 200}",  # at the bounds, in characters
        ),
    )
    assert out["rejected_by_reason"] == {
        f"account_id is longer than {MAX_ID_LENGTH} characters": 1,
        f"creative_id is longer than {MAX_ID_LENGTH} characters": 1,
        "attribute hook_type is longer than 200 characters": 1,
        "account_id contains a control character": 1,
        "attribute hook_type contains a control character": 1,
    }
    assert _stored(db_url)["creative_id"].tolist() == ["c6"]
    quarantined = make_store(db_url).read_frame(sa.select(t.quarantine))
    assert sorted(quarantined["line"].tolist()) == [2, 3, 4, 5, 6]


def test_learning_runs_on_values_at_the_bounds(tmp_path, db_url, env):
    """Keys composed from bounded values (pattern ids, DNA pair rows) must fit as well."""
    from compound_learning import steps
    from compound_learning_tests.conftest import make_context, small_world

    data, _ = small_world(days=6, accounts=2, creatives=20)
    long_name = "d" * MAX_ATTRIBUTE_NAME_LENGTH
    data = data.rename(columns={"template": long_name, "audience": "ü" * MAX_ATTRIBUTE_NAME_LENGTH})
    data[long_name] = data[long_name].map(lambda v: (str(v) + "\u00e9" * 200)[:200])
    data["account_id"] = data["account_id"].map(lambda v: (v + "\u2603" * 200)[:MAX_ID_LENGTH])
    path = tmp_path / "bounds.csv"
    data.to_csv(path, index=False)
    env(db_url)
    out = ingest_file(path, store=make_store(db_url), settings=load_settings(), today=TODAY)
    assert out["rejected"] == 0
    ctx = make_context(db_url)
    days = sorted(data["date"].unique())
    steps.run_days(
        ctx, date.fromisoformat(days[0]), date.fromisoformat(days[-1]), only=set(steps.CYCLE_STEPS) - {"ctr_model"}
    )
    patterns = make_store(db_url).read_frame(sa.select(t.learning_patterns))
    assert patterns["pattern_id"].str.len().max() > 450  # account, long name and long value together
    dna = make_store(db_url).read_frame(sa.select(t.creative_dna))
    assert dna["value"].str.len().max() == 200


def test_ragged_rows_say_what_is_wrong(tmp_path, db_url, env):
    out = _ingest(tmp_path, db_url, env, _lines(GOOD, "2024-01-02,a,c1,100,5,3,q,extra", "2024-01-02,a,c2,100,5"))
    assert out["accepted"] == 1
    assert out["rejected_by_reason"] == {
        "row has 8 fields where the header has 7": 1,
        "row has 5 fields where the header has 7": 1,
    }
    quarantined = make_store(db_url).read_frame(sa.select(t.quarantine)).sort_values("line")
    assert json.loads(quarantined["row"].iloc[0])[-1] == "extra"  # every field kept for inspection
    assert quarantined["line"].tolist() == [3, 4]


def test_repeated_header_is_refused_and_case_clashes_are_warned(tmp_path, sqlite_url, env):
    _ingest(tmp_path, sqlite_url, env, _lines(GOOD), "first.csv")
    before = _stored(sqlite_url)
    with pytest.raises(ContractError, match=r"repeats the column\(s\) \['hook_type'\]"):
        _ingest(tmp_path, sqlite_url, env, HEADER + ",hook_type\n2024-01-02,a,c1,100,5,3,q,r\n")
    with pytest.raises(ContractError, match=r"found \['Clicks'\]: column names are case-sensitive"):
        _ingest(tmp_path, sqlite_url, env, HEADER.replace("clicks", "Clicks") + "\n" + GOOD + "\n")
    with pytest.raises(ContractError, match="is 70 characters long"):
        _ingest(tmp_path, sqlite_url, env, HEADER + "," + "n" * 70 + "\n" + GOOD + ",x\n")
    pd.testing.assert_frame_equal(_stored(sqlite_url), before)

    out = _ingest(tmp_path, sqlite_url, env, HEADER + ",Clicks,Hook_Type\n" + GOOD + ",4,Q\n")
    assert out["accepted"] == 1
    assert any("'Clicks' differs from the contract column 'clicks' only in case" in w for w in out["warnings"])
    assert any("['hook_type', 'Hook_Type'] differ only in case" in w for w in out["warnings"])
    batch = make_store(sqlite_url).read_frame(sa.select(t.ingest_batches)).iloc[-1]
    assert json.loads(batch["warnings"]) == out["warnings"]


def test_bom_and_non_utf8_files(tmp_path, sqlite_url, env):
    out = _ingest(tmp_path, sqlite_url, env, "\ufeff" + _lines(GOOD))
    assert out["accepted"] == 1
    with pytest.raises(ContractError, match=r"not UTF-8 text \(byte 0xe9"):
        _ingest(tmp_path, sqlite_url, env, _lines("2024-01-02,a,caf\u00e9,100,5,3,q").encode("latin-1"))


def test_a_database_from_an_earlier_version_is_upgraded(db_url):
    """New nullable columns are added; on PostgreSQL bounded key columns widen to text."""
    old = sa.MetaData()
    sa.Table(
        "quarantine",
        old,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("day", sa.String(32)),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table("knowledge_nodes", old, sa.Column("node_id", sa.String(600), primary_key=True))
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg2://"))
    old.create_all(engine)
    engine.dispose()
    store = make_store(db_url)
    inspector = sa.inspect(store.engine)
    assert "line" in {c["name"] for c in inspector.get_columns("quarantine")}
    if store.is_postgres:
        node_id = next(c for c in inspector.get_columns("knowledge_nodes") if c["name"] == "node_id")
        assert getattr(node_id["type"], "length", None) is None
