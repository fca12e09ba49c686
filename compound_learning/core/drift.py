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

The burst's launches give back the contrast, and with it the answer to which dimension changed:
from a few days after a burst the learning step fits each metric on the evidence gathered since
the burst alone and compares, dimension by dimension, its effects with the pooled evidence's
(``changed_dimensions``). A dimension whose effects differ is learned afresh from the evidence
since the burst (``relearned``): its weeks of old evidence, which describe a world that is gone,
no longer hold the account to the old winner, while the dimensions that did not change keep
everything they learned. Once found, a dimension stays learned afresh until the next burst: the
daily test loses power as the learner concentrates on the new winner (the other values get
little new evidence) and as the pooled fit absorbs the recent evidence, so testing it anew each
day would switch the old evidence back in and out. A dimension found for CTR or conversion rate
is learned afresh for ROAS too from the next day (``held_for``).

Pure: no Dagster, no database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd

from compound_learning.config import DriftSettings
from compound_learning.core.effects import Z95, CodedCells, EffectFit, fit_coded
from compound_learning.core.stats import CELL_KEYS, COLLAPSED, METRICS, expand_attributes

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
    # A collapsed row (``stats.collapse_cells``) is collapsed only once its evidence is older than
    # any split, so all of it is older. Where ``older`` holds that creative's cells, or a smaller
    # collapsed row, it predates the collapse: those cells are in the row, not beside the
    # creative's cells of today, which are all recent.
    dow = cum.index.get_level_values("dow")
    if (dow == COLLAPSED).any():
        rows = cum[dow == COLLAPSED]
        older_days = older.set_index(keys)["days"].reindex(rows.index) if "days" in older else np.nan
        stale = rows.index.droplevel(["dow", "age_bucket"])[~(older_days == rows["days"]).to_numpy()]
        creative = cum.index.droplevel(["dow", "age_bucket"])
        old.loc[creative.isin(stale) & (dow != COLLAPSED), METRICS] = 0.0
        old.loc[dow == COLLAPSED, METRICS] = cum.loc[dow == COLLAPSED, METRICS].astype(float).to_numpy()
    recent = cum.copy()
    recent[METRICS] = (cum[METRICS].astype(float) - old).clip(lower=0.0)
    before = cum.copy()
    before[METRICS] = old
    before = before[before["spend"] > 0]
    # float dust of a cell that saw nothing in the window is not evidence
    recent = recent[recent["spend"] > 1e-9 * np.maximum(cum["spend"].astype(float), 1.0)]
    return pd.concat([before.assign(period=0), recent.assign(period=1)]).reset_index()


def evidence_since(cumulative: pd.DataFrame, older: pd.DataFrame) -> pd.DataFrame:
    """The part of the cumulative cells gathered since ``older`` (``split_evidence``'s recent part)."""
    split = split_evidence(cumulative, older)
    return split[split["period"] == 1].drop(columns="period").reset_index(drop=True)


def changed_dimensions(
    pooled: EffectFit, recent: EffectFit, p_value: float, held: Iterable[str] = ()
) -> dict[str, dict]:
    """The dimensions whose effects in ``recent`` (the evidence since a burst) differ from their
    effects in ``pooled`` (all the evidence, the recent included) at level ``p_value``, and those
    in ``held`` (found on an earlier day since the same burst) whatever today's test says:
    ``{dimension: {"chi2", "df", "p_value"}}``, today's test of each.

    Per dimension, the differences of its values' effects (each centred on the dimension, re-centred
    over the values both fits estimate) are summed as ``sum(d^2 / se_recent^2)`` against a
    chi-square with one degree of freedom fewer than the values. The pooled fit contains the
    recent evidence, so the variance of a difference is about ``se_recent^2 - se_pooled^2``:
    dividing by ``se_recent^2`` alone errs towards calling no change."""
    from scipy.stats import chi2  # only after a burst: the learning step's import stays light

    held = set(held)
    out: dict[str, dict] = {}
    if pooled.effects.empty or recent.effects.empty:
        return out
    both = pooled.effects.merge(recent.effects, on=["dimension", "value"], suffixes=("_pooled", "_recent"))
    for dim, sub in both.groupby("dimension", sort=True):
        d = (sub["log_effect_recent"] - sub["log_effect_pooled"]).to_numpy(float)
        se = sub["std_error_recent"].to_numpy(float)
        ok = np.isfinite(d) & np.isfinite(se) & (se > 0)
        if ok.sum() < 2:
            continue
        stat = float(np.sum(((d[ok] - d[ok].mean()) / se[ok]) ** 2))
        df = int(ok.sum() - 1)
        p = float(chi2.sf(stat, df))
        if p < p_value or dim in held:
            out[str(dim)] = {"chi2": round(stat, 2), "df": df, "p_value": p}
    return out


# ROAS is CTR x conversion rate x value per conversion / cost per impression: where a
# dimension's effect on CTR or conversion rate changed, its effect on ROAS changed with it (the
# ROAS test, with conversions for evidence, is the slowest to see it).
COMPOSED_OF = {"roas": ("ctr", "cvr")}


def held_for(metric: str, held: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """The dimensions ``metric`` keeps learning afresh: those found for it on an earlier day since
    the burst, and for ROAS those found for CTR or conversion rate (``COMPOSED_OF``), each with
    the first finding, ``{"found_on": day, "found_in": metric whose test found it}`` (``held``:
    ``{metric: {dimension: finding}}``)."""
    out: dict[str, dict] = {}
    for m in (metric, *COMPOSED_OF.get(metric, ())):
        for dim, finding in held.get(m, {}).items():
            if dim not in out or finding["found_on"] < out[dim]["found_on"]:
                out[dim] = finding
    return out


def relearned(pooled: EffectFit, recent: EffectFit, dimensions) -> EffectFit:
    """``pooled`` with everything that involves ``dimensions`` taken from ``recent`` (fitted the
    same way): main effects and the interactions that touch them, with their standard errors and
    support (so the creatives a reason counts are those since the burst). The pooled interactions
    must go too: an account that exploited one combination for weeks has its old winner's
    advantage partly in the interaction with its companions (question hook x video), which
    would otherwise keep the old winner ahead. The account baselines stay the pooled fit's."""
    dims = list(dimensions)

    def swap(old: pd.DataFrame, new: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        def touches(frame: pd.DataFrame) -> pd.Series:
            if frame.empty or not set(columns) <= set(frame.columns):
                return pd.Series(False, index=frame.index)
            return frame[columns].isin(dims).any(axis=1)

        return pd.concat([old[~touches(old)], new[touches(new)]], ignore_index=True)

    return replace(
        pooled,
        effect_rows=swap(pooled.effects, recent.effects, ["dimension"]).to_dict("records"),
        interaction_rows=swap(pooled.interactions, recent.interactions, ["dimension", "dimension2"]).to_dict("records"),
    )


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
    last_start: date | None,
    day: date,
    flagged: bool,
    was_flagged: bool,
    settings: DriftSettings,
    was_exploring: bool = False,
    explained: bool = True,
) -> tuple[date | None, bool]:
    """``(start of the latest burst, exploring on day)``. A burst lasts ``burst_days`` and is
    started by the first flagged day of a run (``was_flagged``: the previous test's flag): one
    burst per drop. The old evidence keeps the recent level low until it has decayed, so the
    same drop stays flagged for weeks after its burst has produced the contrast it lacked; but
    where it has not (nothing was learned afresh since the burst began: not ``explained``), a
    burst that explored yesterday (``was_exploring``) goes on while the drop stays flagged, up to
    ``burst_max_days``: its launches are the only evidence that can say which value changed."""
    age = (day - last_start).days if last_start is not None else -1
    if 0 <= age < settings.burst_days:
        return last_start, True
    if 0 <= age < settings.burst_max_days and was_exploring and flagged and not explained:
        return last_start, True
    if flagged and not was_flagged:
        return day, True
    return last_start, False


def relearned_record(relearned: dict) -> dict:
    """``relearned`` (``{"since": date, "metrics": {metric: {dimension: test}}}``) as stored: JSON-ready."""
    return {"since": relearned["since"].isoformat(), "metrics": relearned["metrics"]}


def describe_relearned(relearned: dict | None) -> str | None:
    """What was learned afresh after a burst, in words: "hook_type (CTR, ROAS via CTR) learned
    afresh from the evidence since 2024-02-20, where ..." (via: ROAS holds what CTR's test
    found); None when nothing was."""
    if not relearned:
        return None
    by_dim: dict[str, list[str]] = {}
    for metric, dims in sorted(relearned["metrics"].items()):
        for dim, test in dims.items():
            source = test.get("found_in", metric) if isinstance(test, dict) else metric
            by_dim.setdefault(dim, []).append(metric.upper() + ("" if source == metric else f" via {source.upper()}"))
    named = "; ".join(f"{dim} ({', '.join(metrics)})" for dim, metrics in sorted(by_dim.items()))
    since = relearned["since"]
    return (
        f"{named} learned afresh from the evidence since {since}, "
        "where the effects were found to differ from the older evidence's"
    )


def describe(
    drift: dict | None,
    exploring: bool,
    burst_start: date | None,
    settings: DriftSettings,
    relearned: dict | None = None,
) -> str:
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
        head = (
            f"{head}; launches explore the design space, and at least {settings.burst_explore_share:.0%} of the "
            f"spend is spread evenly over the live creatives, since {burst_start} for {settings.burst_days} days"
            f" (up to {settings.burst_max_days} while the drop stays unexplained)"
        )
    fresh = describe_relearned(relearned)
    return f"{head}; {fresh}" if fresh else head
