"""Domain reads and writes: ingestion, per-partition outputs, the registry and the cycle log.

Everything that touches a table goes through :class:`Store`; assets, the CLI and the API call
these methods and never write SQL themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from functools import lru_cache

import numpy as np
import pandas as pd
import sqlalchemy as sa

from compound_learning.core.contract import (
    METRIC_COLUMNS,
    ValidatedParts,
    ValidationResult,
    rejected_by_reason,
    rejected_lines,
)
from compound_learning.core.stats import CELL_KEYS, COLLAPSED, EXPOSURE_METRIC, add_increments, collapse_cells
from compound_learning.storage import rollup
from compound_learning.storage import schema as t
from compound_learning.storage.database import Database, in_list

LEARNING_TABLES = [
    t.creative_daily_stats,
    t.account_baselines,
    t.nuisance_terms,
    t.evidence_drift,
    t.attribute_daily_stats,
    t.creative_cumulative_stats,
    t.cumulative_snapshots,
    t.learning_patterns,
    t.account_fit_cache,
    t.knowledge_nodes,
    t.knowledge_relationships,
    t.creative_dna,
    t.creative_recommendations,
    t.cross_account_insights,
    t.model_registry,
    t.improvement_snapshots,
    t.learning_cycle_logs,
]
RAW_TABLES = [t.performance, t.attribute_sets, t.ingest_batches, t.quarantine]
# Cumulative snapshots: a full one at least weekly and on this weekday (the restart points kept
# past the daily retention), the days between stored as what changed since (``cumulative_snapshots``).
SNAPSHOT_BASE_WEEKDAY = 6  # Sunday
SNAPSHOT_CHAIN_DAYS = 7


def _ordered_by_key(stmt: sa.Select, table: sa.Table) -> sa.Select:
    """Rows in primary-key order. A table's physical order changes when a day is rewritten
    (PostgreSQL reuses the space of deleted rows), and float sums depend on the order they add
    in: a rerun must see its input in the same order to give bit-identical results."""
    return stmt.order_by(*table.primary_key.columns)


def _of_accounts(stmt, table: sa.Table, accounts: Sequence[str] | None):
    """``stmt`` limited to ``accounts`` (all when None)."""
    if accounts is None:
        return stmt
    # rendered inline: thousands of accounts exceed SQLite's bound parameters
    ids = sa.bindparam("accounts", in_list(accounts), expanding=True, literal_execute=True)
    return stmt.where(table.c.account_id.in_(ids))


def _select(table: sa.Table, columns: Sequence[str] | None) -> sa.Select:
    """All of ``table``, or only the named columns (a read of what a step uses costs far less
    than one that carries every row's attribute JSON along)."""
    return sa.select(table) if columns is None else sa.select(*(table.c[c] for c in columns))


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Tally:
    """What an ingest has seen of its parts: counts, rejected rows, attribute sets, rows per day."""

    def __init__(self):
        self.accepted = 0
        self.rejected: list[pd.DataFrame] = []
        self.sets: dict[int, tuple[str, str]] = {}
        self.per_day = pd.Series(dtype="int64")

    def add(self, part: ValidationResult) -> pd.DataFrame:
        """Count the part; return its good rows with an attribute set id instead of the JSON."""
        if not part.rejected.empty:
            self.rejected.append(part.rejected)
        good = part.good
        self.accepted += len(good)
        if good.empty:
            return good
        codes, texts = pd.factorize(good["attributes"])
        ids = []
        for text in texts:
            set_id, digest = t.attribute_set_key(str(text))
            ids.append(set_id)
            self.sets[set_id] = (digest, str(text))
        self.per_day = self.per_day.add(good.groupby("date").size(), fill_value=0).astype("int64")
        return good.drop(columns="attributes").assign(attribute_set_id=np.asarray(ids, dtype="int64")[codes])


def _summary(batch_id: int, source: str, record: dict, rejected_lines: dict) -> dict:
    """The ingestion summary the CLI prints and the API returns."""
    return {
        "batch_id": int(batch_id),
        "source": source,
        "rows_in_input": record["accepted"] + record["rejected"],
        "accepted": record["accepted"],
        "rejected": record["rejected"],
        "rejected_by_reason": record["rejected_by_reason"],
        "rejected_lines": rejected_lines,
        "inserted": record["inserted"],
        "replaced": record["replaced"],
        "unchanged": record["unchanged"],
        "days_touched": record["days_touched"],
        "attribute_columns": record["attribute_columns"],
        "warnings": record["warnings"],
    }


class Store(Database):
    """The project's storage API over one database URL."""

    # -- ingestion --------------------------------------------------------------------------
    def _has_rows_on(self, conn, days) -> bool:
        p = t.performance.c
        return conn.execute(sa.select(p.date).where(p.date.in_(in_list(days))).limit(1)).first() is not None

    def _register_attribute_sets(self, conn, sets: dict[int, tuple[str, str]]) -> None:
        """Store the attribute sets not stored yet (id -> (sha256, JSON)), and refuse the load if
        an id already names another set (two sets whose SHA-256 share 63 bits: never seen, but
        checked rather than assumed)."""
        a = t.attribute_sets.c
        stored: dict[int, str] = {}
        ids = list(sets)
        for start in range(0, len(ids), 10_000):  # SQLite caps the parameters of a statement
            part = ids[start : start + 10_000]
            stored.update(
                conn.execute(sa.select(a.attribute_set_id, a.sha256).where(a.attribute_set_id.in_(part))).all()
            )
        clash = [i for i, digest in stored.items() if digest != sets[i][0]]
        if clash:
            raise RuntimeError(f"attribute set id {clash[0]} already names another set; nothing was loaded")
        new = [{"attribute_set_id": i, "sha256": d, "attributes": x} for i, (d, x) in sets.items() if i not in stored]
        if new:
            conn.execute(t.attribute_sets.insert(), new)

    def ingest(self, parts: ValidatedParts, source: str, input_sha256: str | None = None) -> dict:
        """Upsert the good rows, quarantine the bad ones, record the batch; one transaction.

        A row whose key exists with identical values is left alone (``unchanged``), so the same
        file twice changes nothing; a key with different values is replaced (``replaced``).
        ``days_touched`` lists the days whose stored data changed. The parts are validated as
        the write consumes them. ``input_sha256`` identifies the input read under this
        contract, so that :meth:`ingest_repeat` can recognise it.
        """
        now = utcnow()
        with self.transaction(lock_key="ingest") as conn:
            batch_id = self._open_batch(conn, source, now, parts.rows_in_input)
            seen = _Tally()

            def rows() -> Iterator[pd.DataFrame]:
                for part in parts:
                    good = seen.add(part)
                    if not good.empty:
                        yield good.assign(batch_id=batch_id, updated_at=now)

            if parts.days and self._has_rows_on(conn, parts.days):
                compare = [*METRIC_COLUMNS, "attribute_set_id"]
                counts = self.merge_rows(conn, t.performance, rows(), compare=compare, by="date")
            else:  # new days (the daily case): nothing to compare with, so straight in
                self.bulk_insert(conn, t.performance, rows())
                counts = pd.DataFrame({"inserted": seen.per_day, "replaced": 0})
            self._register_attribute_sets(conn, seen.sets)
            rejected = pd.concat(seen.rejected, ignore_index=True) if seen.rejected else pd.DataFrame()
            if not rejected.empty:
                self.bulk_insert(conn, t.quarantine, rejected.assign(batch_id=batch_id, created_at=now))
            inserted, replaced = int(counts["inserted"].sum()), int(counts["replaced"].sum())
            record = {
                "accepted": seen.accepted,
                "rejected": len(rejected),
                "inserted": inserted,
                "replaced": replaced,
                "unchanged": seen.accepted - inserted - replaced,
                "days_touched": sorted(
                    pd.Timestamp(d).date().isoformat() for d in counts.index[counts.sum(axis=1) > 0]
                ),
                "rejected_by_reason": rejected_by_reason(rejected),
                "warnings": parts.warnings,
                "attribute_columns": parts.attribute_columns,
                "days_in_input": [d.isoformat() for d in parts.days],
                "sha256": input_sha256,
            }
            self._close_batch(conn, batch_id, record)
        return _summary(batch_id, source, record, rejected_lines(rejected))

    def ingest_repeat(self, input_sha256: str, source: str) -> dict | None:
        """Record a load of an input that was loaded before, without reading it again, when
        nothing can have changed since: the same bytes under the same contract
        (``input_sha256``), no later batch changed any of its days, and no row of it was refused
        only for a date in the future (today has moved on). Returns the summary (every accepted
        row ``unchanged``, the refused rows quarantined again), or None to load it in full."""
        b = t.ingest_batches.c
        with self.transaction(lock_key="ingest") as conn:
            before = (
                conn.execute(
                    sa.select(t.ingest_batches).where(b.sha256 == input_sha256).order_by(b.batch_id.desc()).limit(1)
                )
                .mappings()
                .first()
            )
            if before is None or before["days_in_input"] is None:
                return None
            reasons = json.loads(before["rejected_by_reason"])
            if any(reason.startswith("date is in the future") for reason in reasons):
                return None
            days = set(json.loads(before["days_in_input"]))
            since = conn.execute(sa.select(b.days_touched).where(b.batch_id > before["batch_id"])).scalars()
            if any(days & set(json.loads(touched)) for touched in since):
                return None
            now = utcnow()
            batch_id = self._open_batch(conn, source, now, before["rows_in_input"])
            q = t.quarantine.c
            copied = [c for c in t.quarantine.c if c.name not in ("id", "batch_id", "created_at")]
            conn.execute(
                t.quarantine.insert().from_select(
                    [*[c.name for c in copied], "batch_id", "created_at"],
                    sa.select(*copied, sa.literal(batch_id), sa.literal(now, t.quarantine.c.created_at.type)).where(
                        q.batch_id == before["batch_id"]
                    ),
                )
            )
            record = {
                "accepted": before["accepted"],
                "rejected": before["rejected"],
                "inserted": 0,
                "replaced": 0,
                "unchanged": before["accepted"],
                "days_touched": [],
                "rejected_by_reason": reasons,
                "warnings": json.loads(before["warnings"] or "[]"),
                "attribute_columns": json.loads(before["attribute_columns"] or "[]"),
                "days_in_input": sorted(days),
                "sha256": input_sha256,
            }
            self._close_batch(conn, batch_id, record)
            lines = self.read_frame(sa.select(q.reason, q.line).where(q.batch_id == batch_id), conn)
        rejected_lines = {
            str(reason): sorted(int(x) for x in group["line"])[:5] for reason, group in lines.groupby("reason")
        }
        return _summary(batch_id, source, record, rejected_lines)

    def _open_batch(self, conn, source: str, now: datetime, rows_in_input: int) -> int:
        return conn.execute(
            t.ingest_batches.insert().returning(t.ingest_batches.c.batch_id),
            {
                "source": source,
                "ingested_at": now,
                "rows_in_input": rows_in_input,
                "accepted": 0,
                "rejected": 0,
                "inserted": 0,
                "replaced": 0,
                "unchanged": 0,
                "days_touched": "[]",
                "rejected_by_reason": "{}",
            },
        ).scalar_one()

    def _close_batch(self, conn, batch_id: int, record: dict) -> None:
        as_json = ("days_touched", "rejected_by_reason", "warnings", "attribute_columns", "days_in_input")
        conn.execute(
            t.ingest_batches.update()
            .where(t.ingest_batches.c.batch_id == batch_id)
            .values(**{k: json.dumps(v) if k in as_json else v for k, v in record.items()})
        )

    def batches_after(self, batch_id: int) -> pd.DataFrame:
        """Ingestion batches newer than ``batch_id`` (the sensor's cursor), oldest first."""
        return self.read_frame(
            sa.select(t.ingest_batches)
            .where(t.ingest_batches.c.batch_id > batch_id)
            .order_by(t.ingest_batches.c.batch_id)
        )

    def ingestion_watermark(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(t.ingest_batches.c.batch_id))).scalar()
        return int(value or 0)

    def day_versions(self, start: date, end: date) -> dict[str, int]:
        """For each day with data in [start, end]: the newest batch id that changed it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.performance.c.date, sa.func.max(t.performance.c.batch_id))
                .where(t.performance.c.date.between(start, end))
                .group_by(t.performance.c.date)
            ).all()
        return {pd.Timestamp(d).date().isoformat(): int(v) for d, v in rows}

    def day_version_times(self, start: date, end: date) -> dict[str, datetime]:
        """For each day with data in [start, end]: when the newest batch that changed it arrived."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.performance.c.date, sa.func.max(t.ingest_batches.c.ingested_at))
                .join(t.ingest_batches, t.ingest_batches.c.batch_id == t.performance.c.batch_id)
                .where(t.performance.c.date.between(start, end))
                .group_by(t.performance.c.date)
            ).all()
        # SQLite returns naive timestamps (stored as UTC), PostgreSQL aware ones
        return {
            pd.Timestamp(d).date().isoformat(): (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
            for d, v in rows
        }

    # -- raw reads ---------------------------------------------------------------------------
    def performance_rows(self, *where, conn=None) -> pd.DataFrame:
        """Raw performance rows matching ``where`` (clauses on ``t.performance``), each with its
        attributes as canonical JSON text (the column ``attributes``)."""
        p, a = t.performance, t.attribute_sets
        stmt = (
            sa.select(*[c for c in p.c if c.name != "attribute_set_id"], a.c.attributes)
            .join(a, a.c.attribute_set_id == p.c.attribute_set_id)
            .where(*where)
        )
        return self.read_frame(_ordered_by_key(stmt, p), conn)

    def performance_for_day(self, day: date, conn=None) -> pd.DataFrame:
        return self.performance_rows(t.performance.c.date == day, conn=conn)

    def performance_day_summary(self, day: date) -> dict:
        """``day``'s rows summarized by the database (see ``rollup.day_summary``): no row is read."""
        with self.engine.connect() as conn:
            return rollup.day_summary(conn, day)

    # -- the day's roll-up inside PostgreSQL (storage.rollup) ---------------------------------
    def rolls_up_in_database(self, enabled: bool) -> bool:
        """Whether the day's statistics are computed by SQL here: PostgreSQL, when ``enabled``."""
        return enabled and self.is_postgres

    def daily_stats_in_database(self, conn, day: date) -> dict:
        """Rewrite ``day``'s creative and attribute statistics from its raw rows, in SQL."""
        return rollup.daily_stats(conn, day)

    def fatigue_sums_in_database(self, start: date, end: date) -> tuple[float, float]:
        """The fatigue slope's within-creative sums over ``start``..``end``, in SQL."""
        with self.engine.connect() as conn:
            return rollup.fatigue_sums(conn, start, end)

    def roll_forward_in_database(self, conn, previous_day: date, day: date, decay: float) -> dict:
        """Write ``day``'s cumulative snapshot from ``previous_day``'s and ``day``'s statistics, in
        SQL: whole, or as the increments since the base where :meth:`delta_base` allows. Returns
        the snapshot's size, its base and the rows written."""
        previous_base = self.snapshot_base(previous_day, conn)
        base = self.delta_base(previous_day, day, decay, conn, previous_base)
        written = rollup.roll_forward(conn, previous_day, day, decay, previous_base, base)
        self.refresh_statistics(t.creative_cumulative_stats, conn=conn)  # what follows reads the new day
        self.register_snapshot(conn, day, base or day)
        return {**self.snapshot_size(conn, day, base or day), "base": base or day, "written": written}

    def quarantined_count(self, day: date) -> int:
        """Rows ever refused for ``day`` (by the date they gave)."""
        return self.count_rows(t.quarantine, day=day.isoformat())

    def first_seen(self, day: date, conn=None) -> pd.DataFrame:
        """First day each (account_id, creative_id) with a row on ``day`` appears in the performance
        data. Each minimum is a lookup in the primary key's index (account, creative, date), so
        it costs the day's creatives, not the history (a filter on the creatives alone scanned
        every stored row: 1.0 s against 0.08 s for a 10k-row day after a year of them)."""
        p = t.performance
        f = p.alias("f")
        first = (
            sa.select(sa.func.min(f.c.date))
            .where(f.c.account_id == p.c.account_id, f.c.creative_id == p.c.creative_id)
            .scalar_subquery()
        )
        frame = self.read_frame(
            sa.select(p.c.account_id, p.c.creative_id, first.label("first_seen")).where(p.c.date == day), conn
        )
        frame["first_seen"] = pd.to_datetime(frame["first_seen"]).dt.date if not frame.empty else []
        return frame

    # -- generic per-day outputs -------------------------------------------------------------
    def write_day(self, conn, table: sa.Table, day: date, frame: pd.DataFrame, day_column: str = "as_of") -> int:
        """Replace everything ``table`` holds for ``day`` by ``frame`` (inside the caller's lock)."""
        frame = frame.copy()
        frame[day_column] = day
        return self.replace_partition(conn, table, frame, {day_column: day})

    def read_day(
        self,
        table: sa.Table,
        day: date,
        day_column: str = "as_of",
        conn=None,
        columns: Sequence[str] | None = None,
        accounts: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """One day's rows of ``table`` (only ``columns``, and ``accounts``, if given), in key order."""
        stmt = _of_accounts(_select(table, columns).where(table.c[day_column] == day), table, accounts)
        return self.read_frame(_ordered_by_key(stmt, table), conn)

    def accounts_on(self, table: sa.Table, day: date, day_column: str = "as_of") -> list[str]:
        """The accounts ``table`` holds rows of for ``day``."""
        col = table.c.account_id
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(col).where(table.c[day_column] == day).distinct()).scalars())

    def latest_day(
        self, table: sa.Table, on_or_before: date | None = None, day_column: str = "as_of", conn=None
    ) -> date | None:
        col = table.c[day_column]
        stmt = sa.select(sa.func.max(col))
        if on_or_before is not None:
            stmt = stmt.where(col <= on_or_before)
        value = self._scalar(stmt, conn)
        return None if value is None else pd.Timestamp(value).date()

    def _scalar(self, stmt, conn=None):
        """One value of ``stmt``, on ``conn`` (inside the caller's transaction) or a connection of its own."""
        if conn is not None:
            return conn.execute(stmt).scalar()
        with self.engine.connect() as own:
            return own.execute(stmt).scalar()

    def read_before(
        self, table: sa.Table, day: date, day_column: str = "as_of", conn=None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Every row of ``table`` for days strictly before ``day`` (only ``columns``, if given), in key order."""
        stmt = _select(table, columns).where(table.c[day_column] < day)
        return self.read_frame(_ordered_by_key(stmt, table), conn)

    def first_day(self, table: sa.Table, day_column: str = "as_of") -> date | None:
        """The earliest day ``table`` holds, or None when it is empty."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.min(table.c[day_column]))).scalar()
        return None if value is None else pd.Timestamp(value).date()

    def count_days(self, table: sa.Table, on_or_before: date, day_column: str = "as_of") -> int:
        """How many distinct days ``table`` holds up to ``on_or_before``."""
        col = table.c[day_column]
        with self.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count(sa.distinct(col))).where(col <= on_or_before)).scalar()
        return int(n or 0)

    def read_range(
        self,
        table: sa.Table,
        start: date,
        end: date,
        day_column: str = "date",
        conn=None,
        columns: Sequence[str] | None = None,
        accounts: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """The rows of ``table`` for days ``start``..``end`` (only ``columns``, and ``accounts``, if
        given), in key order."""
        stmt = _select(table, columns).where(table.c[day_column].between(start, end))
        return self.read_frame(_ordered_by_key(_of_accounts(stmt, table, accounts), table), conn)

    def creative_attributes(self, start: date, end: date, accounts: Sequence[str]) -> pd.DataFrame:
        """``account_id, creative_id, attributes`` of every creative that ran in ``start``..``end``
        (one row each: the database groups the creative-days, so their JSON does not cross the wire)."""
        c = t.creative_daily_stats.c
        stmt = (
            sa.select(c.account_id, c.creative_id, sa.func.min(c.attributes).label("attributes"))
            .where(c.date.between(start, end))
            .group_by(c.account_id, c.creative_id)
            .order_by(c.account_id, c.creative_id)
        )
        return self.read_frame(_of_accounts(stmt, t.creative_daily_stats, accounts))

    def creative_totals(self, day: date, accounts: Sequence[str] | None = None, live: bool = False) -> pd.DataFrame:
        """Each creative of ``day``'s cumulative snapshot with its cells added up in the database
        (one row per creative, not one per day of week and age): ``account_id, creative_id``, the
        summed metrics (unknown where no cell knew them), ``attributes`` (the most recently seen
        set: a restatement may have corrected them) and ``last_seen``, in key order. ``live``: only
        the creatives that ran on ``day`` (last seen on ``day``, full snapshot or increment)."""
        c = t.creative_cumulative_stats.c
        keys = ["account_id", "creative_id"]
        # No ORDER BY: sorted here. On PostgreSQL an ordered aggregate invites a scan of the
        # primary key's index, which reads the table's pages out of order (6.9 s against 2.3 s
        # for 2.8M cells with fresh statistics).
        stmt = (
            sa.select(
                c.account_id,
                c.creative_id,
                c.attributes,
                *[sa.func.sum(c[m]).label(m) for m in METRIC_COLUMNS],
                sa.func.max(c.last_seen).label("last_seen"),
            )
            # a snapshot stored as increments adds up with its base's cells
            .where(c.as_of.in_(sorted({day, self.snapshot_base(day)})))
            .group_by(c.account_id, c.creative_id, c.attributes)
        )
        if live and self.is_postgres:
            # Kept by each creative's own last day (over its groups: a creative whose attributes
            # were restated has one group per set) instead of looked up by key: an IN-subquery's
            # plan hangs on statistics that lag a table growing by a day's snapshot at a time
            # (with none, a nested loop of 100k index lookups: 11 s against 2 s for 2.8M cells).
            seen = sa.func.max(sa.func.max(c.last_seen)).over(partition_by=[c.account_id, c.creative_id])
            grouped = stmt.add_columns(seen.label("last_run"))
            inner = _of_accounts(grouped, t.creative_cumulative_stats, accounts).subquery()
            stmt = sa.select(*(inner.c[n] for n in [*keys, "attributes", *METRIC_COLUMNS, "last_seen"])).where(
                inner.c.last_run == day
            )
        else:
            if live:  # SQLite plans the lookup by key: at day 365 of 10k rows a day, 0.2 s against 1.2 s
                ran = sa.select(c.account_id, c.creative_id).where(c.as_of == day, c.last_seen == day)
                stmt = stmt.where(sa.tuple_(c.account_id, c.creative_id).in_(ran))
            stmt = _of_accounts(stmt, t.creative_cumulative_stats, accounts)
        frame = self.read_frame(stmt)
        if frame.empty:
            return pd.DataFrame(columns=[*keys, *METRIC_COLUMNS, "attributes", "last_seen"])
        frame = frame.sort_values(keys, kind="stable", ignore_index=True)
        frame["last_seen"] = pd.to_datetime(frame["last_seen"]).dt.date
        if not frame.duplicated(keys).any():  # one attribute set per creative: the usual case
            return frame[[*keys, *METRIC_COLUMNS, "attributes", "last_seen"]]
        frame = frame.sort_values([*keys, "last_seen"], kind="stable")
        g = frame.groupby(keys, sort=True)
        out = g[METRIC_COLUMNS].sum(min_count=1)
        out[["attributes", "last_seen"]] = g[["attributes", "last_seen"]].last()
        return out.reset_index()

    def total(self, table: sa.Table, column: str, start: date, end: date, day_column: str = "date") -> float:
        """The sum of ``column`` over days ``start``..``end`` (0 when there are none)."""
        day = table.c[day_column]
        stmt = sa.select(sa.func.sum(table.c[column])).where(day.between(start, end))
        with self.engine.connect() as conn:
            return float(conn.execute(stmt).scalar() or 0)

    def delete_from(self, conn, table: sa.Table, day: date, day_column: str = "as_of") -> None:
        """Drop the rows of ``table`` for days >= ``day`` (derived caches made stale by new data)."""
        conn.execute(table.delete().where(table.c[day_column] >= day))

    def delete_before(self, conn, table: sa.Table, day: date, day_column: str = "as_of") -> int:
        """Drop the rows of ``table`` for days < ``day``."""
        return int(conn.execute(table.delete().where(table.c[day_column] < day)).rowcount or 0)

    # -- cumulative snapshots (full, or what changed since a full one) ---------------------------
    def latest_cumulative(self, on_or_before: date | None = None, conn=None) -> date | None:
        """The latest day with a cumulative snapshot (up to ``on_or_before``), full or not."""
        days = [
            self.latest_day(table, on_or_before, conn=conn)
            for table in (t.creative_cumulative_stats, t.cumulative_snapshots)
        ]
        return max((d for d in days if d is not None), default=None)

    def snapshot_base(self, day: date, conn=None) -> date:
        """The full snapshot ``day``'s builds on (``day`` itself when it is full)."""
        c = t.cumulative_snapshots.c
        value = self._scalar(sa.select(c.base).where(c.as_of == day), conn)
        return day if value is None else pd.Timestamp(value).date()

    def delta_base(
        self, previous: date | None, day: date, weight: float, conn=None, previous_base: date | None = None
    ) -> date | None:
        """The full snapshot ``day``'s may be stored against (only what changed since), or None
        when it must be full: nothing before it, evidence weighed anew (forgetting, a burst: every
        cell changes), a restart weekday, or the base a week old. ``previous_base``: ``previous``'s
        base, when the caller has it."""
        if previous is None or weight != 1.0 or day.weekday() == SNAPSHOT_BASE_WEEKDAY:
            return None
        base = previous_base or self.snapshot_base(previous, conn)
        return base if (day - base).days < SNAPSHOT_CHAIN_DAYS else None

    def read_snapshot(
        self, day: date, columns: Sequence[str] | None = None, accounts: Sequence[str] | None = None, conn=None
    ) -> pd.DataFrame:
        """``day``'s cumulative cells (only ``columns``, and ``accounts``, if given), in key order:
        its rows when it is full, else its base's cells plus its increments."""
        base = self.snapshot_base(day, conn)
        table = t.creative_cumulative_stats
        if columns is not None:
            columns = [*CELL_KEYS, *(c for c in columns if c not in CELL_KEYS)]
        cells = self.read_day(table, base, conn=conn, columns=columns, accounts=accounts)
        if base == day:
            return cells
        increments = self.read_day(table, day, conn=conn, columns=columns, accounts=accounts)
        out = add_increments(cells.drop(columns="as_of", errors="ignore"), increments)
        if "as_of" in cells.columns:  # as a full snapshot's rows read
            out.insert(list(cells.columns).index("as_of"), "as_of", day)
        return out

    def nuisance_terms(self, on_or_before: date) -> tuple[date, dict[str, dict[str, dict[int, float]]]] | None:
        """The latest day up to ``on_or_before`` whose global fits left the day-of-week and age
        terms of every metric (``EffectFit.nuisance``), and those terms: ``(day, {metric: {"dow":
        {d: log effect}, "age": {bucket: log effect}}})``; None when no day did."""
        n = t.nuisance_terms.c
        days = (
            sa.select(n.as_of)
            .where(n.as_of <= on_or_before)
            .group_by(n.as_of)
            .having(sa.func.count(sa.distinct(n.metric)) == len(EXPOSURE_METRIC))
        )
        latest = self._scalar(sa.select(sa.func.max(days.subquery().c.as_of)))
        if latest is None:
            return None
        latest = pd.Timestamp(latest).date()
        terms: dict[str, dict[str, dict[int, float]]] = {m: {"dow": {}, "age": {}} for m in EXPOSURE_METRIC.values()}
        for metric, term, level, value in (
            self.read_day(t.nuisance_terms, latest).drop(columns="as_of").itertuples(index=False)
        ):
            terms[metric][term][int(level)] = float(value)
        return latest, terms

    def collapse_inactive(self, conn, day: date, last_seen_by: date, terms: dict) -> dict:
        """Collapse, in ``day``'s full snapshot, every creative last seen on or before
        ``last_seen_by`` that still has cells of its own into one row (``core.stats.collapse_cells``
        with ``terms``; a row it was collapsed into before is folded in). Inside the caller's
        transaction. Returns how many creatives were collapsed and how many rows that removed."""
        table = t.creative_cumulative_stats
        c = table.c
        inactive = (
            sa.select(c.account_id, c.creative_id)
            .where(c.as_of == day)
            .group_by(c.account_id, c.creative_id)
            .having(sa.func.max(c.last_seen) <= last_seen_by, sa.func.max(c.dow) > COLLAPSED)
        )
        mine = sa.tuple_(c.account_id, c.creative_id).in_(inactive)
        cells = self.read_frame(_ordered_by_key(sa.select(table).where(c.as_of == day, mine), table), conn)
        if cells.empty:
            return {"creatives_collapsed": 0, "cells_collapsed": 0}
        rows = collapse_cells(cells.drop(columns="as_of"), terms).assign(as_of=day)
        conn.execute(table.delete().where(c.as_of == day, mine))
        self.bulk_insert(conn, table, rows)
        return {"creatives_collapsed": len(rows), "cells_collapsed": len(cells) - len(rows)}

    def cumulative_accounts(self, day: date) -> list[str]:
        """The accounts ``day``'s cumulative snapshot holds cells of."""
        c = t.creative_cumulative_stats.c
        days = sorted({day, self.snapshot_base(day)})
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(c.account_id).where(c.as_of.in_(days)).distinct()).scalars())

    def write_snapshot(self, conn, day: date, cells: pd.DataFrame, base: date) -> int:
        """Store ``day``'s snapshot: ``cells`` are every cell (``base`` is ``day``) or the increments
        since ``base``. Returns the rows written."""
        written = self.write_day(conn, t.creative_cumulative_stats, day, cells)
        self.refresh_statistics(t.creative_cumulative_stats, conn=conn)  # what follows reads the new day
        self.register_snapshot(conn, day, base)
        return written

    def register_snapshot(self, conn, day: date, base: date) -> None:
        """Record which full snapshot ``day``'s builds on."""
        row = pd.DataFrame({"as_of": [day], "base": [base]})
        self.replace_partition(conn, t.cumulative_snapshots, row, {"as_of": day})

    def drop_snapshots_from(self, conn, day: date) -> None:
        """Drop the cumulative snapshots of days >= ``day`` (caches made stale by new data)."""
        self.delete_from(conn, t.creative_cumulative_stats, day)
        self.delete_from(conn, t.cumulative_snapshots, day)

    def snapshot_size(self, conn, day: date, base: date) -> dict:
        """Cells, creatives and accounts of ``day``'s snapshot (built on ``base``), counted in the database."""
        table = t.creative_cumulative_stats
        c = table.c
        per_creative = sa.select(c.account_id, c.creative_id, sa.func.count().label("cells")).group_by(
            c.account_id, c.creative_id
        )
        if day == base:  # a full snapshot holds each cell once
            per_creative = per_creative.where(c.as_of == day).subquery()
        else:
            # the base's cells, and the increments' cells the base does not have: no DISTINCT over
            # both (at 2.8M cells and 400k increments, 3.5 s against 2.1 s)
            i, b = table.alias("i"), table.alias("b")
            in_base = sa.exists().where(*(b.c[k] == i.c[k] for k in CELL_KEYS), b.c.as_of == base)
            new = (
                sa.select(i.c.account_id, i.c.creative_id, sa.func.count().label("cells"))
                .where(i.c.as_of == day, ~in_base)
                .group_by(i.c.account_id, i.c.creative_id)
            )
            both = sa.union_all(per_creative.where(c.as_of == base), new).subquery()
            per_creative = (
                sa.select(both.c.account_id, sa.func.sum(both.c.cells).label("cells"))
                .group_by(both.c.account_id, both.c.creative_id)
                .subquery()
            )
        n_cells, creatives, accounts = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(per_creative.c.cells), 0),
                sa.func.count(),
                sa.func.count(sa.distinct(per_creative.c.account_id)),
            )
        ).one()
        return {"cumulative_cells": int(n_cells), "creatives": int(creatives), "accounts": int(accounts)}

    def snapshot_storage(self) -> dict:
        """The rows every kept cumulative snapshot holds together and, on PostgreSQL, their table's
        size on disk with its index: the knowledge's footprint."""
        out = {"snapshot_rows_stored": self.count_rows(t.creative_cumulative_stats)}
        if self.is_postgres:
            with self.engine.connect() as conn:
                size = conn.execute(
                    sa.select(sa.func.pg_total_relation_size(t.creative_cumulative_stats.name))
                ).scalar()
            out["snapshot_table_mb"] = round(int(size) / 2**20)
        return out

    def prune_snapshots(self, conn, before: date, keep: Iterable[date] = ()) -> int:
        """Drop cumulative snapshots older than ``before`` except Sundays' (weekly restart points),
        the days of ``keep`` (the first days of exploration bursts, where the evidence is split)
        and the full snapshots that any snapshot kept builds on."""
        c, r = t.creative_cumulative_stats.c, t.cumulative_snapshots.c
        bases = {pd.Timestamp(a).date(): pd.Timestamp(b).date() for a, b in conn.execute(sa.select(r.as_of, r.base))}
        old = {pd.Timestamp(d).date() for (d,) in conn.execute(sa.select(c.as_of).where(c.as_of < before).distinct())}
        old |= {d for d in bases if d < before}
        kept = {d for d in old if d.weekday() == SNAPSHOT_BASE_WEEKDAY or d in set(keep)}
        kept |= {b for d, b in bases.items() if d >= before or d in kept}
        drop = sorted(old - kept)
        if not drop:
            return 0
        conn.execute(t.cumulative_snapshots.delete().where(r.as_of.in_(drop)))
        return int(conn.execute(t.creative_cumulative_stats.delete().where(c.as_of.in_(drop))).rowcount or 0)

    def count_rows(self, table: sa.Table, **equals) -> int:
        stmt = sa.select(sa.func.count()).select_from(table)
        for col, value in equals.items():
            stmt = stmt.where(table.c[col] == value)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    # -- read models (the CLI's and the API's queries) ------------------------------------------
    def latest_patterns(
        self,
        *,
        account_id: str,
        min_confidence: float = 0.0,
        pattern_type: str | None = None,
        metric: str | None = None,
        state: str | None = None,
        limit: int = 50,
    ) -> pd.DataFrame:
        """The newest day's patterns of one scope (an account, or ``GLOBAL``), most confident first."""
        day = self.latest_day(t.learning_patterns)
        if day is None:
            return pd.DataFrame()
        c = t.learning_patterns.c
        stmt = sa.select(t.learning_patterns).where(
            c.as_of == day, c.confidence >= min_confidence, c.account_id == account_id
        )
        for column, value in (("pattern_type", pattern_type), ("metric", metric), ("state", state)):
            if value:
                stmt = stmt.where(c[column] == value)
        stmt = stmt.order_by(c.confidence.desc(), sa.func.abs(c.log_effect).desc(), c.pattern_id).limit(limit)
        return self.read_frame(stmt)

    def dna_weights_for(self, day: date, account_ids: list[str], dimensions: list[str]) -> pd.DataFrame:
        """The day's DNA weights of some scopes (an account and ``GLOBAL``) and dimensions."""
        c = t.creative_dna.c
        return self.read_frame(
            sa.select(t.creative_dna).where(c.as_of == day, c.account_id.in_(account_ids), c.dimension.in_(dimensions))
        )

    def latest_recommendations(self, account_id: str) -> pd.DataFrame:
        """The account's newest recommendations (launches and spend split), in rank order."""
        c = t.creative_recommendations.c
        day = self.latest_day(t.creative_recommendations)
        if day is None:
            return pd.DataFrame()
        return self.read_frame(
            sa.select(t.creative_recommendations)
            .where(c.as_of == day, c.account_id == account_id)
            .order_by(c.kind, c.rank)
        )

    def graph_nodes(self, day: date, limit: int) -> pd.DataFrame:
        """The ``limit`` most important knowledge nodes of ``day``."""
        n = t.knowledge_nodes.c
        return self.read_frame(
            sa.select(t.knowledge_nodes).where(n.as_of == day).order_by(n.importance.desc(), n.node_id).limit(limit)
        )

    def graph_relationships(self, day: date, node_ids: list[str]) -> pd.DataFrame:
        """Relationships of ``day`` whose both ends are among ``node_ids``."""
        r = t.knowledge_relationships.c
        return self.read_frame(
            sa.select(t.knowledge_relationships).where(
                r.as_of == day, r.source_id.in_(node_ids), r.target_id.in_(node_ids)
            )
        )

    def node_history(self, node_ids: list[str]) -> pd.DataFrame:
        """Each node's confidence on every day it existed."""
        n = t.knowledge_nodes.c
        return self.read_frame(
            sa.select(n.node_id, n.as_of, n.confidence).where(n.node_id.in_(node_ids)).order_by(n.as_of)
        )

    def latest_snapshot(self, account_id: str) -> pd.DataFrame:
        """The account's newest improvement snapshot (zero or one row)."""
        s = t.improvement_snapshots.c
        return self.read_frame(
            sa.select(t.improvement_snapshots).where(s.account_id == account_id).order_by(s.date.desc()).limit(1)
        )

    def snapshot_series(self, account_id: str) -> pd.DataFrame:
        """The account's daily spend, revenue and ROAS, oldest first."""
        s = t.improvement_snapshots.c
        return self.read_frame(
            sa.select(s.date, s.spend, s.revenue, s.roas).where(s.account_id == account_id).order_by(s.date)
        )

    def snapshot_accounts(self) -> list[str]:
        """Every account with an improvement snapshot, sorted."""
        s = t.improvement_snapshots.c
        return list(self.read_frame(sa.select(s.account_id).distinct().order_by(s.account_id))["account_id"])

    def published_insights(self, day: date, limit: int) -> pd.DataFrame:
        """The day's published cross-account insights, surest (highest lower bound) first."""
        c = t.cross_account_insights.c
        return self.read_frame(
            sa.select(t.cross_account_insights)
            .where(c.as_of == day, c.published.is_(True))
            .order_by(c.ci_low.desc())
            .limit(limit)
        )

    # -- registry ----------------------------------------------------------------------------
    def registry(self) -> pd.DataFrame:
        return self.read_frame(sa.select(t.model_registry).order_by(t.model_registry.c.version))

    def next_model_version(self, conn) -> int:
        value = conn.execute(sa.select(sa.func.max(t.model_registry.c.version))).scalar()
        return int(value or 0) + 1

    def set_model_status(self, conn, version: int, status: str, reason: str | None = None) -> None:
        values = {"status": status}
        if reason is not None:
            values["reason"] = reason
        conn.execute(t.model_registry.update().where(t.model_registry.c.version == version).values(**values))

    # -- cycle log ---------------------------------------------------------------------------
    def log_cycle(self, row: dict) -> None:
        with self.transaction(lock_key=f"cycle_log:{row['run_id']}") as conn:
            self.upsert(conn, t.learning_cycle_logs, pd.DataFrame([row]))

    def cycle_logs(self, limit: int = 20) -> pd.DataFrame:
        return self.read_frame(
            sa.select(t.learning_cycle_logs).order_by(t.learning_cycle_logs.c.ended_at.desc()).limit(limit)
        )

    # -- maintenance -------------------------------------------------------------------------
    def reset(self, include_raw: bool = False) -> list[str]:
        """Empty the learning tables (and the raw data only when ``include_raw``)."""
        tables = LEARNING_TABLES + (RAW_TABLES if include_raw else [])
        with self.transaction(lock_key="ingest") as conn:
            for table in tables:
                conn.execute(table.delete())
        return [tb.name for tb in tables]


@lru_cache(maxsize=8)
def get_store(url: str) -> Store:
    """One Store (engine pool) per URL per process."""
    return Store(url)
