"""Reads on PostgreSQL by ``COPY ... TO STDOUT`` (issue 12): the frame equals the one built from
result rows for every kind of value the project stores, and a lost connection during such a read
is a transient SQLAlchemy error, as it is on the result-row path."""

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


def test_a_copy_read_gives_the_frame_of_the_result_rows(pg_url):
    db = Database(pg_url)
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
        ]
        seen: list[str] = []
        event.listen(db.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
        for stmt in statements:
            got = db.read_frame(stmt)
            assert seen[-1].startswith("COPY ("), seen[-1]  # the read went by COPY, and the engine's events saw it
            expected = _by_rows(db, stmt)
            pd.testing.assert_frame_equal(got, expected, check_dtype=len(expected) > 0, check_exact=True)
        assert list(db.read_frame(statements[0])["code"]).count("") > 0  # empty strings stay strings
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
