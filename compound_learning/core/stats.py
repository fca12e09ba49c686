"""Additive sufficient statistics: per creative and day, per account x attribute value (and
pairs), and the cumulative per-creative cells that carry the knowledge from day to day.

Cumulative cells are keyed by (account, creative, day of week, age bucket) so the learning can
adjust for day of week and creative age without ever reading the history rows again:
``cumulative(D) = decay ** gap * cumulative(D - gap) + day_stats(D)``.
"""

from __future__ import annotations

import json
from datetime import date
from itertools import combinations

import numpy as np
import pandas as pd

METRICS = ["impressions", "clicks", "conversions", "spend", "revenue"]
CELL_KEYS = ["account_id", "creative_id", "dow", "age_bucket"]
AGE_BUCKET_EDGES = [7, 14, 28]  # days since first seen: 0-6, 7-13, 14-27, 28+
AGE_BUCKET_LABELS = ["0-6 days", "7-13 days", "14-27 days", "28+ days"]
MISSING = "__missing__"
NO_DIMENSION = "-"
# A creative inactive for long is kept as one row (``collapse_cells``) whose day of week and age
# bucket are COLLAPSED. It keeps its cells' mix of days of week and age buckets as shares of its
# impressions, and each metric's exposure adjusted so that at that metric's day-of-week and age
# terms (``EffectFit.nuisance``) the row expects what its cells did.
COLLAPSED = -1
ADJUSTED_EXPOSURE = {  # exposure column -> its adjusted column on a collapsed row
    "impressions": "adjusted_impressions",
    "clicks": "adjusted_clicks",
    "spend": "adjusted_spend",
}
EXPOSURE_METRIC = {"impressions": "ctr", "clicks": "cvr", "spend": "roas"}  # whose terms adjust it
ADJUSTED = list(ADJUSTED_EXPOSURE.values())
SHARE_COLUMNS = {  # (term, level) -> the share of a collapsed row's impressions there (level 0: the rest)
    **{("dow", d): f"dow_{d}_share" for d in range(1, 7)},
    **{("age", a): f"age_{a}_share" for a in range(1, len(AGE_BUCKET_EDGES) + 1)},
}
SHARES = list(SHARE_COLUMNS.values())
COLLAPSED_COLUMNS = [*ADJUSTED, *SHARES]  # what only a collapsed row has


def age_bucket(age_days) -> np.ndarray:
    return np.searchsorted(AGE_BUCKET_EDGES, np.asarray(age_days), side="right").astype(int)


def decay_factor(half_life_days: float, gap_days: int) -> float:
    """Weight of yesterday's evidence after ``gap_days`` (1.0 when forgetting is off)."""
    if not half_life_days or half_life_days <= 0:
        return 1.0
    return float(0.5 ** (gap_days / half_life_days))


def expand_attributes(frame: pd.DataFrame, column: str = "attributes") -> tuple[pd.DataFrame, list[str]]:
    """Turn the JSON ``attributes`` column into one column per dimension (missing -> MISSING)."""
    if frame.empty:
        return frame.copy(), []
    unique = frame[column].unique()
    parsed = pd.DataFrame([json.loads(s) for s in unique], index=unique)
    dims = sorted(parsed.columns)
    parsed = parsed.reindex(columns=dims).fillna(MISSING).astype(str)
    wide = parsed.reindex(frame[column].to_numpy())
    wide.index = frame.index
    return pd.concat([frame, wide], axis=1), dims


def creative_age_days(dates, first_seen) -> pd.Series:
    """A creative's age on each date: whole days since it was first seen (0 on its first day,
    never negative; an unknown first day counts as the date itself)."""
    dates = pd.to_datetime(pd.Series(dates)).reset_index(drop=True)
    first = pd.to_datetime(pd.Series(first_seen)).reset_index(drop=True).fillna(dates)
    return (dates - first).dt.days.clip(lower=0).astype(int)


def creative_day_stats(day_rows: pd.DataFrame, first_seen: pd.DataFrame, day: date) -> pd.DataFrame:
    """The day's rows with day of week and the creative's age in days (since first seen)."""
    if day_rows.empty:
        return pd.DataFrame(columns=["account_id", "creative_id", "dow", "age_days", *METRICS, "attributes"])
    frame = day_rows[["account_id", "creative_id", *METRICS, "attributes"]].merge(
        first_seen, on=["account_id", "creative_id"], how="left"
    )
    frame["age_days"] = creative_age_days(
        pd.Series(pd.Timestamp(day), index=frame.index), frame["first_seen"]
    ).to_numpy()
    frame["dow"] = pd.Timestamp(day).day_of_week
    return frame[["account_id", "creative_id", "dow", "age_days", *METRICS, "attributes"]]


def attribute_day_stats(creative_day: pd.DataFrame) -> pd.DataFrame:
    """Per account x attribute value, and per account x pair of values: creatives and sums."""
    columns = ["account_id", "dimension", "value", "dimension2", "value2", "creatives", *METRICS]
    if creative_day.empty:
        return pd.DataFrame(columns=columns)
    wide, dims = expand_attributes(creative_day)
    parts = []
    for dim in dims:
        g = wide[wide[dim] != MISSING].groupby(["account_id", dim], observed=True)
        part = g[METRICS].sum(min_count=1).join(g["creative_id"].nunique().rename("creatives")).reset_index()
        part = part.rename(columns={dim: "value"}).assign(dimension=dim, dimension2=NO_DIMENSION, value2=NO_DIMENSION)
        parts.append(part)
    for d1, d2 in combinations(dims, 2):
        sub = wide[(wide[d1] != MISSING) & (wide[d2] != MISSING)]
        g = sub.groupby(["account_id", d1, d2], observed=True)
        part = g[METRICS].sum(min_count=1).join(g["creative_id"].nunique().rename("creatives")).reset_index()
        part = part.rename(columns={d1: "value", d2: "value2"}).assign(dimension=d1, dimension2=d2)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[columns]


def roll_forward(previous: pd.DataFrame, day_stats: pd.DataFrame, decay: float, day: date) -> pd.DataFrame:
    """Cumulative cells after adding one day: ``decay * previous + today`` per cell (a collapsed
    row's adjusted exposures decay with its metrics; no day adds to it)."""
    cols = [*CELL_KEYS, *METRICS, "days", "attributes", "last_seen"]
    if not previous.empty and all(a in previous for a in COLLAPSED_COLUMNS):
        cols += COLLAPSED_COLUMNS
    today = day_stats.copy()
    if not today.empty:
        today["age_bucket"] = age_bucket(today["age_days"])
        g = today.groupby(CELL_KEYS)
        # sum(min_count=1): a metric no row gave stays unknown (NaN), not zero
        today = g[METRICS].sum(min_count=1)
        today["days"] = g.size()
        today["attributes"] = g["attributes"].last()
        today["last_seen"] = day  # (a per-group max of dates ran in Python, group by group)
        today = today.reset_index()
    prev = previous[cols].copy() if not previous.empty else pd.DataFrame(columns=cols)
    if not prev.empty and decay != 1.0:
        decayed = [c for c in (*METRICS, *ADJUSTED) if c in cols]
        prev[decayed] = prev[decayed].astype(float) * decay
        # Evidence forgotten below one impression is dropped, so with forgetting on the
        # knowledge (and a cycle's cost) stays bounded however long the history.
        prev = prev[prev["impressions"] >= 1.0]
    if today.empty:
        return prev.reset_index(drop=True)
    if prev.empty:
        return today.reindex(columns=cols).reset_index(drop=True)
    # One grouped pass over yesterday's cells followed by today's: sums add (unknown stays
    # unknown unless one side knows it), and "last" takes today's attributes and date wherever
    # the cell ran today (a restatement may correct a creative's attributes).
    both = pd.concat([prev[cols], today.reindex(columns=cols)], ignore_index=True)
    for m in METRICS:
        both[m] = both[m].astype(float)
    g = both.groupby(CELL_KEYS, sort=True)
    out = g[METRICS].sum(min_count=1)
    out["days"] = g["days"].sum().astype(int)
    out[["attributes", "last_seen"]] = g[["attributes", "last_seen"]].last()
    for a in COLLAPSED_COLUMNS:  # only collapsed rows have them, and no day adds to those
        if a in cols:
            out[a] = g[a].sum(min_count=1)
    return out.reset_index()[cols]


def collapse_cells(cells: pd.DataFrame, terms: dict[str, dict[str, dict[int, float]]]) -> pd.DataFrame:
    """Each creative's cells as one row: metrics and days summed, the latest attributes and date,
    day of week and age bucket ``COLLAPSED``; the shares of its impressions on each day of week
    and in each age bucket (``SHARE_COLUMNS``); and each exposure adjusted so that at the terms of
    the metric it is the exposure of (``terms[metric]``: ``EffectFit.nuisance``) the row expects
    what its cells did: ``sum(exposure * exp(term of the cell)) / exp(share-weighted term)``. A row
    already collapsed is folded in by the same rule.

    Given those terms a fit's estimating equations for the creative's account and attribute
    effects are the same for its cells and for this row (the Poisson score is linear in the
    outcome and in the expected count). The shares keep the row at its cells' mix of days and
    ages, so the day-of-week and age terms, estimated afresh each day, are not pulled toward the
    creatives that were collapsed (a row put at Monday and age 0 moved them by 0.1 in a test)."""
    out_cols = [*CELL_KEYS, *METRICS, "days", "attributes", "last_seen", *COLLAPSED_COLUMNS]
    if cells.empty:
        return pd.DataFrame(columns=out_cols)
    frame = cells.sort_values("last_seen", kind="stable").reset_index(drop=True)
    for m in METRICS:
        frame[m] = frame[m].astype(float)
    live = frame["dow"].to_numpy(dtype=int) != COLLAPSED
    impressions = frame["impressions"].to_numpy(dtype=float)
    # each row's mix of (term, level): a cell's indicator, a collapsed row's shares
    mix = {}
    for (term, level), column in SHARE_COLUMNS.items():
        own = (frame["dow" if term == "dow" else "age_bucket"].to_numpy(dtype=int) == level).astype(float)
        kept = frame[column].to_numpy(dtype=float) if column in frame else np.zeros(len(frame))
        mix[(term, level)] = np.where(live, own, np.nan_to_num(kept))
    g = frame.groupby(["account_id", "creative_id"], sort=True)
    creative = g.ngroup().to_numpy()
    n = int(creative.max()) + 1
    weight = np.bincount(creative, weights=impressions, minlength=n)
    share = {
        key: np.divide(
            np.bincount(creative, weights=impressions * m, minlength=n), weight, where=weight > 0, out=np.zeros(n)
        )
        for key, m in mix.items()
    }
    out = g[METRICS].sum(min_count=1)
    for exposure, adjusted in ADJUSTED_EXPOSURE.items():
        t = terms[EXPOSURE_METRIC[exposure]]
        # a cell's (or an earlier row's) expected count at the terms, relative to the reference
        raw = frame[exposure].to_numpy(dtype=float)
        if adjusted in frame:
            raw = np.where(live, raw, np.nan_to_num(frame[adjusted].to_numpy(dtype=float)))
        expected = np.bincount(creative, weights=raw * np.exp(_at_terms(t, mix)), minlength=n)
        out[adjusted] = expected / np.exp(_at_terms(t, share))
    for key, column in SHARE_COLUMNS.items():
        out[column] = share[key]
    out["days"] = g["days"].sum().astype(int)
    out[["attributes", "last_seen"]] = g[["attributes", "last_seen"]].last()
    out["dow"] = COLLAPSED
    out["age_bucket"] = COLLAPSED
    return out.reset_index()[out_cols]


def _at_terms(terms: dict[str, dict[int, float]], mix: dict[tuple[str, int], np.ndarray]) -> np.ndarray:
    """The day-of-week and age terms of rows with the mix ``mix`` (``SHARE_COLUMNS``' levels)."""
    return sum(terms.get(term, {}).get(level, 0.0) * mix[(term, level)] for term, level in SHARE_COLUMNS)


def add_increments(base: pd.DataFrame, increments: pd.DataFrame) -> pd.DataFrame:
    """Cells plus what was added to some of them since (both keyed by ``CELL_KEYS``, each key at
    most once in each): metrics and ``days`` add (unknown stays unknown unless one side knows
    it), ``attributes`` and ``last_seen`` come from the increments where a cell has one; a cell
    only the increments have is added. Returns the columns of ``base``, in its order (in key
    order, with new cells, when it was)."""
    if increments.empty:
        return base.reset_index(drop=True)
    if base.empty:
        return increments[list(base.columns) if len(base.columns) else increments.columns].reset_index(drop=True)
    cols = list(base.columns)
    out = base.reset_index(drop=True)
    # each increment's row in the base (-1: a new cell), by one hash lookup of the keys: the
    # base is the whole knowledge, so it is updated in place of concatenating and regrouping
    where = pd.MultiIndex.from_frame(out[CELL_KEYS]).get_indexer(pd.MultiIndex.from_frame(increments[CELL_KEYS]))
    hit = where >= 0
    rows = where[hit]
    for c in cols:
        if c in CELL_KEYS:
            continue
        added = increments[c].to_numpy()[hit]
        if c in METRICS:
            old = out[c].to_numpy(dtype=float)[rows]
            added = added.astype(float)
            added = np.where(np.isnan(old) & np.isnan(added), np.nan, np.nan_to_num(old) + np.nan_to_num(added))
            column = out[c].to_numpy(dtype=float, copy=True)
        elif c == "days":
            added = out[c].to_numpy()[rows] + added
            column = out[c].to_numpy(copy=True)
        else:  # attributes, last_seen: the latest
            column = out[c].to_numpy(copy=True)
        column[rows] = added
        out[c] = column
    if not hit.all():
        out = pd.concat([out, increments.loc[~hit, cols]], ignore_index=True)
        # a MultiIndex's levels are sorted, so its codes sort as the keys do (cheaper than sorting text)
        codes = pd.MultiIndex.from_frame(out[CELL_KEYS]).codes
        out = out.take(np.lexsort(codes[::-1])).reset_index(drop=True)
    return out
