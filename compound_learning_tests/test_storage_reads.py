"""Fast reads (issue 12), by ``COPY ... TO STDOUT`` on PostgreSQL and by the driver's own cursor
on SQLite: the frame equals the one built from SQLAlchemy's result rows for every kind of value
the project stores, and a lost connection during such a read is a transient SQLAlchemy error, as
it is on the result-row path."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from compound_learning.storage import schema as t
from compound_learning.storage.database import Database
from compound_learning.storage.retry import is_transient
from compound_learning_tests.conftest import make_store

probe = sa.Table(
    "read_probe",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("label", sa.Text),
    sa.Column("code", sa.String(20), nullable=False),
    sa.Column("small", sa.SmallInteger),
    sa.Column("big", sa.BigInteger, nullable=False),
    sa.Column("flag", sa.Boolean),
    sa.Column("value", sa.Float),
    sa.Column("day", sa.Date),
)

ODD_TEXT = [
    None,
    "",
    '"',
    'say "hi", then go',
    "two\nlines",
    "crlf\r\nend",
    "tab\tand,comma",
    "ünï €",
    " pad ",
    "t",
    "NULL",
    "\\N",
]


DAYS, QUOTED = [date(2026, 1, 2), date(2026, 1, 9)], 'say "hi", then go'


def _rows() -> list[dict]:
    values = [0.1, 1 / 3, -0.0, 1e-300, 1.7976931348623157e308, None, 2.5, 123456.789]
    return [
        {
            "id": i,
            "label": ODD_TEXT[i % len(ODD_TEXT)],
            "code": ODD_TEXT[(i + 1) % len(ODD_TEXT)] or "",
            "small": None if i % 3 == 0 else i - 20,
            "big": 2**53 + i,
            "flag": None if i % 4 == 0 else bool(i % 2),
            "value": values[i % len(values)],
            "day": None if i % 5 == 0 else date(2026, 1, 1 + i % 28),
        }
        for i in range(48)
    ]


def _by_rows(db: Database, stmt) -> pd.DataFrame:
    with db.engine.connect() as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def test_a_fast_read_gives_the_frame_of_the_result_rows(db_url):
    db = Database(db_url)
    try:
        with db.transaction() as conn:
            probe.create(conn)
            conn.execute(probe.insert(), _rows())
        statements = [
            sa.select(probe).order_by(probe.c.id),
            sa.select(probe.c.label, probe.c.flag).where(probe.c.small.is_(None)).order_by(probe.c.id),
            sa.select(probe.c.code, sa.func.min(probe.c.day).label("first"))
            .group_by(probe.c.code)
            .order_by(probe.c.code),
            sa.select(probe.c.small, probe.c.value).where(probe.c.small > 0).order_by(probe.c.id),  # ints without NULLs
            sa.select(probe).where(probe.c.id < 0),  # no rows
            # parameters written into the SQL: dates, and text with a quote
            sa.select(probe.c.id, probe.c.day)
            .where(probe.c.day.in_(DAYS) | probe.c.label.in_([QUOTED, "it's"]))
            .order_by(probe.c.id),
        ]
        # (statement, SQLAlchemy's execution context): a fast read runs on the driver's own
        # cursor, which the engine's events see without a context
        seen: list[tuple[str, object]] = []
        event.listen(db.engine, "before_cursor_execute", lambda *args: seen.append((args[2], args[4])))
        fast = "COPY (" if db.is_postgres else "SELECT "
        for stmt in statements:
            got = db.read_frame(stmt)
            sql, context = seen[-1]
            assert context is None and sql.startswith(fast), sql  # the fast read ran, and the events saw it
            assert ":param" not in sql and "?" not in sql  # with its parameters written in
            expected = _by_rows(db, stmt)
            pd.testing.assert_frame_equal(got, expected, check_dtype=len(expected) > 0, check_exact=True)
        assert list(db.read_frame(statements[0])["code"]).count("") > 0  # empty strings stay strings
        wanted = [r["id"] for r in _rows() if r["day"] in DAYS or r["label"] == QUOTED]
        assert list(db.read_frame(statements[-1])["id"]) == wanted
        if not db.is_postgres:  # (PostgreSQL's text holds no NUL at all, bound or not)
            # a parameter holding a NUL character cannot be written into SQL text: it stays bound
            nul = sa.select(probe.c.id).where(probe.c.label.in_(["a\x00b", QUOTED])).order_by(probe.c.id)
            assert list(db.read_frame(nul)["id"]) == [r["id"] for r in _rows() if r["label"] == QUOTED]
            sql, context = seen[-1]
            assert context is not None and "IN (?, ?)" in sql
        # a numeric column of nothing but NULLs comes back as NaN floats on both databases (the
        # result rows give None objects)
        nulls = db.read_frame(sa.select(probe.c.id, probe.c.small).where(probe.c.small.is_(None)))
        assert len(nulls) == sum(r["small"] is None for r in _rows())
        assert nulls["small"].dtype == float and nulls["small"].isna().all()
    finally:
        db.dispose()


def test_the_cycle_tables_read_the_same_by_copy(pg_url):
    """Every column type of the schema, on a table of each shape the cycle reads."""
    store = make_store(pg_url)
    day = date(2026, 1, 1)
    frame = pd.DataFrame(
        {
            "account_id": ["a", "a", "b"],
            "metric": ["ctr", "roas", "ctr"],
            "log_rate": [-3.2, 0.4, float("nan")],
            "std_error": [0.1, None, 0.3],
        }
    ).dropna(subset=["log_rate"])
    with store.transaction() as conn:
        store.write_day(conn, t.account_baselines, day, frame)
    stmt = sa.select(t.account_baselines).order_by(*t.account_baselines.primary_key.columns)
    pd.testing.assert_frame_equal(store.read_frame(stmt), _by_rows(store, stmt), check_exact=True)
    store.dispose()


def test_a_connection_lost_during_a_copy_read_is_a_transient_sqlalchemy_error(pg_url):
    db = Database(pg_url)
    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(sa_exc.DBAPIError) as raised, db.engine.connect() as conn:
            pid = conn.connection.dbapi_connection.get_backend_pid()
            with admin.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            db.read_frame(sa.select(t.account_baselines), conn)
        assert is_transient(raised.value)
        assert db.read_frame(sa.select(t.account_baselines)).empty  # the pool recovers
    finally:
        admin.dispose()
        db.dispose()


def test_creative_totals_add_up_a_creatives_cells_and_keep_its_latest_attributes(db_url):
    """The recommendations and the knowledge graph read one row per creative, summed in the
    database: the same sums as adding the cells in pandas, unknown where no cell knew a metric,
    and a creative whose attributes were restated carries its latest set."""
    store = make_store(db_url)
    day = date(2026, 3, 9)
    cells = []
    for creative, dow, age, attrs, seen, revenue in [
        ("c1", 0, 0, '{"hook_type": "question"}', date(2026, 3, 2), 10.0),
        ("c1", 1, 1, '{"hook_type": "story"}', date(2026, 3, 9), 5.5),  # restated: the latest wins
        ("c1", 2, 1, '{"hook_type": "question"}', date(2026, 3, 3), None),
        ("c2", 3, 0, '{"hook_type": "offer"}', date(2026, 3, 4), None),  # no revenue known at all
    ]:
        cells.append(
            {
                "account_id": "a1",
                "creative_id": creative,
                "dow": dow,
                "age_bucket": age,
                "impressions": 100.0 + dow,
                "clicks": 3.0,
                "conversions": 1.0,
                "spend": 2.25,
                "revenue": revenue,
                "days": 1,
                "attributes": attrs,
                "last_seen": seen,
            }
        )
    cells.append({**cells[-1], "account_id": "a2"})  # another account's creative of the same id
    with store.transaction() as conn:
        store.write_day(conn, t.creative_cumulative_stats, day, pd.DataFrame(cells))
    totals = store.creative_totals(day).set_index(["account_id", "creative_id"])
    assert list(totals.index) == [("a1", "c1"), ("a1", "c2"), ("a2", "c2")]  # in key order
    assert len(totals) == 3
    c1 = totals.loc[("a1", "c1")]
    assert c1["impressions"] == 303.0 and c1["clicks"] == 9.0 and c1["revenue"] == 15.5
    assert c1["attributes"] == '{"hook_type": "story"}' and c1["last_seen"] == date(2026, 3, 9)
    c2 = totals.loc[("a1", "c2")]
    assert pd.isna(c2["revenue"]) and c2["spend"] == 2.25 and c2["last_seen"] == date(2026, 3, 4)
    only = store.creative_totals(day, accounts=["a2"])
    assert list(only["account_id"]) == ["a2"] and list(only["creative_id"]) == ["c2"]
    live = store.creative_totals(day, live=True)  # only the creatives that ran on the day, all their cells
    assert list(live["creative_id"]) == ["c1"] and live["impressions"].iloc[0] == 303.0
    assert store.creative_totals(day, accounts=["a2"], live=True).empty  # a2's creative stopped
    assert list(store.creative_totals(day, accounts=["a1"], live=True)["creative_id"]) == ["c1"]
    # a snapshot stored as increments: the creative that ran adds its base's cells
    later = date(2026, 3, 10)
    ran = {**cells[3], "dow": 4, "impressions": 50.0, "last_seen": later}
    with store.transaction() as conn:
        store.register_snapshot(conn, day, day)
        store.write_snapshot(conn, later, pd.DataFrame([ran]), base=day)
    live = store.creative_totals(later, live=True)
    assert list(zip(live["account_id"], live["creative_id"], strict=True)) == [("a1", "c2")]
    assert live["impressions"].iloc[0] == 153.0 and live["last_seen"].iloc[0] == later
    assert len(store.creative_totals(later)) == 3
    assert store.creative_totals(date(2026, 3, 11)).empty
