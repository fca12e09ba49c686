"""The daily cycle's steps: read from the store, call the pure core, write one partition.

Each step handles one day, writes its outputs in one transaction under the day's lock (so two
concurrent runs of the same day serialize on PostgreSQL), and returns a summary dict that the
Dagster assets show as metadata. The steps know nothing about Dagster; the CLI, the tests and
the benchmarks call them directly too.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from compound_learning.config import GLOBAL, CycleSettings, Settings, load_settings
from compound_learning.core import drift, stats
from compound_learning.core.dna import dna_weights
from compound_learning.core.effects import METRIC_SPECS, CodedCells
from compound_learning.core.insights import cross_account_insights
from compound_learning.core.knowledge import build_graph
from compound_learning.core.patterns import (
    CANDIDATE_COLUMNS,
    CycleFits,
    account_digests,
    fit_accounts,
    fit_code_version,
    fit_global,
    pattern_candidates,
    patterns_from_candidates,
)
from compound_learning.core.trajectory import CHANGE_WINDOW_DAYS, trajectory
from compound_learning.storage import schema as t
from compound_learning.storage.retry import with_retries
from compound_learning.storage.store import Store, get_store


@dataclass(frozen=True)
class CycleContext:
    """What every step needs: the store, the settings (paths, URLs) and the learning knobs."""

    store: Store
    settings: Settings
    cfg: CycleSettings

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, store: Store | None = None, cfg: CycleSettings | None = None
    ) -> CycleContext:
        settings = settings or load_settings()
        return cls(store or get_store(settings.database_url), settings, cfg or CycleSettings.from_settings(settings))


def _lock(name: str, day: date) -> str:
    return f"{name}:{day.isoformat()}"


# -- performance_data -----------------------------------------------------------------------
NOTHING_INGESTED = (
    "nothing was ingested for the run's days: the steps after performance_data are skipped and the "
    "knowledge stays the last day's (they run when data for these days arrives)"
)


def nothing_ingested(performance_summaries: list[dict]) -> bool:
    """Whether no row was ever stored or quarantined for any day of a run (``check_performance_day``
    summaries). Raw rows are only ever replaced, never removed, so such days have no statistics
    either, and skipping the learning steps on them changes no estimate that follows: a later
    day's cumulative statistics roll forward from the last snapshot over the days without data,
    with the forgetting of the whole gap (``cumulative_cells``). A claim's persistence streak
    counts cycles with evidence, so those days do not add to it (DESIGN.md)."""
    return all(s["rows"] == 0 and s["quarantined_rows"] == 0 for s in performance_summaries)


def check_performance_day(ctx: CycleContext, day: date) -> dict:
    """Summarize the validated slice of ``day`` (the contract was enforced at ingestion).

    One aggregate in the database: the day's rows are counted and summed where they are."""
    summary = ctx.store.performance_day_summary(day)
    quarantined = ctx.store.quarantined_count(day)
    total = summary["rows"] + quarantined
    # invariant_violations: rows the store must never hold whatever wrote to it (defense in depth)
    return {
        "rows": summary["rows"],
        "quarantined_rows": quarantined,
        "quarantine_rate": float(quarantined / total) if total else 0.0,
        **{k: summary[k] for k in ("accounts", "creatives", "impressions", "clicks", "spend", "data_version")},
        "invariant_violations": summary["invariant_violations"],
    }


# -- daily stats -----------------------------------------------------------------------------
def compute_daily_stats(ctx: CycleContext, day: date) -> dict:
    """Per-creative and per account x attribute (value, pair) sums for ``day``.

    If the day's statistics changed (a restatement), cumulative snapshots from ``day`` on are
    dropped: they are caches, rebuilt from the last valid snapshot by the next learning step.
    """
    store = ctx.store
    if store.rolls_up_in_database(ctx.cfg.rollup_in_database):
        with store.transaction(lock_key=_lock("daily_stats", day)) as conn:
            figures = store.daily_stats_in_database(conn, day)
            if figures["changed"]:
                store.drop_snapshots_from(conn, day)
        store.refresh_statistics(t.creative_daily_stats)
        return {**{k: v for k, v in figures.items() if k != "changed"}, "changed_since_last_run": figures["changed"]}
    with store.transaction(lock_key=_lock("daily_stats", day)) as conn:
        rows = store.performance_for_day(day, conn)
        first_seen = store.first_seen(day, conn) if len(rows) else pd.DataFrame()
        creative = stats.creative_day_stats(rows, first_seen, day)
        attrs = stats.attribute_day_stats(creative)
        old = store.read_day(t.creative_daily_stats, day, "date", conn)
        changed = not _same_frame(old, creative)
        store.write_day(conn, t.creative_daily_stats, day, creative, "date")
        store.write_day(conn, t.attribute_daily_stats, day, attrs, "date")
        if changed:
            store.drop_snapshots_from(conn, day)
    return {
        "source_rows": len(rows),
        "creatives": len(creative),
        "attribute_rows": int((attrs["dimension2"] == stats.NO_DIMENSION).sum()) if len(attrs) else 0,
        "pair_rows": int((attrs["dimension2"] != stats.NO_DIMENSION).sum()) if len(attrs) else 0,
        "impressions": int(creative["impressions"].sum()) if len(creative) else 0,
        "clicks": int(creative["clicks"].sum()) if len(creative) else 0,
        "changed_since_last_run": bool(changed),
    }


def _same_frame(old: pd.DataFrame, new: pd.DataFrame) -> bool:
    if len(old) != len(new):
        return False
    if not len(new):
        return True
    keys = ["account_id", "creative_id"]
    a = old.sort_values(keys).reset_index(drop=True)
    b = new.sort_values(keys).reset_index(drop=True)
    for col in ["account_id", "creative_id", "attributes"]:
        if not (a[col].astype(str) == b[col].astype(str)).all():
            return False
    for col in [*stats.METRICS, "age_days"]:
        x, y = a[col].astype(float).to_numpy(), b[col].astype(float).to_numpy()
        if not np.allclose(np.nan_to_num(x, nan=-1), np.nan_to_num(y, nan=-1)):
            return False
    return True


# -- cumulative statistics + patterns ---------------------------------------------------------
def burst_starts(store: Store, start: date, end: date) -> set[date]:
    """The days in ``[start, end]`` on which an exploration burst began (``core.drift``): the
    evidence up to such a day counts ``burst_evidence_weight`` from the next day on."""
    rows = store.read_range(t.evidence_drift, start, end, day_column="as_of", columns=["as_of", "burst_start"])
    days = [(pd.Timestamp(a).date(), pd.Timestamp(b).date()) for a, b in rows.itertuples(index=False) if pd.notna(b)]
    return {a for a, b in days if a == b}


def evidence_weight(ctx: CycleContext, since: date, day: date, starts: set[date] | None = None) -> float:
    """What evidence as of ``since`` counts on ``day``: the forgetting decay, times the burst
    weight for every burst that began in ``[since, day)``."""
    starts = burst_starts(ctx.store, since, day - timedelta(days=1)) if starts is None else starts
    bursts = sum(since <= s < day for s in starts)
    return stats.decay_factor(ctx.cfg.half_life_days, (day - since).days) * ctx.cfg.drift.burst_evidence_weight**bursts


def cumulative_cells(ctx: CycleContext, day: date, base: date | None = None) -> tuple[pd.DataFrame, int]:
    """Cumulative cells as of ``day``: the last snapshot before it plus the days since; with
    ``base`` (that snapshot's base, no forgetting since: ``Store.delta_base``) only the
    increments since ``base``, which is what the day stores.

    Returns the cells and how many days had to be rolled forward (1 in steady state, so a cycle
    costs the new day plus the size of the knowledge, not the history).
    """
    store = ctx.store
    previous_day = store.latest_cumulative(on_or_before=day - timedelta(days=1))
    if previous_day is not None:
        if base is None:
            cells = store.read_snapshot(previous_day)
        else:  # the base's own snapshot has no increments yet
            increments = previous_day != base
            cells = store.read_day(t.creative_cumulative_stats, previous_day) if increments else pd.DataFrame()
        start = previous_day + timedelta(days=1)
    else:
        cells = pd.DataFrame()
        start = min(store.first_day(t.creative_daily_stats, "date") or day, day)
        previous_day = start - timedelta(days=1)
    days_rolled = 0
    last = previous_day
    starts = burst_starts(store, previous_day, day - timedelta(days=1))
    for offset in range((day - start).days + 1):
        current = start + timedelta(days=offset)
        day_stats = store.read_day(t.creative_daily_stats, current, "date")
        if day_stats.empty and current != day:
            continue
        cells = stats.roll_forward(cells, day_stats, evidence_weight(ctx, last, current, starts), current)
        last = current
        days_rolled += 1
    if last != day:  # no data on `day` itself but forgetting still applies
        cells = stats.roll_forward(cells, pd.DataFrame(), evidence_weight(ctx, last, day, starts), day)
    return cells, days_rolled


# A sharded step: the per-account work of a day splits into shards that run as separate Dagster
# steps (any executor spreads them) and the same functions run in one process for `run_step`.
# `prepare` runs first for every day of the run (in order), then every shard's `work` over all
# the days, then `combine` for every day (in order), which writes the day's tables in one
# transaction. A shard's result does not depend on how the accounts were split, so the tables
# are the same for any number of shards.
@dataclass(frozen=True)
class Shard:
    """Which part of the work a unit covers: the accounts whose CRC-32 modulo ``of`` is one of
    ``indices``, and the global (all-account) fits of ``global_metrics``."""

    indices: tuple[int, ...]
    of: int
    global_metrics: tuple[str, ...] = ()

    def has(self, account_id: str) -> bool:
        return self.of == len(self.indices) or zlib.crc32(str(account_id).encode()) % self.of in self.indices

    @property
    def accounts_only(self) -> bool:
        """A unit that needs only its own accounts' rows (no global fit, not every account)."""
        return not self.global_metrics and self.of != len(self.indices)

    @classmethod
    def whole(cls) -> Shard:
        return cls((0,), 1, tuple(METRIC_SPECS))


@dataclass(frozen=True)
class ShardedStep:
    """A step in three parts (see the comment above): ``prepare(ctx, day) -> info``,
    ``work(ctx, days, shard, infos) -> {day: part}`` (``infos``: each day's info) and
    ``combine(ctx, day, info, parts) -> summary``."""

    prepare: Callable[[CycleContext, date], dict]
    work: Callable[[CycleContext, list[date], Shard, dict[date, dict]], dict[date, dict]]
    combine: Callable[[CycleContext, date, dict, list[dict]], dict]
    # the global fits are units of their own beside the account shards, one per metric (each
    # fits every account's cells: on a 1M-row day they, not the accounts, bound the step)
    global_units: bool = False

    def shards(self, n: int) -> list[Shard]:
        """The units of work for ``n`` shards, each a separate step in a sharded run."""
        units = [Shard((k,), n) for k in range(n)]
        if self.global_units:
            return [*(Shard((), n, (metric,)) for metric in METRIC_SPECS), *units]
        return units

    def run(self, ctx: CycleContext, day: date) -> dict:
        """The whole step for one day in this process (every shard at once)."""
        info = self.prepare(ctx, day)
        return self.combine(ctx, day, info, [self.work(ctx, [day], Shard.whole(), {day: info})[day]])


def _no_prepare(ctx: CycleContext, day: date) -> dict:
    return {}


def _one_step_roll(store: Store, day: date) -> date | None:
    """The snapshot ``day`` rolls forward from in one step (no statistics between the two), or
    None when there is none or days with data lie between (then the pandas path catches up)."""
    previous = store.latest_cumulative(on_or_before=day - timedelta(days=1))
    if previous is None:
        return None
    with_data = store.latest_day(t.creative_daily_stats, on_or_before=day - timedelta(days=1), day_column="date")
    return previous if with_data is None or with_data <= previous else None


def _prune(ctx: CycleContext, conn, day: date, keep: set[date]) -> int:
    """Drop the snapshots past the daily retention but ``keep`` (``_burst_snapshots``)."""
    return ctx.store.prune_snapshots(conn, day - timedelta(days=ctx.cfg.snapshot_daily_retention_days), keep)


def _burst_snapshots(ctx: CycleContext) -> set[date]:
    """The snapshots kept past the daily retention for relearning, which splits the evidence at
    the end of a burst's first day: those of every burst's first day."""
    return burst_starts(ctx.store, date.min, date.max) if ctx.cfg.drift.relearn_p_value > 0 else set()


def _prepare_patterns(ctx: CycleContext, day: date) -> dict:
    """Roll the cumulative evidence forward to ``day`` and store it as the day's snapshot
    (in SQL on PostgreSQL when the previous snapshot is one step behind)."""
    store, cfg = ctx.store, ctx.cfg
    previous = _one_step_roll(store, day) if store.rolls_up_in_database(cfg.rollup_in_database) else None
    if previous is not None:
        decay = evidence_weight(ctx, previous, day)
        keep = _burst_snapshots(ctx)
        plan = _collapse_plan(ctx, day)
        with store.transaction(lock_key=_lock("learning_patterns", day)) as conn:
            size = store.roll_forward_in_database(conn, previous, day, decay)
            collapsed = _collapse_inactive(store, conn, day, plan if size["base"] == day else None)
            if collapsed.get("cells_collapsed"):
                size = {**size, **store.snapshot_size(conn, day, day)}
            pruned = _prune(ctx, conn, day, keep)
        figures = _snapshot_figures(day, size, size["written"])
        return {"days_rolled_forward": 1, **figures, **collapsed, "snapshot_rows_pruned": pruned}
    previous = store.latest_cumulative(on_or_before=day - timedelta(days=1))
    base = store.delta_base(previous, day, evidence_weight(ctx, previous, day)) if previous is not None else None
    cells, rolled = cumulative_cells(ctx, day, base)
    keep = _burst_snapshots(ctx)
    plan = _collapse_plan(ctx, day) if base is None else None
    with store.transaction(lock_key=_lock("learning_patterns", day)) as conn:
        store.write_snapshot(conn, day, cells, base or day)
        collapsed = _collapse_inactive(store, conn, day, plan)
        size = store.snapshot_size(conn, day, base or day)
        pruned = _prune(ctx, conn, day, keep)
    return {
        "days_rolled_forward": rolled,
        **_snapshot_figures(day, {**size, "base": base or day}, len(cells)),
        **collapsed,
        "snapshot_rows_pruned": pruned,
    }


def _collapse_plan(ctx: CycleContext, day: date) -> dict | None:
    """What ``day``'s full snapshot collapses (``_collapse_inactive``): the creatives last seen by
    ``last_seen_by``, adjusted by the latest global fits' ``terms`` before ``day``; None when
    collapsing is off or no fit has left terms yet. A collapsed row has no day of its own, so it
    can only be evidence from before any split the learning makes: the drift test's window and
    relearning's burst day (each splits at a snapshot that later days only move forward)."""
    settings = ctx.cfg
    if settings.collapse_after_days <= 0:
        return None
    found = ctx.store.nuisance_terms(day - timedelta(days=1))
    if found is None:
        return None
    last_seen_by = day - timedelta(days=settings.collapse_after_days)
    splits = []
    if settings.drift.window_days > 0:
        splits.append(ctx.store.latest_cumulative(on_or_before=day - timedelta(days=settings.drift.window_days)))
    starts = burst_starts(ctx.store, date.min, day) if settings.drift.relearn_p_value > 0 else set()
    if starts:
        splits.append(ctx.store.latest_cumulative(on_or_before=max(starts)))
    last_seen_by = min([last_seen_by, *(s for s in splits if s is not None)])
    return {"last_seen_by": last_seen_by, "terms_of": found[0], "terms": found[1]}


def _collapse_inactive(store: Store, conn, day: date, plan: dict | None) -> dict:
    """Collapse, in ``day``'s full snapshot (inside the caller's transaction), the creatives not
    seen for long into one row each (``Store.collapse_inactive``) as ``plan`` says. Returns the
    figures for the summary."""
    if plan is None:
        return {"creatives_collapsed": 0, "cells_collapsed": 0}
    done = store.collapse_inactive(conn, day, plan["last_seen_by"], plan["terms"])
    return {
        **done,
        "collapsed_last_seen_by": plan["last_seen_by"].isoformat(),
        "collapse_terms_of": plan["terms_of"].isoformat(),
    }


def _snapshot_figures(day: date, size: dict, written: int) -> dict:
    """The summary's figures of a day's snapshot: its size, the rows it wrote and whether it is full."""
    return {
        "cumulative_cells": size["cumulative_cells"],
        "creatives": size["creatives"],
        "accounts": size["accounts"],
        "snapshot_rows_written": int(written),
        "snapshot_base": size["base"].isoformat(),
        "snapshot_full": size["base"] == day,
    }


def shard_cells(
    store: Store,
    table,
    day: date,
    shard: Shard,
    also: Sequence[str] = (),
    day_column: str = "as_of",
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``table``'s rows of ``day`` (only ``columns``, if given) that ``shard`` needs: only its own
    accounts' (and ``also``'s) when it has no global work. The database filters them, so a shard
    reads its part of the day, not the whole of it."""
    if not shard.accounts_only:
        return store.read_day(table, day, day_column, columns=columns)
    mine = [a for a in store.accounts_on(table, day, day_column) if shard.has(a) or a in also]
    return store.read_day(table, day, day_column, columns=columns, accounts=mine)


def snapshot_cells(store: Store, day: date, shard: Shard) -> pd.DataFrame:
    """``day``'s cumulative cells that ``shard`` needs (only its own accounts' when it has no
    global work), as ``shard_cells`` for the snapshot, which may be stored as increments."""
    if not shard.accounts_only:
        return store.read_snapshot(day)
    return store.read_snapshot(day, accounts=[a for a in store.cumulative_accounts(day) if shard.has(a)])


def _fit_patterns(ctx: CycleContext, days: list[date], shard: Shard, infos: dict[date, dict]) -> dict[date, dict]:
    """The shard's fits on each day's snapshot: candidate patterns, and with a global unit that
    metric's account baselines and the fits' notes."""
    out = {}
    settings = ctx.cfg.patterns
    for day in days:
        cells = _consistent_attributes(snapshot_cells(ctx.store, day, shard))
        candidates, baselines, notes, dims, relearned = pd.DataFrame(columns=CANDIDATE_COLUMNS), None, [], [], None
        nuisance = []
        fit_cache, reused = None, 0
        if len(cells):
            wide, dims = stats.expand_attributes(cells)
            coded = CodedCells(wide, dims)
            global_fits = fit_global(coded, settings, shard.global_metrics) if shard.global_metrics else {}
            global_fits, relearned = _relearn(ctx, day, cells, global_fits)
            account_rows, fit_cache, reused = _account_candidates(ctx, day, cells, coded, shard)
            parts = [pattern_candidates(CycleFits(global_fits, {}), settings), account_rows]
            candidates = pd.concat([f for f in parts if len(f)] or [parts[0]], ignore_index=True)
            fitted = [f.baselines.assign(metric=m) for m, f in global_fits.items() if len(f.baselines)]
            baselines = pd.concat(fitted, ignore_index=True) if fitted else None
            nuisance = _nuisance_rows(global_fits)
            notes = [n for f in global_fits.values() for n in f.notes]
        tested = _drift_test(ctx, day, cells) if drift.DRIFT_METRIC in shard.global_metrics else None
        out[day] = {
            "candidates": candidates,
            "baselines": baselines,
            "nuisance": nuisance,
            "notes": notes,
            "dimensions": dims,
            "relearned": relearned,
            "fit_cache": fit_cache,
            "account_fits_reused": reused,
        }
        out[day]["drift"] = tested
    return out


def _nuisance_rows(fits: dict) -> list[dict]:
    """The global fits' day-of-week and age terms as ``nuisance_terms`` rows."""
    return [
        {"metric": metric, "term": term, "level": level, "log_effect": value}
        for metric, fit in fits.items()
        for term, levels in fit.nuisance.items()
        for level, value in levels.items()
    ]


def _account_candidates(
    ctx: CycleContext, day: date, cells: pd.DataFrame, coded: CodedCells, shard: Shard
) -> tuple[pd.DataFrame, pd.DataFrame | None, int]:
    """The shard's per-account candidate rows: an account whose cells, fitting code and settings
    are those of the latest earlier day's fit (the same digest; an account without new data and
    no forgetting) reuses that fit's rows, the others are fitted. Returns the rows, the day's
    cache entries of the shard's accounts (``account_fit_cache``) and how many accounts reused."""
    settings = ctx.cfg.patterns
    if not shard.indices or not settings.per_account:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS), None, 0
    salt = json.dumps([fit_code_version(), repr(settings), list(coded.dims)])
    mine = {a: rows for a, rows in coded.rows_by_account().items() if shard.has(a)}
    digests = account_digests(cells, mine, salt)
    reused = _cached_candidates(ctx.store, day, digests)
    fits = fit_accounts(coded, settings, lambda a: a in digests and a not in reused)
    fitted = pattern_candidates(CycleFits({}, fits), settings)
    texts = dict(reused)
    for account, rows in fitted.groupby("account_id", sort=False):
        texts[str(account)] = json.dumps(rows.to_dict("records"))
    entries = pd.DataFrame(
        [(a, d, texts.get(a, "[]")) for a, d in digests.items()], columns=["account_id", "digest", "candidates"]
    )
    old = [r for a in reused for r in json.loads(reused[a])]
    rows = pd.concat(
        [f for f in (fitted, pd.DataFrame(old, columns=CANDIDATE_COLUMNS)) if len(f)] or [fitted], ignore_index=True
    )
    return rows, entries, len(reused)


def _cached_candidates(store: Store, day: date, digests: dict[str, str]) -> dict[str, str]:
    """``{account: its cached candidate rows (JSON)}`` of the latest cache day before ``day``, for
    the accounts whose digest there is the one in ``digests``."""
    previous = store.latest_day(t.account_fit_cache, on_or_before=day - timedelta(days=1)) if digests else None
    if previous is None:
        return {}
    rows = store.read_day(t.account_fit_cache, previous, accounts=list(digests))
    return {
        a: text
        for a, digest, text in zip(rows["account_id"], rows["digest"], rows["candidates"], strict=True)
        if digests.get(a) == digest
    }


def _relearn(ctx: CycleContext, day: date, cells: pd.DataFrame, fits: dict) -> tuple[dict, dict | None]:
    """After an exploration burst, the global fits with every dimension whose effects changed
    learned from the evidence since the burst alone (``core.drift.changed_dimensions``), and what
    was relearned: ``{"since": first day of that evidence, "metrics": {metric: {dimension:
    test}}}``, or None when no burst is recent enough or nothing changed."""
    settings = ctx.cfg.drift
    if not fits or settings.relearn_p_value <= 0 or settings.window_days <= 0:
        return fits, None
    starts = burst_starts(ctx.store, date.min, day - timedelta(days=settings.relearn_after_days))
    if not starts:
        return fits, None
    # the burst's first day ends the old evidence: the split is at the end of that day (its
    # snapshot is kept past the daily retention)
    older_day = ctx.store.latest_cumulative(on_or_before=max(starts))
    if older_day is None:
        return fits, None
    older = ctx.store.read_snapshot(older_day, columns=[*stats.METRICS, "days"])
    older[stats.METRICS] = older[stats.METRICS].astype(float) * evidence_weight(ctx, older_day, day)
    recent = drift.evidence_since(cells, older)
    if recent["creative_id"].nunique() < ctx.cfg.patterns.min_creatives:
        return fits, None
    since = older_day + timedelta(days=1)
    held = _relearned_since(ctx.store, since, day)
    wide, dims = stats.expand_attributes(recent)
    coded = CodedCells(wide, dims)
    out, changed = dict(fits), {}
    for metric, pooled in fits.items():
        fresh = fit_global(coded, ctx.cfg.patterns, [metric]).get(metric)  # the same model as the pooled fit
        earlier = drift.held_for(metric, held)
        found = drift.changed_dimensions(pooled, fresh, settings.relearn_p_value, earlier) if fresh is not None else {}
        if found:
            out[metric] = drift.relearned(pooled, fresh, found)
            today = {"found_on": day.isoformat(), "found_in": metric}
            changed[metric] = {dim: {**test, **earlier.get(dim, today)} for dim, test in found.items()}
    return out, ({"since": since, "metrics": changed} if changed else None)


def _relearned_since(store: Store, since: date, day: date) -> dict[str, dict[str, dict]]:
    """``{metric: {dimension: {"found_on", "found_in"}}}``: every dimension learned afresh from the
    evidence since ``since`` on a day before ``day``, with its first finding (one burst's
    findings, which hold until the next burst moves ``since``)."""
    rows = store.read_range(
        t.evidence_drift, since, day - timedelta(days=1), day_column="as_of", columns=["as_of", "relearned"]
    )
    held: dict[str, dict[str, dict]] = {}
    for as_of, record in sorted(rows.itertuples(index=False), key=lambda r: pd.Timestamp(r[0])):
        found = json.loads(record) if isinstance(record, str) else None
        if not found or found["since"] != since.isoformat():
            continue
        for metric, dims in found["metrics"].items():
            for dim, test in dims.items():
                first = {"found_on": pd.Timestamp(as_of).date().isoformat(), "found_in": metric}  # older records
                held.setdefault(metric, {}).setdefault(dim, {**first, **{k: test[k] for k in first if k in test}})
    return held


def _drift_test(ctx: CycleContext, day: date, cells: pd.DataFrame) -> dict | None:
    """The drift test on the day's cells (``core.drift``): the recent window's evidence against the
    snapshot before it. None when it is off or the evidence does not reach back past the window."""
    window = ctx.cfg.drift.window_days
    if window <= 0 or cells.empty:
        return None
    older_day = ctx.store.latest_cumulative(on_or_before=day - timedelta(days=window))
    if older_day is None:
        return None
    # the split needs the older part's sums only (attributes come from today's cells)
    older = ctx.store.read_snapshot(older_day, columns=[*stats.METRICS, "days"])
    older[stats.METRICS] = older[stats.METRICS].astype(float) * evidence_weight(ctx, older_day, day)
    found = drift.level_drift(drift.split_evidence(cells, older), ctx.cfg.drift.z_threshold)
    return None if found is None else {**found, "window_start": older_day + timedelta(days=1)}


def _write_patterns(ctx: CycleContext, day: date, info: dict, parts: list[dict]) -> dict:
    """Test every candidate of the day as one family, set the states, write patterns and baselines."""
    store, cfg = ctx.store, ctx.cfg
    candidates = pd.concat([p["candidates"] for p in parts if len(p["candidates"])] or [parts[0]["candidates"]])
    relearned = _merge_relearned(parts)
    candidates = _without_accounts_relearned(candidates, relearned)
    prev_day = store.latest_day(t.learning_patterns, on_or_before=day - timedelta(days=1))
    previous = store.read_day(t.learning_patterns, prev_day) if prev_day else None
    patterns = patterns_from_candidates(candidates, day, previous, cfg.patterns)
    fitted = [p["baselines"] for p in parts if p["baselines"] is not None]
    baselines = (
        pd.concat(fitted, ignore_index=True)
        if fitted
        else pd.DataFrame(columns=["account_id", "metric", "log_rate", "std_error"])
    )
    drift_row = _drift_row(ctx, day, next((p["drift"] for p in parts if p.get("drift")), None), relearned)
    caches = [p["fit_cache"] for p in parts if p.get("fit_cache") is not None]
    with store.transaction(lock_key=_lock("learning_patterns", day)) as conn:
        store.write_day(conn, t.learning_patterns, day, patterns)
        store.write_day(conn, t.account_baselines, day, baselines)
        terms = pd.DataFrame(
            [r for p in parts for r in p.get("nuisance", [])], columns=["metric", "term", "level", "log_effect"]
        )
        store.write_day(conn, t.nuisance_terms, day, terms)
        store.write_day(conn, t.evidence_drift, day, pd.DataFrame([drift_row]))
        if caches:  # the next day needs this day's entries only
            store.write_day(conn, t.account_fit_cache, day, pd.concat(caches, ignore_index=True))
            store.delete_before(conn, t.account_fit_cache, day - timedelta(days=1))
    glob = patterns[patterns["account_id"] == GLOBAL] if len(patterns) else patterns
    states = glob["state"].value_counts().to_dict() if len(glob) else {}
    return {
        **info,
        "dimensions": max((p["dimensions"] for p in parts), key=len),
        "patterns": len(patterns),
        "global_patterns": len(glob),
        "significant_global_patterns": int(states.get("significant", 0)),
        "states_global": {k: int(v) for k, v in states.items()},
        "fit_notes": [n for p in parts for n in p["notes"]],
        "account_fits_reused": sum(p.get("account_fits_reused", 0) for p in parts),
        "account_fits_cached": sum(len(p["fit_cache"]) for p in parts if p.get("fit_cache") is not None),
        "top_patterns": _top(glob),
        "drift": drift_row["summary"],
        "drift_z": None if drift_row["z"] is None else round(float(drift_row["z"]), 2),
        "exploring": drift_row["exploring"],
        "relearned": drift.describe_relearned(relearned),
    }


def _merge_relearned(parts: list[dict]) -> dict | None:
    """The relearned dimensions of every global unit (one metric each when sharded)."""
    found = [p["relearned"] for p in parts if p.get("relearned")]
    if not found:
        return None
    return {"since": found[0]["since"], "metrics": {m: d for f in found for m, d in f["metrics"].items()}}


def _without_accounts_relearned(candidates: pd.DataFrame, relearned: dict | None) -> pd.DataFrame:
    """The candidates without the accounts' own estimates of a relearned dimension: they pool the
    old evidence with the new, and in the DNA an account's rows override the global ones, so they
    would hold the account to the old winner. The account falls back to the relearned global
    weights until the dimension is pooled again."""
    if not relearned or candidates.empty:
        return candidates
    stale = pd.Series(False, index=candidates.index)
    for metric, dims in relearned["metrics"].items():
        stale |= (candidates["metric"] == metric) & candidates["pattern_type"].isin(list(dims))
    return candidates[~(stale & (candidates["account_id"] != GLOBAL))]


def _drift_row(ctx: CycleContext, day: date, found: dict | None, relearned: dict | None = None) -> dict:
    """The day's ``evidence_drift`` row: the test's figures and the exploration burst, which
    continues from the last row before the day."""
    settings = ctx.cfg.drift
    store = ctx.store
    prev_day = store.latest_day(t.evidence_drift, on_or_before=day - timedelta(days=1))
    last_start, was_flagged, was_exploring = None, False, False
    if prev_day is not None:
        prev = store.read_day(t.evidence_drift, prev_day)
        if len(prev) and pd.notna(prev["burst_start"].iloc[0]):
            last_start = pd.Timestamp(prev["burst_start"].iloc[0]).date()
        was_flagged = bool(len(prev) and prev["flagged"].iloc[0])
        was_exploring = bool(len(prev) and prev["exploring"].iloc[0]) and prev_day == day - timedelta(days=1)
    flagged = bool(found and found["flagged"])
    explained = bool(relearned and relearned["metrics"])
    burst_start, exploring = drift.exploration_burst(
        last_start, day, flagged, was_flagged, settings, was_exploring, explained
    )
    empty = {"level_shift": None, "std_error": None, "z": None, "recent_creatives": 0, "older_creatives": 0}
    return {
        "metric": drift.DRIFT_METRIC,
        "window_start": (found or {}).get("window_start", day - timedelta(days=settings.window_days - 1)),
        "window_days": settings.window_days,
        **{k: (found or empty)[k] for k in empty},
        "flagged": flagged,
        "exploring": exploring,
        "burst_start": burst_start,
        "relearned": None if relearned is None else json.dumps(drift.relearned_record(relearned), sort_keys=True),
        "summary": drift.describe(found, exploring, burst_start, settings, relearned),
    }


LEARNING_PATTERNS = ShardedStep(_prepare_patterns, _fit_patterns, _write_patterns, global_units=True)


def learn_patterns(ctx: CycleContext, day: date) -> dict:
    """Roll the cumulative evidence forward to ``day``, fit, and write patterns and baselines."""
    return LEARNING_PATTERNS.run(ctx, day)


def _consistent_attributes(cells: pd.DataFrame) -> pd.DataFrame:
    """One attribute set per creative: the most recently seen wins (restatements may fix them)."""
    keys = ["account_id", "creative_id"]
    creative = cells.groupby(keys, sort=False).ngroup().to_numpy()
    attrs = pd.factorize(cells["attributes"])[0]
    if len(np.unique(creative * (attrs.max() + 1 if len(attrs) else 1) + attrs)) == creative.max(initial=-1) + 1:
        return cells  # every creative has one attribute set already (the usual case)
    latest = cells.sort_values("last_seen").groupby(keys)["attributes"].last()
    out = cells.drop(columns="attributes").merge(latest.reset_index(), on=keys)
    return out


def _top(patterns: pd.DataFrame, n: int = 10) -> list[dict]:
    if patterns is None or patterns.empty:
        return []
    sig = patterns[patterns["state"] != "insufficient_data"].copy()
    sig["abs"] = sig["log_effect"].abs()
    sig = sig.sort_values(["state", "q_value", "abs"], ascending=[True, True, False])
    sig["rank"] = (sig["state"] != "significant").astype(int)
    sig = sig.sort_values(["rank", "abs"], ascending=[True, False]).head(n)
    return [
        {
            "metric": r.metric,
            "attributes": json.loads(r.attributes),
            "lift": round(float(r.lift), 4),
            "ci_low": round(float(r.ci_low), 4),
            "ci_high": round(float(r.ci_high), 4),
            "q_value": float(r.q_value),
            "state": r.state,
        }
        for r in sig.itertuples()
    ]


# -- knowledge graph, DNA, insights -------------------------------------------------------------
def build_knowledge_graph(ctx: CycleContext, day: date) -> dict:
    """Nodes and typed relationships of the day's patterns, with posterior confidence."""
    store = ctx.store
    patterns = store.read_day(t.learning_patterns, day)
    totals = store.creative_totals(day)  # one row per creative, summed in the database
    creatives, dims = (
        stats.expand_attributes(totals[["account_id", "creative_id", "attributes"]])
        if len(totals)
        else (pd.DataFrame(), [])
    )
    nodes, edges = build_graph(patterns, creatives, dims) if len(patterns) else (pd.DataFrame(), pd.DataFrame())
    with store.transaction(lock_key=_lock("knowledge_graph", day)) as conn:
        store.write_day(conn, t.knowledge_nodes, day, nodes)
        store.write_day(conn, t.knowledge_relationships, day, edges)
    kinds = edges["relationship_type"].value_counts().to_dict() if len(edges) else {}
    return {
        "nodes": len(nodes),
        "relationships": len(edges),
        "relationships_by_type": {k: int(v) for k, v in kinds.items()},
        "mean_value_confidence": float(nodes.loc[nodes["node_type"] == "attribute_value", "confidence"].mean())
        if len(nodes)
        else 0.0,
    }


def build_creative_dna(ctx: CycleContext, day: date) -> dict:
    """Shrunk scoring weights per attribute value (global and per account) and account baselines."""
    store = ctx.store
    patterns = store.read_day(t.learning_patterns, day)
    baselines = store.read_day(t.account_baselines, day)
    weights = dna_weights(patterns, baselines) if len(patterns) else pd.DataFrame()
    with store.transaction(lock_key=_lock("creative_dna", day)) as conn:
        store.write_day(conn, t.creative_dna, day, weights)
    glob = weights[weights["account_id"] == GLOBAL] if len(weights) else weights
    return {
        "weights": len(weights),
        "global_weights": len(glob),
        "accounts": int(weights.loc[weights["dimension"] == "__baseline__", "account_id"].nunique())
        if len(weights)
        else 0,
    }


def build_cross_account_insights(ctx: CycleContext, day: date) -> dict:
    """Per-account effects pooled across accounts; published only under the k-account rule."""
    store, cfg = ctx.store, ctx.cfg
    patterns = store.read_day(t.learning_patterns, day)
    insights = (
        cross_account_insights(patterns, cfg.min_accounts_for_insight, cfg.max_top2_share, cfg.patterns.min_creatives)
        if len(patterns)
        else pd.DataFrame()
    )
    with store.transaction(lock_key=_lock("cross_account_insights", day)) as conn:
        store.write_day(conn, t.cross_account_insights, day, insights)
    published = insights[insights["published"]] if len(insights) else insights
    return {"candidates": len(insights), "published": len(published), "withheld": len(insights) - len(published)}


# -- recommendations ----------------------------------------------------------------------------
FATIGUE_WINDOW_DAYS = 28


def live_creatives(totals: pd.DataFrame, day: date) -> pd.DataFrame:
    """The creatives that ran on ``day`` with their totals so far and their attributes (parsed,
    and as the sorted JSON the recommendations store), from :meth:`Store.creative_totals`."""
    columns = ["account_id", "creative_id", "attributes", *stats.METRICS]
    if totals.empty:
        return pd.DataFrame(columns=[*columns, "attributes_json"])
    live = totals.loc[totals["last_seen"] == day, columns].reset_index(drop=True)
    # each distinct set once: a 1M-row day has a million creatives and a few thousand sets
    # (creatives of one set share one parsed dict, which nothing changes)
    texts = live["attributes"]
    parsed = {text: json.loads(text) for text in texts.unique()}
    live["attributes"] = [parsed[text] for text in texts]
    live["attributes_json"] = texts.map({text: json.dumps(a, sort_keys=True) for text, a in parsed.items()})
    return live


def _day_seed(day: date, account_id: str, seed: int) -> np.random.Generator:
    """A generator fixed by the day, the account and the configured seed (reruns agree)."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(f"{day.isoformat()}|{account_id}".encode())])


def spend_floor_share(cfg: CycleSettings, burst: bool) -> float:
    """The share of a day's spend spread evenly over the live creatives: the everyday floor, and
    during an exploration burst the burst's share of the launches (never less than the floor).
    A burst explores with the spend too: the split would otherwise go to the incumbents, whose
    evidence is long, and leave the burst's launches too little to show their worth."""
    return max(cfg.drift.burst_explore_share, cfg.spend_floor_share) if burst else cfg.spend_floor_share


def exploring(store: Store, day: date) -> bool:
    """Whether the launches of ``day`` are in an exploration burst (the day's ``evidence_drift``)."""
    row = store.read_day(t.evidence_drift, day)
    return bool(len(row) and row["exploring"].iloc[0])


def _fatigue(ctx: CycleContext, day: date) -> dict:
    """The day's fatigue slope, fitted once over every account's recent days (the shards share
    it; each would otherwise read the whole window), and whether the launches explore after a
    drift (``core.drift``)."""
    from compound_learning.core import recommend

    burst = exploring(ctx.store, day)
    start = day - timedelta(days=FATIGUE_WINDOW_DAYS - 1)
    if ctx.store.rolls_up_in_database(ctx.cfg.rollup_in_database):  # the window's rows stay in the database
        return {"fatigue": recommend.slope_from_sums(*ctx.store.fatigue_sums_in_database(start, day)), "burst": burst}
    columns = ["account_id", "creative_id", "date", "impressions", "clicks"]
    recent = ctx.store.read_range(t.creative_daily_stats, start, day, columns=columns)
    return {"fatigue": recommend.fatigue_slope(recent) if len(recent) else 0.0, "burst": burst}


def _recommend(ctx: CycleContext, days: list[date], shard: Shard, infos: dict[date, dict]) -> dict[date, dict]:
    """Launch picks and spend splits for the shard's accounts on each day (every account's draws
    are seeded by the day and the account, so the split into shards changes nothing). A shard
    reads only its accounts' DNA and cells (and the global DNA rows every posterior uses)."""
    from compound_learning.core import recommend

    store, cfg = ctx.store, ctx.cfg
    out = {}
    for day in days:
        weights = shard_cells(store, t.creative_dna, day, shard, also=[GLOBAL])
        # the shard's accounts: those its DNA rows name (the global rows ride along)
        mine = sorted({a for a in weights["account_id"] if shard.has(a)}) if shard.accounts_only else None
        live = live_creatives(store.creative_totals(day, accounts=mine, live=True), day)
        fatigue, burst = infos[day]["fatigue"], infos[day].get("burst", False)
        explore_share = cfg.drift.burst_explore_share if burst else cfg.explore_share
        floor_share = spend_floor_share(cfg, burst)
        rows: list[dict] = []
        spend: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []  # (account, positions in live, split)
        dna = recommend.DNA(weights)  # every account's posterior, read once
        live, live_of = recommend.LiveFigures.by_account(live)
        preview = []
        accounts = [a for a in dna.accounts if shard.has(a)]
        for account_id in accounts:
            rng = _day_seed(day, account_id, cfg.recommendation_seed)
            # What is live may be proposed again: a fresh creative of the best combination beats a fatigued one.
            picks = recommend.launch_picks(
                dna, account_id, cfg.recommendations_per_account, explore_share, rng, restart=burst
            )
            rows += [_launch_row(account_id, p) for p in picks]
            split = None
            if account_id in live_of:
                start, figures = live_of[account_id]
                split = recommend.split_spend(figures, dna, account_id, rng, fatigue, floor_share=floor_share)
                order = np.argsort(-split["share"], kind="stable")  # best share first
                spend.append((account_id, start + order, {k: v[order] for k, v in split.items()}))
            if picks:
                top = picks[0]
                preview.append(
                    {
                        "account_id": account_id,
                        "next_launch": ", ".join(f"{k}={v}" for k, v in top["attributes"].items()),
                        "expected_roas": round(top["expected_roas"], 3),
                        "roas_95": f"[{top['roas_ci'][0]:.2f}, {top['roas_ci'][1]:.2f}]",
                        "explore_picks": sum(p["kind"] == "explore" for p in picks),
                        "spend_exploration": round(float(split["exploration"].sum()), 3) if split is not None else None,
                    }
                )
        columns = [c.name for c in t.creative_recommendations.columns if c.name != "as_of"]
        frames = [pd.DataFrame(rows, columns=columns)] if rows else []
        frames += [_spend_rows(live, spend, fatigue)] if spend else []
        out[day] = {
            "rows": pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns),
            "accounts": len(accounts),
            "fatigue": fatigue,
            "preview": preview,
        }
    return out


def _launch_row(account_id: str, p: dict) -> dict:
    return {
        "account_id": account_id,
        "kind": "launch",
        "rank": p["rank"],
        "creative_id": "-",
        "pick": p["kind"],
        "attributes": json.dumps(p["attributes"], sort_keys=True),
        "expected_roas": p["expected_roas"],
        "roas_ci_low": p["roas_ci"][0],
        "roas_ci_high": p["roas_ci"][1],
        "expected_ctr": p.get("expected_ctr"),
        "share": None,
        "p_best": None,
        "exploration": None,
        "reason": p["reason"],
        "details": json.dumps({"contributions": p["contributions"], "ctr_ci": p.get("ctr_ci")}),
    }


def _spend_rows(
    live: pd.DataFrame, splits: list[tuple[str, np.ndarray, dict[str, np.ndarray]]], fatigue: float
) -> pd.DataFrame:
    """Every account's spend rows, best share first: ``splits`` holds each account's split in
    that order with the positions of its creatives in ``live`` (attributes as sorted JSON,
    impressions and clicks). Built column by column for all accounts at once: a 1M-row day has a
    million of them."""
    position = np.concatenate([p for _, p, _ in splits])
    split = {k: np.concatenate([s[k] for *_, s in splits]) for k in splits[0][2]}
    p_best, ctr = split["p_best"], split["expected_ctr"]
    impressions, clicks = live["impressions"].to_numpy(float)[position], live["clicks"].to_numpy(float)[position]
    return pd.DataFrame(
        {
            "account_id": np.repeat([a for a, _, _ in splits], [len(p) for _, p, _ in splits]),
            "kind": "spend",
            "rank": np.concatenate([np.arange(1, len(p) + 1) for _, p, _ in splits]),
            "creative_id": split["creative_id"],
            "pick": "live",
            "attributes": live["attributes_json"].to_numpy()[position],
            "expected_roas": split["expected_roas"],
            "roas_ci_low": split["roas_ci_low"],
            "roas_ci_high": split["roas_ci_high"],
            "expected_ctr": ctr,
            "share": split["share"],
            "p_best": p_best,
            "exploration": split["exploration"],
            "reason": [
                f"{p:.0%} chance of coming out best of the live creatives on the coming days' evidence; "
                + (
                    f"expected CTR {c:.2%}; {int(n):,} impressions and {int(k):,} clicks so far"
                    if np.isfinite(c) and np.isfinite(k)
                    else f"{int(n):,} impressions so far"
                )
                for p, n, c, k in zip(p_best, impressions, ctr, clicks, strict=True)
            ],
            "details": json.dumps({"fatigue_per_100k_impressions": fatigue}),
        }
    )


def _write_recommendations(ctx: CycleContext, day: date, info: dict, parts: list[dict]) -> dict:
    """The day's recommendations of every shard, written in one transaction."""
    store, cfg = ctx.store, ctx.cfg
    frames = [p["rows"] for p in parts if len(p["rows"])]
    frame = (pd.concat(frames, ignore_index=True) if frames else parts[0]["rows"]).sort_values(
        ["account_id", "kind", "rank"], ignore_index=True
    )
    with store.transaction(lock_key=_lock("creative_recommendations", day)) as conn:
        store.write_day(conn, t.creative_recommendations, day, frame)
    launches = frame[frame["kind"] == "launch"] if len(frame) else frame
    preview = sorted((row for p in parts for row in p["preview"]), key=lambda r: r["account_id"])
    return {
        "accounts": sum(p["accounts"] for p in parts),
        "launch_picks": len(launches),
        "explore_picks": int((launches["pick"] == "explore").sum()) if len(launches) else 0,
        "live_creatives": int((frame["kind"] == "spend").sum()) if len(frame) else 0,
        "fatigue_per_100k_impressions": round(info["fatigue"], 4),
        "explore_share": cfg.drift.burst_explore_share if info.get("burst") else cfg.explore_share,
        "exploration_burst": bool(info.get("burst")),
        "top_picks": preview[:50],
    }


CREATIVE_RECOMMENDATIONS = ShardedStep(_fatigue, _recommend, _write_recommendations)


def build_recommendations(ctx: CycleContext, day: date) -> dict:
    """For every account with a DNA baseline: the next creatives to launch (exploit and explore
    picks) and tomorrow's spend split over its live creatives, each with reasons."""
    return CREATIVE_RECOMMENDATIONS.run(ctx, day)


# -- improvement snapshots ----------------------------------------------------------------------
TRAJECTORY_COLUMNS = ["account_id", "spend", "revenue", "roas", "trajectory"]


CREATIVE_DAY_COLUMNS = ["date", "account_id", "creative_id", "spend", "revenue", "conversions"]


WINDOW_FIELDS = ("date", "creative_id", "spend", "revenue", "conversions")


class _CreativeWindows:
    """The shard's creative-day rows that the trajectories' change windows need (each account's
    first ``CHANGE_WINDOW_DAYS`` days and the last ones before the day being processed) and the
    attributes of those windows' creatives.

    Read once for the first day of a run (bounded ranges, whatever the history's length) and
    extended with each processed day's rows, so a long history costs no more to read. Each
    account's rows are a dict of arrays: every account of every day passes through here, and
    pandas' per-call overhead was most of the step's added cost."""

    def __init__(self, store: Store, history: pd.DataFrame, day: date):
        self.window = np.timedelta64(CHANGE_WINDOW_DAYS - 1, "D")
        accounts = sorted(set(history["account_id"])) if len(history) else []
        positive = history[(history["spend"] > 0) & (history["revenue"] > 0)] if len(history) else history
        self.first = {
            a: np.datetime64(pd.Timestamp(d).date(), "D")
            for a, d in positive.groupby("account_id")["date"].min().items()
        }
        today = np.datetime64(day, "D")
        ranges = [(day - timedelta(days=CHANGE_WINDOW_DAYS - 1), day - timedelta(days=1), accounts)] if accounts else []
        by_start: dict[date, list[str]] = {}
        for account, start in self.first.items():
            if start < today - self.window:  # else its first window lies inside the recent range
                by_start.setdefault(start.astype(date), []).append(account)
        for start, ids in sorted(by_start.items()):
            end = min(start + timedelta(days=CHANGE_WINDOW_DAYS - 1), day - timedelta(days=CHANGE_WINDOW_DAYS))
            ranges.append((start, end, ids))
        parts, attrs = [], []
        for start, end, ids in ranges:
            parts.append(
                store.read_range(t.creative_daily_stats, start, end, columns=CREATIVE_DAY_COLUMNS, accounts=ids)
            )
            attrs.append(store.creative_attributes(start, end, ids))
        self.rows: dict[str, dict[str, np.ndarray]] = {}
        self.attributes: dict[tuple[str, str], str] = {}
        self.parsed: dict[str, dict] = {}
        for frame in attrs:
            keys = zip(frame["account_id"], frame["creative_id"], strict=True)
            self.attributes.update(zip(keys, frame["attributes"], strict=True))
        rows = [p for p in parts if len(p)]
        if rows:
            joined = pd.concat(rows, ignore_index=True)
            joined["date"] = pd.to_datetime(joined["date"]).to_numpy("datetime64[D]")
            for account, g in joined.groupby("account_id"):
                self.rows[account] = {
                    f: g[f].to_numpy(float if f in ("spend", "revenue", "conversions") else None) for f in WINDOW_FIELDS
                }

    def add(self, account_id: str, day: date, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """Take in the account's rows of ``day`` (with ``attributes``); return what its windows
        hold up to ``day`` (a dict of arrays)."""
        today = np.datetime64(day, "D")
        if len(rows) and rows["revenue"].gt(0).any() and rows["spend"].gt(0).any():
            self.first.setdefault(account_id, today)
        self.attributes.update(
            ((account_id, c), a) for c, a in zip(rows["creative_id"], rows["attributes"], strict=True)
        )
        new = {
            "date": np.full(len(rows), today),
            "creative_id": rows["creative_id"].to_numpy(),
            **{f: rows[f].to_numpy(float) for f in ("spend", "revenue", "conversions")},
        }
        held = self.rows.get(account_id)
        if held is not None:
            new = {f: np.concatenate([held[f], new[f]]) for f in WINDOW_FIELDS}
        keep = new["date"] >= today - self.window
        start = self.first.get(account_id)
        if start is not None:
            keep |= new["date"] <= start + self.window
        self.rows[account_id] = {f: v[keep] for f, v in new.items()}
        return self.rows[account_id]

    def predicted(self, account_id: str, creatives: dict[str, np.ndarray], post) -> dict[str, np.ndarray]:
        """``creatives`` with each one's log ROAS predicted from its attributes by ``post``."""
        from compound_learning.core.recommend import predict_log_rates

        ids = creatives["creative_id"]
        unique = pd.unique(ids)
        sets = [self.attributes.get((account_id, c)) for c in unique]
        distinct = list(dict.fromkeys(a for a in sets if a is not None))  # each attribute set predicted once
        for attrs in distinct:
            if attrs not in self.parsed:
                self.parsed[attrs] = json.loads(attrs)
        means = predict_log_rates(post, [self.parsed[a] for a in distinct])[0] if distinct else []
        by_attributes = dict(zip(distinct, means, strict=True))
        values = {c: (np.nan if a is None else by_attributes[a]) for c, a in zip(unique, sets, strict=True)}
        return {**creatives, "predicted": np.array([values[c] for c in ids], dtype=float)}


def _trajectories(ctx: CycleContext, days: list[date], shard: Shard, infos: dict[date, dict]) -> dict[date, dict]:
    """Each of the shard's accounts' ROAS on each day and its trajectory over every earlier day.

    The history is read once, for the first day; later days of the run extend it with the rows
    this computes, which are the rows the combine step writes. The creative-day rows of the
    change windows go along, with what the day's DNA predicts of each creative, so the change's
    interval carries creative luck and says how much the attribute mix explains."""
    from compound_learning.core.recommend import DNA

    store, cfg = ctx.store, ctx.cfg
    history = store.read_before(
        t.improvement_snapshots, days[0], "date", columns=["account_id", "date", "spend", "revenue"]
    )
    history = history[[shard.has(a) for a in history["account_id"]]] if len(history) else history
    series_of = {a: g[["date", "spend", "revenue"]] for a, g in history.groupby("account_id")} if len(history) else {}
    windows = _CreativeWindows(store, history, days[0])
    out = {}
    for day in days:
        today = shard_cells(
            store,
            t.creative_daily_stats,
            day,
            shard,
            day_column="date",
            columns=[*CREATIVE_DAY_COLUMNS[1:], "attributes"],
        )
        dna = DNA(shard_cells(store, t.creative_dna, day, shard, also=[GLOBAL]))
        rows = []
        if len(today):
            for account_id, creatives in today.groupby("account_id"):
                spend = float(creatives["spend"].sum())
                revenue = None if creatives["revenue"].isna().all() else float(creatives["revenue"].sum())
                point = pd.DataFrame([{"date": day, "spend": spend, "revenue": revenue}])
                earlier = series_of.get(account_id)
                series = point if earlier is None else pd.concat([earlier, point], ignore_index=True)
                series_of[account_id] = series
                window_rows = windows.add(account_id, day, creatives)
                post = dna.posterior(account_id, "roas")
                if post is not None:
                    window_rows = windows.predicted(account_id, window_rows, post)
                traj = trajectory(series, baseline_days=cfg.baseline_days, creatives=window_rows)
                roas = revenue / spend if spend > 0 and revenue is not None else None
                rows.append(
                    {
                        "account_id": account_id,
                        "spend": spend,
                        "revenue": revenue,
                        "roas": None if roas is None else float(roas),
                        "trajectory": json.dumps(traj),
                    }
                )
        out[day] = {"rows": pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)}
    return out


def _write_improvement(ctx: CycleContext, day: date, info: dict, parts: list[dict]) -> dict:
    """Every shard's accounts of the day, written in one transaction."""
    store = ctx.store
    frames = [p["rows"] for p in parts if len(p["rows"])]
    frame = (pd.concat(frames, ignore_index=True) if frames else parts[0]["rows"]).sort_values(
        "account_id", ignore_index=True
    )
    with store.transaction(lock_key=_lock("improvement_snapshots", day)) as conn:
        store.write_day(conn, t.improvement_snapshots, day, frame, "date")
    trajs = [json.loads(x) for x in frame["trajectory"]]
    statuses = pd.Series([tr["learning_status"] for tr in trajs]).value_counts().to_dict() if trajs else {}
    multiples = [tr["current_roas"] / tr["initial_roas"] for tr in trajs if tr["initial_roas"]]
    per_account = [
        {
            "account_id": a,
            **{k: tr.get(k) for k in ("learning_status", "initial_roas", "current_roas", "daily_improvement_rate")},
        }
        for a, tr in zip(frame["account_id"], trajs, strict=True)
    ]
    return {
        "accounts": len(frame),
        "learning_status": {k: int(v) for k, v in statuses.items()},
        "largest_account": str(frame.loc[frame["spend"].idxmax(), "account_id"]) if len(frame) else None,
        "statuses": per_account[:50],
        "median_roas_multiple": float(np.median(multiples)) if multiples else None,
        "median_roas": float(frame["roas"].median()) if len(frame) and frame["roas"].notna().any() else None,
    }


IMPROVEMENT_SNAPSHOTS = ShardedStep(_no_prepare, _trajectories, _write_improvement)


def snapshot_improvement(ctx: CycleContext, day: date) -> dict:
    """Per account: the day's ROAS and the trajectory fitted on every snapshot up to ``day``."""
    return IMPROVEMENT_SNAPSHOTS.run(ctx, day)


# -- the CTR model ------------------------------------------------------------------------------
def train_ctr_model(ctx: CycleContext, day: date) -> dict:
    """Retrain the CTR model on new evidence; promote only through the champion gate."""
    # scikit-learn and skops load only in the processes that train or serve a model.
    from compound_learning import model_registry

    return model_registry.train_ctr_model(ctx, day)


# -- the one cycle path -------------------------------------------------------------------------
Step = Callable[[CycleContext, date], dict]
CYCLE_STEPS: dict[str, Step] = {
    "performance_data": check_performance_day,
    "daily_stats": compute_daily_stats,
    "learning_patterns": learn_patterns,
    "knowledge_graph": build_knowledge_graph,
    "ctr_model": train_ctr_model,
    "creative_dna": build_creative_dna,
    "cross_account_insights": build_cross_account_insights,
    "creative_recommendations": build_recommendations,
    "improvement_snapshots": snapshot_improvement,
}
"""Each asset of ``daily_learning_cycle`` and the step it runs, in an order that respects the
lineage graph (a test checks it against the Dagster definitions). The assets, ``run_day``, the
benchmarks, ``evaluate`` and the tests all go through this table."""

SHARDED_STEPS: dict[str, ShardedStep] = {
    "learning_patterns": LEARNING_PATTERNS,
    "creative_recommendations": CREATIVE_RECOMMENDATIONS,
    "improvement_snapshots": IMPROVEMENT_SNAPSHOTS,
}
"""The steps whose per-account work splits into shards; with ``COMPOUND_LEARNING_SHARDS`` above
1 their assets are graphs of ``prepare`` -> one step per shard -> ``combine``."""


def run_step(ctx: CycleContext, name: str, day: date) -> dict:
    """One named step for one day (raises ``KeyError`` naming the unknown step).

    A transient database error (a dropped connection, a deadlock) re-runs the step with backoff:
    each step's writes are one delete-and-insert transaction per partition, so a failed attempt
    leaves nothing and a new one starts from the same state."""
    try:
        step = CYCLE_STEPS[name]
    except KeyError:
        raise KeyError(f"no cycle step {name!r}; steps: {list(CYCLE_STEPS)}") from None
    return with_retries(lambda: step(ctx, day), f"{name} for {day}")


def run_day(ctx: CycleContext, day: date, only: Iterable[str] | None = None) -> dict[str, dict]:
    """Every step of the cycle for ``day``, in order (or the named subset, still in order);
    returns each step's summary and its seconds under ``"<step>_seconds"``."""
    wanted = set(CYCLE_STEPS) if only is None else set(only)
    unknown = wanted - set(CYCLE_STEPS)
    if unknown:
        raise KeyError(f"no cycle step(s) {sorted(unknown)}; steps: {list(CYCLE_STEPS)}")
    out: dict[str, dict] = {}
    for name in CYCLE_STEPS:
        if name in wanted:
            started = time.perf_counter()
            out[name] = run_step(ctx, name, day)
            out[name]["seconds"] = round(time.perf_counter() - started, 3)
    return out


def days_between(start: date, end: date) -> list[date]:
    """The days of [start, end], both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def run_days(
    ctx: CycleContext,
    start: date,
    end: date,
    only: Iterable[str] | None = None,
    on_day: Callable[[date, dict[str, dict]], None] | None = None,
) -> list[dict[str, dict]]:
    """:func:`run_day` for every day of [start, end]; ``on_day`` sees each day's summaries."""
    results = []
    for day in days_between(start, end):
        result = run_day(ctx, day, only)
        if on_day:
            on_day(day, result)
        results.append(result)
    return results
