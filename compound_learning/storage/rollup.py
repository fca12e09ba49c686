"""The row-level work of a day as set-based SQL, so that no raw row crosses the wire.

Three statements replace three pandas passes of the daily cycle (``core.stats`` holds the
definitions they reproduce, and the tests hold the two paths to the same rows):

- :func:`day_summary`: the figures of ``performance_data`` (rows, accounts, creatives, sums,
  data version, invariant violations) as one aggregate (any database);
- :func:`daily_stats`: ``creative_daily_stats`` and ``attribute_daily_stats`` of a day from the
  raw rows, with each creative's age from its first day and the attribute sets expanded by
  ``jsonb_each_text`` (PostgreSQL);
- :func:`roll_forward`: the day's cumulative snapshot as ``decay * previous + today`` per cell
  in one ``FULL OUTER JOIN`` (PostgreSQL), written whole or as the increments since its base.

The statements are plain SQL over the project's tables; a warehouse with JSON functions runs
the same shape. Dimensions are ordered by ``COLLATE "C"`` (code points, as Python's ``sorted``),
so a pair row names its two dimensions in the same order as the pandas path.
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from compound_learning.core.stats import ADJUSTED, AGE_BUCKET_EDGES, COLLAPSED_COLUMNS, METRICS, NO_DIMENSION, SHARES
from compound_learning.storage import schema as t

# Memory for the day's hash aggregates, for this transaction only (SET LOCAL): the server's
# default (4 MB) spills a 100k-row day's 1.5M value rows to disk in 64 batches.
WORK_MEM = "256MB"
_SUMS = ", ".join(f"sum({m}) AS {m}" for m in METRICS)
_COLUMNS = ", ".join(METRICS)


def day_summary(conn: Connection, day: date) -> dict:
    """Rows, accounts, creatives, impressions, clicks, spend, data version and rows breaking an
    invariant (clicks > impressions, negative impressions or spend) of ``day``'s raw rows."""
    p = t.performance.c
    violations = sa.func.count().filter((p.clicks > p.impressions) | (p.impressions < 0) | (p.spend < 0))
    row = conn.execute(
        sa.select(
            sa.func.count().label("rows"),
            sa.func.count(sa.distinct(p.account_id)).label("accounts"),
            # creative ids are unique within an account; the pandas summary counted distinct ids
            sa.func.count(sa.distinct(p.creative_id)).label("creatives"),
            sa.func.coalesce(sa.func.sum(p.impressions), 0).label("impressions"),
            sa.func.coalesce(sa.func.sum(p.clicks), 0).label("clicks"),
            sa.func.coalesce(sa.func.sum(p.spend), 0.0).label("spend"),
            sa.func.coalesce(sa.func.max(p.batch_id), 0).label("data_version"),
            violations.label("invariant_violations"),
        ).where(p.date == day)
    ).one()
    summary = dict(row._mapping)
    return {k: float(v) if k == "spend" else int(v) for k, v in summary.items()}


def _age_bucket_sql(age: str) -> str:
    """``core.stats.age_bucket`` in SQL: how many edges are <= the age."""
    return "(" + " + ".join(f"(CASE WHEN {age} >= {edge} THEN 1 ELSE 0 END)" for edge in AGE_BUCKET_EDGES) + ")"


def daily_stats(conn: Connection, day: date) -> dict:
    """Rewrite ``day``'s ``creative_daily_stats`` and ``attribute_daily_stats`` from its raw rows
    (inside the caller's transaction and lock). Returns the counts and sums of the summary and
    whether the creative statistics differ from what the day held before."""
    params = {"day": day, "dow": day.weekday(), "none": NO_DIMENSION}
    conn.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    conn.execute(sa.text("DROP TABLE IF EXISTS cl_day_creatives, cl_day_values"))
    # age: days since the creative's first row (the primary key's index answers each min)
    conn.execute(
        sa.text(
            f"""
            CREATE TEMP TABLE cl_day_creatives ON COMMIT DROP AS
            SELECT p.account_id, p.creative_id, CAST(:dow AS smallint) AS dow,
                   GREATEST(p.date - (SELECT min(f.date) FROM {t.performance.name} f
                                      WHERE f.account_id = p.account_id AND f.creative_id = p.creative_id), 0)
                       AS age_days,
                   {", ".join("p." + m for m in METRICS)}, p.attribute_set_id, a.attributes
            FROM {t.performance.name} p JOIN {t.attribute_sets.name} a USING (attribute_set_id)
            WHERE p.date = :day
            """
        ),
        params,
    )
    cols = f"account_id, creative_id, dow, age_days, {_COLUMNS}, attributes"
    held = conn.execute(
        sa.text(f"SELECT EXISTS (SELECT 1 FROM {t.creative_daily_stats.name} WHERE date = :day)"), params
    ).scalar()
    if not held:  # the day's first roll-up (the usual case): changed if it has rows at all
        changed = conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM cl_day_creatives)")).scalar()
    else:
        changed = conn.execute(
            sa.text(
                f"""
                SELECT EXISTS (SELECT {cols} FROM cl_day_creatives
                               EXCEPT SELECT {cols} FROM {t.creative_daily_stats.name} WHERE date = :day)
                    OR EXISTS (SELECT {cols} FROM {t.creative_daily_stats.name} WHERE date = :day
                               EXCEPT SELECT {cols} FROM cl_day_creatives)
                """
            ),
            params,
        ).scalar()
    conn.execute(sa.text(f"DELETE FROM {t.creative_daily_stats.name} WHERE date = :day"), params)
    conn.execute(
        # in key order, as every snapshot's cells (``roll_forward``)
        sa.text(
            f"INSERT INTO {t.creative_daily_stats.name} (date, {cols}) "
            f"SELECT :day, {cols} FROM cl_day_creatives ORDER BY account_id, creative_id"
        ),
        params,
    )
    conn.execute(sa.text(f"DELETE FROM {t.attribute_daily_stats.name} WHERE date = :day"), params)
    # Each attribute set the day uses, expanded once into its values and pairs of values (a set
    # is shared by every creative and day that has it: a few thousand for a 1M-row day), then
    # joined to the day's creatives by id: the JSON is parsed per set, not per row.
    conn.execute(
        sa.text(
            f"""
            CREATE TEMP TABLE cl_day_values ON COMMIT DROP AS
            WITH sets AS (
                SELECT attribute_set_id, CAST(attributes AS jsonb) AS j FROM {t.attribute_sets.name}
                WHERE attribute_set_id IN (SELECT DISTINCT attribute_set_id FROM cl_day_creatives)
            )
            SELECT s.attribute_set_id, e.key AS dimension, e.value AS value, e2.key AS dimension2, e2.value AS value2
            FROM sets s
                 CROSS JOIN LATERAL jsonb_each_text(s.j) e
                 CROSS JOIN LATERAL (
                     SELECT CAST(:none AS text) AS key, CAST(:none AS text) AS value
                     UNION ALL
                     SELECT key, value FROM jsonb_each_text(s.j) WHERE key COLLATE "C" > e.key COLLATE "C"
                 ) e2
            """
        ),
        params,
    )
    conn.execute(sa.text("ANALYZE cl_day_creatives"))
    conn.execute(sa.text("ANALYZE cl_day_values"))
    attribute_columns = f"date, account_id, dimension, value, dimension2, value2, creatives, {_COLUMNS}"
    # count(*): a creative has one row per day, so it counts the distinct creatives of a group
    conn.execute(
        sa.text(
            f"""
            INSERT INTO {t.attribute_daily_stats.name} ({attribute_columns})
            SELECT :day, c.account_id, v.dimension, v.value, v.dimension2, v.value2, count(*), {_SUMS}
            FROM cl_day_creatives c JOIN cl_day_values v USING (attribute_set_id)
            GROUP BY c.account_id, v.dimension, v.value, v.dimension2, v.value2
            """
        ),
        params,
    )
    figures = conn.execute(
        sa.text(
            # one row per creative and day (the primary key), so count(*) counts the creatives
            "SELECT count(*), count(*), coalesce(sum(impressions), 0), coalesce(sum(clicks), 0) FROM cl_day_creatives"
        )
    ).one()
    kinds = dict(
        conn.execute(
            sa.text(
                f"SELECT dimension2 = :none, count(*) FROM {t.attribute_daily_stats.name} WHERE date = :day GROUP BY 1"
            ),
            params,
        ).all()
    )
    conn.execute(sa.text("DROP TABLE cl_day_creatives, cl_day_values"))
    return {
        "source_rows": int(figures[0]),
        "creatives": int(figures[1]),
        "attribute_rows": int(kinds.get(True, 0)),
        "pair_rows": int(kinds.get(False, 0)),
        "impressions": int(figures[2]),
        "clicks": int(figures[3]),
        "changed": bool(changed),
    }


def roll_forward(
    conn: Connection, previous_day: date, day: date, decay: float, previous_base: date, delta_base: date | None
) -> int:
    """Write ``day``'s cumulative snapshot as ``decay * snapshot(previous_day) + stats(day)`` per
    (account, creative, day of week, age bucket) cell, as ``core.stats.roll_forward`` does:
    sums where either side knows a metric (unknown stays unknown), with forgetting on evidence
    below one impression dropped, and today's attributes and date wherever the cell ran today.

    The previous snapshot is ``previous_base``'s cells, plus ``previous_day``'s increments when it
    is not that base itself (``core.stats.add_increments``). With ``delta_base`` (no forgetting:
    ``decay`` is 1, and ``previous_base`` is that base) only the increments since it are written:
    the previous increments rolled forward with the day, so neither the base nor the cells that did
    not run are read or written. The rows are written in key order, as ``Database.bulk_insert``
    writes them: the index then appends instead of inserting all over itself, and a day's cells lie
    in the table in the order its reads ask for them (a snapshot's 2.8M cells: 8.4 s to read,
    3.3 s when written in order). Returns the rows written."""
    snapshot = t.creative_cumulative_stats.name
    params = {"previous": previous_day, "base": previous_base, "day": day, "decay": float(decay)}
    keep = "" if decay == 1.0 else "WHERE s.impressions * :decay >= 1.0"
    keys = "account_id, creative_id, dow, age_bucket"
    collapsed = ", ".join(COLLAPSED_COLUMNS)  # a collapsed row's (no day adds to it: ``core.stats.collapse_cells``)
    carried = f"{keys}, {_COLUMNS}, days, attributes, last_seen, {collapsed}"
    if delta_base is not None:
        if delta_base != previous_base or decay != 1.0:
            raise ValueError("increments build on the previous snapshot's base, without forgetting")
        # the base's own snapshot has no increments yet
        previous = f"SELECT {carried} FROM {snapshot} WHERE as_of = :previous AND as_of <> :base"
    elif previous_day == previous_base:
        previous = f"SELECT {carried} FROM {snapshot} WHERE as_of = :previous"
    else:
        previous = f"""
            SELECT {keys}, {_summed("b", "i")}, coalesce(b.days, 0) + coalesce(i.days, 0) AS days,
                   coalesce(i.attributes, b.attributes) AS attributes, coalesce(i.last_seen, b.last_seen) AS last_seen,
                   {", ".join(f"coalesce(i.{a}, b.{a}) AS {a}" for a in COLLAPSED_COLUMNS)}
            FROM (SELECT {carried} FROM {snapshot} WHERE as_of = :base) AS b
                 FULL OUTER JOIN (SELECT {carried} FROM {snapshot} WHERE as_of = :previous) AS i USING ({keys})
        """
    conn.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    conn.execute(sa.text(f"DELETE FROM {snapshot} WHERE as_of = :day"), params)
    written = conn.execute(
        sa.text(
            f"""
            INSERT INTO {snapshot} (as_of, {keys}, {_COLUMNS}, days, attributes, last_seen, {collapsed})
            WITH p AS (
                SELECT {keys}, {", ".join(f"s.{m} * :decay AS {m}" for m in (*METRICS, *ADJUSTED))},
                       days, attributes, last_seen, {", ".join(SHARES)}
                FROM ({previous}) AS s {keep}
            ), d AS (
                SELECT account_id, creative_id, dow, {_age_bucket_sql("age_days")} AS age_bucket,
                       {", ".join(f"CAST({m} AS double precision) AS {m}" for m in METRICS)},
                       1 AS days, attributes, date AS last_seen
                FROM {t.creative_daily_stats.name} WHERE date = :day
            )
            SELECT :day, {", ".join(f"coalesce(d.{k}, p.{k})" for k in keys.split(", "))}, {_summed("p", "d")},
                   coalesce(p.days, 0) + coalesce(d.days, 0),
                   coalesce(d.attributes, p.attributes), coalesce(d.last_seen, p.last_seen),
                   {", ".join(f"p.{a}" for a in COLLAPSED_COLUMNS)}
            FROM p FULL OUTER JOIN d USING ({keys})
            ORDER BY 2, 3, 4, 5
            """
        ),
        params,
    )
    return int(written.rowcount or 0)


def _summed(left: str, right: str) -> str:
    """Each metric of two joined cells added up; unknown only where neither side knows it."""
    return ", ".join(
        f"CASE WHEN {left}.{m} IS NULL AND {right}.{m} IS NULL THEN NULL "
        f"ELSE coalesce({left}.{m}, 0) + coalesce({right}.{m}, 0) END AS {m}"
        for m in METRICS
    )


def fatigue_sums(conn: Connection, start: date, end: date) -> tuple[float, float]:
    """The two sums of ``core.recommend.fatigue_slope`` over the creative-days of
    ``start``..``end``, in SQL (a window's rows never cross the wire: two numbers come back).

    Within each creative, x is its impressions before the day (in the window, per 100k) and y
    its log CTR, weighted by clicks + 0.5; the slope's ``sxx`` and ``sxy`` are the weighted
    sums of squares and products about the creative's own weighted means, here in the
    equivalent form ``sum(wxx) - sum(wx)^2 / sum(w)`` per creative. The arithmetic is in double
    precision, as in numpy (with integer counts and decimal literals PostgreSQL would compute
    in ``numeric``, about four times slower than reading the rows)."""
    conn.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM}'"))  # the window's sort in memory, not on disk
    row = conn.execute(
        sa.text(
            f"""
            WITH d AS (
                SELECT account_id, creative_id, CAST(clicks AS double precision) + 0.5 AS w,
                       CAST(SUM(impressions) OVER running - impressions AS double precision) / 1e5 AS x,
                       LN((CAST(clicks AS double precision) + 0.5) / (CAST(impressions AS double precision) + 1.0)) AS y
                FROM {t.creative_daily_stats.name}
                WHERE date BETWEEN :start AND :end
                WINDOW running AS (PARTITION BY account_id, creative_id ORDER BY date ROWS UNBOUNDED PRECEDING)
            ), c AS (
                SELECT SUM(w) AS sw, SUM(w * x) AS swx, SUM(w * y) AS swy, SUM(w * x * x) AS swxx,
                       SUM(w * x * y) AS swxy
                FROM d GROUP BY account_id, creative_id
            )
            SELECT coalesce(SUM(swxx - swx * swx / sw), 0), coalesce(SUM(swxy - swx * swy / sw), 0) FROM c
            """
        ),
        {"start": start, "end": end},
    ).one()
    return float(row[0]), float(row[1])
