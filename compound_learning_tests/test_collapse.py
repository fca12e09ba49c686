"""Creatives inactive for long collapsed into one row each (``core.stats.collapse_cells``): what the
knowledge keeps, what the fits estimate from it, and the cycle that stores it."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from compound_learning import steps
from compound_learning.config import DriftSettings, load_settings
from compound_learning.core import stats
from compound_learning.core.effects import fit_effects
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import START, make_context, make_store, small_world
from compound_learning_tests.test_learning_core import cells_of

KEYS = ["account_id", "creative_id"]
TERMS = {  # day-of-week and age terms of each metric, as EffectFit.nuisance gives them
    "ctr": {"dow": {0: 0.0, 1: 0.1, 2: -0.2, 3: 0.05, 4: 0.0, 5: 0.3, 6: 0.25}, "age": {0: 0.0, 1: -0.1, 2: -0.3}},
    "cvr": {"dow": {0: 0.0, 1: -0.05, 5: 0.1}, "age": {0: 0.0, 1: -0.2, 2: -0.4, 3: -0.5}},
    "roas": {"dow": {0: 0.0, 3: 0.2, 6: -0.1}, "age": {0: 0.0, 1: 0.05, 2: -0.1, 3: -0.2}},
}


def _cells(seed: int = 0, creatives: int = 6) -> pd.DataFrame:
    """Random cells of a few creatives over every day of week and age bucket."""
    rng = np.random.default_rng(seed)
    rows = [
        {"account_id": f"a{c % 2}", "creative_id": f"c{c}", "dow": d, "age_bucket": a}
        for c in range(creatives)
        for d in range(7)
        for a in range(4)
        if rng.random() < 0.7
    ]
    cells = pd.DataFrame(rows)
    n = len(cells)
    cells["impressions"] = rng.integers(100, 10_000, n).astype(float)
    cells["clicks"] = rng.integers(1, 100, n).astype(float)
    cells["conversions"] = rng.integers(0, 10, n).astype(float)
    cells["spend"] = rng.uniform(1, 50, n)
    cells["revenue"] = rng.uniform(0, 200, n)
    cells["days"] = rng.integers(1, 4, n)
    cells["attributes"] = '{"hook": "q"}'
    cells["last_seen"] = [date(2024, 1, 1) + timedelta(days=int(k)) for k in rng.integers(0, 20, n)]
    return cells


def _expected_at(rows: pd.DataFrame, exposure: str, terms: dict) -> pd.Series:
    """Each creative's expected count relative to the reference at ``terms``: what its cells give."""
    log = rows["dow"].map(lambda d: terms["dow"].get(d, 0.0))
    log += rows["age_bucket"].map(lambda a: terms["age"].get(a, 0.0))
    return (rows[exposure] * np.exp(log)).groupby([rows[k] for k in KEYS]).sum()


def test_a_collapsed_row_keeps_what_its_cells_sum_to_and_expect():
    cells = _cells()
    rows = stats.collapse_cells(cells, TERMS).set_index(KEYS)
    assert (rows["dow"] == stats.COLLAPSED).all() and (rows["age_bucket"] == stats.COLLAPSED).all()
    per_creative = cells.groupby(KEYS)[[*stats.METRICS, "days"]].sum()
    pd.testing.assert_frame_equal(rows[[*stats.METRICS, "days"]], per_creative, check_dtype=False, rtol=1e-12)
    assert (rows["last_seen"] == cells.groupby(KEYS)["last_seen"].max()).all()
    # the mix of days and ages, as shares of the impressions
    day5 = cells["impressions"].where(cells["dow"] == 5, 0.0).groupby([cells[k] for k in KEYS]).sum()
    np.testing.assert_allclose(rows["dow_5_share"], day5 / per_creative["impressions"], rtol=1e-12)
    # at the metric's terms, the row expects what its cells did
    for exposure, adjusted in stats.ADJUSTED_EXPOSURE.items():
        terms = TERMS[stats.EXPOSURE_METRIC[exposure]]
        at_share = sum(terms[term].get(lv, 0.0) * rows[column] for (term, lv), column in stats.SHARE_COLUMNS.items())
        np.testing.assert_allclose(
            rows[adjusted] * np.exp(at_share), _expected_at(cells, exposure, terms), rtol=1e-12, err_msg=exposure
        )


def test_collapsing_in_two_steps_is_collapsing_once():
    """A creative that ran again after its collapse and stopped again is folded into its row:
    the same row as collapsing all its cells at once."""
    cells = _cells(seed=1)
    first = cells["last_seen"] <= date(2024, 1, 10)
    twice = stats.collapse_cells(pd.concat([stats.collapse_cells(cells[first], TERMS), cells[~first]]), TERMS)
    once = stats.collapse_cells(cells, TERMS)
    pd.testing.assert_frame_equal(twice, once, check_dtype=False, rtol=1e-12)


@pytest.mark.parametrize("inference", ["cluster", "creative"])
def test_collapsing_the_stopped_creatives_moves_no_estimate(inference):
    """The creatives that stopped in the first half of 56 days collapsed with the terms of a fit
    on every cell: every effect and interaction stays within a tenth of its standard error of the
    fit on the cells (measured: 0.035 at most), every baseline within a quarter (0.125); their
    standard errors within 3% (1.6%), a baseline's within 6% (3.7%: it carries the day-of-week
    terms, which lose the collapsed creatives' evidence within a creative).
    Put at Monday and a fresh creative without their mix of days and ages, the same rows moved
    the day-of-week terms by 0.1 and the baselines by several standard errors."""
    data, _ = small_world(days=56, accounts=8, creatives=12, seed=8)
    cells, dims = cells_of(data)
    last = data.groupby(KEYS)["date"].max()
    stopped = last[pd.to_datetime(last) <= pd.Timestamp(START) + pd.Timedelta(days=27)].index
    mask = cells.set_index(KEYS).index.isin(stopped)
    assert 10 < len(stopped) < 60
    pairs = [(dims[0], dims[1])]

    def fit(frame, metric):
        return fit_effects(frame, dims, metric, inference=inference, interaction_pairs=pairs, min_cell_creatives=3)

    full = {m: fit(cells, m) for m in ("ctr", "cvr", "roas")}
    collapsed = stats.collapse_cells(cells[mask], {m: f.nuisance for m, f in full.items()})
    collapsed = collapsed.drop(columns=["attributes", "days", "last_seen"]).merge(
        cells[mask].drop_duplicates(KEYS)[[*KEYS, *dims]], on=KEYS
    )
    mixed = pd.concat([cells[~mask], collapsed], ignore_index=True)
    assert len(mixed) < 0.85 * len(cells)
    for metric, a in full.items():
        b = fit(mixed, metric)
        assert b.n_creatives == a.n_creatives
        for name, keys, value in (
            ("effects", ["dimension", "value"], "log_effect"),
            ("interactions", ["dimension", "value", "dimension2", "value2"], "log_effect"),
            ("baselines", ["account_id"], "log_rate"),
        ):
            both = getattr(a, name).merge(getattr(b, name), on=keys, suffixes=("_cells", "_rows"))
            assert len(both) == len(getattr(a, name)) > 0, (metric, name)
            moved = (both[f"{value}_cells"] - both[f"{value}_rows"]).abs() / both["std_error_cells"]
            assert moved.max() < (0.25 if name == "baselines" else 0.1), (metric, name, moved.max())
            changed = (both["std_error_rows"] / both["std_error_cells"] - 1).abs().max()
            assert changed < (0.06 if name == "baselines" else 0.03), (metric, name, changed)


def test_the_cycle_collapses_what_stopped_and_learns_the_same(db_url, env):
    """42 days with creatives collapsed once they have not run for 7 days (and a 7-day drift
    window), against the same days with collapsing off: the knowledge holds fewer rows, every
    creative's totals are the same, the global fits' terms are stored each day, and the last
    day's global estimates are within a tenth of their standard errors. On PostgreSQL the
    roll-forward in SQL carries the collapsed rows from day to day."""
    data, _ = small_world(days=42, accounts=4, creatives=12, seed=5)
    env(db_url)
    store = make_store(db_url)
    ingest_frame(data, store=store, settings=load_settings(), today=date(2025, 1, 1))
    end = START + timedelta(days=41)
    runs = {}
    for after in (0, 7):
        store.reset()  # each run learns from the first day
        ctx = make_context(db_url, collapse_after_days=after, drift=replace(DriftSettings(), window_days=7))
        summaries = steps.run_days(ctx, START, end, only=["daily_stats", "learning_patterns"])
        patterns = store.read_day(t.learning_patterns, end)
        runs[after] = {
            "snapshot": store.read_snapshot(end),
            "patterns": patterns[(patterns["account_id"] == "*") & (patterns["pattern_type"] != "interaction")],
            "collapsed": sum(s["learning_patterns"].get("creatives_collapsed", 0) for s in summaries),
            "terms": store.read_day(t.nuisance_terms, end),
        }
    kept, plain = runs[7]["snapshot"], runs[0]["snapshot"]
    n_collapsed = int((kept["dow"] == stats.COLLAPSED).sum())
    assert n_collapsed > 5 and runs[7]["collapsed"] >= n_collapsed and runs[0]["collapsed"] == 0
    assert (plain["dow"] == stats.COLLAPSED).sum() == 0 and len(kept) < 0.8 * len(plain)
    pd.testing.assert_frame_equal(
        kept.groupby(KEYS)[stats.METRICS].sum(), plain.groupby(KEYS)[stats.METRICS].sum(), rtol=1e-9
    )
    # a collapsed row has not run for 7 days, and it holds every day its creative ran
    rows = kept[kept["dow"] == stats.COLLAPSED]
    assert (pd.to_datetime(rows["last_seen"]).dt.date <= end - timedelta(days=7)).all()
    assert rows["adjusted_spend"].gt(0).all()
    for term in ("dow", "age"):  # shares of the levels past the first: at most the whole
        shares = rows[[c for (k, _), c in stats.SHARE_COLUMNS.items() if k == term]].sum(axis=1)
        assert shares.between(0, 1 + 1e-9).all(), term
    # rows collapsed weeks ago kept their mix through every roll-forward since (days 28 and 35)
    assert shares.gt(0).all() and (rows["last_seen"] < end - timedelta(days=14)).sum() > 5
    terms = runs[7]["terms"]
    assert set(terms["metric"]) == {"ctr", "cvr", "roas"} and set(terms["term"]) == {"dow", "age"}
    both = runs[0]["patterns"].merge(runs[7]["patterns"], on=["metric", "pattern_type", "attributes"])
    assert len(both) == len(runs[0]["patterns"]) > 10
    moved = (both["log_effect_x"] - both["log_effect_y"]).abs() / both["std_error_x"]
    assert moved.max() < 0.1, moved.max()


def test_the_drift_split_counts_a_collapsed_row_as_older_evidence():
    """A creative collapsed after the older snapshot was taken: its row is all older evidence,
    and the cells it ran since (on a day of week and age the older snapshot also holds, before
    the collapse) are all recent, not less what the row already holds."""
    from compound_learning.core.drift import split_evidence

    cells = _cells(seed=2, creatives=2)
    older = cells.copy()
    gone = cells["creative_id"] == "c0"
    row = stats.collapse_cells(cells[gone], TERMS)
    again = cells[gone].head(2).assign(impressions=50.0, clicks=5.0, conversions=1.0, spend=3.0, revenue=9.0)
    cumulative = pd.concat([row, again, cells[~gone]], ignore_index=True)
    split = split_evidence(cumulative, older)
    recent = split[split["period"] == 1]
    before = split[split["period"] == 0]
    assert set(recent["creative_id"]) == {"c0"} and len(recent) == 2
    assert recent["spend"].sum() == pytest.approx(6.0)  # the two new cells, whole
    collapsed = before[before["dow"] == stats.COLLAPSED]
    assert len(collapsed) == 1 and collapsed["spend"].iloc[0] == pytest.approx(cells.loc[gone, "spend"].sum())
    assert collapsed["adjusted_spend"].iloc[0] == pytest.approx(row["adjusted_spend"].iloc[0])
    # the older snapshot holds the same row: its creative's cells beside it are split as usual
    split = split_evidence(cumulative, pd.concat([row, again.assign(spend=1.0), cells[~gone]], ignore_index=True))
    assert split.loc[split["period"] == 1, "spend"].sum() == pytest.approx(4.0)
