"""The recovery benchmark: run the learning over simulated worlds and score it against the truth.

For each world the daily cycle runs on a throw-away store through ``steps.run_day``, the code
the assets run: per-day statistics, cumulative cells (optionally with forgetting), trajectories,
and patterns re-tested on each of the last days so the persistence rule applies. Scored on
global main effects:

- false discovery proportion among ``significant`` patterns (a discovery is false when the true
  effect is null, |true lift| < 1%, or its sign is wrong),
- 95% interval coverage of the true effects (the truth as the additive model defines it, see
  ``simulate._add_library_effects``; drifting effects excluded),
- sign accuracy of significant patterns, Spearman rank correlation of estimated vs true effects,
- whether the truly null, correlated ``cta`` dimension is ever reported significant,
- whether a null world is called improving: a panel regression of log ROAS on time with an
  effect per account and errors clustered by account (any within-account autocorrelation).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from compound_learning import queries, steps
from compound_learning.config import GLOBAL, CycleSettings, PatternSettings, load_settings
from compound_learning.core.simulate import DIMENSIONS, WorldConfig, simulate
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning.storage.store import Store

NULL_LIFT = 0.01
KINDS = ["null", "small", "large", "correlated", "drift"]
EFFECT_SCALES = {"null": 0.0, "small": 0.4, "large": 1.5, "correlated": 1.0, "drift": 1.0, "rising": 0.5, "sparse": 0.5}
RISING_GROWTH = 0.5  # a rising world's learning accounts: ROAS +50% over its days, whatever they launch
RISING_DAYS = 60
# A sparse world: ten dimensions, of which only two (hook and audience) have effects; the other
# eight carry none, so the family of tests is large and almost all of it null.
SPARSE_DIMENSIONS = {
    "hook_type": DIMENSIONS["hook_type"],
    "audience": DIMENSIONS["audience"],
    **{f"null_dim_{i}": [f"v{j}" for j in range(3 + i % 3)] for i in range(1, 9)},
}
# large enough that per-account patterns and interactions make most of the family (~4,000 tests)
SPARSE_SIZE = {"accounts": 20, "creatives": 60}
MEANINGFUL_LIFT = 0.05  # a true main effect the pattern tests should find
RISEN = 0.5  # an account whose expected ROAS truly rose this much should be called improving
FLAT = 0.1  # ... and one within this of no change should not be called trending


@dataclass
class WorldSpec:
    kind: str
    seed: int
    days: int = 45
    accounts: int = 12
    creatives: int = 25

    def config(self) -> WorldConfig:
        scale = EFFECT_SCALES[self.kind]
        return WorldConfig(
            days=self.days,
            accounts=self.accounts,
            creatives_per_account=self.creatives,
            seed=self.seed,
            effect_scale=scale,
            null=self.kind == "null",
            drift=self.kind == "drift",
            roas_growth=RISING_GROWTH if self.kind == "rising" else 0.0,
            **({"dimensions": SPARSE_DIMENSIONS} if self.kind == "sparse" else {}),
        )


def replay(
    data: pd.DataFrame, settings: PatternSettings, half_life_days: float = 0.0, test_days: int = 3
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The daily cycle itself, on a throw-away SQLite store: the world is ingested, every day's
    statistics and trajectories are built, and the patterns are learned on each of the last
    ``test_days`` days (so the persistence rule applies). Returns the last day's patterns and
    each account's last learning status."""
    with tempfile.TemporaryDirectory(prefix="cl_eval_") as tmp:
        base = load_settings()
        settings_ = replace(
            base,
            database_url=f"sqlite:///{tmp}/world.db",
            artifacts_dir=Path(tmp) / "artifacts",
            partition_start=min(base.partition_start, pd.Timestamp(data["date"].min()).date()),
        )
        store = Store(settings_.database_url)
        try:
            ingest_frame(data, store=store, settings=settings_, today=date(2100, 1, 1))
            cfg = replace(CycleSettings.from_settings(settings_), patterns=settings, half_life_days=half_life_days)
            ctx = steps.CycleContext(store, settings_, cfg)
            first, last = (pd.Timestamp(d).date() for d in (data["date"].min(), data["date"].max()))
            steps.run_days(ctx, first, last, only=["daily_stats", "improvement_snapshots"])
            steps.run_days(ctx, last - timedelta(days=test_days - 1), last, only=["learning_patterns"])
            # the last day's trajectories again, now with the DNA that tells attribute mix from luck
            steps.run_day(ctx, last, only=["creative_dna", "improvement_snapshots"])
            patterns = store.read_day(t.learning_patterns, last)
            statuses = {a: queries.trajectory(store, a)["learning_status"] for a in queries.accounts(store)}
        finally:
            store.dispose()
    return patterns, statuses


def score_world(spec: WorldSpec, settings: PatternSettings | None = None) -> dict:
    # per-account patterns in the sparse world, as in production: they are most of its tests
    settings = settings or PatternSettings(per_account=spec.kind == "sparse")
    cfg = spec.config()
    data, truth = simulate(cfg)
    half_life = 14.0 if spec.kind == "drift" else 0.0
    patterns, statuses = replay(data, settings, half_life)
    glob = patterns[(patterns["account_id"] == GLOBAL) & (patterns["pattern_type"] != "interaction")].copy()
    glob["dimension"] = [next(iter(json.loads(a))) for a in glob["attributes"]]
    glob["value"] = [next(iter(json.loads(a).values())) for a in glob["attributes"]]
    eff = pd.DataFrame(truth["effects"])
    m = glob.merge(eff, on=["dimension", "value", "metric"], suffixes=("", "_true"))
    steady = m[~m["drifting"]]
    testable = steady[steady["state"] != "insufficient_data"]
    covered = (testable["ci_low"] <= testable["lift_true"]) & (testable["lift_true"] <= testable["ci_high"])
    sig = steady[steady["state"] == "significant"]
    is_null = sig["lift_true"].abs() < NULL_LIFT
    wrong_sign = np.sign(sig["log_effect"]) != np.sign(sig["log_effect_true"])
    false = is_null | wrong_sign
    rho = (
        sps.spearmanr(testable["log_effect"], testable["log_effect_true"]).statistic
        if spec.kind != "null" and len(testable) > 3
        else np.nan
    )
    inter_sig = int(((patterns["pattern_type"] == "interaction") & (patterns["state"] == "significant")).sum())
    world_trend = panel_trend(data)
    per_account = list(statuses.values())
    learns = {a["account_id"]: a["learning"] for a in truth["accounts"]}
    true_rise = truth["true_roas_change"]
    out = {
        "kind": spec.kind,
        "seed": spec.seed,
        "testable": len(testable),
        "significant": len(sig),
        **_main_effect_power(patterns, steady, settings.alpha),
        "false_discoveries": int(false.sum()),
        "fdp": float(false.mean()) if len(sig) else 0.0,
        "covered": int(covered.sum()),
        "coverage": float(covered.mean()) if len(testable) else np.nan,
        "sign_correct": int((~wrong_sign).sum()),
        "spearman": float(rho) if rho == rho else None,
        "null_dimension_significant": int((sig["dimension"].isin(truth["null_dimensions"])).sum()),
        "significant_interactions": inter_sig,
        "world_trend": world_trend["status"],
        "world_daily_rate": world_trend["daily_rate"],
        "accounts_called_improving": sum(s == "improving" for s in per_account),
        "accounts": len(per_account),
        # the simulator's learning accounts (their launches drift toward better attributes) and
        # the others (flat by design): how often each is called improving / trending
        "learning_accounts": sum(learns.values()),
        "learning_called_improving": sum(statuses.get(a) == "improving" for a, on in learns.items() if on),
        "flat_accounts": sum(not on for on in learns.values()),
        "flat_called_trending": sum(
            statuses.get(a) in ("improving", "declining") for a, on in learns.items() if not on
        ),
        "flat_called_volatile": sum(statuses.get(a) == "volatile" for a, on in learns.items() if not on),
        # every account's call next to what its ROAS truly did: the last two weeks' expected
        # revenue over the first two's (no sampling noise, no creative luck; a flat-by-design
        # account's random attribute mix is a real change of its expected ROAS)
        "trajectory_calls": [
            {"learning": on, "true_change": true_rise[a], "status": statuses.get(a)}
            for a, on in learns.items()
            if a in true_rise
        ],
    }
    if spec.kind == "drift":
        late = m[m["drifting"] & (m["metric"] == "ctr")]
        late_truth = -late["structural_log_effect"]  # the effect flipped halfway
        big = late_truth.abs() > 0.05
        out["drift_followed"] = float((np.sign(late.loc[big, "log_effect"]) == np.sign(late_truth[big])).mean())
    return out


POWER_FIGURES = (
    "family_size",
    "true_main_effects",
    *(f"{name}_{what}" for name in ("claimed", "weighted_q", "plain_q") for what in ("found", "false")),
)


def _main_effect_power(patterns: pd.DataFrame, steady: pd.DataFrame, alpha: float) -> dict:
    """How many of the true global main effects of at least ``MEANINGFUL_LIFT`` were found: as
    ``significant`` (the claim, after persistence), and on the last day's q-values alone by the
    cycle's weighted family and by plain Benjamini-Hochberg over the same family (the
    comparison the weighting is for); false ones (null or wrong sign) beside each."""
    tested = patterns[patterns["p_value"].notna()]
    plain = pd.Series(
        sps.false_discovery_control(tested["p_value"].to_numpy(), method="bh"), index=tested["pattern_id"]
    )
    q_plain = steady["pattern_id"].map(plain)
    meaningful = steady["lift_true"].abs() >= MEANINGFUL_LIFT
    null = steady["lift_true"].abs() < NULL_LIFT
    wrong = np.sign(steady["log_effect"]) != np.sign(steady["log_effect_true"])
    out = {"family_size": len(tested), "true_main_effects": int(meaningful.sum())}
    for name, called in (
        ("claimed", steady["state"] == "significant"),
        ("weighted_q", steady["q_value"] < alpha),
        ("plain_q", q_plain < alpha),
    ):
        out[f"{name}_found"] = int((called & meaningful & ~wrong).sum())
        out[f"{name}_false"] = int((called & (null | wrong)).sum())
    return out


def panel_trend(data: pd.DataFrame) -> dict:
    """Common daily ROAS growth across accounts, with account-clustered 95% interval."""
    import statsmodels.formula.api as smf

    daily = data.groupby(["account_id", "date"], as_index=False)[["spend", "revenue"]].sum()
    daily = daily[(daily["spend"] > 0) & (daily["revenue"] > 0)]
    daily["t"] = (pd.to_datetime(daily["date"]) - pd.to_datetime(daily["date"]).min()).dt.days
    daily["log_roas"] = np.log(daily["revenue"] / daily["spend"])
    res = smf.ols("log_roas ~ t + C(account_id)", data=daily).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(daily["account_id"])[0]}
    )
    lo, hi = res.conf_int().loc["t"]
    status = "improving" if lo > 0 else "declining" if hi < 0 else "stable"
    return {"status": status, "daily_rate": float(np.expm1(res.params["t"])), "ci": [float(lo), float(hi)]}


def evaluate(
    n_worlds: int = 10,
    seed: int = 100,
    rising_worlds: int | None = None,
    sparse_worlds: int | None = None,
    **world_kw,
) -> dict:
    """Score ``n_worlds`` worlds cycling through the kinds; ``rising_worlds`` (default one per
    two) 60-day worlds whose learning accounts' ROAS rises 50% whatever they launch, which count
    only in the trajectory rates; and ``sparse_worlds`` (default one per five) of ten dimensions
    with two that have effects, for the power of the pattern tests, which count in the recovery
    figures too. Returns per-world rows and the summary."""
    rising_worlds = max(n_worlds // 2, 1) if rising_worlds is None else rising_worlds
    sparse_worlds = max(n_worlds // 5, 1) if sparse_worlds is None else sparse_worlds
    rows = [score_world(WorldSpec(KINDS[i % len(KINDS)], seed + i, **world_kw)) for i in range(n_worlds)]
    rising_kw = {**world_kw, "days": max(world_kw.get("days", RISING_DAYS), RISING_DAYS)}
    rising = [score_world(WorldSpec("rising", seed + 1000 + i, **rising_kw)) for i in range(rising_worlds)]
    sparse_kw = {**world_kw, **SPARSE_SIZE}
    sparse = [score_world(WorldSpec("sparse", seed + 2000 + i, **sparse_kw)) for i in range(sparse_worlds)]
    frame = pd.DataFrame(rows + sparse)
    both = pd.DataFrame(rows + rising + sparse)
    rise = pd.DataFrame(rising, columns=both.columns)
    non_null = frame[frame["kind"] != "null"]
    sig_total = int(frame["significant"].sum())
    summary = {
        "worlds": n_worlds,
        "mean_fdp": float(frame["fdp"].mean()),
        "pooled_fdp": float(frame["false_discoveries"].sum() / sig_total) if sig_total else 0.0,
        "coverage": float(frame["covered"].sum() / frame["testable"].sum()),
        "sign_accuracy": float(frame["sign_correct"].sum() / sig_total) if sig_total else None,
        "mean_spearman": float(non_null["spearman"].dropna().mean()) if len(non_null) else None,
        "null_worlds_called_improving": int(((frame["kind"] == "null") & (frame["world_trend"] == "improving")).sum()),
        "null_world_accounts_called_improving": int(
            frame.loc[frame["kind"] == "null", "accounts_called_improving"].sum()
        ),
        "null_world_accounts": int(frame.loc[frame["kind"] == "null", "accounts"].sum()),
        # cta: null in every world but the sparse ones, and correlated with hook_type
        "correlated_null_dimension_significant": int(
            frame.loc[frame["kind"] != "sparse", "null_dimension_significant"].sum()
        ),
        "learning_accounts": int(frame["learning_accounts"].sum()),
        "learning_called_improving": int(frame["learning_called_improving"].sum()),
        "rising_worlds": len(rising),
        "rising_accounts": int(rise["learning_accounts"].sum()),
        "rising_called_improving": int(rise["learning_called_improving"].sum()),
        "flat_accounts": int(both["flat_accounts"].sum()),
        "flat_called_trending": int(both["flat_called_trending"].sum()),
        "flat_called_volatile": int(both["flat_called_volatile"].sum()),
        **trajectory_call_rates([c for calls in both["trajectory_calls"] for c in calls]),
        "sparse_worlds": len(sparse),
        **{f"sparse_{k}": int(sum(w[k] for w in sparse)) for k in POWER_FIGURES},
    }
    summary["targets"] = {
        "mean_fdp <= 0.10": summary["mean_fdp"] <= 0.10,
        "0.90 <= coverage <= 0.98": 0.90 <= summary["coverage"] <= 0.98,
        "sign_accuracy >= 0.95": summary["sign_accuracy"] is None or summary["sign_accuracy"] >= 0.95,
        "no null world called improving": summary["null_worlds_called_improving"] == 0,
        "null correlated dimension never significant": summary["correlated_null_dimension_significant"] == 0,
    }
    summary["targets"][f"truly risen accounts (>= +{RISEN:.0%}) called improving >= 80%"] = (
        summary["risen_called_improving"] >= 0.8 * summary["risen_accounts"]
    )
    # A two-sided 95% interval calls about 5% of truly flat accounts trending by chance: the
    # target is that the rate is not above that (one-sided binomial test at 5%).
    excess = sps.binomtest(summary["flat_true_called_trending"], max(summary["flat_true_accounts"], 1), 0.05, "greater")
    summary["flat_true_excess_p"] = float(excess.pvalue)
    summary["targets"][
        f"truly flat accounts (within +-{FLAT:.0%}) called trending not above 5% (binomial p > 0.05)"
    ] = summary["flat_true_excess_p"] > 0.05
    summary["targets"][f"no account called trending against a true change of at least {FLAT:.0%}"] = (
        summary["wrong_direction"] == 0
    )
    summary["targets"]["sparse worlds: the weighted family finds at least what plain BH finds, nothing false"] = (
        summary["sparse_weighted_q_found"] >= summary["sparse_plain_q_found"]
        and summary["sparse_weighted_q_false"] == 0
        and summary["sparse_claimed_false"] == 0
    )
    return {"summary": summary, "worlds": rows + rising + sparse}


def trajectory_call_rates(calls: list[dict]) -> dict:
    """The trajectory's calls scored against each account's true ROAS change: power on accounts
    that truly rose by ``RISEN`` or more, false trends on accounts within ``FLAT`` of no change,
    and calls against the direction of the truth."""

    def against(c: dict) -> bool:
        return (c["status"], c["true_change"] > 0) in (("improving", False), ("declining", True))

    risen = [c for c in calls if c["true_change"] >= RISEN]
    flat = [c for c in calls if abs(c["true_change"]) < FLAT]
    trending = ("improving", "declining")
    return {
        "risen_accounts": len(risen),
        "risen_called_improving": sum(c["status"] == "improving" for c in risen),
        "risen_median_true_change": float(np.median([c["true_change"] for c in risen])) if risen else None,
        "risen_learning_accounts": sum(c["learning"] for c in risen),
        "risen_learning_called_improving": sum(c["learning"] and c["status"] == "improving" for c in risen),
        "flat_true_accounts": len(flat),
        "flat_true_called_trending": sum(c["status"] in trending for c in flat),
        "flat_true_called_volatile": sum(c["status"] == "volatile" for c in flat),
        # a call against the direction of a true change of at least FLAT (closer to no change, a
        # trending call is a flat account's false call, counted above)
        "wrong_direction": sum(against(c) and abs(c["true_change"]) >= FLAT for c in calls),
        "wrong_direction_near_zero": sum(against(c) and abs(c["true_change"]) < FLAT for c in calls),
    }
