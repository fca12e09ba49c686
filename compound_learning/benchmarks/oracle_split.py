"""What the closed-loop oracle's gain is made of: the best combinations, and knowing each
creative's realized quality.

The closed-loop ``oracle`` launches each account's best combination and spends every day on the
creative whose true ROAS is highest today, its quality draw included (sd 0.25 of log CTR and
0.2 of log conversion rate per creative in the default world). No policy knows a creative's draw
before spending on it. Two oracles that know every parameter of the world but not the draws show
how much of the gain the draws are, on the same worlds and seeds (no learner runs here):

- ``oracle_parameters``: the oracle's combinations; spends on the creative with the best expected
  ROAS from the parameters (its attributes, the account's deviations, its fatigue);
- ``oracle_launch_even``: the oracle's combinations, spend split evenly.

    python -m compound_learning.benchmarks.oracle_split --seeds 10
"""

from __future__ import annotations

import argparse

import numpy as np

from compound_learning.benchmarks.closed_loop import ARMS, _roas, windows
from compound_learning.core.closed_loop import (
    FATIGUE_PER_100K,
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


POLICIES = {
    "random": RandomPolicy,
    "oracle": OraclePolicy,
    "oracle_parameters": ParametersOraclePolicy,
    "oracle_launch_even": EvenOraclePolicy,
}


def run(seeds: int = 10, days: int = 90) -> list[dict]:
    """Each window's mean ROAS of every policy over ``seeds`` default worlds, and the share of the
    oracle's gain over random that each of the two parameter oracles takes."""
    roas: dict[str, list[list[float]]] = {name: [] for name in POLICIES}
    spans = windows(days, "default", LoopConfig().change_day)
    for seed in range(seeds):
        cfg = LoopConfig(days=days, seed=seed)
        world = World(cfg)
        for name, policy in POLICIES.items():
            # the benchmark's random arm and oracle draw from these streams; the new ones from the oracle's
            rng = np.random.default_rng([seed, 10 + ARMS.index(name if name in ARMS else "oracle")])
            rows = run_arm(world, policy(world, rng))
            roas[name].append([_roas(rows, first, last, cfg.start) for _, first, last in spans])
    out = []
    for i, (label, _, _) in enumerate(spans):
        mean = {name: float(np.mean([r[i] for r in roas[name]])) for name in POLICIES}
        gain = mean["oracle"] - mean["random"]
        out.append(
            {
                "window": label,
                **{name: round(value, 2) for name, value in mean.items()},
                **{
                    f"{name} of the oracle's gain": round((mean[name] - mean["random"]) / gain, 3)
                    for name in ("oracle_parameters", "oracle_launch_even")
                },
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    for row in run(args.seeds, args.days):
        print(row)


if __name__ == "__main__":
    main()
