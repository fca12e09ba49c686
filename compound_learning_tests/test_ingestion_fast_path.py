"""The fast ingestion path (issue 12) keeps the contract: Arrow's reader and Python's csv module
give the same rows, a repeated file is recognised only when nothing can have changed, and a
database from the JSON-per-row layout is moved to attribute sets without losing a value."""

from __future__ import annotations

import json
import os
import re
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compound_learning.config import load_settings
from compound_learning.core import contract
from compound_learning.core.contract import _read_csv_arrow, _read_csv_exact, validate_frame
from compound_learning.ingestion import ingest_file
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import make_store
from compound_learning_tests.test_hostile_input import hostile_csv

ATTRIBUTE_SET = "attribute_set_id"
EXAMPLES = int(os.environ.get("COMPOUND_LEARNING_HYPOTHESIS_EXAMPLES", "40"))
HEADER = "date,account_id,creative_id,impressions,clicks,spend,hook_type"
CLEAN = {
    "plain": f"{HEADER}\n2024-01-02,a,c1,100,5,3.5,question\n2024-01-02,a,c2,90,4,2,story\n",
    "crlf": f"{HEADER}\r\n2024-01-02,a,c1,100,5,3.5,question\r\n2024-01-02,a,c2,90,4,2,\r\n",
    "bom": f"\ufeff{HEADER}\n2024-01-02,a,c1,100,5,3.5,question\n",
    "no final newline": f"{HEADER}\n2024-01-02,a,c1,100,5,3.5,question",
    "quoted": f'{HEADER}\n2024-01-02,a,"c,1",100,5,3.5,"say ""hi"""\n2024-01-02,"",c2,1e2,x,,\n',
    "tabs and unicode": f"{HEADER}\n2024-01-02,a\tb,c1,100,5,3.5,caf\u00e9 \U0001f600\n2024-01-02,a,c1,100,5,3.5,\t\n",
    "refused rows": f"{HEADER}\n2024-13-02,a,c1,100,500,3.5,q\n2024-01-02,a,c1,-1,0,NaN,q\n2024-01-02,a,c1,1.5,0,1,q\n",
}
QUIRKY = {
    "blank line": f"{HEADER}\n2024-01-02,a,c1,100,5,3.5,q\n\n2024-01-02,a,c2,100,5,3.5,q\n",
    "space after comma": f'{HEADER}\n2024-01-02, a,c1,100,5,3.5, "q, r"\n',
    "ragged": f"{HEADER}\n2024-01-02,a,c1,100,5,3.5,q,extra\n",
    "value over two lines": f'{HEADER}\n2024-01-02,a,c1,100,5,3.5,"two\nlines"\n',
    # found by hypothesis: the csv module counts a lone CR as a line end (the row's line is 3), Arrow does not
    "carriage return in a value": f'{HEADER}\n,,,,,,"\r"\n',
    "not UTF-8": f"{HEADER}\n2024-01-02,a,caf\u00e9,100,5,3.5,q\n",
}


def _same_reading(data: bytes) -> bool:
    """Compare the two readers on ``data``; returns whether the fast one took it."""
    fast = _read_csv_arrow(data)
    try:
        exact = _read_csv_exact(data, "input.csv")
    except contract.ContractError:
        assert fast is None  # what the exact reader refuses, the fast one never accepts
        return False
    if fast is None:
        return False
    as_text = fast.frame.astype(object).where(fast.frame.notna(), None)
    pd.testing.assert_frame_equal(as_text, exact.frame, check_dtype=False)
    assert fast.lines.tolist() == exact.lines.tolist() and fast.malformed == exact.malformed == {}
    try:
        verdicts = [
            validate_frame(r.frame, partition_start=date(2024, 1, 1), today=date(2024, 3, 1), lines=r.lines)
            for r in (fast, exact)
        ]
    except contract.ContractError as exc:
        with pytest.raises(contract.ContractError, match=re.escape(str(exc)[:40])):
            validate_frame(exact.frame, partition_start=date(2024, 1, 1), today=date(2024, 3, 1))
        return True
    pd.testing.assert_frame_equal(verdicts[0].good.astype(object), verdicts[1].good.astype(object))
    columns = ["reason", "line", "day"]
    pd.testing.assert_frame_equal(verdicts[0].rejected[columns], verdicts[1].rejected[columns])
    return True


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_exporter_files_take_the_fast_reader_and_read_as_the_csv_module_does(name):
    assert _same_reading(CLEAN[name].encode("utf-8")), f"{name} should take the fast reader"


@pytest.mark.parametrize("name", sorted(QUIRKY))
def test_files_the_fast_reader_cannot_read_exactly_go_to_the_csv_module(name):
    data = QUIRKY[name].encode("latin-1" if name == "not UTF-8" else "utf-8")
    assert _read_csv_arrow(data) is None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hostile_csv())
def test_both_readers_agree_on_generated_files(data):
    _same_reading(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "acct 1", "x,y", 'q"r']),
            st.text(alphabet='abc,"\t é', max_size=6),
            st.sampled_from(["1", "10", "1e3", "2.5", "-3", "", "nan", "0012", "+4"]),
            st.text(alphabet='xyz,"\t ', max_size=8),
        ),
        max_size=12,
    )
)
def test_both_readers_agree_on_quoted_and_odd_fields(rows):
    def field(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"') else v

    lines = [HEADER] + [",".join(["2024-01-02", field(a), field(c), n, "0", "1", field(h)]) for a, c, n, h in rows]
    _same_reading(("\n".join(lines) + "\n").encode())


# -- a file loaded again -------------------------------------------------------------------------
FILE = (
    f"{HEADER}\n2024-01-02,a,c1,100,5,3.5,question\n2024-01-02,a,c2,90,4,2,story\n"
    "2024-01-03,a,c1,80,3,1,question\n2024-01-03,a,c3,10,20,1,story\n"
)


def _load(path, url, env, **kwargs):
    env(url)
    return ingest_file(path, store=make_store(url), settings=load_settings(), today=date(2024, 3, 1), **kwargs)


def _forbid_reading(monkeypatch):
    def refuse(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr("compound_learning.ingestion.read_csv_strict", refuse)


def test_an_unchanged_file_loaded_again_is_recognised_without_reading_it(tmp_path, db_url, env, monkeypatch):
    path = tmp_path / "day.csv"
    path.write_text(FILE)
    first = _load(path, db_url, env)
    assert first["inserted"] == 3 and first["rejected"] == 1
    _forbid_reading(monkeypatch)
    second = _load(path, db_url, env)
    expected = {**first, "batch_id": second["batch_id"], "inserted": 0, "unchanged": 3, "days_touched": []}
    assert second == expected and second["batch_id"] > first["batch_id"]
    store = make_store(db_url)
    quarantined = store.read_frame(sa.select(t.quarantine.c.batch_id, t.quarantine.c.line, t.quarantine.c.row))
    by_batch = {b: g[["line", "row"]].values.tolist() for b, g in quarantined.groupby("batch_id")}
    assert by_batch[first["batch_id"]] == by_batch[second["batch_id"]]  # refused again, with its line


def test_a_file_whose_days_changed_since_is_read_again_and_restores_its_rows(tmp_path, db_url, env, monkeypatch):
    path = tmp_path / "day.csv"
    path.write_text(FILE)
    _load(path, db_url, env)
    restated = tmp_path / "restated.csv"
    restated.write_text(f"{HEADER}\n2024-01-03,a,c1,80,3,9.5,question\n")
    assert _load(restated, db_url, env)["replaced"] == 1
    again = _load(path, db_url, env)
    assert again["replaced"] == 1 and again["unchanged"] == 2 and again["days_touched"] == ["2024-01-03"]
    stored = make_store(db_url).performance_rows(t.performance.c.creative_id == "c1")
    assert sorted(stored["spend"]) == [1.0, 3.5]


def test_a_file_with_rows_refused_for_the_future_is_judged_again(tmp_path, db_url, env):
    path = tmp_path / "day.csv"
    path.write_text(f"{HEADER}\n2024-01-02,a,c1,100,5,3.5,q\n2024-03-05,a,c1,100,5,3.5,q\n")
    assert _load(path, db_url, env)["rejected"] == 1
    env(db_url)
    later = ingest_file(path, store=make_store(db_url), settings=load_settings(), today=date(2024, 3, 10))
    assert later["rejected"] == 0 and later["inserted"] == 1  # the day has come


def test_another_partition_start_is_another_contract(tmp_path, sqlite_url, env, monkeypatch):
    path = tmp_path / "day.csv"
    path.write_text(FILE)
    assert _load(path, sqlite_url, env)["accepted"] == 3
    monkeypatch.setenv("COMPOUND_LEARNING_PARTITION_START", "2024-01-03")
    again = ingest_file(path, store=make_store(sqlite_url), settings=load_settings(), today=date(2024, 3, 1))
    assert again["rejected_by_reason"].get("date is before the partition start 2024-01-03") == 2


# -- the layout of earlier versions ---------------------------------------------------------------
def test_rows_stored_with_their_attributes_as_json_are_moved_to_attribute_sets(db_url, env):
    """A database written by a version that kept JSON on every row (and an index on batch_id)
    opens with the same rows and attributes, and loading the same rows again changes nothing."""
    old = sa.MetaData()
    table = sa.Table(
        t.performance.name,
        old,
        *[
            sa.Column(c.name, c.type, primary_key=c.primary_key)
            for c in t.performance.c
            if c.name != "attribute_set_id"
        ],
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Index("ix_compound_performance_data_batch_id", "batch_id"),
    )
    rows = [
        {"account_id": "a", "creative_id": f"c{i}", "date": date(2024, 1, 2), "impressions": 100, "clicks": i,
         "conversions": None, "spend": 1.5, "revenue": None, "batch_id": 1,
         "updated_at": pd.Timestamp("2024-01-02", tz="UTC").to_pydatetime(),
         "attributes": json.dumps({"hook_type": "question" if i % 2 else "story"}, sort_keys=True)}
        for i in range(5)
    ]  # fmt: skip
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg2://"))
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    engine.dispose()
    store = make_store(db_url)
    inspector = sa.inspect(store.engine)
    assert "attributes" not in {c["name"] for c in inspector.get_columns(t.performance.name)}
    assert "ix_compound_performance_data_batch_id" not in {i["name"] for i in inspector.get_indexes(t.performance.name)}
    stored = store.performance_rows().sort_values("creative_id")
    assert stored["attributes"].tolist() == [r["attributes"] for r in rows]
    assert store.count_rows(t.attribute_sets) == 2
    again = pd.DataFrame(rows).drop(columns=["batch_id", "updated_at", "attributes", "conversions", "revenue"])
    again["hook_type"] = [json.loads(r["attributes"])["hook_type"] for r in rows]
    again["date"] = "2024-01-02"
    from compound_learning.ingestion import ingest_frame

    env(db_url)
    out = ingest_frame(again, store=store, settings=load_settings(), today=date(2024, 3, 1))
    assert out["unchanged"] == 5 and out["inserted"] == out["replaced"] == 0


# -- validated a part at a time ------------------------------------------------------------------
def _messy(world) -> pd.DataFrame:
    """A world's rows in file order with a few broken ones among them."""
    data = world[0].sample(frac=1.0, random_state=3).reset_index(drop=True).astype(object)
    data.loc[5, "clicks"] = "many"
    data.loc[17, "impressions"] = -4
    data.loc[40, "date"] = "2024-02-30"
    data.loc[41, "account_id"] = " "
    return data


def _stored_state(url) -> tuple:
    store = make_store(url)
    perf = store.performance_rows().drop(columns=["batch_id", "updated_at"])
    perf = perf.sort_values(["account_id", "creative_id", "date"]).reset_index(drop=True)
    quarantine = store.read_frame(sa.select(t.quarantine.c.reason, t.quarantine.c.line, t.quarantine.c.row))
    return perf, quarantine.sort_values("line").reset_index(drop=True)


@pytest.mark.parametrize("repeat_a_key", [False, True])
def test_parts_give_the_verdict_of_one_pass(tmp_path, db_url, env, world, monkeypatch, repeat_a_key):
    """Validated 7 rows at a time (so a day spans many parts, written in key order) or in one
    pass, an input gives the same summary and stores the same rows and quarantine; an input
    that repeats a key is validated in one part, so the repeat is still found."""
    data = _messy(world)
    if repeat_a_key:
        data = pd.concat([data, data.iloc[[60]]], ignore_index=True)
    path = tmp_path / "messy.csv"
    data.to_csv(path, index=False)
    summaries, states = [], []
    for rows_per_part in (1_000_000, 7):
        monkeypatch.setattr(contract, "ROWS_PER_PART", rows_per_part)
        make_store(db_url).reset(include_raw=True)
        out = _load(path, db_url, env)
        summaries.append({k: v for k, v in out.items() if k != "batch_id"})
        states.append(_stored_state(db_url))
    assert summaries[0] == summaries[1]
    assert summaries[0]["rejected"] == 4 + repeat_a_key
    if repeat_a_key:
        assert summaries[0]["rejected_by_reason"]["exact duplicate row in the same input"] == 1
    for first, second in zip(states[0], states[1], strict=True):
        pd.testing.assert_frame_equal(first, second)


def test_a_failure_while_the_rows_stream_in_stores_nothing_and_names_itself(tmp_path, db_url, env, world, monkeypatch):
    """An error raised while a later part is produced (the first already sent to COPY or
    inserted) reaches the caller as itself, and the transaction leaves the store as it was."""
    from compound_learning.storage import store as store_module

    data = world[0]
    path = tmp_path / "day.csv"
    data.to_csv(path, index=False)
    monkeypatch.setattr(contract, "ROWS_PER_PART", 50)
    real_add, seen = store_module._Tally.add, []

    def failing_add(self, part):
        seen.append(len(part.good))
        if len(seen) == 3:
            raise RuntimeError("the third part broke")
        return real_add(self, part)

    monkeypatch.setattr(store_module._Tally, "add", failing_add)
    with pytest.raises(RuntimeError, match="the third part broke"):
        _load(path, db_url, env)
    store = make_store(db_url)
    assert store.count_rows(t.performance) == 0 and store.count_rows(t.ingest_batches) == 0
    assert store.count_rows(t.attribute_sets) == 0
    monkeypatch.setattr(store_module._Tally, "add", real_add)
    assert _load(path, db_url, env)["inserted"] == len(data)
