"""The pure learning core on small worlds: recovery, the correlated-attribute trap, a null
world, states, the knowledge graph, DNA scoring, insights and trajectories."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from compound_learning.core import stats
from compound_learning.core.dna import dna_weights, score_creative
from compound_learning.core.insights import cross_account_insights, dersimonian_laird
from compound_learning.core.knowledge import build_graph
from compound_learning.core.patterns import PatternSettings, build_patterns, fit_cycle
from compound_learning.core.shrinkage import posterior, prior_variance
from compound_learning.core.trajectory import trajectory
from compound_learning_tests.conftest import small_world


def cells_of(data: pd.DataFrame):
    dims = [
        c
        for c in data.columns
        if c not in {"date", "account_id", "creative_id", "impressions", "clicks", "conversions", "spend", "revenue"}
    ]
    frame = data.copy()
    frame["attributes"] = [
        json.dumps(dict(zip(dims, r, strict=True)), sort_keys=True) for r in frame[dims].itertuples(index=False)
    ]
    frame["date"] = pd.to_datetime(frame["date"])
    first = frame.groupby("creative_id")["date"].transform("min")
    frame["age_days"] = (frame["date"] - first).dt.days
    frame["dow"] = frame["date"].dt.day_of_week
    cum = stats.roll_forward(
        pd.DataFrame(),
        frame[["account_id", "creative_id", "dow", "age_days", *stats.METRICS, "attributes"]],
        1.0,
        frame["date"].max().date(),
    )
    return stats.expand_attributes(cum)


def learn(data, settings=None, days_persisted=3):
    settings = settings or PatternSettings()
    cells, dims = cells_of(data)
    fits = fit_cycle(cells, dims, settings)
    prev = None
    for i in range(days_persisted):  # the same evidence re-tested on consecutive days
        prev = build_patterns(fits, date(2024, 3, 1) + timedelta(days=i), prev, settings)
    return prev, fits, cells, dims


@pytest.fixture(scope="module")
def learned():
    data, truth = small_world(days=30, accounts=10, creatives=25, seed=11)
    patterns, fits, cells, dims = learn(data)
    return data, truth, patterns, fits, cells, dims


def test_effects_recover_truth_and_intervals_cover(learned):
    _, truth, patterns, *_ = learned
    glob = patterns[(patterns["account_id"] == "*") & (patterns["pattern_type"] != "interaction")].copy()
    glob["dim_value"] = glob["attributes"].map(lambda a: next(iter(json.loads(a).items())))
    eff = pd.DataFrame(truth["effects"])
    eff["dim_value"] = list(zip(eff["dimension"], eff["value"], strict=True))
    merged = glob.merge(eff, on=["dim_value", "metric"], suffixes=("", "_true"))
    assert len(merged) >= 40
    covered = (merged["ci_low"] <= merged["lift_true"]) & (merged["lift_true"] <= merged["ci_high"])
    assert covered.mean() >= 0.85
    big = merged[merged["log_effect_true"].abs() > 0.2]
    assert (np.sign(big["log_effect"]) == np.sign(big["log_effect_true"])).mean() >= 0.95
    sig = merged[merged["state"] == "significant"]
    assert len(sig) > 5
    assert (np.sign(sig["log_effect"]) == np.sign(sig["log_effect_true"])).all()


def test_null_attribute_correlated_with_a_strong_one_is_not_significant(learned):
    _, truth, patterns, *_ = learned
    cta = patterns[(patterns["account_id"] == "*") & (patterns["pattern_type"] == "cta")]
    assert len(cta) > 0 and "cta" in truth["null_dimensions"]
    assert not (cta["state"] == "significant").any()


def test_null_world_claims_almost_nothing():
    data, _ = small_world(days=30, accounts=10, creatives=25, seed=12, null=True)
    patterns, *_ = learn(data)
    testable = patterns[patterns["state"] != "insufficient_data"]
    assert len(testable) > 50
    assert (testable["state"] == "significant").mean() <= 0.05


@pytest.mark.parametrize("true_tau2", [0.0, 0.0025, 0.04])
def test_prior_variance_recovers_the_spread_of_true_effects(true_tau2):
    rng = np.random.default_rng(7)
    se = rng.uniform(0.02, 0.5, 3000)  # errors that differ by an order of magnitude, as DNA rows do
    est = rng.normal(0.0, np.sqrt(true_tau2), se.size) + rng.normal(0.0, se)
    assert prior_variance(est, se) == pytest.approx(true_tau2, abs=max(0.25 * true_tau2, 2e-4))
    # around a known, per-row prior mean (an account's weights around the global ones)
    shift = rng.normal(0.0, 0.3, se.size)
    assert prior_variance(est + shift, se, shift) == pytest.approx(prior_variance(est, se), rel=1e-6)


def test_a_few_precise_effects_are_not_shrunk_away_by_many_wide_small_ones():
    # Conversion-rate weights of one day in the change world: the moment estimate
    # mean(est^2) - mean(se^2) is negative here and shrank every weight, offer's +0.12 +- 0.04 too.
    est = np.array([0.12, -0.12, 0.0, -0.05, 0.03, 0.04, -0.02, 0.06, -0.04, 0.01])
    se = np.array([0.04, 0.04, 0.03, 0.10, 0.12, 0.15, 0.10, 0.14, 0.12, 0.11])
    assert np.mean(est**2) < np.mean(se**2)
    mean, sd = posterior(est, se, prior_variance(est, se))
    assert mean[0] > 0.06 and mean[1] < -0.06  # the precise effects keep most of their size
    assert abs(mean[3]) < abs(est[3]) and np.all(sd < se)  # the wide ones are still shrunk


def test_states_need_persistence_and_flip_to_contradicted(learned):
    *_, fits, _cells, _dims = learned
    s = PatternSettings(persistence=3)
    day1 = build_patterns(fits, date(2024, 3, 1), None, s)
    assert not (day1["state"] == "significant").any()  # significant only once it has held
    assert (day1["state"] == "learning").any()
    day3 = build_patterns(fits, date(2024, 3, 3), build_patterns(fits, date(2024, 3, 2), day1, s), s)
    sig = day3[day3["state"] == "significant"]
    assert len(sig) > 0
    assert (day3.set_index("pattern_id")["first_seen"] == date(2024, 3, 1)).all()
    # New evidence flips every effect: established claims become contradicted.
    from dataclasses import replace

    flipped = {
        k: replace(
            f,
            effect_rows=[{**r, "log_effect": -r["log_effect"]} for r in f.effect_rows],
            interaction_rows=[{**r, "log_effect": -r["log_effect"]} for r in f.interaction_rows],
        )
        for k, f in fits.global_fits.items()
    }
    from compound_learning.core.patterns import CycleFits

    day4 = build_patterns(CycleFits(flipped, {}), date(2024, 3, 4), day3, s)
    was = set(sig[sig["account_id"] == "*"]["pattern_id"]) & set(day4["pattern_id"])
    states = day4.set_index("pattern_id").loc[list(was), "state"]
    assert (states == "contradicted").mean() > 0.9


def test_knowledge_graph_types_and_posterior_confidence(learned):
    _, _, patterns, _, cells, dims = learned
    creatives = cells.drop_duplicates(["account_id", "creative_id"])
    nodes, edges = build_graph(patterns, creatives, dims)
    assert {"attribute_value", "metric", "pattern"} <= set(nodes["node_type"])
    assert nodes["confidence"].between(0, 1).all() and nodes["importance"].between(0, 1).all()
    kinds = set(edges["relationship_type"])
    assert {"improves", "hurts", "co_occurs", "describes"} <= kinds
    co = edges[edges["relationship_type"] == "co_occurs"]
    assert ((co["source_id"] == "value:cta=shop_now") | (co["target_id"] == "value:cta=shop_now")).any()
    # co-occurrence is never mistaken for an effect on a metric
    assert not edges[
        (edges["relationship_type"].isin(["improves", "hurts"])) & edges["source_id"].str.startswith("value:cta=")
    ].shape[0]


def test_dna_scores_relative_to_the_account_baseline(learned):
    _, _, patterns, fits, *_ = learned
    baselines = pd.concat([f.baselines.assign(metric=m) for m, f in fits.global_fits.items()])
    weights = dna_weights(patterns, baselines)
    good = score_creative(weights, "acct_001", {"hook_type": "question", "audience": "retargeting", "template": "bold"})
    bad = score_creative(
        weights, "acct_001", {"hook_type": "testimonial", "audience": "interest", "template": "carousel"}
    )
    assert good["dna_score"] > 100 > bad["dna_score"]
    ctr = good["predictions"]["ctr"]
    assert ctr["ci_low"] < ctr["predicted"] < ctr["ci_high"]
    odd = score_creative(weights, "acct_001", {"hook_type": "meme", "mood": "calm"})
    assert odd["unseen_values"] == [{"dimension": "hook_type", "value": "meme"}]
    assert odd["unknown_dimensions"] == ["mood"]
    assert odd["dna_score"] == pytest.approx(100.0)
    with pytest.raises(LookupError, match="has no baseline yet") as refused:
        score_creative(weights, "nobody", {"hook_type": "question"})
    assert "acct_" not in str(refused.value)  # never the names of the accounts that have one


def test_insights_need_five_accounts_and_no_dominance(learned):
    _, _, patterns, *_ = learned
    insights = cross_account_insights(patterns)
    assert insights["published"].any()
    assert (insights.loc[insights["published"], "n_accounts"] >= 5).all()
    assert (insights.loc[insights["published"], "top2_share"] < 0.8).all()
    few = patterns[patterns["account_id"].isin(["*", "acct_001", "acct_002", "acct_003"])]
    assert not cross_account_insights(few)["published"].any()
    assert "acct_" not in insights.to_json()
    res = dersimonian_laird(np.array([0.1, 0.1, 0.1]), np.array([0.05, 0.05, 0.05]))
    assert res["tau2"] == 0.0 and res["pooled"] == pytest.approx(0.1)


def _series(days, growth, noise, seed=0):
    rng = np.random.default_rng(seed)
    d = pd.date_range("2024-01-01", periods=days)
    roas = 3.0 * np.exp(growth * np.arange(days) + rng.normal(0, noise, days))
    return pd.DataFrame({"date": d, "spend": 100.0, "revenue": 100.0 * roas})


def test_trajectory_is_honest():
    assert trajectory(_series(1, 0, 0))["learning_status"] == "insufficient_data"
    flat = [trajectory(_series(60, 0.0, 0.2, seed=s)) for s in range(20)]
    assert sum(f["learning_status"] == "improving" for f in flat) <= 2
    assert not any(f["on_track_for_10x"] for f in flat)
    up = trajectory(_series(60, 0.01, 0.1))
    assert up["learning_status"] == "improving" and up["daily_improvement_rate"] == pytest.approx(0.01, abs=0.004)
    lo, hi = up["projected_30d_roas_ci"]
    assert lo < up["projected_30d_roas"] < hi
    # A trend fitted on 60 days is not carried a year ahead: that projection is withheld (with a
    # note), and so "on track for 10x" cannot come from an extrapolation.
    fast = trajectory(_series(60, 0.03, 0.05))
    assert fast["learning_status"] == "improving" and fast["projected_30d_roas"] is not None
    assert fast["projected_90d_roas"] is None and fast["projected_365d_roas"] is None
    assert fast["on_track_for_10x"] is False
    assert any("365-day projection withheld: 60 days of history" in n for n in fast["projection_notes"])
    short = trajectory(_series(30, np.log(1.6) / 29, 0.1))  # a 1.6x rise over 30 days
    assert short["projected_365d_roas"] is None and not short["on_track_for_10x"]
    long_run = trajectory(_series(400, 0.01, 0.05))  # a year of steady growth supports a year ahead
    assert long_run["on_track_for_10x"] is True


def test_trajectory_states_the_change_and_agrees_with_it():
    up = trajectory(_series(60, 0.01, 0.1))
    change = up["change"]
    true = np.exp(0.01 * (59 - 13)) - 1  # last two weeks' mean day against the first two weeks'
    assert change["roas_change"] == pytest.approx(true, rel=0.25)
    assert change["roas_change_ci"][0] > 0 and change["roas_change_ci"][0] < change["roas_change"]
    assert f"ROAS {change['roas_change']:+.0%}" in up["summary"] and "the daily trend is still rising" in up["summary"]
    flat = [trajectory(_series(60, 0.0, 0.2, seed=s)) for s in range(20)]
    clear = [f for f in flat if f["change"]["roas_change_ci"][0] > 0 or f["change"]["roas_change_ci"][1] < 0]
    assert len(clear) <= 2  # a 95% interval on flat worlds
    for f in flat:
        if f not in clear:
            assert "not distinguishable from no change" in f["summary"]


def test_forgetting_halves_old_evidence_per_half_life():
    assert stats.decay_factor(0, 30) == 1.0
    assert stats.decay_factor(14, 14) == pytest.approx(0.5)
    day = pd.DataFrame(
        [
            {
                "account_id": "a",
                "creative_id": "c",
                "dow": 0,
                "age_days": 0,
                "impressions": 1000,
                "clicks": 10,
                "conversions": 1,
                "spend": 5.0,
                "revenue": 20.0,
                "attributes": "{}",
            }
        ]
    )
    cells = stats.roll_forward(pd.DataFrame(), day, 1.0, date(2024, 1, 1))
    later = stats.roll_forward(cells, day.assign(dow=1, age_days=1), stats.decay_factor(7, 7), date(2024, 1, 8))
    old = later[later["dow"] == 0].iloc[0]
    assert old["impressions"] == pytest.approx(500) and old["clicks"] == pytest.approx(5)
    assert later["impressions"].sum() == pytest.approx(1500)
    # after 10 half-lives (1000 -> ~1 impression) and 11, the old cell is gone
    gone = stats.roll_forward(later, pd.DataFrame(), stats.decay_factor(7, 77), date(2024, 3, 25))
    assert gone.empty


def test_cells_plus_their_increments_are_the_cells_rolled_forward():
    """A snapshot stored as increments since its base reads back as rolling the base forward:
    sums add, an unknown metric stays unknown unless one side knows it, the latest attributes
    and date win, and a cell only the increments hold is added in key order."""
    rng = np.random.default_rng(3)

    def day_rows(n, dow, seen):
        return pd.DataFrame(
            {
                "account_id": ["a1"] * n,
                "creative_id": [f"c{i}" for i in range(n)],
                "dow": dow,
                "age_days": 0,
                "impressions": rng.integers(100, 1000, n),
                "clicks": rng.integers(0, 50, n),
                "conversions": [np.nan if i % 3 == 0 else 1.0 for i in range(n)],
                "spend": rng.uniform(1, 9, n).round(2),
                "revenue": [np.nan if i % 2 == 0 else 12.5 for i in range(n)],
                "attributes": [f'{{"hook_type": "v{seen.day}"}}'] * n,
            }
        )

    base = stats.roll_forward(pd.DataFrame(), day_rows(6, 0, date(2024, 1, 7)), 1.0, date(2024, 1, 7))
    increments = pd.DataFrame()
    later = base
    for offset, n in ((1, 4), (2, 8)):  # the second day brings two new creatives
        seen = date(2024, 1, 7) + timedelta(days=offset)
        rows = day_rows(n, 0 if offset == 1 else 1, seen)
        increments = stats.roll_forward(increments, rows, 1.0, seen)
        later = stats.roll_forward(later, rows, 1.0, seen)
    out = stats.add_increments(base, increments)
    pd.testing.assert_frame_equal(out, later, check_dtype=False, rtol=1e-15)
    assert out["conversions"].isna().any() and out["revenue"].isna().any()
    assert set(out["creative_id"]) == {f"c{i}" for i in range(8)}
    assert stats.add_increments(base, increments.iloc[:0]).equals(base)


def test_drifting_effect_is_followed_with_forgetting():
    from compound_learning.evaluation import WorldSpec, score_world

    result = score_world(WorldSpec("drift", seed=7, days=40, accounts=10, creatives=25))
    assert result["drift_followed"] >= 0.75


def test_stable_projection_keeps_the_recent_level():
    series = _series(60, 0.0, 0.4, seed=0)
    series.loc[series.index[-14:], "revenue"] *= 1.3  # a recent, modest step: not a trend
    out = trajectory(series)
    assert out["learning_status"] == "stable"
    roas = series["revenue"] / series["spend"]
    recent, overall = roas.iloc[-14:].mean(), roas.mean()
    # projected at the recent level, not at the mean of the whole history
    assert abs(out["projected_30d_roas"] - recent) < abs(out["projected_30d_roas"] - overall)
    assert out["projected_90d_roas"] is None  # 60 days of history: 90 days ahead is withheld


def test_every_interval_says_what_it_is(learned):
    """A 95% interval that excludes zero is not yet a claim: the record says so, and why (one
    weighted BH family over the whole cycle, and persistence over cycles)."""
    from scipy import stats as sps

    from compound_learning.core.patterns import TEST_FAMILY, patterns_to_records

    *_, patterns, _fits, _cells, _dims = learned
    tested = patterns[patterns["p_value"].notna()]
    primary = (tested["pattern_type"] != "interaction") & (tested["account_id"] == "*")
    assert 0 < primary.sum() < len(tested)  # both kinds are in the family
    m, k = len(tested), primary.sum()
    w = max(1.0, 0.25 * m / k)  # the main effects hold at least a quarter of the budget
    assert w > 1.5  # per-account patterns and interactions outnumber them here: the weights act
    weights = np.where(primary, w, (m - k * w) / (m - k))
    expected = sps.false_discovery_control(np.minimum(tested["p_value"].to_numpy() / weights, 1.0), method="bh")
    np.testing.assert_allclose(tested["q_value"].to_numpy(), expected)
    records = patterns_to_records(patterns)
    learning = [r for r in records if r["state"] == "learning" and r["ci_low"] is not None]
    unclaimed = [r for r in learning if r["ci_low"] > 0 or r["ci_high"] < 0]
    assert unclaimed  # intervals that exclude zero without a claim exist, and say why
    assert all("excludes no change, but it is not established yet" in r["reading"] for r in unclaimed)
    assert all(r["test_family"] == TEST_FAMILY for r in records)
    assert all(r["reading"].startswith("established") for r in records if r["state"] == "significant")


def test_a_rise_that_held_is_stated_next_to_the_trend_and_projected_at_its_level():
    """ROAS up 60% in the first weeks, then flat: the account has improved (the change is clear),
    the summary says there is no ongoing trend, and the projection is the recent level, not the
    early slope."""
    series = _series(60, 0.0, 0.1, seed=3)
    ramp = np.clip(np.arange(60) / 20.0, 0, 1)  # +60% over the first 20 days, then level
    series["revenue"] *= 1.6**ramp
    out = trajectory(series)
    change = out["change"]
    assert change["roas_change_ci"][0] > 0.1  # the first two weeks are part of the ramp
    assert out["summary"].startswith(f"ROAS {change['roas_change']:+.0%} [")
    assert out["learning_status"] == "improving" and out["trend"] == "none"
    assert "no ongoing daily trend beyond noise, so the projection holds the recent level" in out["summary"]
    level = (series["revenue"] / series["spend"]).iloc[-14:]
    assert out["projected_30d_roas"] == pytest.approx(np.exp(np.log(level).mean()), rel=0.05)


def _creative_account(days: int, live: int, lifetime: int, growth: float, seed: int, volume: float = 400.0):
    """One account's creative-day rows: ``live`` creatives at a time, each running ``lifetime``
    days with its own quality (log ROAS sd 0.3), ROAS growing by ``growth`` a day for all."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    starts = list(-rng.integers(0, lifetime, live))  # staggered: the account is in its steady state
    quality = {}
    for d in range(days):
        for i, s0 in enumerate(starts):
            if d - s0 >= lifetime:
                n += 1
                starts[i] = d
        for i, s0 in enumerate(starts):
            key = f"c{i}_{s0}"
            q = quality.setdefault(key, rng.normal(0, 0.3))
            spend = volume / live * np.exp(rng.normal(0, 0.2))
            conversions = rng.poisson(spend / 20.0 * np.exp(q + growth * d))
            rows.append(
                (pd.Timestamp("2024-01-01") + pd.Timedelta(days=d), key, spend, conversions * 60.0, conversions)
            )
    frame = pd.DataFrame(rows, columns=["date", "creative_id", "spend", "revenue", "conversions"])
    daily = frame.groupby("date", as_index=False)[["spend", "revenue"]].sum()
    return daily, frame


def test_creative_luck_is_not_called_a_trend_and_a_real_rise_still_is():
    """Flat accounts whose few long-lived creatives differ in quality wander by tens of percent as
    creatives come and go. With the creatives known, the change's interval carries that luck:
    far fewer flat accounts are called trending than from the daily series alone, while a 50%
    rise over 60 days with the same creatives is still called improving."""
    flat = [_creative_account(60, 10, 30, 0.0, seed=s, volume=4000.0) for s in range(40)]
    alone = sum(trajectory(d)["learning_status"] in ("improving", "declining") for d, _ in flat)
    with_luck = [trajectory(d, creatives=c) for d, c in flat]
    trending = sum(x["learning_status"] in ("improving", "declining") for x in with_luck)
    assert alone >= 10  # the daily series alone mistakes luck for trends (about 1 in 2 here)
    assert trending <= 3
    assert all(x["change"]["includes_creative_luck"] and x["change"]["luck_se"] > 0 for x in with_luck)
    rising = [_creative_account(60, 25, 30, np.log(1.5) / 59, seed=100 + s, volume=4000.0) for s in range(20)]
    called = sum(trajectory(d, creatives=c)["learning_status"] == "improving" for d, c in rising)
    assert called >= 15


def test_a_low_volume_account_is_volatile_not_stable():
    """About 3 conversions a day: the account is called volatile (and the summary says why),
    while the same flat account at 200 conversions a day is stable."""

    def called(volume: float, seed: int) -> dict:
        daily, creatives = _creative_account(40, 6, 30, 0.0, seed=seed, volume=volume)
        return trajectory(daily, creatives=creatives)

    low = [called(60.0, s) for s in range(10)]
    volatile = [x for x in low if x["learning_status"] == "volatile"]
    assert len(volatile) >= 8 and all(x["daily_conversions_median"] < 10 for x in low)
    x = volatile[0]
    assert f"a median of {x['daily_conversions_median']:.0f} conversions a day is too few" in x["summary"]
    high = [called(4000.0, s) for s in range(10)]
    assert sum(x["learning_status"] == "stable" for x in high) >= 9


def test_the_cycle_trajectory_carries_creative_luck_the_same_in_a_range_and_day_by_day(tmp_path_factory):
    """The improvement step reads the change windows' creative-day rows once for a range and
    extends them day by day: a 30-day range gives the last day the trajectory that a run of
    that day alone (after the earlier days were written) gives, and the change's interval
    carries creative luck and the attribute mix the day's DNA explains."""
    from compound_learning import steps
    from compound_learning.ingestion import ingest_frame
    from compound_learning.steps import IMPROVEMENT_SNAPSHOTS, Shard
    from compound_learning_tests.conftest import START, learned_context, small_world

    data, _ = small_world(days=30, accounts=3, seed=4, learning_accounts_share=0.7)
    last = START + timedelta(days=29)
    with learned_context(tmp_path_factory, "luck") as ctx:
        ingest_frame(data, store=ctx.store, settings=ctx.settings, today=date(2100, 1, 1))
        steps.run_days(ctx, START, last, only=["daily_stats"])
        steps.run_day(ctx, last, only=["learning_patterns", "creative_dna"])
        days = steps.days_between(START, last)
        ranged = IMPROVEMENT_SNAPSHOTS.work(ctx, days, Shard.whole(), {d: {} for d in days})[last]
        steps.run_days(ctx, START, last - timedelta(days=1), only=["improvement_snapshots"])
        alone = IMPROVEMENT_SNAPSHOTS.work(ctx, [last], Shard.whole(), {last: {}})[last]
    pd.testing.assert_frame_equal(ranged["rows"], alone["rows"])
    assert len(alone["rows"]) == 3
    for trajectory_json in alone["rows"]["trajectory"]:
        change = json.loads(trajectory_json)["change"]
        assert change["includes_creative_luck"] and change["luck_se"] > 0
        assert change["attribute_mix_change"] is not None and change["creatives_compared"] >= 4


def test_weighted_bh_gives_the_primary_tests_their_share_and_keeps_the_fdr():
    """Ten strong primary effects among 100 primary tests and 2,000 null secondary ones: plain BH
    over all 2,100 finds few of them, the weighted family (a quarter of the budget to the primary
    tests) finds them all; on nulls only, the weighted family's false discovery rate stays at the
    level; a family whose primary tests already hold a quarter of it is plain BH."""
    from scipy import stats as sps

    from compound_learning.core.patterns import bh_weights, weighted_bh

    rng = np.random.default_rng(0)
    primary = np.r_[np.ones(100, bool), np.zeros(2000, bool)]
    assert bh_weights(primary, 0.25).mean() == pytest.approx(1.0)
    assert bh_weights(primary, 0.25)[0] == pytest.approx(0.25 * 2100 / 100)
    assert (bh_weights(np.r_[np.ones(30, bool), np.zeros(70, bool)], 0.25) == 1.0).all()
    z = np.r_[np.full(10, 3.9), np.zeros(2090)] + rng.normal(0, 0.3, 2100) * np.r_[np.zeros(10), np.ones(2090)]
    p = 2 * sps.norm.sf(np.abs(z))
    plain = sps.false_discovery_control(p, method="bh") < 0.01
    weighted = weighted_bh(p, primary, 0.25) < 0.01
    assert plain[:10].sum() < 10 and weighted[:10].all()
    false = []
    for _ in range(200):
        null_p = rng.uniform(size=2100)
        rejected = weighted_bh(null_p, primary, 0.25) < 0.05
        false.append(rejected.any())  # under the global null any rejection is a false discovery
    assert np.mean(false) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)
    with pytest.raises(ValueError, match="primary_share"):
        bh_weights(primary, 1.0)


def test_trajectory_calls_are_scored_against_the_true_change():
    """``evaluate`` scores each call against what the account's expected ROAS truly did."""
    from compound_learning.evaluation import trajectory_call_rates

    calls = [
        {"learning": True, "true_change": 0.8, "status": "improving"},
        {"learning": True, "true_change": 0.6, "status": "stable"},
        {"learning": False, "true_change": 0.05, "status": "improving"},  # flat, called trending
        {"learning": False, "true_change": -0.02, "status": "volatile"},
        {"learning": False, "true_change": -0.3, "status": "improving"},  # against the truth
        {"learning": False, "true_change": 0.3, "status": "declining"},  # against the truth
        {"learning": False, "true_change": 0.02, "status": "declining"},  # flat: a false call, not "against"
    ]
    rates = trajectory_call_rates(calls)
    assert (rates["risen_accounts"], rates["risen_called_improving"]) == (2, 1)
    assert (rates["risen_learning_accounts"], rates["risen_learning_called_improving"]) == (2, 1)
    assert (rates["flat_true_accounts"], rates["flat_true_called_trending"], rates["flat_true_called_volatile"]) == (
        3,
        2,
        1,
    )
    assert (rates["wrong_direction"], rates["wrong_direction_near_zero"]) == (2, 1)


def test_a_trend_that_is_not_projected_is_not_called_absent():
    """A low-volume account can show a daily trend without a clear change between the windows:
    the projection holds the level, and its label says why instead of "no ongoing trend"."""
    held = []
    for seed in range(30):
        daily, creatives = _creative_account(40, 6, 30, np.log(1.3) / 39, seed=seed, volume=60.0)
        out = trajectory(daily, creatives=creatives)
        if out["trend"] != "none" and out["projection_holds_level"]:
            held.append(out)
    assert held  # such accounts exist in this world (3 of 30 seeds)
    for out in held:
        assert "no ongoing trend" not in out["model"]
        assert f"a {out['trend']} daily trend" in out["model"] and "is not projected" in out["model"]
