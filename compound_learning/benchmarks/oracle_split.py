"""What the closed-loop oracle's gain is made of: the best combinations, knowing each creative's
realized quality, and knowing each account's own deviations.

The closed-loop ``oracle`` launches each account's best combination and spends every day on the
creative whose true ROAS is highest today, its quality draw included (sd 0.25 of log CTR and
0.2 of log conversion rate per creative in the default world). No policy knows a creative's draw
before spending on it. Oracles that know the world's parameters but not the draws show how much
of the gain the draws are, and the deviations, on the same worlds and seeds (no learner runs here;
its figures are the closed-loop benchmark's):

- ``oracle_parameters``: the oracle's combinations; spends on the creative with the best expected
  ROAS from the parameters (its attributes, the account's deviations, its fatigue);
- ``oracle_launch_even``: the oracle's combinations, spend split evenly;
- ``oracle_parameters_split``: the oracle's combinations, and the project's own spend split
  (``core.recommend.spend_split``, as the learner calls it) given the true parameters as its
  DNA (every weight exact, sd 0) and the true fatigue: it learns the draws from each creative's
  clicks and conversions as the learner does. Against it, the learner's share is what its
  learning of the parameters takes of what knowing them would give, with the same split;
- ``oracle_common_split``: the same, knowing only the effects common to all accounts (not each
  account's deviations), like the benchmark's ``oracle_common`` but without the draws.

``--independent`` plays the random arm, the oracles and the two split oracles in the worlds of
``benchmarks.independent_world`` (its truth as a DNA: ``IndependentTruthDNA``).

    python -m compound_learning.benchmarks.oracle_split --seeds 10 [--independent]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from compound_learning import steps
from compound_learning.benchmarks.closed_loop import ARMS, _live_frame, _OwnData, _roas, windows
from compound_learning.benchmarks.independent_world import DIMENSIONS, IndependentWorld
from compound_learning.config import CycleSettings
from compound_learning.core import recommend
from compound_learning.core.closed_loop import (
    FATIGUE_PER_100K,
    CommonOraclePolicy,
    Creative,
    LoopConfig,
    OraclePolicy,
    RandomPolicy,
    World,
    run_arm,
)


class EvenOraclePolicy(OraclePolicy):
    """The oracle's combinations, spend split evenly."""

    name = "oracle_launch_even"

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        return np.full(len(creatives), 1.0 / len(creatives))


class ParametersOraclePolicy(OraclePolicy):
    """The oracle's combinations, spend on the best creative by the parameters alone."""

    name = "oracle_parameters"

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        values = [
            self.world.expected_log_roas(account, c.attributes, day) - FATIGUE_PER_100K * c.impressions / 1e5
            for c in creatives
        ]
        out = np.zeros(len(creatives))
        out[int(np.argmax(values))] = 1.0
        return out


class TruthDNA(recommend.DNA):
    """The world's true parameters as a creative DNA: each account's posterior is exact (sd 0):
    its baselines, main effects with its own deviations, and the interactions."""

    EXACT = 10**6  # the "creatives" behind an exact weight

    def __init__(self, world: World, accounts_differ: bool = True):
        super().__init__(pd.DataFrame())
        self.world, self.accounts_differ = world, accounts_differ

    def _build(self, account_id: str, metric: str) -> recommend.MetricPosterior:
        w, dims = self.world, self.world.cfg.dimensions
        metrics = ["ctr"] if metric == "ctr" else ["ctr", "cvr"]
        base = w.log_ctr[account_id]
        if metric != "ctr":  # log ROAS = log CTR + log CVR + log(AOV x 1000 / CPM)
            base += w.log_cvr[account_id] + np.log(w.aov[account_id] * 1000.0 / w.cpm[account_id])
        tables = {"ctr": w.ctr_eff, "cvr": w.cvr_eff}

        def weight(d: str, v: str) -> recommend.Weight:
            effects = (w._effect(tables[m], m, account_id, d, v, 0, self.accounts_differ) for m in metrics)
            return sum(effects), 0.0, self.EXACT

        weights = {d: {v: weight(d, v) for v in values} for d, values in dims.items()}
        pairs: dict = {}
        for m in metrics:
            for (da, db), mat in w.inter[m].items():
                self._add_pair(pairs, da, db, dims, mat)
        return recommend.MetricPosterior(metric, float(base), 0.0, weights, dict(sorted(pairs.items())))

    @classmethod
    def _add_pair(cls, pairs: dict, da: str, db: str, dims: dict[str, list[str]], mat: np.ndarray) -> None:
        """Add a synergy matrix over the values of ``da`` x ``db`` to the pair weights, keyed as
        ``MetricPosterior.pairs`` wants them (dimensions sorted, values in that order)."""
        key, flip = ((da, db), False) if da <= db else ((db, da), True)
        table = pairs.setdefault(key, {})
        for i, va in enumerate(dims[da]):
            for j, vb in enumerate(dims[db]):
                values = (vb, va) if flip else (va, vb)
                table[values] = (table.get(values, (0.0, 0.0, 0))[0] + float(mat[i, j]), 0.0, cls.EXACT)


class IndependentTruthDNA(TruthDNA):
    """The independent world's parameters as a creative DNA (``benchmarks.independent_world``):
    log ROAS = log 1000 - cpm + log CTR + cvr + aov, each part additive in the values and the two
    synergies. Its CTR is logistic: log CTR is taken as the logit less the account's constant
    log(1 + e^logit) at its base, which leaves out the curvature (up to 0.06 of log ROAS between
    combinations, sd 0.008). The split oracles launch only their true best combination, so from
    day 15 on (a creative lives 14 days) their live creatives share one combination and the
    approximation does not enter the split."""

    def _build(self, account_id: str, metric: str) -> recommend.MetricPosterior:
        w, a = self.world, self.world.accounts.index(account_id)
        signs = {"ctr": 1.0} if metric == "ctr" else {"ctr": 1.0, "cvr": 1.0, "aov": 1.0, "cpm": -1.0}
        base = float(-np.logaddexp(0.0, -w.base["ctr"][a]))  # log CTR of the base
        if metric != "ctr":
            base += np.log(1000.0) + sum(sign * w.base[part][a] for part, sign in signs.items() if part != "ctr")

        def weight(d: str, i: int) -> recommend.Weight:
            mean = sum(
                sign * (w.effects[part, d][i] + (w.deviation[part, d][a, i] if self.accounts_differ else 0.0))
                for part, sign in signs.items()
            )
            return float(mean), 0.0, self.EXACT

        weights = {d: {v: weight(d, i) for i, v in enumerate(values)} for d, values in DIMENSIONS.items()}
        pairs: dict = {}
        for (part, da, db), mat in w.interactions.items():
            if part in signs:
                self._add_pair(pairs, da, db, DIMENSIONS, mat)
        return recommend.MetricPosterior(metric, base, 0.0, weights, dict(sorted(pairs.items())))


class ParametersSplitOraclePolicy(_OwnData, OraclePolicy):
    """The oracle's combinations; the project's spend split on the true parameters and fatigue."""

    name = "oracle_parameters_split"

    accounts_differ = True

    def __init__(self, world: World | IndependentWorld, rng: np.random.Generator):
        super().__init__(world, rng)
        independent = isinstance(world, IndependentWorld)
        self.dna = (IndependentTruthDNA if independent else TruthDNA)(world, self.accounts_differ)
        # the independent world's creatives tire with age, which the split cannot take: there it
        # uses the slope its own data show per impression, as the learner does
        self.true_fatigue = None if independent else -FATIGUE_PER_100K
        self.floor = steps.spend_floor_share(CycleSettings(), burst=False)  # the learner's everyday floor

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        live = _live_frame(creatives, self.totals)
        fatigue = self.fatigue if self.true_fatigue is None else self.true_fatigue
        return recommend.spend_split(live, self.dna, account, self.rng, fatigue, self.floor)["share"].to_numpy()


class CommonSplitOraclePolicy(ParametersSplitOraclePolicy):
    """The common effects' best combinations; the spend split on the common effects."""

    name = "oracle_common_split"
    accounts_differ = False

    def launch(self, account: str, n: int, day: int) -> list[dict[str, str]]:
        return [self.world.best_attributes(account, day, accounts_differ=False)] * n


POLICIES = {
    "random": RandomPolicy,
    "oracle": OraclePolicy,
    "oracle_common": CommonOraclePolicy,
    "oracle_parameters": ParametersOraclePolicy,
    "oracle_launch_even": EvenOraclePolicy,
    "oracle_parameters_split": ParametersSplitOraclePolicy,
    "oracle_common_split": CommonSplitOraclePolicy,
}


# the policies that need nothing of a world but what the benchmark's oracles need
INDEPENDENT_POLICIES = ("random", "oracle", "oracle_common", "oracle_parameters_split", "oracle_common_split")


def run(seeds: int = 10, days: int = 90, independent: bool = False) -> list[dict]:
    """Each window's mean ROAS of every policy over ``seeds`` default worlds (``independent``:
    of ``benchmarks.independent_world``), and the share of the oracle's gain over random that
    each other oracle takes."""
    policies = {n: p for n, p in POLICIES.items() if not independent or n in INDEPENDENT_POLICIES}
    roas: dict[str, list[list[float]]] = {name: [] for name in policies}
    spans = windows(days, "default", LoopConfig().change_day)
    for seed in range(seeds):
        cfg = LoopConfig(days=days, seed=seed)
        world = IndependentWorld(cfg) if independent else World(cfg)
        for name, policy in policies.items():
            # the benchmark's random arm and oracle draw from these streams; the new ones from the oracle's
            rng = np.random.default_rng([seed, 10 + ARMS.index(name if name in ARMS else "oracle")])
            rows = run_arm(world, policy(world, rng))
            roas[name].append([_roas(rows, first, last, cfg.start) for _, first, last in spans])
    out = []
    for i, (label, _, _) in enumerate(spans):
        mean = {name: float(np.mean([r[i] for r in roas[name]])) for name in policies}
        gain = mean["oracle"] - mean["random"]
        out.append(
            {
                "window": label,
                **{name: round(value, 2) for name, value in mean.items()},
                **{
                    f"{name} of the oracle's gain": round((mean[name] - mean["random"]) / gain, 3)
                    for name in policies
                    if name.startswith("oracle_")
                },
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--independent", action="store_true", help="in benchmarks.independent_world's worlds")
    args = parser.parse_args()
    for row in run(args.seeds, args.days, args.independent):
        print(row)


if __name__ == "__main__":
    main()
