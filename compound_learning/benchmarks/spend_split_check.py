"""The spend split judged on the very states it acts in: how much of the gain within reach it
takes, day by day, beside variants computed on the same evidence.

The closed-loop benchmark judges the whole learner, and one different decision early on sends
two runs of the same seed apart (a seed's captured share moves by 10–20 points with small
changes). This check removes that noise for the spend split alone: the learner arm runs as in
the benchmark, and on every account-day the split it acts on and its variants are computed from
the same DNA and the same totals. Each is scored against the truth of that day (the live
creatives' true expected ROAS, fatigue included):

    efficiency = (sum of share x true ROAS - mean true ROAS) / (best true ROAS - mean true ROAS)

the share of the gain of spending everything on the truly best live creative over spending
evenly. Variants: ``shipped`` (``core.recommend.spend_split``), ``without_clicks`` (the same
split on revenue and conversions alone), ``whole_posterior`` (draws from each creative's whole
posterior instead of the part the evidence still to come can resolve: the split before
2026-12-07), ``greedy`` (everything on the shipped posterior's best:
no exploration, which scores best today and learns least, so it is a bound, not a candidate).
Also the calibration of the shipped posterior: the share of creatives whose true log ROAS lies
in its 95% interval.

    python -m compound_learning.benchmarks.spend_split_check --seeds 3 [--world default]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from compound_learning import steps
from compound_learning.benchmarks.closed_loop import LearnerPolicy, _live_frame
from compound_learning.core import recommend
from compound_learning.core.closed_loop import Creative, LoopConfig, World, run_arm

VARIANTS = ("shipped", "without_clicks", "whole_posterior", "greedy")


class _CheckedLearner(LearnerPolicy):
    """The benchmark's learner, acting on the shipped split, scoring every variant as it goes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scores: list[dict] = []

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        live = _live_frame(creatives, self.totals)
        floor = steps.spend_floor_share(self.ctx.cfg, self.burst)
        shipped = recommend.spend_split(live, self.weights, account, self.rng, self.fatigue, floor_share=floor)
        quiet = np.random.default_rng([day, 7])  # the variants' draws leave the learner's stream alone
        without = recommend.spend_split(
            live.drop(columns="clicks"), self.weights, account, quiet, self.fatigue, floor_share=floor
        )
        whole = recommend.spend_split(
            live, self.weights, account, np.random.default_rng([day, 8]), self.fatigue, floor, preposterior=False
        )
        greedy = np.zeros(len(live))
        greedy[int(np.argmax(shipped["expected_roas"].to_numpy()))] = 1.0
        log_truth = np.array([self.world.current_log_roas(account, c, day) for c in creatives])
        truth = np.exp(log_truth)
        low, high = np.log(shipped["roas_ci_low"].to_numpy()), np.log(shipped["roas_ci_high"].to_numpy())
        covered = np.mean((low <= log_truth) & (log_truth <= high))
        row = {"day": day, "best": truth.max(), "even": truth.mean(), "covered": covered}
        shares = (shipped["share"].to_numpy(), without["share"].to_numpy(), whole["share"].to_numpy(), greedy)
        for name, share in zip(VARIANTS, shares, strict=True):
            row[name] = float((share / share.sum() * truth).sum())
        self.scores.append(row)
        return shipped["share"].to_numpy()


def check_seed(cfg: LoopConfig, half_life_days: float = 0.0) -> pd.DataFrame:
    """Every account-day's scores of one seed's learner arm."""
    world = World(cfg)
    with tempfile.TemporaryDirectory(prefix="cl_split_") as tmp:
        policy = _CheckedLearner(world, np.random.default_rng([cfg.seed, 12]), Path(tmp), half_life_days, 1)
        run_arm(world, policy)
        policy.close()
    return pd.DataFrame(policy.scores).assign(seed=cfg.seed)


def summarize(scores: pd.DataFrame, days: int) -> pd.DataFrame:
    """Per 30-day window and seed: each variant's efficiency and the interval's coverage."""
    rows = []
    for first in range(0, days, 30):
        window = scores[(scores["day"] >= first) & (scores["day"] < first + 30)]
        for seed, sub in window.groupby("seed"):
            attainable = (sub["best"] - sub["even"]).sum()
            row = {"window": f"days {first + 1}-{min(first + 30, days)}", "seed": seed}
            row |= {v: float((sub[v] - sub["even"]).sum() / attainable) for v in VARIANTS}
            row["coverage_95"] = float(sub["covered"].mean())
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--world", choices=["default", "null", "change"], default="default")
    args = p.parse_args(argv)
    started = time.perf_counter()
    frames = [
        check_seed(LoopConfig(days=args.days, seed=s, world=args.world), 21.0 if args.world == "change" else 0.0)
        for s in range(args.first_seed, args.first_seed + args.seeds)
    ]
    table = summarize(pd.concat(frames, ignore_index=True), args.days)
    differences = ["shipped - without_clicks", "shipped - whole_posterior"]
    for name in differences:
        table[name] = table["shipped"] - table[name.split(" - ")[1]]
    print(table.to_markdown(index=False, floatfmt=".3f"))
    means = table.groupby("window", sort=False)[[*VARIANTS, *differences, "coverage_95"]].mean()
    print("\nmean over seeds\n" + means.to_markdown(floatfmt=".3f"))
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
