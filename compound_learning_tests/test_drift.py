"""The drift test (``core.drift``): the recent evidence's level against the older evidence's, and
the exploration burst that answers a drop, in the learning step and the recommendations."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from compound_learning import queries, steps
from compound_learning.config import GLOBAL, DriftSettings
from compound_learning.core import drift, recommend, stats
from compound_learning.core.dna import BASELINE_VALUE, WEIGHT_COLUMNS
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


def test_recommend_says_why_it_explores(dropped):
    ctx = dropped
    rec = queries.recommendations(ctx.store, "acct_001", n=4)
    assert rec["drift"]["exploring"] and rec["drift"]["z"] <= -4.0
    assert rec["explore_picks"] == 2  # the burst's share of the picks
    assert all(p["reason"].startswith("exploration after a drop") for p in rec["launch"] if p["pick"] == "explore")
    human = run_cli(ctx.settings.database_url, "recommend", "acct_001")
    assert human.returncode == 0, human.stderr
    assert "drift: ROAS of the last 14 days" in human.stdout and "launches explore the design space" in human.stdout
