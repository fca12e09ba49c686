"""Creative DNA: explainable scoring weights for new creatives, and the scorer.

Weights are log multipliers of each attribute value against its dimension's geometric mean,
re-estimated from the cumulative evidence every cycle and shrunk (empirical Bayes) so that a
value seen on a handful of creatives, or a lucky early winner, does not dominate a score:
global weights shrink towards zero, an account's weights shrink towards the global ones
(partial pooling) with the between-account spread as the prior variance.
"""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pandas as pd

from compound_learning.config import GLOBAL, METRICS
from compound_learning.core.effects import Z95
from compound_learning.core.patterns import main_effects
from compound_learning.core.shrinkage import posterior, prior_variance

WEIGHT_COLUMNS = ["account_id", "metric", "dimension", "value", "weight", "weight_se", "creatives"]
BASELINE_VALUE = "__baseline__"
PAIR_PREFIX = "__pair__:"


def pair_dimension(dim_a: str, dim_b: str) -> str:
    """The DNA row name of an interaction between two dimensions (order-free)."""
    return PAIR_PREFIX + json.dumps(sorted([dim_a, dim_b]))


def pair_value(attributes: dict[str, str], dim_a: str, dim_b: str) -> str:
    a, b = sorted([dim_a, dim_b])
    return json.dumps([attributes[a], attributes[b]])


def pair_dimensions(dims) -> list[str]:
    """Every pair row name a creative with these dimensions can touch."""
    return [pair_dimension(a, b) for a, b in combinations(sorted(dims), 2)]


def is_pair(dimension: str) -> bool:
    return dimension.startswith(PAIR_PREFIX)


def _row(account_id, metric, dimension, value, weight, weight_se, creatives) -> dict:
    return {
        "account_id": account_id,
        "metric": metric,
        "dimension": dimension,
        "value": value,
        "weight": float(weight),
        "weight_se": float(weight_se),
        "creatives": int(creatives),
    }


def dna_weights(patterns: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Global and per-account weights from the cycle's patterns; per-account baseline log rates
    ride along as rows with ``dimension == value == "__baseline__"``."""
    rows = []
    effects = main_effects(patterns)
    glob = effects[effects["account_id"] == GLOBAL]
    global_means: dict[tuple, tuple[float, float]] = {}
    for metric, sub in glob.groupby("metric"):
        tau2 = prior_variance(sub["log_effect"], sub["std_error"])
        mean, sd = posterior(sub["log_effect"], sub["std_error"], tau2)
        for r, m, s in zip(sub.itertuples(), mean, sd, strict=True):
            global_means[(metric, r.dimension, r.value)] = (float(m), float(s))
            rows.append(_row(GLOBAL, metric, r.dimension, r.value, m, s, r.creatives))
    local = effects[effects["account_id"] != GLOBAL]
    for metric, sub in local.groupby("metric"):
        pooled = [
            global_means.get((metric, d, v), (0.0, 0.0)) for d, v in zip(sub["dimension"], sub["value"], strict=True)
        ]
        prior = np.array([m for m, _ in pooled])
        prior_sd = np.array([s for _, s in pooled])
        tau2 = prior_variance(sub["log_effect"], sub["std_error"], prior)
        # The account's effect varies around a global effect that is itself uncertain: its prior
        # variance is the between-account spread plus the global weight's own variance.
        mean, sd = posterior(sub["log_effect"], sub["std_error"], tau2 + prior_sd**2, prior)
        for r, m, s in zip(sub.itertuples(), mean, sd, strict=True):
            rows.append(_row(r.account_id, metric, r.dimension, r.value, m, s, r.creatives))
    # Interactions (synergy): shrunk the same way, towards no interaction; most are noise and
    # shrink to nothing, the supported ones keep their weight.
    inter = patterns[
        (patterns["pattern_type"] == "interaction")
        & (patterns["account_id"] == GLOBAL)
        & patterns["std_error"].notna()
        & (patterns["state"] != "insufficient_data")
    ]
    for metric, sub in inter.groupby("metric"):
        tau2 = prior_variance(sub["log_effect"], sub["std_error"])
        mean, sd = posterior(sub["log_effect"], sub["std_error"], tau2)
        for r, m, s in zip(sub.itertuples(), mean, sd, strict=True):
            attrs = json.loads(r.attributes)
            da, db = sorted(attrs)
            support = json.loads(r.support).get("creatives", 0)
            rows.append(_row(GLOBAL, metric, pair_dimension(da, db), pair_value(attrs, da, db), m, s, support))
    for b in baselines.itertuples():
        se = b.std_error if np.isfinite(b.std_error) else 0.0
        rows.append(_row(b.account_id, b.metric, BASELINE_VALUE, BASELINE_VALUE, b.log_rate, se, 0))
    return pd.DataFrame(rows, columns=WEIGHT_COLUMNS)


def score_creative(weights: pd.DataFrame, account_id: str, creative: dict[str, str]) -> dict:
    """Score a new creative for an account against that account's baseline.

    Returns the DNA score (100 = the account's typical fresh creative, on ROAS when known,
    else CTR), predicted CTR / conversion rate / ROAS with 95% intervals, each attribute's
    contribution, and the values never seen (which contribute nothing and are flagged).
    """
    # One pass over the rows into lookups; the loops below then touch no DataFrame.
    lookup: dict[tuple[str, str, str, str], tuple[float, float]] = {
        (r.account_id, r.metric, r.dimension, r.value): (float(r.weight), float(r.weight_se))
        for r in weights.itertuples(index=False)
    }
    baselines = {
        m: lookup[(account_id, m, BASELINE_VALUE, BASELINE_VALUE)]
        for m in METRICS
        if (account_id, m, BASELINE_VALUE, BASELINE_VALUE) in lookup
    }
    if not baselines:
        # Never list the accounts that do have one: a caller may only know of its own.
        raise LookupError(f"account {account_id!r} has no baseline yet: no learning cycle has seen its data")
    known_values = {(d, v) for (a, _m, d, v) in lookup if a == GLOBAL and not is_pair(d)}
    known_dims = {d for d, _ in known_values}
    predictions, contributions, unseen, unknown_dims = {}, [], [], []
    for dim, value in sorted(creative.items()):
        if dim not in known_dims:
            unknown_dims.append(dim)
        elif (dim, value) not in known_values:
            unseen.append({"dimension": dim, "value": value})
    for metric in METRICS:
        if metric not in baselines:
            continue
        log_rate, base_se = baselines[metric]
        var = base_se**2
        total = 0.0
        for dim, value in sorted(creative.items()):
            source = "account" if (account_id, metric, dim, value) in lookup else "global"
            found = lookup.get((account_id if source == "account" else GLOBAL, metric, dim, value))
            if found is None:
                continue
            w, se = found
            total += w
            var += se**2
            contributions.append(
                {"dimension": dim, "value": value, "metric": metric, "lift": float(np.expm1(w)), "source": source}
            )
        for da, db in combinations(sorted(creative), 2):
            found = lookup.get((GLOBAL, metric, pair_dimension(da, db), pair_value(creative, da, db)))
            if found is not None:
                w, se = found
                total += w
                var += se**2
                contributions.append(
                    {
                        "dimension": f"{da} x {db}",
                        "value": f"{creative[da]} x {creative[db]}",
                        "metric": metric,
                        "lift": float(np.expm1(w)),
                        "source": "global synergy",
                    }
                )
        est = log_rate + total
        sd = float(np.sqrt(var))
        predictions[metric] = {
            "predicted": float(np.exp(est)),
            "ci_low": float(np.exp(est - Z95 * sd)),
            "ci_high": float(np.exp(est + Z95 * sd)),
            "baseline": float(np.exp(log_rate)),
            "relative_to_baseline": float(np.exp(total)),
        }
    headline = "roas" if "roas" in predictions else "ctr"
    return {
        "account_id": account_id,
        "creative": creative,
        "dna_score": round(100.0 * predictions[headline]["relative_to_baseline"], 1)
        if headline in predictions
        else None,
        "dna_score_metric": headline,
        "predictions": predictions,
        "contributions": contributions,
        "unseen_values": unseen,
        "unknown_dimensions": unknown_dims,
    }
