"""Worlds of the user's in the closed-loop benchmark (``--world-from``): the protocol every arm
relies on, the world written apart from the simulator, and the clear refusals of a world that
cannot be used."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest

from compound_learning.benchmarks import closed_loop
from compound_learning.benchmarks.independent_world import CHANGED, DIMENSIONS, make_world
from compound_learning.core.closed_loop import (
    WORLD_MEMBERS,
    ClosedLoopWorld,
    LoopConfig,
    OraclePolicy,
    RandomPolicy,
    run_arm,
)

INDEPENDENT = "compound_learning.benchmarks.independent_world:make_world"


def _fresh_score(world, account: str, attributes: dict[str, str], day: int) -> float:
    """The true log ROAS of a fresh, average-quality creative launched today."""
    creative = world.new_creative(account, 0, attributes, day)
    creative.quality_ctr = creative.quality_cvr = 0.0
    return world.current_log_roas(account, creative, day)


def test_the_independent_world_keeps_the_protocol():
    cfg = LoopConfig(days=10, accounts=3, seed=4)
    world = make_world(cfg)
    assert isinstance(world, ClosedLoopWorld) and world.cfg is cfg
    # the names a world is checked for are the protocol's
    declared = set(ClosedLoopWorld.__annotations__) | {
        n for n, v in vars(ClosedLoopWorld).items() if callable(v) and not n.startswith("_")
    }
    assert set(WORLD_MEMBERS) == declared
    assert all(len(world.initial[a]) == cfg.live_creatives for a in world.accounts)
    # common random numbers: the slot, not the attributes or the day, sets a creative's quality
    a = world.new_creative("acct_002", 5, world.initial["acct_002"][0], 0)
    b = world.new_creative("acct_002", 5, world.initial["acct_002"][1], 3)
    assert (a.quality_ctr, a.quality_cvr) == (b.quality_ctr, b.quality_cvr)
    # the oracle's best combination is the best of every combination, by the truth it spends on
    rng = np.random.default_rng(0)
    best = world.best_attributes("acct_001", 2)
    top = _fresh_score(world, "acct_001", best, 2)
    assert all(top >= _fresh_score(world, "acct_001", world.random_attributes(rng), 2) for _ in range(300))
    # delivery: the contract's rows, dated from cfg.start, spend by the shares, impressions counted
    creatives = [world.new_creative("acct_001", k, world.initial["acct_001"][k], 0) for k in range(8)]
    rows = world.deliver("acct_001", creatives, np.r_[np.ones(7), 0.0], 1, np.random.default_rng(1))
    assert {r["date"] for r in rows} == {date(2024, 1, 2).isoformat()}
    assert set(rows[0]) >= {"account_id", "creative_id", "impressions", "clicks", "conversions", "spend", "revenue"}
    assert set(rows[0]) >= set(DIMENSIONS)
    assert rows[-1]["spend"] == 0 and rows[-1]["impressions"] == 0
    assert sum(r["spend"] for r in rows) == pytest.approx(world.budget[0], abs=0.05)
    assert [c.impressions for c in creatives] == [r["impressions"] for r in rows]
    assert all((r["revenue"] > 0) == (r["conversions"] > 0) for r in rows)


def test_the_independent_worlds_null_and_change():
    null = make_world(LoopConfig(world="null", accounts=2, seed=1))
    rng = np.random.default_rng(2)
    scores = {round(_fresh_score(null, "acct_001", null.random_attributes(rng), 0), 9) for _ in range(50)}
    assert len(scores) == 1  # no attribute moves anything

    change = make_world(LoopConfig(world="change", accounts=2, seed=1, account_deviation_sd=0.0))
    before = change.best_attributes("acct_001", change.cfg.change_day - 1)
    after = change.best_attributes("acct_001", change.cfg.change_day)
    assert before[CHANGED] != after[CHANGED]
    assert {k: v for k, v in before.items() if k != CHANGED} == {k: v for k, v in after.items() if k != CHANGED}

    default = make_world(LoopConfig(seed=1))
    gains = []
    for policy in (RandomPolicy, OraclePolicy):
        world = make_world(LoopConfig(days=10, accounts=4, seed=1))
        rows = run_arm(world, policy(world, np.random.default_rng(3)))
        gains.append(rows["revenue"].sum() / rows["spend"].sum())
    assert gains[1] > 1.5 * gains[0]  # knowing this world's truth is worth something
    assert default.best_attributes("acct_001", 0) == default.best_attributes("acct_001", 50)  # no change


def test_the_benchmark_runs_in_a_world_of_the_users(tmp_path, capsys):
    argv = ["--days", "12", "--seeds", "2", "--accounts", "3", "--out", str(tmp_path), "--world-from", INDEPENDENT]
    code = closed_loop.main(argv)
    assert code in (0, 1)  # a tiny run may miss the target; it must not fail
    out = capsys.readouterr().out
    assert "| days 1-12 |" in out and ("[ok]" in out or "[MISSED]" in out)
    saved = json.loads((tmp_path / "closed_loop_default_independent_world_make_world.json").read_text())
    assert saved["config"]["world_from"] == INDEPENDENT
    assert (tmp_path / "closed_loop_default_independent_world_make_world.png").stat().st_size > 10_000
    window = saved["windows"][0]
    assert window["oracle"]["mean"] > window["random"]["mean"]
    # the project's own simulator gives other figures for the same seeds: the world was used
    own = closed_loop.run(days=12, seeds=2, accounts=3, out_dir=tmp_path / "own")
    assert own["windows"][0]["seeds"]["random"] != window["seeds"]["random"]
    # the same world, run twice, pairs with itself
    again = closed_loop.run(days=12, seeds=2, accounts=3, out_dir=tmp_path / "again", world_from=INDEPENDENT)
    assert closed_loop.compare(saved, again)[0]["difference"]["mean"] == 0.0
    # the same world from another checkout's file is the same world (named by module and factory)
    moved = {**again, "config": {**again["config"], "world_from": "/elsewhere/independent_world.py:make_world"}}
    assert closed_loop.compare(saved, moved)[0]["difference"]["mean"] == 0.0
    with pytest.raises(ValueError, match="world_from"):
        closed_loop.compare(own, again)


WORLDS = """
from compound_learning.benchmarks.independent_world import make_world
from compound_learning.core.closed_loop import LoopConfig
from dataclasses import replace

def no_deliver(cfg):
    class Half:
        def __init__(self):
            self.cfg, self.accounts, self.initial = cfg, ["a"], {"a": [{}] * cfg.live_creatives}
        def random_attributes(self, rng): return {}
    return Half()

def another_cfg(cfg):
    return make_world(replace(cfg, seed=cfg.seed + 1))

def short(cfg):
    world = make_world(cfg)
    world.initial[world.accounts[1]] = world.initial[world.accounts[1]][:2]
    return world

NOT_CALLABLE = 3
"""


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("make_world", "expected FILE.py:FACTORY or package.module:FACTORY"),
        ("{dir}/missing.py:make", "there is no file"),
        ("no_such_package.worlds:make", "cannot import no_such_package.worlds"),
        ("{dir}/worlds.py:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
        ("{dir}/worlds.py:no_deliver", "the world lacks new_creative, deliver, best_attributes, current_log_roas"),
        ("{dir}/worlds.py:another_cfg", "must keep the LoopConfig it was made from"),
        ("{dir}/worlds.py:short", "initial must hold 8 attribute sets for every account (not for acct_002)"),
    ],
)
def test_a_world_that_cannot_be_used_is_refused_before_any_seed_runs(tmp_path, capsys, spec, message):
    (tmp_path / "worlds.py").write_text(WORLDS)
    code = closed_loop.main(
        ["--days", "5", "--seeds", "1", "--out", str(tmp_path), "--world-from", spec.format(dir=tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "seed 1/1 done" not in err
    assert not list(tmp_path.glob("closed_loop_*"))


def test_the_oracle_split_runs_the_benchmarks_random_arm_and_oracle_and_parameter_oracles_fall_between():
    """``benchmarks.oracle_split`` plays the closed-loop benchmark's random arm and oracle on the
    same world and streams (the same ROAS to the bit), and an oracle that knows every parameter
    but not the creatives' quality draws lands between the two."""
    from compound_learning.benchmarks import oracle_split

    (row,) = oracle_split.run(seeds=1, days=30)
    arms = closed_loop.run_seed(LoopConfig(days=30, seed=0), 0.0, 1, arms=("random", "oracle"))
    start = LoopConfig().start
    assert row["random"] == round(closed_loop._roas(arms["random"], 0, 29, start), 2)
    assert row["oracle"] == round(closed_loop._roas(arms["oracle"], 0, 29, start), 2)
    assert row["random"] < row["oracle_launch_even"] < row["oracle"]
    assert row["random"] < row["oracle_parameters"] < row["oracle_parameters_split"] < row["oracle"]
    assert 0 < row["oracle_parameters of the oracle's gain"] < 1


def test_the_truth_as_a_dna_predicts_the_worlds_log_rates_exactly():
    """``oracle_split.TruthDNA``: every account's CTR and ROAS posterior predicts the world's true
    log rates of any combination, with sd 0; without the accounts' deviations, the common ones."""
    from compound_learning.benchmarks.oracle_split import TruthDNA
    from compound_learning.core import recommend
    from compound_learning.core.closed_loop import World

    world, rng = World(LoopConfig(seed=3)), np.random.default_rng(0)
    for differ in (True, False):
        dna = TruthDNA(world, accounts_differ=differ)
        for account in world.accounts[:4]:
            for _ in range(25):
                attributes = world.random_attributes(rng)
                roas, roas_sd = recommend.predict_log_rate(dna.posterior(account, "roas"), attributes)
                ctr, ctr_sd = recommend.predict_log_rate(dna.posterior(account, "ctr"), attributes)
                assert roas == pytest.approx(world.expected_log_roas(account, attributes, 0, differ), abs=1e-12)
                assert ctr == pytest.approx(world.log_rates(account, attributes, 0, differ)[0], abs=1e-12)
                assert roas_sd == ctr_sd == 0.0


def test_the_independent_worlds_truth_as_a_dna_is_its_log_roas_up_to_the_logistic_curvature():
    """``oracle_split.IndependentTruthDNA`` predicts the independent world's log ROAS of any
    combination to within its logistic CTR's curvature (small at a CTR of about 1%), with sd 0."""
    from compound_learning.benchmarks.oracle_split import IndependentTruthDNA
    from compound_learning.core import recommend

    world, rng = make_world(LoopConfig(seed=3)), np.random.default_rng(0)
    for differ in (True, False):
        dna, errors = IndependentTruthDNA(world, accounts_differ=differ), []
        for account in world.accounts[:4]:
            for _ in range(25):
                attributes = world.random_attributes(rng)
                predicted, sd = recommend.predict_log_rate(dna.posterior(account, "roas"), attributes)
                truth = world._log_roas(world._parts(account, world._codes(attributes), 0, differ))[0]
                errors.append(predicted - truth)
                assert sd == 0.0
        assert np.max(np.abs(errors)) < 0.1 and np.std(errors) < 0.02, errors
