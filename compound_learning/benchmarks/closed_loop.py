"""The closed-loop benchmark: does acting on what was learned make accounts better, and by how
much of what is attainable?

Four arms live in the same world (``core.closed_loop``) with the same seed:

- ``random``: random attribute combinations, even spend;
- ``learner``: this project's own cycle on the data the arm itself generates: every day's rows
  are ingested through the contract and rolled into daily statistics (``steps.run_day``); every
  ``refit_days`` (1 by default: the daily schedule's cadence) the patterns, the drift test, the
  DNA weights and the recommendations are rebuilt by the same steps the Dagster assets run;
  launches follow the recommendations (the best pick, and every ``1 / explore_share``-th launch
  an explore pick; during an exploration burst after a drop, ``core.drift``, the burst's share
  of launches drawn evenly from the design space), and every day's spend split is
  ``core.recommend.spend_split`` on the latest DNA and the arm's own figures;
- ``oracle``: knows the truth (best combination, best creative today);
- ``fatigue_only``: random combinations, spend moved away from creatives its own data show as
  fatigued (``spend_split`` without attributes or per-creative evidence).

Per 30-day window: each arm's ROAS over seeds (mean, 95% t-interval), learner / random, and the
share of the oracle's gain over random that the learner captures; a PNG of the daily ROAS with
bands; and what the project's ``trajectory`` says of the learner's accounts next to their true
gain over the random arm.

    compound-learning benchmark closed-loop --days 90 --seeds 10 [--effect-scale 0.5] [--world default|null|change]
    compound-learning benchmark closed-loop --world-from FILE.py:FACTORY   # a world of your own (ClosedLoopWorld)
    compound-learning benchmark closed-loop --compare BEFORE.json AFTER.json   # two runs, seed by seed
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from compound_learning import queries, steps
from compound_learning.benchmarks import processor
from compound_learning.config import CycleSettings, load_settings
from compound_learning.core import recommend
from compound_learning.core.closed_loop import (
    WORLD_MEMBERS,
    ClosedLoopWorld,
    CommonOraclePolicy,
    Creative,
    LoopConfig,
    OraclePolicy,
    Policy,
    RandomPolicy,
    World,
    run_arm,
)
from compound_learning.core.trajectory import trajectory
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning.storage.store import Store

ARMS = ("random", "fatigue_only", "learner", "oracle_common", "oracle")
TARGETS = {"default": 0.90, "change": 0.70, "null": 0.97}


def _live_frame(creatives: list[Creative], totals: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for c in creatives:
        tot = totals.get(c.creative_id, {})
        rows.append(
            {
                "creative_id": c.creative_id,
                "attributes": c.attributes,
                "impressions": tot.get("impressions", 0.0),
                "clicks": tot.get("clicks", 0.0),
                "spend": tot.get("spend", 0.0),
                "revenue": tot.get("revenue", 0.0),
                "conversions": tot.get("conversions", 0.0),
            }
        )
    return pd.DataFrame(rows)


class WorldError(ValueError):
    """A world of the user's (``--world-from``) cannot be used; the message says why."""


def world_factory(spec: str):
    """The callable named by ``FILE.py:NAME`` or ``package.module:NAME`` (``--world-from``).
    Raises WorldError naming what is wrong with the spec."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise WorldError(f"--world-from {spec!r}: expected FILE.py:FACTORY or package.module:FACTORY")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise WorldError(f"--world-from {spec!r}: there is no file {path}")
        found = importlib.util.spec_from_file_location(f"closed_loop_world_{path.stem}", path)
        module = importlib.util.module_from_spec(found)
        found.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise WorldError(f"--world-from {spec!r}: cannot import {where}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise WorldError(f"--world-from {spec!r}: {where} has no callable {name!r}")
    return factory


def make_world(cfg: LoopConfig, world_from: str | None = None) -> ClosedLoopWorld:
    """The project's simulated world, or the one ``world_from``'s factory makes of ``cfg``,
    checked for what every arm needs of it (``core.closed_loop.ClosedLoopWorld``)."""
    if world_from is None:
        return World(cfg)
    world = world_factory(world_from)(cfg)
    missing = [m for m in WORLD_MEMBERS if not hasattr(world, m)]
    if missing:
        raise WorldError(
            f"--world-from {world_from!r}: the world lacks {', '.join(missing)} "
            "(what core.closed_loop.ClosedLoopWorld lists)"
        )
    if world.cfg != cfg:
        raise WorldError(f"--world-from {world_from!r}: the world must keep the LoopConfig it was made from as cfg")
    short = [a for a in world.accounts if len(world.initial.get(a, [])) != cfg.live_creatives]
    if not world.accounts or short:
        raise WorldError(
            f"--world-from {world_from!r}: initial must hold {cfg.live_creatives} attribute sets for every account"
            + (f" (not for {', '.join(short[:3])})" if short else " (the world has no accounts)")
        )
    return world


class _OwnData(Policy):
    """A policy that keeps its own creatives' totals and recent rows (for fatigue)."""

    def __init__(self, world: ClosedLoopWorld, rng: np.random.Generator):
        super().__init__(world, rng)
        self.totals: dict[str, dict] = {}
        self.recent: list[pd.DataFrame] = []
        self.fatigue = 0.0

    def observe(self, day: int, rows: pd.DataFrame) -> None:
        for r in rows.itertuples(index=False):
            tot = self.totals.setdefault(
                r.creative_id, {"impressions": 0.0, "clicks": 0.0, "spend": 0.0, "revenue": 0.0, "conversions": 0.0}
            )
            tot["impressions"] += r.impressions
            tot["clicks"] += r.clicks
            tot["spend"] += r.spend
            tot["revenue"] += r.revenue
            tot["conversions"] += r.conversions
        self.recent = [*self.recent[-(steps.FATIGUE_WINDOW_DAYS - 1) :], rows]
        if day % 7 == 6:
            recent = pd.concat(self.recent, ignore_index=True)
            self.fatigue = recommend.fatigue_slope(recent[["creative_id", "date", "impressions", "clicks"]])


class FatigueOnlyPolicy(_OwnData):
    name = "fatigue_only"

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        split = recommend.spend_split(
            _live_frame(creatives, self.totals), None, account, self.rng, self.fatigue, use_evidence=False
        )
        return split["share"].to_numpy()


class LearnerPolicy(_OwnData):
    """The project's own cycle on the arm's own data (see the module docstring)."""

    name = "learner"

    def __init__(
        self,
        world: ClosedLoopWorld,
        rng: np.random.Generator,
        root: Path,
        half_life_days: float = 0.0,
        refit_days: int = 1,
        explore_share: float | None = None,
        **cfg_changes,
    ):
        super().__init__(world, rng)
        base = load_settings()
        self.settings = replace(
            base,
            database_url=f"sqlite:///{root / 'learner.db'}",
            artifacts_dir=root / "artifacts",
            partition_start=min(base.partition_start, world.cfg.start),
        )
        cfg = replace(CycleSettings.from_settings(self.settings), half_life_days=half_life_days)
        if explore_share is not None:
            cfg = replace(cfg, explore_share=explore_share)
        cfg = replace(cfg, **cfg_changes)
        self.store = Store(self.settings.database_url)
        self.ctx = steps.CycleContext(self.store, self.settings, cfg)
        self.refit_days = refit_days
        self.weights = recommend.DNA(pd.DataFrame())
        self.space: dict[str, list[str]] = {}
        self.best: dict[str, dict[str, str]] = {}  # account -> its best recommended combination
        self.burst = False  # an exploration burst after a drift (core.drift)
        self.drift_log: list[tuple[int, float | None, bool]] = []  # (day, z, exploring) of every refit
        self.relearned: dict[str, int] = {}  # dimension -> the first day it was learned afresh after a burst
        self.launched = dict.fromkeys(world.accounts, 0)
        self.fit_seconds = 0.0

    def _day(self, day: int) -> date:
        return self.world.cfg.start + timedelta(days=day)

    def observe(self, day: int, rows: pd.DataFrame) -> None:
        super().observe(day, rows)
        d = self._day(day)
        ingest_frame(
            rows, store=self.store, settings=self.settings, source=f"closed loop day {day}", today=date(2100, 1, 1)
        )
        steps.run_day(self.ctx, d, only=["daily_stats"])
        if (day + 1) % self.refit_days == 0:
            started = time.perf_counter()
            steps.run_day(self.ctx, d, only=["learning_patterns", "creative_dna", "creative_recommendations"])
            self.fit_seconds += time.perf_counter() - started
            self.weights = recommend.DNA(self.store.read_day(t.creative_dna, d))
            self.space = self.weights.space
            self.burst = steps.exploring(self.store, d)
            row = self.store.read_day(t.evidence_drift, d)
            z = row["z"].iloc[0] if len(row) else None
            self.drift_log.append((day, None if z is None or pd.isna(z) else round(float(z), 1), self.burst))
            fresh = row["relearned"].iloc[0] if len(row) else None
            for dims in json.loads(fresh)["metrics"].values() if isinstance(fresh, str) else []:
                for dim in dims:
                    self.relearned.setdefault(dim, day + 1)
            self.best = {}
            for account in self.world.accounts:
                try:  # the step's first pick is its best exploit pick
                    self.best[account] = queries.recommendations(self.store, account, n=1)["launch"][0]["attributes"]
                except LookupError:
                    continue

    def launch(self, account: str, n: int, day: int) -> list[dict[str, str]]:
        best = self.best.get(account)
        if best is None:
            return super().launch(account, n, day)  # nothing learned yet: as the account would
        if self.burst:  # as the step's picks: this share drawn evenly from the design space
            share = self.ctx.cfg.drift.burst_explore_share
            return [
                recommend.uniform_pick(self.space, self.rng) if self.rng.random() < share else best for _ in range(n)
            ]
        every = round(1 / self.ctx.cfg.explore_share) if self.ctx.cfg.explore_share > 0 else 0
        out = []
        for _ in range(n):
            k = self.launched[account]
            self.launched[account] += 1
            if every and k % every == every - 1:
                out.append(recommend.thompson_pick(self.weights, account, self.rng, self.space) or best)
            else:
                out.append(best)
        return out

    def spend(self, account: str, creatives: list[Creative], day: int) -> np.ndarray:
        split = recommend.spend_split(
            _live_frame(creatives, self.totals),
            self.weights,
            account,
            self.rng,
            self.fatigue,
            floor_share=steps.spend_floor_share(self.ctx.cfg, self.burst),
        )
        return split["share"].to_numpy()

    def close(self) -> None:
        self.store.dispose()


def run_seed(
    cfg: LoopConfig,
    half_life_days: float,
    refit_days: int,
    explore_share: float | None = None,
    arms: tuple[str, ...] = ARMS,
    world_from: str | None = None,
    **cfg_changes,
) -> dict:
    """Every arm on one world (``world_from``: one of the user's, see ``make_world``); returns
    each arm's rows and the learner's fit time."""
    world = make_world(cfg, world_from)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="cl_loop_") as tmp:
        for arm in arms:
            rng = np.random.default_rng([cfg.seed, 10 + ARMS.index(arm)])
            if arm == "random":
                policy: Policy = RandomPolicy(world, rng)
            elif arm == "oracle":
                policy = OraclePolicy(world, rng)
            elif arm == "oracle_common":
                policy = CommonOraclePolicy(world, rng)
            elif arm == "fatigue_only":
                policy = FatigueOnlyPolicy(world, rng)
            else:
                policy = LearnerPolicy(world, rng, Path(tmp), half_life_days, refit_days, explore_share, **cfg_changes)
            started = time.perf_counter()
            out[arm] = run_arm(world, policy)
            out[f"{arm}_seconds"] = time.perf_counter() - started
            if arm == "learner":
                out["learner_fit_seconds"] = policy.fit_seconds
                out["learner_drift"] = policy.drift_log
                out["learner_relearned"] = policy.relearned
                policy.close()
    return out


def _ci(values: np.ndarray) -> tuple[float, float, float]:
    values = np.asarray(values, float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def _roas(rows: pd.DataFrame, first: int, last: int, start: date) -> float:
    day = (pd.to_datetime(rows["date"]) - pd.Timestamp(start)).dt.days
    sub = rows[(day >= first) & (day <= last)]
    return float(sub["revenue"].sum() / sub["spend"].sum())


def windows(days: int, world: str, change_day: int) -> list[tuple[str, int, int]]:
    out = [(f"days {a + 1}-{min(a + 30, days)}", a, min(a + 30, days) - 1) for a in range(0, days, 30)]
    if world == "change" and days > change_day + 30:
        out.append((f"days {change_day + 22}-{change_day + 30} (after the change)", change_day + 21, change_day + 29))
    return out


def summarize(results: list[dict], cfg: LoopConfig) -> dict:
    """Per window over seeds: each arm's ROAS, learner / random, the captured share of the gain."""
    table = []
    for label, first, last in windows(cfg.days, cfg.world, cfg.change_day):
        per = {arm: np.array([_roas(r[arm], first, last, cfg.start) for r in results]) for arm in ARMS}
        gain = per["oracle"] - per["random"]
        captured = (per["learner"] - per["random"]) / np.where(np.abs(gain) > 1e-9, gain, np.nan)
        row = {"window": label, "first_day": first + 1, "last_day": last + 1}
        for arm in ARMS:
            row[arm] = dict(zip(("mean", "ci_low", "ci_high"), _ci(per[arm]), strict=True))
        row["learner_over_random"] = dict(
            zip(("mean", "ci_low", "ci_high"), _ci(per["learner"] / per["random"]), strict=True)
        )
        mean_gain = per["oracle"].mean() - per["random"].mean()
        row["captured_share"] = float((per["learner"].mean() - per["random"].mean()) / mean_gain) if mean_gain else None
        common_gain = per["oracle_common"].mean() - per["random"].mean()
        row["captured_share_of_common"] = (
            float((per["learner"].mean() - per["random"].mean()) / common_gain) if common_gain else None
        )
        row["captured_share_per_seed"] = dict(zip(("mean", "ci_low", "ci_high"), _ci(captured), strict=True))
        # every seed's figures, so that two commits' runs can be compared seed by seed (paired)
        row["seeds"] = {arm: [round(float(x), 6) for x in per[arm]] for arm in ARMS}
        row["seeds"]["captured_share"] = [None if x != x else round(float(x), 6) for x in captured]
        table.append(row)
    return {"windows": table}


def trajectory_report(results: list[dict], cfg: LoopConfig) -> dict:
    """The project's own trajectory call on each learner account next to its true gain over the
    same account in the random arm (last 30 days)."""
    calls, gains = [], []
    for r in results:
        learner, rnd = r["learner"], r["random"]
        for account, rows in learner.groupby("account_id"):
            daily = rows.groupby("date", as_index=False)[["spend", "revenue"]].sum()
            calls.append(trajectory(daily)["learning_status"])
            gains.append(
                _roas(rows, cfg.days - 30, cfg.days - 1, cfg.start)
                / _roas(rnd[rnd["account_id"] == account], cfg.days - 30, cfg.days - 1, cfg.start)
            )
    calls_s = pd.Series(calls)
    gains_a = np.array(gains)
    return {
        "accounts": len(calls),
        "calls": {k: int(v) for k, v in calls_s.value_counts().items()},
        "median_true_gain_over_random_last_30d": float(np.median(gains_a)),
        "true_gain_by_call": {k: float(np.median(gains_a[(calls_s == k).to_numpy()])) for k in calls_s.unique()},
    }


def plot(results: list[dict], cfg: LoopConfig, path: Path, world_from: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    colors = {
        "random": "#888888",
        "fatigue_only": "#c49a2c",
        "learner": "#1f77b4",
        "oracle_common": "#98df8a",
        "oracle": "#2ca02c",
    }
    for arm in ARMS:
        daily = np.array(
            [
                r[arm].groupby("date")[["revenue", "spend"]].sum().pipe(lambda f: f["revenue"] / f["spend"]).to_numpy()
                for r in results
            ]
        )
        mean = daily.mean(axis=0)
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, color=colors[arm], label=arm, lw=1.6)
        if len(results) > 1:
            half = sps.t.ppf(0.975, len(results) - 1) * daily.std(axis=0, ddof=1) / np.sqrt(len(results))
            ax.fill_between(x, mean - half, mean + half, color=colors[arm], alpha=0.18, lw=0)
    if cfg.world == "change":
        ax.axvline(cfg.change_day + 1, color="#aa3333", ls="--", lw=1)
    ax.set_xlabel("day")
    ax.set_ylabel("ROAS (all accounts)")
    ax.set_title(
        f"closed loop, {cfg.world} world{f' of {world_name(world_from)}' if world_from else ''}, effect scale "
        f"{cfg.effect_scale}, {len(results)} seeds\n(bands: 95% over seeds)",
        fontsize=10,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bursts(drift_log: list[tuple[int, float | None, bool]]) -> list[int]:
    """The days (1-based) on which the learner's exploration bursts began."""
    out, was = [], False
    for day, _z, exploring in drift_log:
        if exploring and not was:
            out.append(day + 1)
        was = exploring
    return out


def world_name(world_from: str | None) -> str | None:
    """A world of the user's by its module's name and its factory's (``independent_world:make_world``),
    wherever the file lies: two checkouts' runs of one world are the same world."""
    if not world_from:
        return None
    where, _, name = world_from.rpartition(":")
    return f"{Path(where).stem if where.endswith('.py') else where.rsplit('.', 1)[-1]}:{name}"


def output_name(world: str, account_sd: float, world_from: str | None = None) -> str:
    """The PNG's and the JSON's name: one per world (and per world of the user's, by its file or
    module), and per account spread when not the default."""
    own = f"_{world_name(world_from).replace(':', '_')}" if world_from else ""
    suffix = "" if account_sd == LoopConfig.account_deviation_sd else f"_account_sd_{account_sd:g}"
    return f"closed_loop_{world}{own}{suffix}"


def run(
    days: int = 90,
    seeds: int = 10,
    accounts: int = 20,
    effect_scale: float = 0.5,
    world: str = "default",
    half_life_days: float | None = None,
    refit_days: int = 1,
    first_seed: int = 0,
    out_dir: Path | None = None,
    explore_share: float | None = None,
    progress=None,
    account_sd: float = LoopConfig.account_deviation_sd,
    jobs: int = 1,
    world_from: str | None = None,
) -> dict:
    """Run the benchmark; returns the summary with each target's verdict (and writes the PNG).
    ``jobs`` > 1 runs that many seeds at a time in separate processes (the seeds are independent;
    the figures are the same as one at a time). ``world_from`` (``FILE.py:FACTORY``) runs the
    arms in a world of the user's instead of the simulated one; ``world`` then says which
    target applies."""
    half_life = (21.0 if world == "change" else 0.0) if half_life_days is None else half_life_days
    started = time.perf_counter()
    configs = [
        LoopConfig(
            days=days,
            accounts=accounts,
            seed=first_seed + i,
            effect_scale=effect_scale,
            world=world,
            account_deviation_sd=account_sd,
        )
        for i in range(seeds)
    ]
    given = world_from
    if world_from:
        where, _, name = world_from.rpartition(":")
        if where.endswith(".py"):  # the seeds' processes may start elsewhere
            world_from = f"{Path(where).resolve()}:{name}"
        make_world(configs[0], world_from)  # a bad world fails here, before any seed runs

    def done(i: int) -> None:
        if progress:
            elapsed = time.perf_counter() - started
            progress(f"seed {i}/{seeds} done in {elapsed:.0f} s; about {elapsed / i * (seeds - i):.0f} s left")

    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(run_seed, c, half_life, refit_days, explore_share, world_from=world_from) for c in configs
            ]
            results = []
            for f in futures:  # in seed order, whatever finishes first
                results.append(f.result())
                done(len(results))
    else:
        results = []
        for c in configs:
            results.append(run_seed(c, half_life, refit_days, explore_share, world_from=world_from))
            done(len(results))
    cfg = configs[-1]
    summary = summarize(results, cfg)
    out_dir = Path(out_dir or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{output_name(world, account_sd, world_from)}.png"
    plot(results, cfg, png, world_from)
    verdicts = {}
    w = summary["windows"]
    if world == "default":
        last = next((x for x in w if x["first_day"] == 61), w[-1])
        verdicts[f"learner captures >= 90% of the oracle's gain over random in {last['window']}"] = (
            last["captured_share"] is not None and last["captured_share"] >= TARGETS["default"]
        )
    elif world == "null":
        whole = [
            _roas(r["learner"], 0, days - 1, cfg.start) / _roas(r["random"], 0, days - 1, cfg.start) for r in results
        ]
        summary["null_learner_over_random_all_days"] = dict(
            zip(("mean", "ci_low", "ci_high"), _ci(np.array(whole)), strict=True)
        )
        verdicts["null world: learner / random >= 0.97 over all days"] = float(np.mean(whole)) >= TARGETS["null"]
    else:
        after = [x for x in w if "after the change" in x["window"]]
        if after:
            verdicts[f"change world: learner back above 70% of the oracle's gain in {after[0]['window']}"] = (
                after[0]["captured_share"] is not None and after[0]["captured_share"] >= TARGETS["change"]
            )
    return {
        "config": {
            "days": days,
            "seeds": seeds,
            "first_seed": first_seed,
            "accounts": accounts,
            "effect_scale": effect_scale,
            "world": world,
            "world_from": given,
            "account_deviation_sd": account_sd,
            "half_life_days": half_life,
            "refit_days": refit_days,
            "explore_share": explore_share,
        },
        "machine": {
            "python": platform.python_version(),
            "processor": processor(),
            "cpus": os.cpu_count(),
            "load_1m": os.getloadavg()[0],
            "date": date.today().isoformat(),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "learner_fit_seconds_per_seed": round(float(np.mean([r["learner_fit_seconds"] for r in results])), 1),
        "exploration_bursts": [bursts(r["learner_drift"]) for r in results],
        "relearned": [r.get("learner_relearned", {}) for r in results],
        **summary,
        "trajectory": trajectory_report(results, cfg),
        "plot": str(png),
        "targets": verdicts,
    }


def format_table(result: dict) -> str:
    """The result as a Markdown table (the CLI's output and BENCHMARKS.md's): ROAS per arm, mean
    over seeds with its 95% interval, learner / random, and the captured shares of the gain."""
    head = ["window", *ARMS, "learner / random", "captured of oracle", "captured of oracle_common"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["windows"]:
        cells = [f"{row[a]['mean']:.2f} [{row[a]['ci_low']:.2f}, {row[a]['ci_high']:.2f}]" for a in ARMS]
        lr = row["learner_over_random"]
        shares = [
            ("n/a" if row.get(k) is None else f"{row[k]:.1%}") for k in ("captured_share", "captured_share_of_common")
        ]
        lines.append(
            "| "
            + " | ".join(
                [row["window"], *cells, f"{lr['mean']:.3f} [{lr['ci_low']:.3f}, {lr['ci_high']:.3f}]", *shares]
            )
            + " |"
        )
    tr = result["trajectory"]
    lines.append(
        f"trajectory of the learner's {tr['accounts']} accounts: {tr['calls']}; median true gain over the "
        f"random arm in the last 30 days x{tr['median_true_gain_over_random_last_30d']:.2f} "
        f"(by call: { {k: round(v, 2) for k, v in tr['true_gain_by_call'].items()} })"
    )
    started = result.get("exploration_bursts", [])
    lines.append(
        f"exploration bursts after a drift (core.drift): {sum(map(len, started))} over {len(started)} seeds, "
        f"starting on days {[d for seed in started for d in seed]}"
    )
    relearned = result.get("relearned", [])
    if any(relearned):
        dims = sorted({d for seed in relearned for d in seed})
        lines.append(
            "learned afresh after a burst (core.drift.changed_dimensions), first day per seed: "
            + "; ".join(f"{d} {[seed[d] for seed in relearned if d in seed]}" for d in dims)
        )
    for target, ok in result["targets"].items():
        lines.append(f"[{'ok' if ok else 'MISSED'}] {target}")
    return "\n".join(lines)


WORLD_KEYS = ("days", "seeds", "first_seed", "accounts", "effect_scale", "world", "world_from", "account_deviation_sd")


def compare(before: dict, after: dict) -> list[dict]:
    """Two runs of the same worlds (say, two commits of the learner), seed by seed: per window,
    the mean difference of the learner's captured share of the oracle's gain with its 95%
    t-interval, and how many seeds gained. The random and oracle arms must agree to the digit:
    that is what makes the comparison paired. Raises ValueError naming what does not match."""
    for name, run in (("before", before), ("after", after)):
        if any("seeds" not in w for w in run.get("windows", [])) or not run.get("windows"):
            raise ValueError(
                f"the {name} run has no per-seed figures (written before the benchmark kept them): run it again"
            )

    def key(config: dict, k: str):
        return world_name(config.get(k)) if k == "world_from" else config.get(k)

    differ = [k for k in WORLD_KEYS if key(before["config"], k) != key(after["config"], k)]
    if differ:
        pairs = ", ".join(f"{k} {before['config'].get(k)!r} vs {after['config'].get(k)!r}" for k in differ)
        raise ValueError(f"the two runs are not the same worlds: {pairs}")
    rows = []
    for b, a in zip(before["windows"], after["windows"], strict=True):
        for arm in ("random", "oracle"):
            if not np.allclose(b["seeds"][arm], a["seeds"][arm], rtol=1e-9, atol=0):
                raise ValueError(f"the {arm} arm differs between the runs in {b['window']}: not the same worlds")
        pairs = [
            (x, y)
            for x, y in zip(b["seeds"]["captured_share"], a["seeds"]["captured_share"], strict=True)
            if x is not None and y is not None
        ]
        diff = np.array([y - x for x, y in pairs])
        mean, low, high = _ci(diff)
        rows.append(
            {
                "window": b["window"],
                "before": float(np.mean([x for x, _ in pairs])),
                "after": float(np.mean([y for _, y in pairs])),
                "difference": {"mean": mean, "ci_low": low, "ci_high": high},
                "seeds_gaining": int((diff > 0).sum()),
                "seeds": len(pairs),
            }
        )
    return rows


def format_comparison(rows: list[dict]) -> str:
    lines = [
        "| window | before | after | paired difference [95%] | seeds that gain |",
        "|---|---:|---:|---|---:|",
    ]
    for r in rows:
        d = r["difference"]
        lines.append(
            f"| {r['window']} | {r['before']:.1%} | {r['after']:.1%} | "
            f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] | "
            f"{r['seeds_gaining']}/{r['seeds']} |"
        )
    lines.append("(captured share of the oracle's gain over random, per-seed mean; difference in points)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--effect-scale", type=float, default=0.5)
    p.add_argument(
        "--world",
        choices=["default", "null", "change"],
        default="default",
        help="which world, and so which target applies (with --world-from: passed to its factory as cfg.world)",
    )
    p.add_argument(
        "--world-from",
        metavar="FILE.py:FACTORY",
        help="run the arms in a world of your own: FACTORY(LoopConfig) returns it (core.closed_loop.ClosedLoopWorld; "
        "example: compound_learning/benchmarks/independent_world.py:make_world)",
    )
    p.add_argument("--half-life", type=float, help="forgetting half-life in days (default: 21 in the change world)")
    p.add_argument(
        "--refit-days", type=int, default=1, help="days between the learner's re-fits (1: daily, as the schedule)"
    )
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument(
        "--account-sd",
        type=float,
        default=LoopConfig.account_deviation_sd,
        help="sd of each account's own deviation of every effect (log, per metric); 0: accounts share the effects",
    )
    p.add_argument("--jobs", type=int, default=1, help="seeds run at a time, each in its own process")
    p.add_argument("--out", default=".state/benchmarks", help="folder for the PNG and the JSON")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE.json", "AFTER.json"),
        help="run nothing: compare two earlier runs' JSON seed by seed (the learner's captured share)",
    )
    args = p.parse_args(argv)
    if args.compare:
        try:
            rows = compare(*(json.loads(Path(f).read_text()) for f in args.compare))
        except (OSError, ValueError, KeyError) as exc:
            print(f"cannot compare {args.compare[0]} with {args.compare[1]}: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(rows, indent=2) if args.json else format_comparison(rows))
        return 0
    try:
        result = _run_from_args(args)
    except WorldError as exc:
        print(f"closed-loop: {exc}", file=sys.stderr)
        return 2
    name = output_name(args.world, args.account_sd, args.world_from)
    (Path(args.out) / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if all(result["targets"].values()) else 1


def _run_from_args(args) -> dict:
    return run(
        args.days,
        args.seeds,
        args.accounts,
        args.effect_scale,
        args.world,
        args.half_life,
        args.refit_days,
        args.first_seed,
        Path(args.out),
        progress=lambda m: print(m, file=sys.stderr, flush=True),
        account_sd=args.account_sd,
        jobs=args.jobs,
        world_from=args.world_from,
    )


if __name__ == "__main__":
    sys.exit(main())
