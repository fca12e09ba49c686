"""Engine, transactions, partition locks and bulk writes over one SQLAlchemy URL.

SQLite (the embedded default) and PostgreSQL (production) run the same code. On PostgreSQL a
partition write takes a transaction-scoped advisory lock keyed by the partition, so two
concurrent runs of the same day serialize instead of double-counting; bulk inserts use COPY.
On SQLite transactions start with ``BEGIN IMMEDIATE`` (one writer at a time, no upgrade
deadlocks) and the file runs in WAL mode so the UI can read while a run writes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from compound_learning.storage.schema import metadata

INSERT_CHUNK = 5_000


def sqlite_file(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


def create_db_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg2://...``)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not a dependency.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args={"timeout": 120})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):  # pragma: no cover - driver hook
            dbapi_connection.isolation_level = None  # let the "begin" hook own transactions
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=120000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - driver hook
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)


class Database:
    """Generic access: transactions with partition locks, bulk inserts, frame reads."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_db_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        with self.transaction(lock_key="schema") as conn:
            metadata.create_all(conn)
            _upgrade(conn)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, lock_key: str | None = None) -> Iterator[Connection]:
        """One transaction; with ``lock_key`` on PostgreSQL, an advisory lock held until commit."""
        with self.engine.begin() as conn:
            if lock_key and self.is_postgres:
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                    {"key": f"compound_learning:{lock_key}"},
                )
            yield conn

    def read_frame(self, stmt, conn: Connection | None = None, params: Mapping | None = None) -> pd.DataFrame:
        """Run a select and return a DataFrame (column names from the statement)."""
        if conn is not None:
            result = conn.execute(stmt, params or {})
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        with self.engine.connect() as own:
            return self.read_frame(stmt, own, params)

    # -- writes ---------------------------------------------------------------------------
    def bulk_insert(self, conn: Connection, table: sa.Table, frame: pd.DataFrame) -> int:
        """Insert every row of ``frame`` (columns named as the table's); COPY on PostgreSQL."""
        if frame.empty:
            return 0
        frame = _conform(table, frame)
        if self.is_postgres:
            _copy_into(conn, table.name, frame, table)
        else:
            records = _records(frame)
            for start in range(0, len(records), INSERT_CHUNK):
                conn.execute(table.insert(), records[start : start + INSERT_CHUNK])
        return len(frame)

    def replace_partition(
        self,
        conn: Connection,
        table: sa.Table,
        frame: pd.DataFrame,
        where: Mapping[str, object],
    ) -> int:
        """Delete the rows matching ``where`` (value or list of values) and insert ``frame``.

        Callers hold the partition's lock (:meth:`transaction` with ``lock_key``), so this is
        idempotent and safe under concurrent runs of the same partition.
        """
        clauses = []
        for column, value in where.items():
            col = table.c[column]
            if isinstance(value, (list, tuple, set, np.ndarray)):
                clauses.append(col.in_(list(value)))
            else:
                clauses.append(col == value)
        conn.execute(table.delete().where(*clauses))
        return self.bulk_insert(conn, table, frame)

    def upsert(self, conn: Connection, table: sa.Table, frame: pd.DataFrame) -> int:
        """Insert or replace by primary key (``ON CONFLICT DO UPDATE``), COPY-staged on PostgreSQL."""
        if frame.empty:
            return 0
        frame = _conform(table, frame)
        keys = [c.name for c in table.primary_key.columns]
        others = [c for c in frame.columns if c not in keys]
        if self.is_postgres:
            stage = f"stage_{table.name}"
            conn.exec_driver_sql(
                f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" (LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DROP'
            )
            conn.exec_driver_sql(f'TRUNCATE "{stage}"')
            _copy_into(conn, stage, frame, table)
            cols = ", ".join(f'"{c}"' for c in frame.columns)
            updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in others)
            conn.exec_driver_sql(
                f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM "{stage}" '
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
            )
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
            stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in others})
            records = _records(frame)
            for start in range(0, len(records), INSERT_CHUNK):
                conn.execute(stmt, records[start : start + INSERT_CHUNK])
        return len(frame)


def _upgrade(conn: Connection) -> None:
    """Bring a database created by an earlier version up to the schema, additively: add the
    nullable columns it lacks, and on PostgreSQL widen to ``text`` the columns that became
    unbounded. (``create_all`` only creates missing tables.)"""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        existing = {c["name"]: c for c in inspector.get_columns(table.name)}
        for column in table.columns:
            quoted = conn.dialect.identifier_preparer.quote(column.name)
            if column.name not in existing and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {quoted} {kind}")
            elif (
                column.name in existing
                and conn.dialect.name == "postgresql"
                and isinstance(column.type, sa.Text)
                and isinstance(existing[column.name]["type"], sa.String)
                and getattr(existing[column.name]["type"], "length", None)
            ):
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ALTER COLUMN {quoted} TYPE text")


def _conform(table: sa.Table, frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the table's columns, in order; integer columns become nullable Int64."""
    unknown = [c for c in frame.columns if c not in table.c]
    if unknown:
        raise ValueError(f"columns {unknown} are not in table {table.name}")
    out = frame.copy()
    for col in out.columns:
        if isinstance(table.c[col].type, (sa.Integer, sa.BigInteger, sa.SmallInteger)):
            out[col] = pd.to_numeric(out[col]).round().astype("Int64")
    return out


def _records(frame: pd.DataFrame) -> list[dict]:
    obj = frame.astype(object).where(frame.notna(), None)
    return obj.to_dict("records")


def _copy_into(conn: Connection, target: str, frame: pd.DataFrame, table: sa.Table) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="")
    buffer.seek(0)
    not_null_text = [
        c.name
        for c in table.columns
        if c.name in frame.columns and not c.nullable and isinstance(c.type, (sa.String, sa.Text))
    ]
    options = "FORMAT csv"
    if not_null_text:
        options += ", FORCE_NOT_NULL (" + ", ".join(f'"{c}"' for c in not_null_text) + ")"
    cols = ", ".join(f'"{c}"' for c in frame.columns)
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:
        cursor.copy_expert(f'COPY "{target}" ({cols}) FROM STDIN WITH ({options})', buffer)


def in_list(values: Sequence) -> list:
    """Plain Python values for an ``IN`` clause (numpy scalars and Timestamps unwrapped)."""
    out = []
    for v in values:
        if isinstance(v, pd.Timestamp):
            out.append(v.date())
        elif isinstance(v, np.generic):
            out.append(v.item())
        else:
            out.append(v)
    return out
