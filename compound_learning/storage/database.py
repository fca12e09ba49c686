"""Engine, transactions, partition locks and bulk writes over one SQLAlchemy URL.

SQLite (the embedded default) and PostgreSQL (production) run the same code. On PostgreSQL a
partition write takes a transaction-scoped advisory lock keyed by the partition, so two
concurrent runs of the same day serialize instead of double-counting; bulk inserts use COPY.
On SQLite transactions start with ``BEGIN IMMEDIATE`` (one writer at a time, no upgrade
deadlocks) and the file runs in WAL mode so the UI can read while a run writes.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from compound_learning.storage.schema import metadata

INSERT_CHUNK = 100_000  # rows per executemany call on SQLite
BULK_SORT_ROWS = 10_000  # frames at least this long are written in primary-key order


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
        """Run a select and return a DataFrame (column names from the statement).

        A select of plainly typed columns (``_plain_columns``) gives the same frame as from
        SQLAlchemy's result rows, faster, since building those rows costs more than the query:
        on PostgreSQL it is read by ``COPY ... TO STDOUT`` and Arrow's CSV reader (five times
        faster on large reads), on SQLite by the driver's own cursor (``_read_by_driver``)."""
        if conn is None:
            with self.engine.connect() as own:
                return self.read_frame(stmt, own, params)
        columns = _plain_columns(stmt) if not params else None
        if columns is not None:
            read = _read_by_copy if self.is_postgres else _read_by_driver
            frame = read(conn, stmt, columns)
            if frame is not None:
                return frame
        result = conn.execute(stmt, params or {})
        # plain tuples: pandas inspects each SQLAlchemy Row (a third of the time of a 140k-row read)
        return pd.DataFrame(list(map(tuple, result.fetchall())), columns=list(result.keys()))

    def refresh_statistics(self, *tables: sa.Table, conn: Connection | None = None) -> None:
        """On PostgreSQL, ``ANALYZE`` the tables (a sample of 30k rows: about 0.2 s) once a day
        has been added to them. Each step reads the newest day, and statistics taken before it
        was written say it holds no rows: an IN-subquery over it is then planned as a nested
        loop that re-aggregates the whole day for each of its rows (the collapse of a 2.8M-cell
        snapshot ran for over nine minutes instead of seconds). With ``conn``, inside the
        writer's transaction, so that its own later statements over the day are planned right
        (``ANALYZE`` counts the transaction's own new rows); its lock is then held to the commit,
        which serializes only other ``ANALYZE``s of the table. Without, in a transaction of its
        own. Nothing on SQLite, whose planner keeps no such statistics unless asked."""
        if not self.is_postgres:
            return
        if conn is not None:
            for table in tables:
                conn.exec_driver_sql(f'ANALYZE "{table.name}"')
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as own:
            self.refresh_statistics(*tables, conn=own)

    # -- writes ---------------------------------------------------------------------------
    def bulk_insert(
        self,
        conn: Connection,
        table: sa.Table | str,
        frames: pd.DataFrame | Iterable[pd.DataFrame],
        like: sa.Table | None = None,
    ) -> int:
        """Insert every row of ``frames`` (one DataFrame, or an iterable of them with the same
        columns, named as the table's): one COPY on PostgreSQL, fed as the iterable yields, the
        driver's own ``executemany`` on SQLite. ``table`` may name a staging table shaped
        ``like`` a real one. Returns the number of rows."""
        shape = like if like is not None else table
        name = table if isinstance(table, str) else table.name
        parts = [frames] if isinstance(frames, pd.DataFrame) else frames
        ready = (_in_key_order(shape, _conform(shape, f)) for f in parts if not f.empty)
        first = next(ready, None)
        if first is None:
            return 0
        stream = itertools.chain([first], ready)
        columns = list(first.columns)
        if self.is_postgres:
            return _copy_into(conn, name, columns, stream, shape)
        quoted, marks = ", ".join(f'"{c}"' for c in columns), ", ".join("?" for _ in columns)
        sql = f'INSERT INTO "{name}" ({quoted}) VALUES ({marks})'
        raw, written = conn.connection.driver_connection, 0
        for frame in stream:
            rows = _driver_rows(conn, shape, frame)
            for start in range(0, len(rows), INSERT_CHUNK):
                raw.executemany(sql, rows[start : start + INSERT_CHUNK])
            written += len(rows)
        return written

    def merge_rows(
        self,
        conn: Connection,
        table: sa.Table,
        frames: pd.DataFrame | Iterable[pd.DataFrame],
        compare: Sequence[str],
        by: str,
    ) -> pd.DataFrame:
        """Upsert ``frames`` into ``table`` by primary key, writing only rows that are new or whose
        ``compare`` columns differ from the stored ones (NULL equal to NULL).

        The rows are staged in a temporary table and classified and merged by the database, so no
        stored row comes back to Python. Returns, per value of ``by``, how many rows were
        ``inserted`` and how many ``replaced``."""
        keys = [c.name for c in table.primary_key.columns]
        stage = f"stage_{table.name}"
        if self.is_postgres:
            conn.exec_driver_sql(
                f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" (LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DROP'
            )
            conn.exec_driver_sql(f'TRUNCATE "{stage}"')
        else:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS temp."{stage}"')
            conn.exec_driver_sql(f'CREATE TEMP TABLE "{stage}" AS SELECT * FROM "{table.name}" WHERE 0')
        self.bulk_insert(conn, stage, frames, like=table)
        distinct = " OR ".join(f'p."{c}" IS DISTINCT FROM s."{c}"' for c in compare)
        join = " AND ".join(f'p."{k}" = s."{k}"' for k in keys)
        counts = pd.DataFrame(
            conn.exec_driver_sql(
                f'SELECT s."{by}", p."{keys[0]}" IS NULL AS is_new, count(*) FROM "{stage}" s '
                f'LEFT JOIN "{table.name}" p ON {join} WHERE p."{keys[0]}" IS NULL OR {distinct} '
                f'GROUP BY s."{by}", p."{keys[0]}" IS NULL'
            ).all(),
            columns=[by, "is_new", "n"],
        )
        cols = ", ".join(f'"{c.name}"' for c in table.columns)
        updates = ", ".join(f'"{c.name}" = excluded."{c.name}"' for c in table.columns if c.name not in keys)
        changed = " OR ".join(f'"{table.name}"."{c}" IS DISTINCT FROM excluded."{c}"' for c in compare)
        if not counts.empty:
            # WHERE true: SQLite needs it to tell the SELECT from the upsert clause
            conn.exec_driver_sql(
                f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM "{stage}" WHERE true '
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates} WHERE {changed}"
            )
        if not self.is_postgres:
            conn.exec_driver_sql(f'DROP TABLE temp."{stage}"')
        if counts.empty:
            return pd.DataFrame({"inserted": [], "replaced": []}, dtype="int64")
        counts["is_new"] = counts["is_new"].astype(bool)
        out = counts.pivot_table(index=by, columns="is_new", values="n", aggfunc="sum", fill_value=0)
        return pd.DataFrame({"inserted": out.get(True, 0), "replaced": out.get(False, 0)}, index=out.index).astype(
            "int64"
        )

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
        """Insert or replace rows by primary key (few rows: the registry, the cycle log)."""
        if frame.empty:
            return 0
        frame = _conform(table, frame)
        keys = [c.name for c in table.primary_key.columns]
        others = [c for c in frame.columns if c not in keys]
        if self.is_postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table)
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in others})
        conn.execute(stmt, _records(frame))
        return len(frame)


def _upgrade(conn: Connection) -> None:
    """Bring a database created by an earlier version up to the schema: add the nullable columns
    it lacks, on PostgreSQL widen to ``text`` the columns that became unbounded, and drop the
    index that is no longer kept. (``create_all`` only creates missing tables.)"""
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
    # an index earlier versions kept on every raw row, which no query used and every ingest paid for
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_compound_performance_data_batch_id")
    _move_attributes_to_sets(conn)


def _move_attributes_to_sets(conn: Connection) -> None:
    """Earlier versions stored each raw row's attributes as JSON on the row; they now live once
    per distinct set in ``attribute_sets``. Moved in SQL, in the start-up transaction."""
    from compound_learning.storage.schema import attribute_set_key, attribute_sets, performance

    columns = {c["name"] for c in sa.inspect(conn).get_columns(performance.name)}
    if "attributes" not in columns:
        return
    texts = conn.exec_driver_sql(f"SELECT DISTINCT attributes FROM {performance.name}").scalars().all()
    if texts:
        keys = [attribute_set_key(x) for x in texts]
        conn.execute(
            attribute_sets.insert(),
            [{"attribute_set_id": i, "sha256": d, "attributes": x} for (i, d), x in zip(keys, texts, strict=True)],
        )
    if "attribute_set_id" not in columns:
        conn.exec_driver_sql(f"ALTER TABLE {performance.name} ADD COLUMN attribute_set_id BIGINT")
    conn.exec_driver_sql(
        f"UPDATE {performance.name} SET attribute_set_id = (SELECT s.attribute_set_id FROM attribute_sets s "
        f"WHERE s.attributes = {performance.name}.attributes)"
    )
    conn.exec_driver_sql(f"ALTER TABLE {performance.name} DROP COLUMN attributes")
    if conn.dialect.name == "postgresql":  # SQLite cannot add the constraint to an existing column
        conn.exec_driver_sql(f"ALTER TABLE {performance.name} ALTER COLUMN attribute_set_id SET NOT NULL")


def _conform(table: sa.Table, frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the table's columns, in order; integer columns become nullable Int64."""
    unknown = [c for c in frame.columns if c not in table.c]
    if unknown:
        raise ValueError(f"columns {unknown} are not in table {table.name}")
    out = frame.copy(deep=False)
    for col in out.columns:
        is_int_column = isinstance(table.c[col].type, (sa.Integer, sa.BigInteger, sa.SmallInteger))
        if is_int_column and not pd.api.types.is_integer_dtype(out[col]):
            out[col] = pd.to_numeric(out[col]).round().astype("Int64")
    return out


def _in_key_order(table: sa.Table, frame: pd.DataFrame) -> pd.DataFrame:
    """A large frame sorted by the table's primary key: B-tree inserts then append instead of
    landing all over the index (a 1M-row COPY into PostgreSQL takes 40% less time)."""
    keys = [c.name for c in table.primary_key.columns if c.name in frame.columns]
    if len(frame) < BULK_SORT_ROWS or not keys:
        return frame
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        columns = pa.table({k: pa.array(frame[k]) for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # keys of mixed types: leave the order alone
        return frame
    order = pc.sort_indices(columns, sort_keys=[(k, "ascending") for k in keys]).to_numpy()
    return frame.take(order)


def _records(frame: pd.DataFrame) -> list[dict]:
    obj = frame.astype(object).where(frame.notna(), None)
    return obj.to_dict("records")


def _driver_rows(conn: Connection, table: sa.Table, frame: pd.DataFrame) -> list[tuple]:
    """The frame as the driver's parameter tuples, each value as SQLAlchemy would bind it.

    Numbers and text go as they are; other types (dates, timestamps) through the column type's
    own bind processor, once per distinct value (a bulk write holds few distinct dates)."""
    columns = []
    for name in frame.columns:
        series = frame[name]
        kind = table.c[name].type
        if pd.api.types.is_bool_dtype(series) or isinstance(kind, sa.Boolean):
            values = series.astype(object).where(series.notna(), None).map(lambda v: None if v is None else bool(v))
            columns.append(values.tolist())
        elif (pd.api.types.is_numeric_dtype(series) and not isinstance(kind, (sa.Date, sa.DateTime))) or (
            isinstance(kind, (sa.String, sa.Text)) and not isinstance(kind, sa.Enum)
        ):
            columns.append(series.astype(object).where(series.notna(), None).tolist())
        else:
            process = kind.bind_processor(conn.dialect) or (lambda v: v)
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
            bound = np.array([process(_python(v)) for v in uniques] + [None], dtype=object)
            columns.append(bound[codes].tolist())  # code -1 (missing) takes the trailing None
    return list(zip(*columns, strict=True))


def _python(value):
    """A pandas or numpy scalar as the plain Python value a bind processor expects."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


class _CopyStream(io.RawIOBase):
    """COPY's input, produced as the driver reads it: while the server parses what was sent,
    the next frame is produced (validated, when an ingest feeds it) and encoded. A writer thread
    was tried: with the GIL it gained under 5%, so this simpler form stays. An error raised
    while producing is kept, so that it, not the driver's "COPY failed", reaches the caller."""

    def __init__(self, chunks: Iterator[tuple[int, bytes]]):
        self.chunks, self.pending, self.rows, self.error = chunks, b"", 0, None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            while size < 0 or len(self.pending) < size:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.rows += chunk[0]
                self.pending += chunk[1]
        except Exception as exc:
            self.error = exc
            raise
        out, self.pending = (self.pending, b"") if size < 0 else (self.pending[:size], self.pending[size:])
        return out


SLICE_ROWS = 20_000  # rows encoded at a time for COPY (a few MB)


def _arrow_schema(table: sa.Table, columns: list[str]):
    """The Arrow types whose PostgreSQL binary encoding is each column's type."""
    import pyarrow as pa

    def arrow(kind) -> pa.DataType:
        if isinstance(kind, sa.Boolean):
            return pa.bool_()
        if isinstance(kind, sa.SmallInteger):
            return pa.int16()
        if isinstance(kind, sa.BigInteger):
            return pa.int64()
        if isinstance(kind, sa.Integer):
            return pa.int32()
        if isinstance(kind, sa.Float):
            return pa.float64()
        if isinstance(kind, sa.DateTime):
            return pa.timestamp("us", tz="UTC")
        if isinstance(kind, sa.Date):
            return pa.date32()
        if isinstance(kind, (sa.String, sa.Text)):
            return pa.string()
        raise TypeError(f"no binary COPY encoding for {kind!r}")

    return pa.schema([(c, arrow(table.c[c].type)) for c in columns])


def _to_arrow(frame: pd.DataFrame, schema):
    """The frame as an Arrow table of exactly ``schema`` (integers checked for overflow,
    timestamps to microseconds); raises an Arrow error when a column cannot be so typed."""
    import pyarrow as pa

    columns = []
    for field in schema:
        array = pa.array(frame[field.name], from_pandas=True)
        safe = not pa.types.is_timestamp(field.type)  # nanoseconds cut to the microseconds PostgreSQL keeps
        columns.append(array.cast(field.type, safe=safe) if array.type != field.type else array)
    return pa.Table.from_arrays(columns, schema=schema)


def _binary_chunks(first, rest: Iterator[pd.DataFrame], schema) -> Iterator[tuple[int, bytes]]:
    """PostgreSQL's binary COPY format, encoded from Arrow by pgpq (Rust): a third of the
    server's parsing work of CSV, and a quarter of the client's writing."""
    from pgpq import ArrowToPostgresBinaryEncoder

    encoder = ArrowToPostgresBinaryEncoder(schema)
    yield 0, bytes(encoder.write_header())
    for table in itertools.chain([first], (_to_arrow(f, schema) for f in rest)):
        for batch in table.to_batches(max_chunksize=SLICE_ROWS):
            yield batch.num_rows, bytes(encoder.write_batch(batch))
    yield 0, bytes(encoder.finish())


def _csv_chunks(frames: Iterator[pd.DataFrame]) -> Iterator[tuple[int, bytes]]:
    for frame in frames:
        frame = _timestamps_as_text(frame)
        for start in range(0, len(frame), SLICE_ROWS):
            part = frame.iloc[start : start + SLICE_ROWS]
            yield len(part), _csv_bytes(part)


def _timestamps_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamp columns as ISO text, formatted once per distinct value: Arrow's CSV writer
    formats timestamps at a tenth of the speed of everything else, and a bulk write holds few."""
    import pyarrow as pa

    out = frame
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype):
            codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
            text = pa.array([v.isoformat() for v in uniques], pa.string())
            column = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32(), mask=codes < 0), text)
            out = out.assign(**{name: pd.arrays.ArrowExtensionArray(column.cast(pa.string()))})
    return out


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        buffer = pa.BufferOutputStream()
        pacsv.write_csv(
            pa.Table.from_pandas(frame, preserve_index=False), buffer, pacsv.WriteOptions(include_header=False)
        )
        return buffer.getvalue().to_pybytes()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # a column of mixed objects
        return frame.to_csv(index=False, header=False, na_rep="").encode()


def _copy_into(conn: Connection, target: str, columns: list[str], frames: Iterator[pd.DataFrame], table) -> int:
    """COPY the frames in: binary when the first frame types exactly as the table's columns
    (every frame the project writes), else CSV (a frame of mixed objects)."""
    import pyarrow as pa

    first = next(frames)
    try:
        schema = _arrow_schema(table, columns)
        chunks = _binary_chunks(_to_arrow(first, schema), frames, schema)
        options = "FORMAT binary"
    except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        chunks = _csv_chunks(itertools.chain([first], frames))
        text_types = (sa.String, sa.Text)
        not_null_text = [
            c.name for c in table.columns if c.name in columns and not c.nullable and isinstance(c.type, text_types)
        ]
        options = "FORMAT csv" + (
            ", FORCE_NOT_NULL (" + ", ".join(f'"{c}"' for c in not_null_text) + ")" if not_null_text else ""
        )
    data = _CopyStream(chunks)
    cols = ", ".join(f'"{c}"' for c in columns)
    sql = f'COPY "{target}" ({cols}) FROM STDIN WITH ({options})'
    try:
        with _driver_cursor(conn, sql) as cursor:
            cursor.copy_expert(sql, data, size=1 << 18)
    except Exception:
        if data.error is not None:  # the driver reports a failed read as a cancelled COPY
            raise data.error from None
        raise
    return data.rows


@contextmanager
def _driver_cursor(conn: Connection, sql: str) -> Iterator:
    """The driver's own cursor for a statement SQLAlchemy cannot run (COPY), used the way
    SQLAlchemy uses one: the engine's cursor events see the statement, and a driver error comes
    out as SQLAlchemy's, the connection invalidated when it is lost, so that retries tell a
    dropped connection from a bad statement."""
    raw = conn.connection.dbapi_connection
    cursor = raw.cursor()
    try:
        conn.dispatch.before_cursor_execute(conn, cursor, sql, {}, None, False)
        yield cursor
        conn.dispatch.after_cursor_execute(conn, cursor, sql, {}, None, False)
    except conn.dialect.loaded_dbapi.Error as error:
        lost = conn.dialect.is_disconnect(error, raw, cursor)
        if lost:
            conn.invalidate(error)
        raise sa.exc.DBAPIError.instance(
            sql, {}, error, conn.dialect.loaded_dbapi.Error, connection_invalidated=lost
        ) from error
    finally:
        if not getattr(cursor, "closed", False):  # (SQLite's cursors do not say)
            cursor.close()


def _plain_columns(stmt) -> list[tuple[str, str]] | None:
    """(name, kind) of each column ``stmt`` selects, kind one of ``bool``, ``int``, ``float``,
    ``date`` and ``str``, when the fast reads give exactly the frame of SQLAlchemy's result rows:
    a select of uniquely named columns of those plain types. None otherwise (timestamps, for one,
    keep the driver's own time-zone handling; decimals their ``Decimal``)."""
    if not isinstance(stmt, sa.Select):
        return None
    out = []
    for column in stmt.selected_columns:
        kind = column.type
        if isinstance(kind, sa.Boolean):
            plain = "bool"
        elif isinstance(kind, sa.Integer):  # every width: pandas holds them as int64 (float with NULLs)
            plain = "int"
        elif isinstance(kind, sa.Float):
            plain = "float"
        elif isinstance(kind, sa.Date) and not isinstance(kind, sa.DateTime):
            plain = "date"
        elif isinstance(kind, (sa.String, sa.Text)):
            plain = "str"
        else:
            return None
        out.append((column.name, plain))
    names = [name for name, _ in out]
    return out if out and len(set(names)) == len(names) else None


def _literal_query(conn: Connection, stmt: sa.Select) -> str | None:
    """``stmt`` as SQL with its parameters written in; None when one has no literal form, or
    holds a NUL character, which SQL text cannot carry (a bound parameter can)."""
    try:
        query = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    except sa.exc.CompileError:
        return None
    return None if "\x00" in query else query


def _read_by_driver(conn: Connection, stmt: sa.Select, columns: list[tuple[str, str]]) -> pd.DataFrame | None:
    """The rows of ``stmt`` from the driver's own cursor (SQLite), with SQLAlchemy's conversions
    done once per distinct value: its dates are stored as ISO text and its booleans as 0/1. On
    SQLite a large read spent most of its time building SQLAlchemy's rows, not in the query (a
    458k-row snapshot: 3.7 s against 4.5 s). None when a parameter has no literal form."""
    query = _literal_query(conn, stmt)
    if query is None:
        return None
    with _driver_cursor(conn, query) as cursor:
        cursor.execute(query)
        rows = cursor.fetchall()
    frame = pd.DataFrame(rows, columns=[name for name, _ in columns])
    for name, kind in columns:
        if kind in _FROM_DRIVER and len(frame):
            frame[name] = _each_distinct(frame[name].to_numpy(dtype=object), _FROM_DRIVER[kind])
        elif kind in ("int", "float") and frame[name].dtype == object:
            # a column of nothing but NULLs: numbers, NaN, as the COPY read gives them (an
            # object column of None made every later operation on it slow)
            frame[name] = frame[name].astype(float)
    return frame


# how SQLAlchemy turns SQLite's stored values into Python ones (None stays None)
_FROM_DRIVER = {
    "date": lambda text: date.fromisoformat(text[:10]),
    "bool": bool,
}


def _each_distinct(values: np.ndarray, convert) -> np.ndarray:
    """``convert`` applied to each distinct non-null value of ``values`` (an object array), once."""
    codes, distinct = pd.factorize(values)
    converted = np.empty(len(distinct) + 1, dtype=object)  # the last slot: null (code -1)
    converted[:-1] = [convert(v) for v in distinct]
    converted[-1] = None
    return converted[codes]


_ARROW_TYPES = {"bool": "bool_", "int": "int64", "float": "float64", "date": "date32", "str": "string"}


def _read_by_copy(conn: Connection, stmt: sa.Select, columns: list[tuple[str, str]]) -> pd.DataFrame | None:
    """The rows of ``stmt`` by ``COPY (stmt) TO STDOUT`` as CSV, parsed by Arrow with the
    columns' own types (PostgreSQL writes NULL unquoted and an empty string quoted, floats in
    their shortest exact form, booleans as t/f). None when a parameter has no literal form."""
    import pyarrow as pa
    from pyarrow import csv

    query = _literal_query(conn, stmt)
    if query is None:
        return None
    sql = f"COPY ({query}) TO STDOUT WITH (FORMAT csv)"
    buffer = io.BytesIO()
    with _driver_cursor(conn, sql) as cursor:
        cursor.copy_expert(sql, buffer, size=1 << 20)
    names = [name for name, _ in columns]
    if buffer.tell() == 0:
        return pd.DataFrame(columns=names)
    buffer.seek(0)
    table = csv.read_csv(
        buffer,
        read_options=csv.ReadOptions(column_names=names),
        parse_options=csv.ParseOptions(newlines_in_values=True),
        convert_options=csv.ConvertOptions(
            column_types={name: getattr(pa, _ARROW_TYPES[kind])() for name, kind in columns},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    return table.to_pandas()


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
