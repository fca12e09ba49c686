"""The drift test (``core.drift``): the recent evidence's level against the older evidence's, and
the exploration burst that answers a drop, in the learning step and the recommendations."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from compound_learning import queries, steps
from compound_learning.config import GLOBAL, DriftSettings
from compound_learning.core import drift, recommend, stats
from compound_learning.core.dna import BASELINE_VALUE, WEIGHT_COLUMNS
from compound_learning.core.effects import CodedCells, EffectFit
from compound_learning.core.patterns import fit_global
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import START, learned_context, run_cli, small_world

DAYS = 30
WINDOW = 14
DROPPED = 10  # the cycle test's last days, whose revenue halves


def rolled(data: pd.DataFrame, last: date) -> pd.DataFrame:
    """Cumulative cells (no forgetting) of ``data``'s days up to ``last``."""
    dims = [c for c in data.columns if c not in {"date", "account_id", "creative_id", *stats.METRICS}]
    frame = data.copy()
    frame["attributes"] = [json.dumps(dict(zip(dims, r, strict=True)), sort_keys=True) for r in frame[dims].values]
    frame["date"] = pd.to_datetime(frame["date"])
    frame["age_days"] = (frame["date"] - frame.groupby("creative_id")["date"].transform("min")).dt.days
    frame["dow"] = frame["date"].dt.day_of_week
    frame = frame[frame["date"].dt.date <= last]
    columns = ["account_id", "creative_id", "dow", "age_days", *stats.METRICS, "attributes"]
    return stats.roll_forward(pd.DataFrame(), frame[columns], 1.0, last)


def split_world(drop: float = 1.0, seed: int = 3) -> pd.DataFrame:
    """A 30-day world split at its last 14 days, with the revenue of those days times ``drop``."""
    data, _ = small_world(days=DAYS, accounts=6, creatives=25, seed=seed)
    end = pd.to_datetime(data["date"]).max().date()
    cut = end - timedelta(days=WINDOW)
    recent = pd.to_datetime(data["date"]).dt.date > cut
    data.loc[recent, "revenue"] = data.loc[recent, "revenue"] * drop
    return drift.split_evidence(rolled(data, end), rolled(data, cut)), data, cut


def test_split_parts_add_up_to_the_cumulative_and_the_recent_part_is_the_window():
    split, data, cut = split_world()
    keys = list(stats.CELL_KEYS)
    end = pd.to_datetime(data["date"]).max().date()
    whole = rolled(data, end).set_index(keys)[stats.METRICS].sort_index()
    summed = split.groupby(keys)[stats.METRICS].sum().reindex(whole.index)
    np.testing.assert_allclose(summed.to_numpy(float), whole.to_numpy(float), rtol=1e-9)
    window = data[pd.to_datetime(data["date"]).dt.date > cut]
    recent = split[split["period"] == 1]
    assert recent["spend"].sum() == pytest.approx(window["spend"].sum(), rel=1e-9)
    assert set(recent["creative_id"]) == set(window.loc[window["spend"] > 0, "creative_id"])


def test_level_drift_finds_a_planted_drop_and_stays_quiet_without_one():
    split, _, _ = split_world(drop=0.7)
    found = drift.level_drift(split, z_threshold=4.0)
    assert found["flagged"] and found["z"] <= -4.0
    assert abs(found["level_shift"] - np.log(0.7)) <= 3 * found["std_error"]
    quiet = [drift.level_drift(split_world(seed=s)[0], z_threshold=4.0) for s in (3, 4, 5)]
    assert not any(q["flagged"] for q in quiet)
    assert all(abs(q["z"]) < 3.0 for q in quiet), [q["z"] for q in quiet]


def test_one_exploration_burst_per_drop():
    settings = DriftSettings(window_days=14, burst_days=3)
    flags = [False, True, True, True, True, True, False, False, True, True]
    start, was, exploring = None, False, []
    for i, flagged in enumerate(flags):
        start, on = drift.exploration_burst(start, date(2025, 1, 1) + timedelta(days=i), flagged, was, settings)
        was = flagged
        exploring.append(on)
    # the first drop explores three days however long it stays flagged; a new drop starts another
    assert exploring == [False, True, True, True, False, False, False, False, True, True]
    assert start == date(2025, 1, 9)


def test_a_burst_goes_on_while_its_drop_stays_flagged_and_unexplained():
    """Past its days a burst continues only while the drop is still flagged and nothing has been
    learned afresh since it began, and never past ``burst_max_days``; once the drop is explained,
    or no longer flagged, it ends."""
    settings = DriftSettings(window_days=14, burst_days=3, burst_max_days=6)

    def run(flags: list[bool], explained_from: int | None) -> list[bool]:
        start, was, on, out = None, False, False, []
        for i, flagged in enumerate(flags):
            explained = explained_from is not None and i >= explained_from
            day = date(2025, 1, 1) + timedelta(days=i)
            start, on = drift.exploration_burst(start, day, flagged, was, settings, on, explained)
            was = flagged
            out.append(on)
        return out

    flagged = [False, True, True, True, True, True, True, True, True, True]
    # unexplained: three days, then on while flagged, up to six days from its start
    assert run(flagged, None) == [False, True, True, True, True, True, True, False, False, False]
    # explained on its fifth day: it ends there
    assert run(flagged, 5) == [False, True, True, True, True, False, False, False, False, False]
    # a day without the flag ends it; flagged again, it is a new drop with a burst of its own
    gap = [False, True, True, True, True, False, True, True, True, True]
    assert run(gap, None) == [False, True, True, True, True, False, True, True, True, True]
    # the default (explained) keeps the fixed length
    _, on = drift.exploration_burst(date(2025, 1, 1), date(2025, 1, 5), True, True, settings, True)
    assert on is False


def test_restart_picks_spread_over_the_design_space():
    weights = pd.DataFrame(
        [
            ("acct_001", "roas", BASELINE_VALUE, BASELINE_VALUE, 1.0, 0.01, 100),
            *[(GLOBAL, "roas", "hook", v, w, 0.01, 100) for v, w in [("a", 0.5), ("b", 0.0), ("c", -0.5)]],
            *[(GLOBAL, "roas", "format", v, w, 0.01, 100) for v, w in [("x", 0.2), ("y", -0.2)]],
        ],
        columns=WEIGHT_COLUMNS,
    )
    sure = recommend.launch_picks(weights, "acct_001", 6, 1.0, np.random.default_rng(0))
    restarted = recommend.launch_picks(weights, "acct_001", 6, 1.0, np.random.default_rng(0), restart=True)
    # a sure posterior's Thompson picks are its best combinations; a restart tries every one
    assert [p["attributes"]["hook"] for p in sure[:2]] == ["a", "a"]
    assert {(p["attributes"]["hook"], p["attributes"]["format"]) for p in restarted} == {
        (h, f) for h in "abc" for f in "xy"
    }
    assert all(p["reason"].startswith(recommend.RESTART_LEAD + ": ") for p in restarted)
    assert not any("plausible winner" in p["reason"] for p in restarted)  # an even draw, not a Thompson one


@pytest.fixture(scope="module")
def dropped(tmp_path_factory):
    """A store whose last ten days' revenue halved, cycled day by day."""
    with learned_context(tmp_path_factory, "drift") as ctx:
        data, _ = small_world(days=DAYS, accounts=6, creatives=25, seed=3)
        late = pd.to_datetime(data["date"]).dt.date >= START + timedelta(days=DAYS - DROPPED)
        data.loc[late, "revenue"] = data.loc[late, "revenue"] * 0.5
        ingest_frame(data, store=ctx.store, settings=ctx.settings, today=date(2025, 1, 1))
        only = ["daily_stats", "learning_patterns", "creative_dna", "creative_recommendations"]
        steps.run_days(ctx, START, START + timedelta(days=DAYS - 1), only=only)
        yield ctx


def test_the_cycle_flags_the_drop_once_and_its_launches_explore(dropped):
    ctx = dropped
    rows = ctx.store.read_frame(t.evidence_drift.select()).sort_values("as_of").reset_index(drop=True)
    assert len(rows) == DAYS
    untested = rows[rows["level_shift"].isna()]
    assert (pd.to_datetime(untested["as_of"]).dt.date < START + timedelta(days=WINDOW)).all()
    before = rows[pd.to_datetime(rows["as_of"]).dt.date < START + timedelta(days=DAYS - DROPPED)]
    assert not before["flagged"].any() and not before["exploring"].any()
    assert rows["flagged"].iloc[-1] and rows["z"].iloc[-1] <= -4.0
    starts = rows.loc[rows["exploring"], "burst_start"].dropna().unique()
    assert len(starts) == 1  # one burst for one drop
    last = START + timedelta(days=DAYS - 1)
    exploring_days = rows.loc[rows["exploring"], "as_of"]
    assert len(exploring_days) == min(ctx.cfg.drift.burst_days, (last - pd.Timestamp(starts[0]).date()).days + 1)
    assert "a drop" in rows["summary"].iloc[-1]
    day = pd.Timestamp(exploring_days.iloc[-1]).date()
    recs = ctx.store.read_day(t.creative_recommendations, day)
    launches = recs[recs["kind"] == "launch"]
    share = ctx.cfg.drift.burst_explore_share
    per_account = launches.groupby("account_id")["pick"].apply(lambda p: (p == "explore").sum())
    assert (per_account == round(ctx.cfg.recommendations_per_account * share)).all()
    # the spend explores too: the burst's share of it is spread evenly over the live creatives,
    # where on a day before the drop only the everyday floor is
    split = recs[recs["kind"] == "spend"].groupby("account_id")["share"]
    assert (split.min() * split.size() >= share - 1e-9).all()
    calm = ctx.store.read_day(t.creative_recommendations, START + timedelta(days=DAYS - DROPPED - 1))
    calm_split = calm[calm["kind"] == "spend"].groupby("account_id")["share"]
    assert (calm_split.min() * calm_split.size() < share).all()


def test_a_drop_no_dimension_explains_keeps_its_burst_going(tmp_path_factory):
    """Revenue halves everywhere: no attribute's effect changed, so nothing is learned afresh and
    the drop stays flagged; the cycle's burst goes on past its two days, up to its limit."""
    from compound_learning.config import DriftSettings

    drift_settings = DriftSettings(burst_days=2, burst_max_days=5, relearn_after_days=1)
    with learned_context(tmp_path_factory, "drift_long", drift=drift_settings) as ctx:
        days = DAYS + 8  # the drop is flagged in its second week: room for the burst to go on
        data, _ = small_world(days=days, accounts=6, creatives=25, seed=3)
        late = pd.to_datetime(data["date"]).dt.date >= START + timedelta(days=DAYS - DROPPED)
        data.loc[late, "revenue"] = data.loc[late, "revenue"] * 0.5
        ingest_frame(data, store=ctx.store, settings=ctx.settings, today=date(2025, 1, 1))
        only = ["daily_stats", "learning_patterns", "creative_dna"]
        steps.run_days(ctx, START, START + timedelta(days=days - 1), only=only)
        rows = ctx.store.read_frame(t.evidence_drift.select()).sort_values("as_of").reset_index(drop=True)
    rows["as_of"] = pd.to_datetime(rows["as_of"]).dt.date
    start = rows.loc[rows["exploring"], "burst_start"].dropna().unique()
    assert len(start) == 1
    start = pd.Timestamp(start[0]).date()
    after = rows[rows["as_of"] >= start]
    assert after["flagged"].all() and after["relearned"].isna().all()  # flagged, unexplained
    exploring = after.loc[after["exploring"], "as_of"].tolist()
    assert len(after) > 5  # flagged beyond the limit: the limit ends it
    assert exploring == [start + timedelta(days=i) for i in range(5)]
    assert "up to 5 while the drop stays unexplained" in after["summary"].iloc[0]


def test_recommend_says_why_it_explores(dropped):
    ctx = dropped
    rec = queries.recommendations(ctx.store, "acct_001", n=4)
    assert rec["drift"]["exploring"] and rec["drift"]["z"] <= -4.0
    assert rec["explore_picks"] == 2  # the burst's share of the picks
    assert all(p["reason"].startswith("exploration after a drop") for p in rec["launch"] if p["pick"] == "explore")
    human = run_cli(ctx.settings.database_url, "recommend", "acct_001")
    assert human.returncode == 0, human.stderr
    assert "drift: ROAS of the last 14 days" in human.stdout and "launches explore the design space" in human.stdout


def _fit(effects: list[tuple[str, str, float, float]]) -> EffectFit:
    frame = pd.DataFrame(effects, columns=["dimension", "value", "log_effect", "std_error"])
    return EffectFit("roas", frame.to_dict("records"), [], [])


def test_changed_dimensions_names_the_dimension_whose_effects_moved():
    pooled = _fit(
        [("hook", "a", 0.3, 0.02), ("hook", "b", -0.3, 0.02), ("format", "x", 0.1, 0.02), ("format", "y", -0.1, 0.02)]
    )
    # since the burst: the hooks swapped, the formats hold (within their wider errors)
    recent = _fit(
        [("hook", "a", -0.3, 0.1), ("hook", "b", 0.3, 0.1), ("format", "x", 0.15, 0.1), ("format", "y", -0.15, 0.1)]
    )
    found = drift.changed_dimensions(pooled, recent, 1e-3)
    assert list(found) == ["hook"] and found["hook"]["df"] == 1 and found["hook"]["p_value"] < 1e-6
    # the same move with four times the error is not evidence of a change
    vague = _fit([(d, v, e, 0.4) for d, v, e, _ in recent.effects.itertuples(index=False)])
    assert drift.changed_dimensions(pooled, vague, 1e-3) == {}
    # a uniform shift of a dimension is no change of its effects (they are centred)
    shifted = _fit([(d, v, e + 0.5, s) for d, v, e, s in pooled.effects.itertuples(index=False)])
    assert drift.changed_dimensions(pooled, shifted, 1e-3) == {}
    # a dimension found on an earlier day is held, with today's test beside it
    held = drift.changed_dimensions(pooled, vague, 1e-3, held=["hook"])
    assert list(held) == ["hook"] and held["hook"]["p_value"] >= 1e-3
    # ROAS keeps what CTR or conversion rate found (it is made of them), not the other way round
    findings = [("ctr", "hook", "2024-02-10"), ("cvr", "hook", "2024-02-09"), ("roas", "format", "2024-02-12")]
    found_before = {m: {dim: {"found_on": day, "found_in": m}} for m, dim, day in findings}
    assert drift.held_for("roas", found_before) == {
        "hook": {"found_on": "2024-02-09", "found_in": "cvr"},
        "format": {"found_on": "2024-02-12", "found_in": "roas"},
    }
    assert drift.held_for("ctr", found_before) == {"hook": {"found_on": "2024-02-10", "found_in": "ctr"}}
    via_ctr = drift.held_for("roas", {"ctr": found_before["ctr"]})
    record = {"since": "2024-02-05", "metrics": {"ctr": found_before["ctr"], "roas": via_ctr}}
    assert drift.describe_relearned(record).startswith("hook (CTR, ROAS via CTR) learned afresh from the evidence")
    both = drift.relearned(pooled, recent, found)
    assert both.effects.set_index(["dimension", "value"])["log_effect"].to_dict() == {
        ("format", "x"): 0.1,
        ("format", "y"): -0.1,
        ("hook", "a"): -0.3,
        ("hook", "b"): 0.3,
    }


SWAP_DAY = 13  # from this day on `offer` hooks earn a quarter and `testimonial` ones four times, all at 0.35


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    """A store whose best and worst hooks (by ROAS) swap on ``SWAP_DAY`` while the level drops,
    cycled day by day: the drift test flags the drop, a burst starts, and the burst's evidence
    shows which dimension changed."""
    with learned_context(tmp_path_factory, "swap") as ctx:
        data, _ = small_world(days=DAYS, accounts=6, creatives=25, seed=3)
        late = pd.to_datetime(data["date"]).dt.date >= START + timedelta(days=SWAP_DAY)
        factor = np.where(data["hook_type"] == "offer", 0.25, np.where(data["hook_type"] == "testimonial", 4.0, 1.0))
        data.loc[late, "revenue"] = data.loc[late, "revenue"] * 0.35 * factor[late.to_numpy()]
        ingest_frame(data, store=ctx.store, settings=ctx.settings, today=date(2025, 1, 1))
        only = ["daily_stats", "learning_patterns", "creative_dna"]
        steps.run_days(ctx, START, START + timedelta(days=DAYS - 1), only=only)
        steps.run_day(ctx, START + timedelta(days=DAYS - 1), only=["creative_recommendations"])
        yield ctx


def test_after_a_burst_the_changed_dimension_is_learned_from_the_new_evidence_alone(swapped):
    ctx = swapped
    last = START + timedelta(days=DAYS - 1)
    rows = ctx.store.read_frame(t.evidence_drift.select()).sort_values("as_of").reset_index(drop=True)
    start = pd.Timestamp(rows["burst_start"].dropna().iloc[0]).date()
    assert start >= START + timedelta(days=SWAP_DAY)
    fresh = rows[rows["relearned"].notna()]
    assert len(fresh) and pd.Timestamp(fresh["as_of"].iloc[0]).date() >= start + timedelta(
        days=ctx.cfg.drift.relearn_after_days
    )
    record = json.loads(rows["relearned"].iloc[-1])
    assert record["since"] == (start + timedelta(days=1)).isoformat()  # the burst's first day counts as old
    # revenue changed, clicks and conversions did not: ROAS's hooks, and nothing else
    assert list(record["metrics"]) == ["roas"] and list(record["metrics"]["roas"]) == ["hook_type"]
    assert "hook_type (ROAS) learned afresh from the evidence since" in rows["summary"].iloc[-1]
    weights = ctx.store.read_day(t.creative_dna, last)
    glob = weights[(weights["account_id"] == GLOBAL) & (weights["metric"] == "roas")].set_index(["dimension", "value"])
    # the new winner leads and the old one trails, as in the evidence since the burst
    assert glob.loc[("hook_type", "testimonial"), "weight"] > glob.loc[("hook_type", "question"), "weight"]
    assert glob.loc[("hook_type", "offer"), "weight"] < glob.loc[("hook_type", "story"), "weight"]
    patterns = ctx.store.read_day(t.learning_patterns, last)
    hooks = patterns[(patterns["metric"] == "roas") & (patterns["pattern_type"] == "hook_type")]
    # the relearned rows count the creatives since the burst; the accounts fall back to them
    assert set(hooks["account_id"]) == {GLOBAL}
    seen_since = ctx.store.read_range(t.creative_daily_stats, start + timedelta(days=1), last, day_column="date")[
        "creative_id"
    ].nunique()
    assert sum(json.loads(s)["creatives"] for s in hooks["support"]) == seen_since
    others = patterns[(patterns["metric"] == "roas") & (patterns["pattern_type"] == "template")]
    assert others["account_id"].nunique() > 1  # unchanged dimensions keep their accounts' own estimates
    rec = queries.recommendations(ctx.store, "acct_001", n=3)
    assert list(rec["drift"]["relearned"]["metrics"]["roas"]) == ["hook_type"]
    human = run_cli(ctx.settings.database_url, "recommend", "acct_001")
    assert human.returncode == 0, human.stderr
    assert "hook_type (ROAS) learned afresh from the evidence since" in human.stdout
    before = ctx.store.read_day(t.learning_patterns, start - timedelta(days=1))
    assert (
        before[(before["metric"] == "roas") & (before["pattern_type"] == "hook_type")]["account_id"] != GLOBAL
    ).any()


def test_the_relearned_effects_are_the_fit_of_the_evidence_since_the_burst(swapped):
    """The hooks' ROAS patterns on the last day are the fit of the evidence since the burst alone
    (the day's cells less the snapshot before the burst, carried to the day), and the pooled fit
    of the same cells, which still holds the weeks before the change, rates the old winner higher."""
    ctx = swapped
    last = START + timedelta(days=DAYS - 1)
    rows = ctx.store.read_frame(t.evidence_drift.select()).sort_values("as_of")
    start = pd.Timestamp(rows["burst_start"].dropna().iloc[0]).date()
    cells = ctx.store.read_snapshot(last)
    older = ctx.store.read_snapshot(start)
    older[stats.METRICS] = older[stats.METRICS].astype(float) * steps.evidence_weight(ctx, start, last)
    since = drift.evidence_since(cells, older)
    after = ctx.store.read_range(t.creative_daily_stats, start + timedelta(days=1), last, day_column="date")
    assert since["spend"].sum() == pytest.approx(after["spend"].sum(), rel=1e-9)
    wide, dims = stats.expand_attributes(since)
    recent = fit_global(CodedCells(wide, dims), ctx.cfg.patterns, ["roas"])["roas"].effects
    wide, dims = stats.expand_attributes(cells)
    pooled = fit_global(CodedCells(wide, dims), ctx.cfg.patterns, ["roas"])["roas"].effects
    patterns = ctx.store.read_day(t.learning_patterns, last)
    hooks = patterns[(patterns["metric"] == "roas") & (patterns["pattern_type"] == "hook_type")]
    stored = {json.loads(a)["hook_type"]: e for a, e in zip(hooks["attributes"], hooks["log_effect"], strict=True)}
    fresh = recent[recent["dimension"] == "hook_type"].set_index("value")["log_effect"]
    assert stored == pytest.approx(fresh.to_dict(), abs=1e-9)
    old = pooled[pooled["dimension"] == "hook_type"].set_index("value")["log_effect"]
    assert old["offer"] > fresh["offer"] + 0.3 and old["testimonial"] < fresh["testimonial"] - 0.3


def test_a_dimension_found_changed_stays_learned_afresh_until_the_next_burst(swapped):
    """Once the test has found a dimension changed since a burst, later days keep learning it
    from the new evidence alone even where their own test no longer finds it (it loses power as
    the learner stops launching the old winner), instead of switching the old evidence back in."""
    ctx = swapped
    last = START + timedelta(days=DAYS - 1)

    def record(day: date) -> dict | None:
        row = ctx.store.read_day(t.evidence_drift, day)
        return json.loads(row["relearned"].iloc[0]) if isinstance(row["relearned"].iloc[0], str) else None

    rows = ctx.store.read_frame(t.evidence_drift.select()).sort_values("as_of")
    first = pd.Timestamp(rows.loc[rows["relearned"].notna(), "as_of"].iloc[0]).date()
    assert first < last
    found = record(first)["metrics"]["roas"]["hook_type"]
    assert found["found_on"] == first.isoformat() and found["found_in"] == "roas"
    assert found["p_value"] < ctx.cfg.drift.relearn_p_value
    # a test so strict that it finds nothing on its own ...
    strict = replace(ctx, cfg=replace(ctx.cfg, drift=replace(ctx.cfg.drift, relearn_p_value=1e-300)))
    try:
        steps.run_day(strict, first, only=["learning_patterns"])
        assert record(first) is None
        steps.run_day(ctx, first, only=["learning_patterns"])  # the day as it was
        # ... still learns the hooks afresh on a later day, because an earlier day found them
        steps.run_day(strict, last, only=["learning_patterns"])
        held = record(last)["metrics"]
        assert list(held) == ["roas"] and list(held["roas"]) == ["hook_type"]
        assert held["roas"]["hook_type"]["found_on"] == first.isoformat()
        patterns = ctx.store.read_day(t.learning_patterns, last)
        hooks = patterns[(patterns["metric"] == "roas") & (patterns["pattern_type"] == "hook_type")]
        assert set(hooks["account_id"]) == {GLOBAL}
    finally:
        steps.run_day(ctx, last, only=["learning_patterns"])
