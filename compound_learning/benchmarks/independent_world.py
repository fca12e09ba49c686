"""A closed-loop world written apart from the project's simulator, to check the learner on a
truth it was not tuned on:

    compound-learning benchmark closed-loop --world-from compound_learning/benchmarks/independent_world.py:make_world

It shares nothing with ``core.simulate`` (whose effects the default world and ``evaluate`` use)
and differs from it on purpose, where a learner tuned on one world could fail on another:

- other dimensions: six, of 2 to 6 values (2,160 combinations), and sparse effects: each value
  of a dimension carries an effect with probability one half, drawn from a Laplace law (heavy
  tails: a few large effects, many near zero);
- attributes act on all four parts of ROAS, not only on click-through and conversion: the price
  of a thousand impressions (``placement``, ``persona``) and the order value (``offer``,
  ``persona``), with trade-offs: a placement that is clicked more costs more, an offer that
  converts more sells smaller baskets. Only ROAS, which the learner ranks by, sees the net;
- click-through is logistic, not log-linear; revenue per conversion is Gamma distributed;
- fatigue grows with a creative's age in days, not with its impressions;
- creative quality beyond the attributes has t(4) tails (rare outliers);
- accounts differ in budget (log-normal), in base rates and, as in the default world, each has
  its own deviation of every effect (``account_deviation_sd``);
- interactions: one persona x palette pair clicks far better and one far worse, one persona x
  offer pair converts better;
- ``change``: from ``change_day`` on, the best and the worst ``cta`` (by their net effect on
  ROAS) swap every effect they have; ``null``: no attribute moves anything.

The factory takes the benchmark's ``LoopConfig`` and honours its seed, accounts, budget,
effect scale (0.5 is this module's scale), account spread and world. Pure: numpy only.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import numpy as np

from compound_learning.core.closed_loop import Creative, LoopConfig

DIMENSIONS = {
    "format": ["image", "video", "carousel"],
    "cta": ["shop_now", "learn_more", "sign_up", "get_offer", "none"],
    "palette": ["warm", "cool", "mono", "vivid"],
    "persona": ["student", "parent", "professional", "retiree", "gamer", "traveler"],
    "placement": ["feed", "stories"],
    "offer": ["none", "percent_off", "bundle"],
}
PARTS = ("ctr", "cvr", "aov", "cpm")  # ROAS = 1000 / cpm x ctr x cvr x aov
ACTS_ON = {
    "ctr": ("format", "cta", "palette", "persona", "placement"),
    "cvr": ("cta", "persona", "offer"),
    "aov": ("offer", "persona"),
    "cpm": ("placement", "persona"),
}
LAPLACE_SCALE = {"ctr": 0.15, "cvr": 0.12, "aov": 0.08, "cpm": 0.1}  # at effect scale 0.5
AGE_FATIGUE = 0.03  # logit CTR lost per day of a creative's age
CHANGED = "cta"


def make_world(cfg: LoopConfig) -> IndependentWorld:
    """The factory ``--world-from`` calls."""
    return IndependentWorld(cfg)


class IndependentWorld:
    """One seed's truth and the accounts' budgets (``core.closed_loop.ClosedLoopWorld``)."""

    def __init__(self, cfg: LoopConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 101])
        k = 0.0 if cfg.world == "null" else cfg.effect_scale / 0.5
        self.dims = list(DIMENSIONS)
        self.effects: dict[tuple[str, str], np.ndarray] = {}
        for part in PARTS:
            for d in self.dims:
                n = len(DIMENSIONS[d])
                if d not in ACTS_ON[part]:
                    self.effects[part, d] = np.zeros(n)
                    continue
                active = rng.random(n) < 0.5
                active[rng.integers(n)] = True
                self.effects[part, d] = k * active * rng.laplace(0.0, LAPLACE_SCALE[part], n)
        # the trade-offs: a placement clicked more costs more, an offer that converts more sells less
        self.effects["cpm", "placement"] += 0.7 * self.effects["ctr", "placement"]
        self.effects["aov", "offer"] += -0.6 * self.effects["cvr", "offer"]
        self.interactions = {  # (part, dim a, dim b) -> matrix over their values
            ("ctr", "persona", "palette"): np.zeros((6, 4)),
            ("cvr", "persona", "offer"): np.zeros((6, 3)),
        }
        good, bad = rng.choice(24, 2, replace=False)
        self.interactions["ctr", "persona", "palette"].flat[good] = 0.25 * k
        self.interactions["ctr", "persona", "palette"].flat[bad] = -0.25 * k
        self.interactions["cvr", "persona", "offer"].flat[rng.integers(18)] = 0.2 * k

        self.accounts = [f"acct_{i + 1:03d}" for i in range(cfg.accounts)]
        n = cfg.accounts
        self.base = {
            "ctr": rng.normal(np.log(0.012 / 0.988), 0.3, n),  # logit
            "cvr": rng.normal(np.log(0.04), 0.3, n),
            "aov": rng.normal(np.log(70.0), 0.3, n),
            "cpm": rng.normal(np.log(9.0), 0.25, n),
        }
        self.budget = cfg.daily_budget * np.exp(rng.normal(0.0, 0.4, n))
        sd = 0.0 if cfg.world == "null" else cfg.account_deviation_sd
        self.deviation = {
            (part, d): rng.normal(0.0, sd, (n, len(DIMENSIONS[d]))) * (d in ACTS_ON[part])
            for part in PARTS
            for d in self.dims
        }
        self.combos = np.array(list(itertools.product(*(range(len(v)) for v in DIMENSIONS.values()))))
        self.initial = {a: [self.random_attributes(rng) for _ in range(cfg.live_creatives)] for a in self.accounts}
        self._best: dict[tuple, dict[str, str]] = {}

    # -- the truth --------------------------------------------------------------------------
    def _value_index(self, d: str, day: int) -> np.ndarray:
        """Where each value of ``d`` finds its effects on ``day`` (the change world swaps two)."""
        index = np.arange(len(DIMENSIONS[d]))
        if self.cfg.world == "change" and d == CHANGED and day >= self.cfg.change_day:
            net = sum(self.effects[p, d] * (-1.0 if p == "cpm" else 1.0) for p in PARTS)
            lo, hi = int(np.argmin(net)), int(np.argmax(net))
            index[lo], index[hi] = hi, lo
        return index

    def _parts(self, account: str, codes: np.ndarray, day: int, accounts_differ: bool = True) -> dict:
        """Each part's linear predictor (logit for ctr, log for the rest) for rows of value codes."""
        a = self.accounts.index(account)
        out = {}
        for part in PARTS:
            eta = np.full(len(codes), self.base[part][a])
            for j, d in enumerate(self.dims):
                at = self._value_index(d, day)[codes[:, j]]
                eta += self.effects[part, d][at]
                if accounts_differ:
                    eta += self.deviation[part, d][a, at]
            for (p, da, db), mat in self.interactions.items():
                if p == part:
                    eta += mat[codes[:, self.dims.index(da)], codes[:, self.dims.index(db)]]
            out[part] = eta
        return out

    @staticmethod
    def _log_roas(parts: dict, extra_logit_ctr=0.0, extra_log_cvr=0.0) -> np.ndarray:
        log_ctr = -np.logaddexp(0.0, -(parts["ctr"] + extra_logit_ctr))
        return np.log(1000.0) - parts["cpm"] + log_ctr + parts["cvr"] + extra_log_cvr + parts["aov"]

    def _codes(self, attributes: dict[str, str]) -> np.ndarray:
        return np.array([[DIMENSIONS[d].index(attributes[d]) for d in self.dims]])

    def best_attributes(self, account: str, day: int, accounts_differ: bool = True) -> dict[str, str]:
        regime = self.cfg.world == "change" and day >= self.cfg.change_day
        key = (account, regime, accounts_differ)
        if key not in self._best:
            scores = self._log_roas(self._parts(account, self.combos, day, accounts_differ))
            best = self.combos[int(np.argmax(scores))]
            self._best[key] = {d: DIMENSIONS[d][i] for d, i in zip(self.dims, best, strict=True)}
        return dict(self._best[key])

    def _today(self, account: str, creative: Creative, day: int) -> tuple[dict, float, float]:
        parts = self._parts(account, self._codes(creative.attributes), day)
        weekend = (self.cfg.start + timedelta(days=day)).weekday() >= 5
        logit_ctr = creative.quality_ctr - AGE_FATIGUE * max(day - creative.launched, 0)
        log_cvr = creative.quality_cvr + (0.1 if weekend else 0.0)
        return parts, logit_ctr, log_cvr

    def current_log_roas(self, account: str, creative: Creative, day: int) -> float:
        parts, logit_ctr, log_cvr = self._today(account, creative, day)
        return float(self._log_roas(parts, logit_ctr, log_cvr)[0])

    # -- creatives and delivery ----------------------------------------------------------------
    def random_attributes(self, rng: np.random.Generator) -> dict[str, str]:
        return {d: str(rng.choice(v)) for d, v in DIMENSIONS.items()}

    def new_creative(self, account: str, slot: int, attributes: dict[str, str], day: int) -> Creative:
        rng = np.random.default_rng([self.cfg.seed, 102, self.accounts.index(account), slot])
        q_ctr, q_cvr = rng.standard_t(4, 2) * (0.2, 0.15)
        return Creative(f"{account}_c{slot:04d}", dict(attributes), day, float(q_ctr), float(q_cvr))

    def deliver(
        self, account: str, creatives: list[Creative], shares: np.ndarray, day: int, rng: np.random.Generator
    ) -> list[dict]:
        shares = np.asarray(shares, float)
        shares = shares / shares.sum() if shares.sum() > 0 else np.full(len(creatives), 1.0 / len(creatives))
        budget = self.budget[self.accounts.index(account)]
        rows = []
        for c, share in zip(creatives, shares, strict=True):
            parts, logit_ctr, log_cvr = self._today(account, c, day)
            spend = round(float(budget * share), 2)
            impressions = int(rng.poisson(spend / np.exp(parts["cpm"][0]) * 1000.0)) if spend > 0 else 0
            ctr = 1.0 / (1.0 + np.exp(-(parts["ctr"][0] + logit_ctr)))
            clicks = int(rng.binomial(impressions, ctr))
            conversions = int(rng.binomial(clicks, min(float(np.exp(parts["cvr"][0] + log_cvr)), 0.9)))
            aov = float(np.exp(parts["aov"][0]))
            revenue = float(rng.gamma(2.0 * conversions, aov / 2.0)) if conversions else 0.0
            c.impressions += impressions
            rows.append(
                {
                    "date": (self.cfg.start + timedelta(days=day)).isoformat(),
                    "account_id": account,
                    "creative_id": c.creative_id,
                    "impressions": impressions,
                    "clicks": clicks,
                    "conversions": conversions,
                    "spend": spend,
                    "revenue": round(revenue, 2),
                    **c.attributes,
                }
            )
        return rows
