"""Has the world changed under what was learned? A level test of the recent evidence, and the
exploration burst that answers a drop.

An account that has learned launches almost only its winning values, so when a winner stops
winning its recent evidence holds no contrast between values of that dimension: the change
shows only as a drop of everything the account runs. The test asks exactly that. The cumulative
cells as of a day are split into the evidence of the last ``window`` days and the older
evidence (the cells are sums, so ``older = snapshot before the window x decay`` and
``recent = cumulative - older``, cell by cell), and one ROAS fit over both parts, with the
creative as the cluster, adds a period term beside account, attributes, day of week and age: the
recent part's log level against the older part's, net of what the creatives are. A significant
drop (one-sided, ``z <= -z_threshold``) says the evidence no longer describes what is running.

It cannot say which value changed (every recent creative shares the exploited values), and a
market-wide drop looks the same; both are answered the same way, by trying the alternatives
again: an *exploration burst* (``exploration_burst``) during which the launch picks are drawn
evenly from the design space, as at the start, while the evidence is kept (forgetting it threw
away what was still true and did not buy the missing contrast). This is the restart of
change-detecting bandits (e.g. M-UCB, Cao et al. 2019) applied to exploration only.

Pure: no Dagster, no database.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from compound_learning.config import DriftSettings
from compound_learning.core.effects import Z95, CodedCells, fit_coded
from compound_learning.core.stats import CELL_KEYS, METRICS, expand_attributes

DRIFT_METRIC = "roas"


def split_evidence(cumulative: pd.DataFrame, older: pd.DataFrame) -> pd.DataFrame:
    """The cumulative cells split into the older part (``period`` 0: ``older``, already decayed
    to the day) and the recent part (``period`` 1: the difference). A cell's attributes are the
    cumulative cell's (the latest). A part with no exposure left is dropped; an unknown metric
    (NaN) stays unknown in the recent part."""
    keys = list(CELL_KEYS)
    cum = cumulative.set_index(keys)
    old_index = older.set_index(keys).index
    old = older.set_index(keys)[METRICS].astype(float).reindex(cum.index)
    old.loc[~cum.index.isin(old_index), METRICS] = 0.0  # a cell first seen in the window
    recent = cum.copy()
    recent[METRICS] = (cum[METRICS].astype(float) - old).clip(lower=0.0)
    before = cum.copy()
    before[METRICS] = old
    before = before[before["spend"] > 0]
    # float dust of a cell that saw nothing in the window is not evidence
    recent = recent[recent["spend"] > 1e-9 * np.maximum(cum["spend"].astype(float), 1.0)]
    return pd.concat([before.assign(period=0), recent.assign(period=1)]).reset_index()


def level_drift(split: pd.DataFrame, z_threshold: float, metric: str = DRIFT_METRIC) -> dict | None:
    """The recent evidence's log level against the older evidence's (``split_evidence``), with
    its std error, z and whether it is a significant drop. None when the split has no creatives
    on one side or the fit fails."""
    if split.empty or split["period"].nunique() < 2:
        return None
    wide, dims = expand_attributes(split)
    fit = fit_coded(CodedCells(wide, dims), metric)
    if fit is None or fit.level_shift is None or not np.isfinite(fit.level_shift[1]) or fit.level_shift[1] <= 0:
        return None
    shift, se = fit.level_shift
    z = shift / se
    creatives = split.groupby("period")["creative_id"].nunique()
    return {
        "metric": metric,
        "level_shift": float(shift),
        "std_error": float(se),
        "z": float(z),
        "flagged": bool(z <= -z_threshold),
        "recent_creatives": int(creatives.get(1, 0)),
        "older_creatives": int(creatives.get(0, 0)),
    }


def exploration_burst(
    last_start: date | None, day: date, flagged: bool, was_flagged: bool, settings: DriftSettings
) -> tuple[date | None, bool]:
    """``(start of the latest burst, exploring on day)``. A burst lasts ``burst_days`` and is
    started by the first flagged day of a run (``was_flagged``: the previous test's flag): one
    burst per drop. The old evidence keeps the recent level low until it has decayed, so the
    same drop stays flagged for weeks after its burst has produced the contrast it lacked."""
    if last_start is not None and 0 <= (day - last_start).days < settings.burst_days:
        return last_start, True
    if flagged and not was_flagged:
        return day, True
    return last_start, False


def describe(drift: dict | None, exploring: bool, burst_start: date | None, settings: DriftSettings) -> str:
    """One sentence a marketer can read."""
    if settings.window_days <= 0:
        return "the drift test is off (its window is 0 days)"
    if drift is None:
        return "no drift test yet (the evidence does not reach back past the recent window)"
    shift, se = drift["level_shift"], drift["std_error"]
    change, lo, hi = np.expm1([shift, shift - Z95 * se, shift + Z95 * se])
    head = (
        f"ROAS of the last {settings.window_days} days {change:+.0%} [{lo:+.0%}, {hi:+.0%}] against the older "
        f"evidence, net of the creatives' attributes (z {drift['z']:.1f}): "
        + ("a drop" if drift["flagged"] else "no significant drop")
    )
    if exploring:
        return (
            f"{head}; launches explore the design space, and at least {settings.burst_explore_share:.0%} of the "
            f"spend is spread evenly over the live creatives, since {burst_start} for {settings.burst_days} days"
        )
    return head
