"""A closed-loop advertising world: every day each account replaces the creatives that reached
the end of their life with new ones chosen by a policy, and splits a fixed budget over its live
creatives as the policy says; clicks, conversions and revenue follow from the true rates.

The truth uses the simulator's attribute effects (``core.simulate``: main effects on CTR and
conversion rate, interactions, per-account deviations), plus a quality per creative beyond its
attributes, day of week, and fatigue with the creative's cumulative impressions. Every arm of a
benchmark lives in the same world: the same accounts, the same initial library, and the k-th
creative an account launches has the same quality draw whatever the arm chose for it (common
random numbers, so arms differ by their decisions, not by luck).

Worlds: ``default`` (effects at ``effect_scale``), ``null`` (no attribute effects at all) and
``change`` (from ``change_day`` on, the best and the worst value of ``hook_type`` swap places).
A world written apart from this one plugs in through ``ClosedLoopWorld`` (what ``run_arm`` and
the arms use of a world). Pure: no Dagster, no database.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from compound_learning.core.simulate import (
    BASE_CTR_EFFECTS,
    BASE_CVR_EFFECTS,
    DIMENSIONS,
    WorldConfig,
    _effects,
    _interaction_matrix,
)

FATIGUE_PER_100K = 0.15  # log CTR lost per 100k cumulative impressions of a creative
WORLDS = ("default", "null", "change")


@dataclass
class LoopConfig:
    days: int = 90
    accounts: int = 20
    seed: int = 0
    effect_scale: float = 0.5
    world: str = "default"
    live_creatives: int = 8
    lifetime_days: int = 14
    daily_budget: float = 400.0
    change_day: int = 45
    account_deviation_sd: float = 0.05  # each account's own deviation of every effect (log scale, per metric)
    start: date = date(2024, 1, 1)
    dimensions: dict[str, list[str]] = field(default_factory=lambda: dict(DIMENSIONS))

    def __post_init__(self):
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {WORLDS}, got {self.world!r}")


@dataclass
class Creative:
    creative_id: str
    attributes: dict[str, str]
    launched: int
    quality_ctr: float
    quality_cvr: float
    impressions: float = 0.0  # cumulative, drives fatigue


@runtime_checkable
class ClosedLoopWorld(Protocol):
    """What the benchmark needs of a world, so that one written apart from the project's simulator
    (``benchmark closed-loop --world-from FILE.py:FACTORY``, the factory called with the
    ``LoopConfig``) runs every arm. ``World`` below is one; ``benchmarks/independent_world.py``
    another. The rules every world keeps:

    - ``cfg`` is the ``LoopConfig`` it was made from: the loop reads ``days``, ``seed``,
      ``live_creatives``, ``lifetime_days`` and ``start`` from it, and the summary its ``world``
      (which target applies) and ``change_day``;
    - ``initial[account]`` is the account's first ``live_creatives`` attribute dicts; every dict
      a world hands out or accepts has one value for each dimension;
    - ``new_creative`` gives the ``slot``-th creative of an account the same quality whatever its
      attributes and day (common random numbers: the arms differ by their decisions, not luck);
    - ``deliver`` spends the day's budget by ``shares`` and returns one row per creative in the
      data contract (``date`` is ``cfg.start`` + ``day`` days), drawing its noise from ``rng``
      only, and adds the impressions to each creative;
    - ``best_attributes`` and ``current_log_roas`` are the truth the oracles act on: the best
      combination for a fresh creative of the account today (``accounts_differ`` False: as if
      the account had only the effects common to all accounts), and a live creative's expected
      log ROAS today.
    """

    cfg: LoopConfig
    accounts: list[str]
    initial: dict[str, list[dict[str, str]]]

    def random_attributes(self, rng: np.random.Generator) -> dict[str, str]: ...

    def new_creative(self, account: str, slot: int, attributes: dict[str, str], day: int) -> Creative: ...

    def deliver(
        self, account: str, creatives: list[Creative], shares: np.ndarray, day: int, rng: np.random.Generator
    ) -> list[dict]: ...

    def best_attributes(self, account: str, day: int, accounts_differ: bool = True) -> dict[str, str]: ...

    def current_log_roas(self, account: str, creative: Creative, day: int) -> float: ...


# ClosedLoopWorld's members, by name: what a world of the user's is checked for, so that a
# missing one is named (isinstance on a runtime protocol only says that one is missing).
WORLD_MEMBERS = (
    "cfg",
    "accounts",
    "initial",
    "random_attributes",
    "new_creative",
    "deliver",
    "best_attributes",
    "current_log_roas",
)


class World:
    """The truth of one closed-loop world and the per-account state of one arm in it."""

    def __init__(self, cfg: LoopConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 1])
        scaled = WorldConfig(effect_scale=cfg.effect_scale, null=cfg.world == "null", dimensions=cfg.dimensions)
        self.ctr_eff = _effects(scaled, BASE_CTR_EFFECTS)
        self.cvr_eff = _effects(scaled, BASE_CVR_EFFECTS)
        self.inter = {"ctr": _interaction_matrix(scaled, "ctr"), "cvr": _interaction_matrix(scaled, "cvr")}
        self.accounts = [f"acct_{i + 1:03d}" for i in range(cfg.accounts)]
        n = cfg.accounts
        self.log_ctr = dict(zip(self.accounts, rng.normal(np.log(0.012), 0.3, n), strict=True))
        self.log_cvr = dict(zip(self.accounts, rng.normal(np.log(0.05), 0.3, n), strict=True))
        self.aov = dict(zip(self.accounts, np.exp(rng.normal(np.log(60.0), 0.3, n)), strict=True))
        self.cpm = dict(zip(self.accounts, np.exp(rng.normal(np.log(8.0), 0.2, n)), strict=True))
        dev_sd = 0.0 if cfg.world == "null" else cfg.account_deviation_sd
        self.dev = {
            (a, d, m): rng.normal(0, dev_sd, len(v))
            for a in self.accounts
            for d, v in cfg.dimensions.items()
            for m in ("ctr", "cvr")
        }
        self.combos = [
            dict(zip(cfg.dimensions, values, strict=True)) for values in itertools.product(*cfg.dimensions.values())
        ]
        self.initial = {a: [self.random_attributes(rng) for _ in range(cfg.live_creatives)] for a in self.accounts}

    # -- the truth ------------------------------------------------------------------------------
    def random_attributes(self, rng: np.random.Generator) -> dict[str, str]:
        return {d: str(rng.choice(v)) for d, v in self.cfg.dimensions.items()}

    def _effect(
        self, table: dict, metric: str, account: str, dim: str, value: str, day: int, accounts_differ: bool = True
    ) -> float:
        values = self.cfg.dimensions[dim]
        effect = table[dim] + (self.dev[(account, dim, metric)] if accounts_differ else 0.0)
        i = values.index(value)
        if self.cfg.world == "change" and dim == "hook_type" and day >= self.cfg.change_day:
            order = np.argsort(table[dim])
            swap = {int(order[0]): int(order[-1]), int(order[-1]): int(order[0])}
            i = swap.get(i, i)
        return float(effect[i])

    def log_rates(
        self, account: str, attributes: dict[str, str], day: int, accounts_differ: bool = True
    ) -> tuple[float, float]:
        """True log CTR and log conversion rate of a fresh, average-quality creative
        (``accounts_differ`` False: as if the account had only the common effects)."""
        lc, lv = self.log_ctr[account], self.log_cvr[account]
        for d, v in attributes.items():
            lc += self._effect(self.ctr_eff, "ctr", account, d, v, day, accounts_differ)
            lv += self._effect(self.cvr_eff, "cvr", account, d, v, day, accounts_differ)
        for metric, mats in self.inter.items():
            for (da, db), mat in mats.items():
                x = mat[self.cfg.dimensions[da].index(attributes[da]), self.cfg.dimensions[db].index(attributes[db])]
                if metric == "ctr":
                    lc += x
                else:
                    lv += x
        return lc, lv

    def expected_log_roas(
        self, account: str, attributes: dict[str, str], day: int, accounts_differ: bool = True
    ) -> float:
        lc, lv = self.log_rates(account, attributes, day, accounts_differ)
        return lc + lv + np.log(self.aov[account] * 1000.0 / self.cpm[account])

    def best_attributes(self, account: str, day: int, accounts_differ: bool = True) -> dict[str, str]:
        return max(self.combos, key=lambda c: self.expected_log_roas(account, c, day, accounts_differ))

    def current_log_roas(self, account: str, creative: Creative, day: int) -> float:
        """What the oracle knows: the creative's true expected log ROAS today."""
        return (
            self.expected_log_roas(account, creative.attributes, day)
            + creative.quality_ctr
            + creative.quality_cvr
            - FATIGUE_PER_100K * creative.impressions / 1e5
        )

    # -- creatives --------------------------------------------------------------------------------
    def new_creative(self, account: str, slot: int, attributes: dict[str, str], day: int) -> Creative:
        """The ``slot``-th creative of ``account``; its quality is the same in every arm."""
        rng = np.random.default_rng([self.cfg.seed, 2, self.accounts.index(account), slot])
        return Creative(
            f"{account}_c{slot:04d}", dict(attributes), day, float(rng.normal(0, 0.25)), float(rng.normal(0, 0.2))
        )

    def deliver(
        self, account: str, creatives: list[Creative], shares: np.ndarray, day: int, rng: np.random.Generator
    ) -> list[dict]:
        """Spend the day's budget by ``shares``; returns the day's rows (one per creative)."""
        when = self.cfg.start + timedelta(days=day)
        weekend = when.weekday() >= 5
        shares = np.asarray(shares, float)
        shares = shares / shares.sum() if shares.sum() > 0 else np.full(len(creatives), 1.0 / len(creatives))
        rows = []
        for c, share in zip(creatives, shares, strict=True):
            spend = self.cfg.daily_budget * share
            impressions = int(rng.poisson(spend / self.cpm[account] * 1000.0)) if spend > 0 else 0
            lc, lv = self.log_rates(account, c.attributes, day)
            ctr = np.exp(lc + c.quality_ctr + (0.10 if weekend else 0.0) - FATIGUE_PER_100K * c.impressions / 1e5)
            cvr = np.exp(lv + c.quality_cvr + (-0.05 if weekend else 0.0))
            clicks = int(rng.binomial(impressions, min(ctr, 0.5)))
            conversions = int(rng.binomial(clicks, min(cvr, 0.9)))
            revenue = conversions * self.aov[account] * float(np.exp(rng.normal(0, 0.3) / np.sqrt(conversions + 1)))
            c.impressions += impressions
            rows.append(
                {
                    "date": when.isoformat(),
                    "account_id": account,
                    "creative_id": c.creative_id,
                    "impressions": impressions,
                    "clicks": clicks,
                    "conversions": conversions,
                    "spend": round(spend, 2),
                    "revenue": round(revenue, 2),
                    **c.attributes,
                }
            )
        return rows


class Policy:
    """An arm: what to launch and how to split the spend. Subclasses decide; ``observe`` sees
    each day's rows (the arm's own data) after delivery."""

    name = "policy"

    def __init__(self, world: ClosedLoopWorld, rng: np.random.Generator):
        self.world, self.rng = world, rng

    def launch(self, account: str, n: int, day: int) -> list[dict[str, str]]:
        return [self.world.random_attributes(self.rng) for _ in range(n)]

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        return np.full(len(creatives), 1.0 / len(creatives))

    def observe(self, day: int, rows: pd.DataFrame) -> None:
        pass


class RandomPolicy(Policy):
    name = "random"


class OraclePolicy(Policy):
    """Knows the truth: launches the best combination, spends on the best creative today."""

    name = "oracle"

    def launch(self, account: str, n: int, day: int) -> list[dict[str, str]]:
        return [self.world.best_attributes(account, day)] * n

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        values = [self.world.current_log_roas(account, c, day) for c in creatives]
        out = np.zeros(len(creatives))
        out[int(np.argmax(values))] = 1.0
        return out


class CommonOraclePolicy(OraclePolicy):
    """Knows the effects common to all accounts (not each account's own deviations) and every
    creative's quality: the part of the oracle's gain that pooled learning can reach."""

    name = "oracle_common"

    def launch(self, account: str, n: int, day: int) -> list[dict[str, str]]:
        return [self.world.best_attributes(account, day, accounts_differ=False)] * n


def run_arm(world: ClosedLoopWorld, policy: Policy, on_day=None) -> pd.DataFrame:
    """Run one arm through every day of ``world``; returns every row it generated."""
    cfg = world.cfg
    live: dict[str, list[Creative]] = {}
    slots = dict.fromkeys(world.accounts, 0)
    for a in world.accounts:
        live[a] = []
        for k, attrs in enumerate(world.initial[a]):
            c = world.new_creative(a, slots[a], attrs, -((k * cfg.lifetime_days) // cfg.live_creatives))
            slots[a] += 1
            live[a].append(c)
    rng = np.random.default_rng([cfg.seed, 3])  # delivery noise, the same stream for every arm
    frames = []
    for day in range(cfg.days):
        rows: list[dict] = []
        for a in world.accounts:
            keep = [c for c in live[a] if day - c.launched < cfg.lifetime_days]
            needed = cfg.live_creatives - len(keep)
            for attrs in policy.launch(a, needed, day) if needed else []:
                keep.append(world.new_creative(a, slots[a], attrs, day))
                slots[a] += 1
            live[a] = keep
            rows += world.deliver(a, keep, policy.spend(a, keep, day), day, rng)
        frame = pd.DataFrame(rows)
        policy.observe(day, frame)
        frames.append(frame)
        if on_day:
            on_day(day, frame)
    return pd.concat(frames, ignore_index=True)
