"""A simulated advertising world with known ground truth.

Each account runs a library of creatives; each creative has categorical attributes drawn with
realistic correlations (video creatives tell stories, offers ask to shop). Daily clicks and
conversions are binomial draws around rates built from:

- attribute main effects on CTR and on conversion rate (log scale, centred within a dimension),
- a few pairwise interactions (double-centred, so main effects keep their meaning),
- per-account baselines and per-account deviations of the effects (heterogeneity),
- a per-creative quality effect beyond the attributes (overdispersion),
- day of week, and fatigue with the creative's cumulative impressions,
- optionally, accounts that learn: their newer creatives favour the better attribute values.

The truth file states every effect as the patterns report it: the relative lift of an attribute
value against the geometric mean over the values of its dimension, per metric (ctr, cvr, roas).
With ``null=True`` there are no attribute effects, no interactions and no learning accounts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

DIMENSIONS: dict[str, list[str]] = {
    "hook_type": ["question", "statistic", "story", "offer", "testimonial"],
    "template": ["minimal", "bold", "ugc", "carousel"],
    "audience": ["broad", "lookalike", "retargeting", "interest"],
    "format": ["image", "video"],
    "cta": ["shop_now", "learn_more", "sign_up"],
}

# Unscaled log effects; every dimension is centred before use. `cta` is truly null on purpose:
# it co-occurs strongly with `hook_type` (offers ask to shop), the trap for marginal analyses.
BASE_CTR_EFFECTS = {
    "hook_type": [0.30, 0.05, 0.10, -0.05, -0.40],
    "template": [0.0, 0.20, 0.10, -0.30],
    "audience": [-0.15, 0.05, 0.35, -0.25],
    "format": [-0.10, 0.10],
    "cta": [0.0, 0.0, 0.0],
}
BASE_CVR_EFFECTS = {
    "hook_type": [0.0, 0.10, -0.10, 0.35, -0.35],
    "template": [0.0, 0.0, 0.0, 0.0],
    "audience": [-0.30, 0.0, 0.50, -0.20],
    "format": [0.0, 0.0],
    "cta": [0.0, 0.0, 0.0],
}
INTERACTIONS = [  # (dim_a, value_a, dim_b, value_b, metric, log effect before scaling)
    ("hook_type", "question", "format", "video", "ctr", 0.30),
    ("template", "ugc", "audience", "retargeting", "ctr", -0.25),
    ("hook_type", "offer", "audience", "retargeting", "cvr", 0.30),
]
# Library correlations: P(value of `child` | value of `parent`) leans towards these pairs.
CORRELATIONS = [
    ("hook_type", "format", {"story": "video", "testimonial": "video", "statistic": "image"}, 0.75),
    ("hook_type", "cta", {"offer": "shop_now", "question": "learn_more", "statistic": "learn_more"}, 0.8),
]


@dataclass
class WorldConfig:
    days: int = 60
    accounts: int = 20
    creatives_per_account: int = 30
    seed: int = 0
    effect_scale: float = 1.0
    null: bool = False
    start: date = date(2024, 1, 1)
    learning_accounts_share: float = 0.4
    drift: bool = False  # the template effect flips sign halfway through
    # The learning accounts' conversion rate grows by this share over the world's days (0.5: their
    # ROAS rises 50% whatever they launch), on top of the better attributes they drift towards.
    roas_growth: float = 0.0
    dimensions: dict[str, list[str]] = field(default_factory=lambda: dict(DIMENSIONS))


def _centred(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr - arr.mean()


def _effects(cfg: WorldConfig, base: dict) -> dict[str, np.ndarray]:
    scale = 0.0 if cfg.null else cfg.effect_scale
    return {d: _centred(base.get(d, [0.0] * len(v))) * scale for d, v in cfg.dimensions.items()}


def _interaction_matrix(cfg: WorldConfig, metric: str) -> dict[tuple[str, str], np.ndarray]:
    out: dict[tuple[str, str], np.ndarray] = {}
    if cfg.null:
        return out
    for da, va, db, vb, m, gamma in INTERACTIONS:
        if m != metric or da not in cfg.dimensions or db not in cfg.dimensions:
            continue
        ka, kb = len(cfg.dimensions[da]), len(cfg.dimensions[db])
        ea = np.eye(ka)[cfg.dimensions[da].index(va)] - 1.0 / ka
        eb = np.eye(kb)[cfg.dimensions[db].index(vb)] - 1.0 / kb
        # Double-centred: rows and columns sum to zero, so main effects are unchanged.
        out[(da, db)] = out.get((da, db), 0) + gamma * cfg.effect_scale * np.outer(ea, eb) * (ka * kb) / (
            (ka - 1) * (kb - 1)
        )
    return out


def _draw_attributes(
    rng, cfg: WorldConfig, n: int, preference: np.ndarray | None, ctr_eff, cvr_eff
) -> dict[str, np.ndarray]:
    """Draw `n` creatives' attributes; `preference` (0..1 per creative) tilts towards winners."""
    attrs: dict[str, np.ndarray] = {}
    for dim, values in cfg.dimensions.items():
        k = len(values)
        logits = np.zeros((n, k))
        if preference is not None:
            logits += preference[:, None] * 4.0 * (ctr_eff[dim] + cvr_eff[dim])[None, :]
        for parent, child, mapping, strength in CORRELATIONS:
            if child == dim and parent in attrs:
                for pv, cv in mapping.items():
                    if cv in values:
                        rows = attrs[parent] == pv
                        logits[rows, values.index(cv)] += np.log(strength * (k - 1) / (1 - strength))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        cum = probs.cumsum(axis=1)
        draws = (rng.random(n)[:, None] > cum).sum(axis=1).clip(0, k - 1)
        attrs[dim] = np.asarray(values, dtype=object)[draws]
    return attrs


def simulate(cfg: WorldConfig, true_rates: bool = False) -> tuple[pd.DataFrame, dict]:
    """Return (performance rows, truth). The same config and seed give the same output.

    With ``true_rates`` the rows keep ``true_ctr`` (the probability each impression was drawn
    with), for oracle comparisons in benchmarks."""
    rng = np.random.default_rng(cfg.seed)
    ctr_eff, cvr_eff = _effects(cfg, BASE_CTR_EFFECTS), _effects(cfg, BASE_CVR_EFFECTS)
    inter = {"ctr": _interaction_matrix(cfg, "ctr"), "cvr": _interaction_matrix(cfg, "cvr")}
    dims = list(cfg.dimensions)

    accounts = [f"acct_{i + 1:03d}" for i in range(cfg.accounts)]
    n_learning = 0 if cfg.null else round(cfg.learning_accounts_share * cfg.accounts)
    learning = {a: i < n_learning for i, a in enumerate(accounts)}
    acct = pd.DataFrame(
        {
            "account_id": accounts,
            "log_ctr": rng.normal(np.log(0.012), 0.3, cfg.accounts),
            "log_cvr": rng.normal(np.log(0.05), 0.3, cfg.accounts),
            "aov": np.exp(rng.normal(np.log(60.0), 0.3, cfg.accounts)),
            "cpm": np.exp(rng.normal(np.log(8.0), 0.2, cfg.accounts)),
            "volume": np.exp(rng.normal(np.log(4000.0), 0.5, cfg.accounts)),
        }
    )
    # Per-account deviations of each effect (heterogeneity across accounts).
    acct_dev = {
        (a, d, m): rng.normal(0, 0.05 * (0 if cfg.null else 1), len(cfg.dimensions[d]))
        for a in accounts
        for d in dims
        for m in ("ctr", "cvr")
    }

    frames = []
    for a_idx, account in enumerate(accounts):
        n = cfg.creatives_per_account
        launch = np.where(rng.random(n) < 0.3, 0, rng.integers(0, max(cfg.days, 1), n))
        lifetime = rng.integers(14, 45, n)
        pref = (launch / max(cfg.days - 1, 1)) if learning[account] else None
        attrs = _draw_attributes(rng, cfg, n, pref, ctr_eff, cvr_eff)
        quality_ctr = rng.normal(0, 0.25, n)
        quality_cvr = rng.normal(0, 0.2, n)
        rows_c, rows_d = [], []
        for c in range(n):
            days = np.arange(launch[c], min(launch[c] + lifetime[c], cfg.days))
            rows_c.append(np.full(len(days), c))
            rows_d.append(days)
        ci = np.concatenate(rows_c) if rows_c else np.array([], dtype=int)
        di = np.concatenate(rows_d) if rows_d else np.array([], dtype=int)
        if len(ci) == 0:
            continue
        a_row = acct.iloc[a_idx]
        day_dates = pd.to_datetime(cfg.start) + pd.to_timedelta(di, unit="D")
        dow = day_dates.day_of_week.to_numpy()
        weekend = dow >= 5
        impressions = rng.poisson(a_row["volume"] * np.exp(rng.normal(0, 0.4, len(ci))) * np.where(weekend, 0.8, 1.0))
        frame = pd.DataFrame({"c": ci, "d": di, "impressions": impressions})
        # Creatives live at the start of the window were already running: they carry a random
        # history of impressions, so the world starts in its steady state (no start-up trend).
        history = np.where(launch == 0, rng.uniform(0, 20, n) * a_row["volume"], 0.0)
        cum_before = frame.groupby("c")["impressions"].cumsum() - frame["impressions"] + history[ci]
        log_ctr = (
            a_row["log_ctr"] + quality_ctr[ci] + np.where(weekend, 0.10, 0.0) - 0.15 * cum_before.to_numpy() / 100_000
        )
        log_cvr = a_row["log_cvr"] + quality_cvr[ci] + np.where(weekend, -0.05, 0.0)
        if learning[account] and cfg.roas_growth:
            log_cvr = log_cvr + np.log1p(cfg.roas_growth) * di / max(cfg.days - 1, 1)
        for d in dims:
            idx = np.array([cfg.dimensions[d].index(v) for v in attrs[d]])[ci]
            ctr_d = ctr_eff[d] + acct_dev[(account, d, "ctr")]
            if cfg.drift and d == "template":
                flip = np.where(di >= cfg.days // 2, -1.0, 1.0)
                log_ctr = log_ctr + flip * ctr_d[idx]
            else:
                log_ctr = log_ctr + ctr_d[idx]
            log_cvr = log_cvr + (cvr_eff[d] + acct_dev[(account, d, "cvr")])[idx]
        for metric, target in (("ctr", "log_ctr"), ("cvr", "log_cvr")):
            for (da, db), mat in inter[metric].items():
                ia = np.array([cfg.dimensions[da].index(v) for v in attrs[da]])[ci]
                ib = np.array([cfg.dimensions[db].index(v) for v in attrs[db]])[ci]
                if target == "log_ctr":
                    log_ctr = log_ctr + mat[ia, ib]
                else:
                    log_cvr = log_cvr + mat[ia, ib]
        ctr = np.clip(np.exp(log_ctr), 0, 0.5)
        cvr = np.clip(np.exp(log_cvr), 0, 0.9)
        clicks = rng.binomial(impressions, ctr)
        conversions = rng.binomial(clicks, cvr)
        spend = np.round(impressions / 1000.0 * a_row["cpm"] * np.exp(rng.normal(0, 0.05, len(ci))), 2)
        revenue = np.round(
            conversions * a_row["aov"] * np.exp(rng.normal(0, 0.3, len(ci)) / np.sqrt(conversions + 1)), 2
        )
        out = pd.DataFrame(
            {
                "date": day_dates.strftime("%Y-%m-%d"),
                "account_id": account,
                "creative_id": [f"{account}_cr{c + 1:03d}" for c in ci],
                "impressions": impressions,
                "clicks": clicks,
                "conversions": conversions,
                "spend": spend,
                "revenue": revenue,
                # Expected counts without this creative's own quality draw: the estimand is about
                # attributes, over the population of creatives, not about these particular ones.
                "_expected_clicks": impressions * ctr * np.exp(-quality_ctr[ci]),
                "_expected_conversions": impressions * ctr * cvr * np.exp(-quality_ctr[ci] - quality_cvr[ci]),
                "_expected_revenue": impressions
                * ctr
                * cvr
                * a_row["aov"]
                * np.exp(-quality_ctr[ci] - quality_cvr[ci]),
                "_age_days": di - launch[ci],
                "_true_ctr": ctr,
            }
        )
        for d in dims:
            out[d] = attrs[d][ci]
        frames.append(out)
    data = (
        pd.concat(frames, ignore_index=True).sort_values(["date", "account_id", "creative_id"]).reset_index(drop=True)
    )
    truth = _truth(cfg, ctr_eff, cvr_eff, inter, acct, learning)
    _add_library_effects(truth, data, cfg)
    truth["true_roas_change"] = _true_roas_change(data)
    hidden = [c for c in data.columns if c.startswith("_")]
    out = data.drop(columns=hidden)
    if true_rates:
        out["true_ctr"] = data["_true_ctr"]
    return out, truth


def _true_roas_change(data: pd.DataFrame, window: int = 14) -> dict[str, float]:
    """Each account's expected ROAS (its creatives' own quality and the sampling noise left out)
    of the last ``window`` days over the first ``window``: what its attributes and any growth did."""
    day = pd.to_datetime(data["date"])
    out = {}
    for account, idx in data.groupby("account_id").groups.items():
        d, rows = day[idx], data.loc[idx]
        first, last = d < d.min() + pd.Timedelta(days=window), d > d.max() - pd.Timedelta(days=window)
        roas = [rows.loc[m, "_expected_revenue"].sum() / rows.loc[m, "spend"].sum() for m in (first, last)]
        out[account] = float(roas[1] / roas[0] - 1.0)
    return out


def _add_library_effects(truth: dict, data: pd.DataFrame, cfg: WorldConfig) -> None:
    """Add the effects *as an additive model reports them on this library* (``lift``).

    With interactions, unequal attribute mixes and fatigue, an additive model's target is the
    pseudo-true value: the fit on the expected counts (no sampling noise) of the simulated rows.
    The design values stay as ``structural_lift``. This is what interval coverage is judged on.
    """
    from compound_learning.core.effects import fit_effects
    from compound_learning.core.stats import age_bucket

    frame = data.assign(
        dow=pd.to_datetime(data["date"]).dt.day_of_week,
        age_bucket=age_bucket(data["_age_days"]),
        clicks=data["_expected_clicks"],
        conversions=data["_expected_conversions"],
        revenue=data["_expected_revenue"],
    )
    keys = ["account_id", "creative_id", "dow", "age_bucket", *cfg.dimensions]
    cells = frame.groupby(keys, as_index=False)[["impressions", "clicks", "conversions", "spend", "revenue"]].sum()
    library = {}
    for metric in ("ctr", "cvr", "roas"):
        fit = fit_effects(cells, list(cfg.dimensions), metric)
        if fit is not None and not fit.effects.empty:
            for r in fit.effects.itertuples():
                library[(r.dimension, r.value, metric)] = float(r.log_effect)
    for eff in truth["effects"]:
        eff["structural_log_effect"], eff["structural_lift"] = eff["log_effect"], eff["lift"]
        key = (eff["dimension"], eff["value"], eff["metric"])
        if key in library:
            eff["log_effect"], eff["lift"] = library[key], float(np.expm1(library[key]))


def _truth(cfg, ctr_eff, cvr_eff, inter, acct, learning) -> dict:
    effects = []
    for d, values in cfg.dimensions.items():
        for i, v in enumerate(values):
            for metric, log_eff in (
                ("ctr", ctr_eff[d][i]),
                ("cvr", cvr_eff[d][i]),
                ("roas", ctr_eff[d][i] + cvr_eff[d][i]),
            ):
                drifting = cfg.drift and d == "template" and metric in ("ctr", "roas")
                effects.append(
                    {
                        "dimension": d,
                        "value": v,
                        "metric": metric,
                        "log_effect": float(log_eff),
                        "lift": float(np.expm1(log_eff)),
                        "drifting": drifting,
                    }
                )
    interactions = []
    for metric, mats in inter.items():
        for (da, db), mat in mats.items():
            for i, va in enumerate(cfg.dimensions[da]):
                for j, vb in enumerate(cfg.dimensions[db]):
                    interactions.append(
                        {
                            "attributes": {da: va, db: vb},
                            "metric": metric,
                            "log_effect": float(mat[i, j]),
                            "lift": float(np.expm1(mat[i, j])),
                        }
                    )
    return {
        "config": {
            "days": cfg.days,
            "accounts": cfg.accounts,
            "creatives_per_account": cfg.creatives_per_account,
            "seed": cfg.seed,
            "effect_scale": cfg.effect_scale,
            "null": cfg.null,
            "start": cfg.start.isoformat(),
            "drift": cfg.drift,
        },
        "definition": (
            "lift = multiplier of the rate against the geometric mean over the values of the "
            "same dimension, minus 1; cvr is conversions per click; roas = ctr x cvr effect "
            "(cost per impression does not depend on attributes)"
        ),
        "effects": effects,
        "interactions": interactions,
        "null_dimensions": [d for d in cfg.dimensions if np.allclose(ctr_eff[d], 0) and np.allclose(cvr_eff[d], 0)],
        "accounts": [
            {
                "account_id": r.account_id,
                "baseline_ctr": float(np.exp(r.log_ctr)),
                "baseline_cvr": float(np.exp(r.log_cvr)),
                "avg_order_value": float(r.aov),
                "cpm": float(r.cpm),
                "learning": bool(learning[r.account_id]),
            }
            for r in acct.itertuples()
        ],
    }
