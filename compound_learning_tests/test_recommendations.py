"""Closing the loop: the recommendation step on a tiny world, the spend split and fatigue in
isolation, the CLI, and the closed-loop benchmark end to end on a tiny configuration."""

from __future__ import annotations

import copy
import itertools
import json
import re
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from compound_learning import queries, steps
from compound_learning.benchmarks import closed_loop
from compound_learning.core import recommend
from compound_learning.core.closed_loop import LoopConfig, World
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import START, learned_context, make_context, run_cli, small_world

DAYS = 14


@pytest.fixture(scope="module")
def recommended(tmp_path_factory):
    with learned_context(tmp_path_factory, "rec") as ctx:
        data, truth = small_world(days=DAYS, accounts=6, creatives=30, seed=8, effect_scale=1.5)
        ingest_frame(data, store=ctx.store, settings=ctx.settings, today=date(2025, 1, 1))
        end = START + timedelta(days=DAYS - 1)
        only = ["daily_stats", "learning_patterns", "creative_dna", "creative_recommendations"]
        steps.run_days(ctx, START, end, only=only)
        yield ctx, end, truth, ctx.settings.database_url


def _true_log_roas(truth: dict, combo: dict[str, str]) -> float:
    """A combination's structural log ROAS in a simulated world: its values' CTR and CVR
    effects and the synergies of its pairs (what the world draws from, not a fit of it)."""
    main = sum(
        e["structural_log_effect"]
        for e in truth["effects"]
        if e["metric"] == "roas" and combo.get(e["dimension"]) == e["value"]
    )
    return main + sum(
        i["log_effect"] for i in truth["interactions"] if all(combo.get(d) == v for d, v in i["attributes"].items())
    )


def test_exploit_picks_favour_the_largest_true_effects(recommended):
    """Each account's first pick is, by the world's truth, about as good as the best combination
    (this world has two best: question with video, offer with retargeting, the same sum) and
    far better than a combination drawn at random."""
    ctx, end, truth, _ = recommended
    space: dict[str, list[str]] = {}
    for e in truth["effects"]:
        space.setdefault(e["dimension"], [])
        if e["value"] not in space[e["dimension"]]:
            space[e["dimension"]].append(e["value"])
    every = [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
    scores = np.array([_true_log_roas(truth, c) for c in every])
    recs = ctx.store.read_day(t.creative_recommendations, end)
    firsts = recs[(recs["kind"] == "launch") & (recs["rank"] == 1)]
    assert len(firsts) == 6
    picked = np.array([_true_log_roas(truth, json.loads(a)) for a in firsts["attributes"]])
    assert (picked >= scores.max() - 0.15).all(), (scores.max(), picked, list(firsts["attributes"]))
    assert picked.mean() - scores.mean() > 0.85 * (scores.max() - scores.mean())
    assert set(firsts["pick"]) == {"exploit"}


def test_explore_share_is_honoured_and_the_step_is_deterministic(recommended):
    ctx, end, _, _ = recommended
    recs = ctx.store.read_day(t.creative_recommendations, end)
    launches = recs[recs["kind"] == "launch"]
    per_account = launches.groupby("account_id")["pick"].value_counts().unstack(fill_value=0)
    n = ctx.cfg.recommendations_per_account
    assert (per_account["explore"] == round(n * ctx.cfg.explore_share)).all()
    assert (per_account.sum(axis=1) == n).all()
    again = steps.run_step(ctx, "creative_recommendations", end)
    assert again["launch_picks"] == len(launches)
    pd.testing.assert_frame_equal(
        recs.sort_values(["account_id", "kind", "rank"]).reset_index(drop=True),
        ctx.store.read_day(t.creative_recommendations, end)
        .sort_values(["account_id", "kind", "rank"])
        .reset_index(drop=True),
    )
    spend = recs[recs["kind"] == "spend"]
    assert np.allclose(spend.groupby("account_id")["share"].sum(), 1.0)


def test_spend_rows_state_each_creatives_expected_ctr_from_its_clicks(recommended):
    ctx, end, _, _ = recommended
    recs = ctx.store.read_day(t.creative_recommendations, end)
    spend = recs[recs["kind"] == "spend"].merge(
        ctx.store.creative_totals(end)[["account_id", "creative_id", "impressions", "clicks"]],
        on=["account_id", "creative_id"],
    )
    assert len(spend) and spend["expected_ctr"].notna().all()
    observed = spend["clicks"] / spend["impressions"]
    sure = spend["clicks"] >= 300  # the creative's own clicks outweigh its prediction
    assert sure.sum() >= 10
    ratio = spend.loc[sure, "expected_ctr"] / observed[sure]
    assert ratio.between(0.8, 1.25).all(), ratio.describe()
    for r in spend.itertuples():
        assert f"expected CTR {r.expected_ctr:.2%}" in r.reason and f"{int(r.clicks):,} clicks so far" in r.reason


def test_explore_share_is_configurable(recommended):
    ctx, end, _, url = recommended
    none = steps.build_recommendations(make_context(url, explore_share=0.0), end)
    assert none["explore_picks"] == 0 and none["launch_picks"] > 0
    half = steps.build_recommendations(make_context(url, explore_share=0.5), end)
    assert half["explore_picks"] == half["launch_picks"] // 2
    steps.build_recommendations(ctx, end)  # leave the module's table as the default wrote it


def _baseline_dna(account: str, ctr: float, roas: float) -> pd.DataFrame:
    """A DNA that knows only the account's baselines (no attribute weights)."""
    from compound_learning.core.dna import BASELINE_VALUE, WEIGHT_COLUMNS

    rows = [(account, m, BASELINE_VALUE, BASELINE_VALUE, np.log(v), 0.05, 0) for m, v in (("ctr", ctr), ("roas", roas))]
    return pd.DataFrame(rows, columns=WEIGHT_COLUMNS)


def test_clicks_tell_creatives_apart_long_before_their_conversions():
    """Two creatives with the same spend, revenue and (few) conversions; one has twice the
    other's CTR over thousands of clicks. Revenue alone cannot tell them apart; the clicks can,
    since a creative's value per click strays less than its CTR is known to differ."""
    live = pd.DataFrame(
        {
            "creative_id": ["a", "b"],
            "attributes": [{}, {}],
            "impressions": [200_000.0, 200_000.0],
            "clicks": [4_000.0, 2_000.0],
            "spend": [1_000.0, 1_000.0],
            "revenue": [2_000.0, 2_000.0],
            "conversions": [8.0, 8.0],
        }
    )
    dna = _baseline_dna("x", ctr=0.015, roas=2.0)
    split = recommend.spend_split(live, dna, "x", np.random.default_rng(0), floor_share=0.0)
    assert split.loc[0, "p_best"] > 0.75, split
    assert split.loc[0, "expected_roas"] > 2.0 > split.loc[1, "expected_roas"]
    without_clicks = recommend.spend_split(
        live.drop(columns="clicks"), dna, "x", np.random.default_rng(0), floor_share=0.0
    )
    assert without_clicks.loc[0, "p_best"] == pytest.approx(0.5, abs=0.05)


def test_click_bait_learned_from_the_account_tempers_a_new_creatives_high_ctr():
    """In an account whose creatives that draw more clicks draw worse ones (CTR and the value of
    a click stray in opposite directions), a new creative's high CTR promises less ROAS than in
    an account where the two are unrelated; its conversions are too few yet to say."""
    rng = np.random.default_rng(5)
    n = 60
    quality = rng.normal(0, 0.3, n)

    def account(value_quality: np.ndarray) -> pd.DataFrame:
        impressions = np.full(n, 400_000.0)
        clicks = np.round(impressions * 0.015 * np.exp(quality))
        conversions = np.round(clicks * 0.05 * np.exp(value_quality))
        revenue = conversions * 60.0
        frame = pd.DataFrame(
            {
                "creative_id": [f"c{i}" for i in range(n)],
                "attributes": [{}] * n,
                "impressions": impressions,
                "clicks": clicks,
                "spend": impressions * 8.0 / 1000.0,
                "revenue": revenue,
                "conversions": conversions,
            }
        )
        new = {"creative_id": "new", "attributes": {}, "impressions": 20_000.0, "clicks": 600.0}
        new |= {"spend": 160.0, "revenue": 60.0, "conversions": 1.0}  # CTR 3%: twice the account's
        return pd.concat([frame, pd.DataFrame([new])], ignore_index=True)

    roas = 0.015 * 0.05 * 60.0 / 8.0 * 1000.0
    dna = _baseline_dna("x", ctr=0.015, roas=roas)
    bait = recommend.spend_split(account(-quality), dna, "x", np.random.default_rng(0))
    unrelated = recommend.spend_split(account(rng.normal(0, 0.3, n)), dna, "x", np.random.default_rng(0))
    new_bait, new_unrelated = (f.set_index("creative_id").loc["new", "expected_roas"] for f in (bait, unrelated))
    assert new_unrelated > 1.3 * roas  # its clicks lift it
    assert new_bait < new_unrelated * 0.8  # the account's own creatives say clicks like these are worth less


def test_the_spend_split_draws_what_the_evidence_still_to_come_can_resolve():
    """The split draws each creative's log ROAS from the spread its posterior mean will move by
    once the evidence still to come is in (the preposterior), not from its whole uncertainty.
    Checked by simulation: truths from the prior, today's evidence and the evidence still to
    come drawn from them, today's and the later posterior means computed as the split computes
    them; the later mean moves from today's by the variance the split draws with."""
    rng = np.random.default_rng(11)
    k = 40_000  # simulated creatives, all with the same evidence (so the same variances)
    a, d, b = 0.05, 0.04, -0.015  # the parts' prior variances (spreads included) and covariance
    clicks, conversions = 300.0, 4.0  # today's precision of each part's evidence
    truth = rng.multivariate_normal([-4.0, 1.0], [[a, b], [b, d]], size=k)

    def parts(w_u: float, w_v: float, seen: list[np.ndarray]) -> list[recommend._Part]:
        obs = [t + rng.normal(0.0, 1.0 / np.sqrt(w), k) for t, w in zip(truth.T, (w_u, w_v), strict=True)]
        if seen:  # evidence already seen, combined with what arrives now (precision-weighted)
            obs = [(o0 * w0 + o * w) / (w0 + w) for o0, w0, o, w in zip(*seen, obs, (w_u, w_v), strict=True)]
        return obs

    today = parts(clicks, conversions, [])
    now = [
        recommend._Part(np.full(k, m), np.zeros(k), o, np.full(k, 1.0 / w))
        for m, o, w in zip((-4.0, 1.0), today, (clicks, conversions), strict=True)
    ]
    _, mean_now, var_now, var_later = recommend._joint_posterior(*now, a, d, b)
    to_come = [part.to_come()[0] for part in now]  # as much again as the live creatives have
    assert to_come == pytest.approx([clicks, conversions])
    later_obs = parts(*to_come, [today, (clicks, conversions)])
    later = [
        recommend._Part(np.full(k, m), np.zeros(k), o, np.full(k, 1.0 / (w + f)))
        for m, o, w, f in zip((-4.0, 1.0), later_obs, (clicks, conversions), to_come, strict=True)
    ]
    _, mean_later, var_after, _ = recommend._joint_posterior(*later, a, d, b)
    assert var_after == pytest.approx(var_later)  # the variance it will have is the one foretold
    moved = np.var(mean_later - mean_now)
    assert moved == pytest.approx(var_now[0] - var_later[0], rel=0.03)
    # the conversions' part, which the days ahead resolve least, is most of what is not drawn
    assert var_now[0] - var_later[0] < 0.5 * var_now[0]


def test_the_creatives_spread_is_learned_from_the_account_and_kept_near_the_prior_when_few():
    rng = np.random.default_rng(4)

    def part(n: int, true_sd: float) -> recommend._Part:
        prior = rng.normal(-4.0, 0.3, n)
        obs_var = np.full(n, 1e-3)
        return recommend._Part(prior, np.full(n, 1e-3), prior + rng.normal(0, true_sd, n), obs_var)

    prior_var = 0.045
    many = part(400, 0.25).spread(prior_var)
    assert 0.055 < many < 0.07  # 0.0625 true, shrunk a little towards 0.045
    assert part(400, 0.05).spread(prior_var) < 0.01
    few = part(3, 0.6).spread(prior_var)  # three creatives far apart move the spread, not all the way
    assert prior_var < few < 0.15
    assert part(1, 0.6).spread(prior_var) == prior_var


def _posterior(rng: np.random.Generator, space: dict[str, list[str]], ties: bool) -> recommend.MetricPosterior:
    """A posterior over ``space`` with random weights (rounded to make ties) and synergies on
    some pairs of values."""

    def weight() -> tuple[float, float, int]:
        mean = rng.normal(0, 0.3)
        return (round(mean, 1) if ties else mean, float(rng.uniform(0.05, 0.3)), int(rng.integers(1, 40)))

    mains = {d: {v: weight() for v in vals if rng.random() < 0.8} for d, vals in space.items()}
    pairs = {
        (da, db): {(va, vb): weight() for va in space[da] for vb in space[db] if rng.random() < 0.4}
        for da in sorted(space)
        for db in sorted(space)
        if da < db and rng.random() < 0.7
    }
    return recommend.MetricPosterior("roas", 0.1, 0.05, mains, pairs)


@pytest.mark.parametrize("ties", [False, True])
def test_the_combinatorial_search_is_exact(ties):
    """The array search (beam over dimensions, synergies re-ranked) returns the best
    combinations, best first, as scoring every combination of the design space does, and the
    batch prediction gives each combination's own prediction, to the bit."""
    import itertools

    rng = np.random.default_rng(3)
    space = {"cta": ["a", "b", "c"], "format": ["f1", "f2"], "hook": ["h1", "h2", "h3", "h4"], "tone": ["x", "y"]}
    for _ in range(5):
        post = _posterior(rng, space, ties)
        combos = [
            dict(zip(sorted(space), values, strict=True))
            for values in itertools.product(*map(space.get, sorted(space)))
        ]
        means, sds = recommend.predict_log_rates(post, combos)
        # each combination's named terms (the reasons' own path), summed in the same order
        terms = [[w for _d, _v, w, _pair in recommend._terms(post, c)] for c in combos]
        assert means.tolist() == [sum((w[0] for w in ws), post.base) for ws in terms]
        assert sds.tolist() == [np.sqrt(sum((w[1] ** 2 for w in ws), post.base_sd**2)) for ws in terms]
        # every combination scored (main effects + synergies), best first, ties in enumeration order
        order = sorted(range(len(combos)), key=lambda i: -means[i])
        arrays = recommend._Space.of(post, space)
        synergy = [mean for _a, _b, mean, _sd, _present in arrays.pairs]
        found = recommend._ranked(arrays, arrays.means, synergy, 7)
        # the best scores, best first (with ties the order among equal scores may differ)
        assert np.allclose(recommend.predict_log_rates(post, found)[0], means[order[:7]], rtol=0, atol=1e-12)
        if not ties:
            assert [recommend._key(c) for c in found] == [recommend._key(combos[i]) for i in order[:7]]
    # the beam alone, on a space of more combinations than it keeps: the exact k best sums
    wide = {f"d{j}": [f"v{i}" for i in range(n)] for j, n in enumerate([4, 6, 3, 5, 4])}  # 1,440
    scores = [np.round(rng.normal(0, 1, len(v)), 1 if ties else 12) for v in wide.values()]
    sums = np.array([sum(p) for p in itertools.product(*scores)])
    total, index = recommend._k_best(scores, 50)
    assert np.allclose(total, np.sort(sums)[::-1][:50], rtol=0, atol=1e-9)
    assert np.allclose(total, [sum(s[i] for s, i in zip(scores, row, strict=True)) for row in index], atol=1e-9)


def test_every_accounts_split_from_the_cycles_batch_is_its_own_split_to_the_bit():
    """The cycle reads every account's live creatives into one set of arrays
    (``LiveFigures.by_account``) and predicts from attribute codes read once per distinct set;
    each account's split from its part of the batch is the split ``spend_split`` gives on that
    account's own frame, to the bit, and each prediction is the combination's own, whichever
    other accounts' creatives share the batch, whatever dimensions a creative lacks, and for
    values the DNA has never seen."""
    from compound_learning.config import GLOBAL
    from compound_learning.core.dna import BASELINE_VALUE, WEIGHT_COLUMNS, pair_dimension

    rng = np.random.default_rng(21)
    space = {"cta": ["a", "b", "c"], "hook": ["h1", "h2", "h3"], "tone": ["x", "y"]}
    rows = []
    for account in [GLOBAL, "acc-1", "acc-2", "acc-3"]:
        for metric in ("ctr", "roas"):
            rows.append((account, metric, BASELINE_VALUE, BASELINE_VALUE, rng.normal(-1, 0.3), 0.05, 0))
            for dim, values in space.items():
                for value in values[: 2 if account != GLOBAL else 3]:  # accounts override some values
                    rows.append((account, metric, dim, value, rng.normal(0, 0.2), rng.uniform(0.02, 0.2), 9))
            for va, vb in [("a", "h1"), ("b", "h3")]:
                pair = (pair_dimension("cta", "hook"), json.dumps([va, vb]))
                rows.append((account, metric, *pair, rng.normal(0, 0.1), 0.05, 4))
    dna = recommend.DNA(pd.DataFrame(rows, columns=WEIGHT_COLUMNS))
    sets = [{"cta": "a", "hook": "h1", "tone": "x"}, {"cta": "b", "hook": "h3"}, {"cta": "c", "tone": "new"}, {}]
    n = 60
    frame = pd.DataFrame(
        {
            "account_id": rng.choice(["acc-3", "acc-1", "acc-2"], n),
            "creative_id": [f"c{i}" for i in range(n)],
            # creatives of one set share one dict (as the cycle reads them), and some an equal copy
            "attributes": [sets[k] if i % 3 else dict(sets[k]) for i, k in enumerate(rng.integers(0, len(sets), n))],
            "impressions": rng.uniform(1e3, 1e5, n).round(),
            "spend": rng.uniform(10, 500, n),
        }
    )
    frame["clicks"] = (frame["impressions"] * rng.uniform(0.005, 0.03, n)).round()
    frame["conversions"] = (frame["clicks"] * rng.uniform(0.0, 0.1, n)).round()
    frame["revenue"] = frame["conversions"] * rng.uniform(20, 80, n)
    ordered, parts = recommend.LiveFigures.by_account(frame)
    assert sorted(parts) == ["acc-1", "acc-2", "acc-3"]
    for account, (start, figures) in parts.items():
        own = frame[frame["account_id"] == account].reset_index(drop=True)
        assert list(ordered["creative_id"][start : start + len(figures)]) == list(own["creative_id"])
        batch = recommend.split_spend(figures, dna, account, np.random.default_rng(5), -0.1, floor_share=0.05)
        alone = recommend.spend_split(own, dna, account, np.random.default_rng(5), -0.1, floor_share=0.05)
        assert list(batch["creative_id"]) == list(alone["creative_id"])
        for column in recommend.SPLIT_COLUMNS[1:]:
            assert np.array_equal(batch[column], alone[column].to_numpy(float), equal_nan=True), (account, column)
        for metric in ("ctr", "roas"):
            post = dna.posterior(account, metric)
            means, sds = recommend.predict_log_rates(post, figures.attributes)
            each = [recommend.predict_log_rate(post, a) for a in own["attributes"]]
            assert means.tolist() == [m for m, _ in each] and sds.tolist() == [s for _, s in each]


def test_spend_split_follows_evidence_floor_and_fatigue():
    rng = np.random.default_rng(0)
    live = pd.DataFrame(
        {
            "creative_id": ["a", "b", "c"],
            "attributes": [{}, {}, {}],
            "impressions": [50_000.0, 50_000.0, 50_000.0],
            "spend": [400.0, 400.0, 400.0],
            "revenue": [4000.0, 2000.0, 2000.0],
            "conversions": [60.0, 30.0, 30.0],
        }
    )
    split = recommend.spend_split(live, None, "x", rng, floor_share=0.3)
    assert split["share"].sum() == pytest.approx(1.0)
    assert split["share"].min() >= 0.3 / 3 - 1e-12
    assert split.loc[0, "share"] > split.loc[1, "share"] and split.loc[0, "p_best"] > 0.9
    # the same evidence, but the better creative has had far more impressions: fatigue moves spend
    tired = live.assign(impressions=[900_000.0, 50_000.0, 50_000.0])
    moved = recommend.spend_split(tired, None, "x", np.random.default_rng(0), fatigue_per_100k=-0.15, floor_share=0.3)
    assert moved.loc[0, "share"] < split.loc[0, "share"]
    even = recommend.spend_split(live.assign(impressions=0.0), None, "x", np.random.default_rng(0), use_evidence=False)
    assert np.allclose(even["p_best"], 1 / 3, atol=0.05)


def test_fatigue_slope_recovers_a_known_decline():
    rng = np.random.default_rng(1)
    rows = []
    for c in range(30):
        quality = rng.normal(0, 0.3)
        cum = 0
        for d in range(20):
            impressions = 5000
            ctr = 0.02 * np.exp(quality - 0.2 * cum / 1e5)
            rows.append(
                {
                    "creative_id": f"c{c}",
                    "date": d,
                    "impressions": impressions,
                    "clicks": rng.binomial(impressions, ctr),
                }
            )
            cum += impressions
    slope = recommend.fatigue_slope(pd.DataFrame(rows))
    assert -0.3 < slope < -0.1


def test_cli_recommend(recommended):
    _, _, _, url = recommended
    out = run_cli(url, "recommend", "acct_001", "--n", "3", "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert len(rec["launch"]) == 3 and rec["launch"][0]["pick"] == "exploit"
    human = run_cli(url, "recommend", "acct_001")
    assert "expected ROAS" in human.stdout and "why:" in human.stdout
    missing = run_cli(url, "recommend", "nobody")
    assert missing.returncode == 2 and "no recommendations for account 'nobody'" in missing.stderr


def test_queries_validate_n(recommended):
    ctx, *_ = recommended
    with pytest.raises(queries.QueryError, match="n must be at least 1"):
        queries.recommendations(ctx.store, "acct_001", n=0)


def test_closed_loop_world_is_shared_by_arms():
    world = World(LoopConfig(days=5, accounts=2, seed=3))
    a = world.new_creative("acct_001", 7, {"hook_type": "story"}, 0)
    b = world.new_creative("acct_001", 7, {"hook_type": "offer"}, 2)
    assert (a.quality_ctr, a.quality_cvr) == (b.quality_ctr, b.quality_cvr)  # common random numbers
    best = world.best_attributes("acct_001", 0)
    assert all(
        world.expected_log_roas("acct_001", best, 0) >= world.expected_log_roas("acct_001", c, 0) for c in world.combos
    )


def test_closed_loop_benchmark_end_to_end(tmp_path):
    result = closed_loop.run(days=20, seeds=2, accounts=4, out_dir=tmp_path)
    assert (tmp_path / "closed_loop_default.png").stat().st_size > 10_000
    window = result["windows"][0]
    for arm in closed_loop.ARMS:
        assert window[arm]["mean"] > 0
    assert window["oracle"]["mean"] > window["random"]["mean"]  # the oracle's knowledge is worth something
    # each seed's figures are kept (for paired comparisons between runs) and agree with the means
    for arm in closed_loop.ARMS:
        assert len(window["seeds"][arm]) == 2
        assert np.mean(window["seeds"][arm]) == pytest.approx(window[arm]["mean"], rel=1e-5)
    assert len(window["seeds"]["captured_share"]) == 2
    assert len(result["targets"]) == 1 and isinstance(next(iter(result["targets"].values())), bool)
    table = closed_loop.format_table(result)
    assert "learner / random" in table and "oracle_common" in table and ("[ok]" in table or "[MISSED]" in table)
    assert result["trajectory"]["accounts"] == 8


def test_closed_loop_seeds_in_parallel_and_a_world_of_shared_effects(tmp_path):
    """Seeds run in two processes give the figures of one at a time; with no account
    deviations, knowing the common effects is knowing everything."""
    kw = {"days": 12, "seeds": 2, "accounts": 3, "account_sd": 0.0}
    apart = closed_loop.run(**kw, jobs=2, out_dir=tmp_path / "apart")
    serial = closed_loop.run(**kw, out_dir=tmp_path / "serial")
    assert apart["windows"] == serial["windows"]
    assert (tmp_path / "apart" / "closed_loop_default_account_sd_0.png").exists()
    window = apart["windows"][0]
    assert window["oracle_common"] == window["oracle"]
    assert apart["config"]["account_deviation_sd"] == 0.0


def test_two_closed_loop_runs_compared_seed_by_seed(tmp_path, capsys):
    """``--compare``: the paired difference of the learner's captured share between two runs of
    the same worlds, and a clear refusal where the runs cannot be paired."""
    before = closed_loop.run(days=12, seeds=2, accounts=3, out_dir=tmp_path)
    after = copy.deepcopy(before)
    shares = after["windows"][0]["seeds"]["captured_share"]
    shares[0] += 0.1  # the learner of seed 0 did better by 10 points, seed 1 the same
    row = closed_loop.compare(before, after)[0]
    assert row["difference"]["mean"] == pytest.approx(0.05)
    assert row["seeds_gaining"] == 1 and row["seeds"] == 2
    assert row["after"] - row["before"] == pytest.approx(0.05)
    assert closed_loop.compare(before, before)[0]["difference"]["mean"] == 0.0

    files = [tmp_path / "before.json", tmp_path / "after.json"]
    for path, run in zip(files, (before, after), strict=True):
        path.write_text(json.dumps(run))
    assert closed_loop.main(["--compare", *map(str, files)]) == 0
    assert "| days 1-12 |" in capsys.readouterr().out

    other = copy.deepcopy(before)
    other["config"]["effect_scale"] = 1.0
    with pytest.raises(ValueError, match=re.escape("not the same worlds: effect_scale 0.5 vs 1.0")):
        closed_loop.compare(before, other)
    other = copy.deepcopy(before)
    other["windows"][0]["seeds"]["random"][1] *= 1.01
    with pytest.raises(ValueError, match="the random arm differs"):
        closed_loop.compare(before, other)
    old = copy.deepcopy(before)
    del old["windows"][0]["seeds"]
    files[0].write_text(json.dumps(old))
    assert closed_loop.main(["--compare", *map(str, files)]) == 2
    assert "the before run has no per-seed figures" in capsys.readouterr().err


def test_cli_score_explains_its_numbers(recommended):
    _, _, _, url = recommended
    creative = '{"hook_type": "question", "audience": "retargeting"}'
    out = run_cli(url, "score", "--account", "acct_001", "--creative", creative, "--json")
    assert out.returncode == 0, out.stderr
    score = json.loads(out.stdout)
    human = run_cli(url, "score", "--account", "acct_001", "--creative", creative)
    assert human.returncode == 0, human.stderr
    assert f"DNA score {score['dna_score']:.0f}: its expected ROAS as a percentage" in human.stdout
    assert "not the account's first or current ROAS" in human.stdout
    assert f"{score['predictions']['roas']['predicted']:.2f}" in human.stdout


def test_the_spend_split_check_scores_every_account_day_against_the_truth(capsys):
    from compound_learning.benchmarks import spend_split_check

    scores = spend_split_check.check_seed(LoopConfig(days=6, accounts=3, seed=1))
    assert len(scores) == 6 * 3
    assert (scores["best"] >= scores["even"]).all()
    for variant in spend_split_check.VARIANTS:  # a spend-weighted truth lies between the worst and the best
        assert (scores[variant] <= scores["best"] + 1e-9).all()
    table = spend_split_check.summarize(scores, 6)
    expected = float((scores["shipped"] - scores["even"]).sum() / (scores["best"] - scores["even"]).sum())
    assert table.loc[0, "shipped"] == pytest.approx(expected)
    assert 0.0 <= table.loc[0, "coverage_95"] <= 1.0
    assert spend_split_check.main(["--seeds", "1", "--days", "4"]) == 0
    assert "mean over seeds" in capsys.readouterr().out
