"""Cross-account insights: per-account effects pooled with a random-effects meta-analysis.

An insight is published only when at least ``min_accounts`` distinct accounts contribute and
no two accounts dominate (the top two carry < ``max_top2_share`` of the inverse-variance
weight). Only relative figures leave this module, never an account identifier.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from compound_learning.config import GLOBAL
from compound_learning.core.effects import Z95
from compound_learning.core.patterns import main_effects

INSIGHT_COLUMNS = [
    "insight_id",
    "attributes",
    "metric",
    "pooled_lift",
    "ci_low",
    "ci_high",
    "tau2",
    "i2",
    "n_accounts",
    "top2_share",
    "published",
    "reason",
]


def dersimonian_laird(est: np.ndarray, se: np.ndarray) -> dict:
    """Random-effects pooled estimate, its se, tau^2 and I^2 (DerSimonian-Laird)."""
    w = 1.0 / se**2
    fixed = np.sum(w * est) / np.sum(w)
    q = float(np.sum(w * (est - fixed) ** 2))
    df = len(est) - 1
    c = np.sum(w) - np.sum(w**2) / np.sum(w)
    tau2 = max(0.0, (q - df) / c) if c > 0 else 0.0
    w_re = 1.0 / (se**2 + tau2)
    pooled = float(np.sum(w_re * est) / np.sum(w_re))
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return {
        "pooled": pooled,
        "se": float(np.sqrt(1.0 / np.sum(w_re))),
        "tau2": float(tau2),
        "i2": float(i2),
        "weights": w_re / np.sum(w_re),
    }


def cross_account_insights(
    patterns: pd.DataFrame, min_accounts: int = 5, max_top2_share: float = 0.8, min_creatives: int = 5
) -> pd.DataFrame:
    """Pool each attribute value's per-account effects (from the cycle's per-account patterns)."""
    rows = []
    effects = main_effects(patterns[patterns["account_id"] != GLOBAL])
    effects = effects[(effects["std_error"] > 0) & (effects["creatives"] >= min_creatives)]
    for metric, stacked in effects.groupby("metric"):
        for (dim, value), sub in stacked.groupby(["dimension", "value"]):
            attrs = {dim: value}
            n = sub["account_id"].nunique()
            if n < 2:
                continue
            res = dersimonian_laird(sub["log_effect"].to_numpy(float), sub["std_error"].to_numpy(float))
            top2 = float(np.sort(res["weights"])[-2:].sum())
            reasons = []
            if n < min_accounts:
                reasons.append(f"only {n} accounts contribute (need {min_accounts})")
            if top2 >= max_top2_share:
                reasons.append(f"two accounts carry {top2:.0%} of the evidence (limit {max_top2_share:.0%})")
            rows.append(
                {
                    "insight_id": f"{metric}|" + "&".join(f"{k}={v}" for k, v in sorted(attrs.items())),
                    "attributes": json.dumps(attrs, sort_keys=True),
                    "metric": metric,
                    "pooled_lift": float(np.expm1(np.clip(res["pooled"], -20, 20))),
                    "ci_low": float(np.expm1(np.clip(res["pooled"] - Z95 * res["se"], -20, 20))),
                    "ci_high": float(np.expm1(np.clip(res["pooled"] + Z95 * res["se"], -20, 20))),
                    "tau2": res["tau2"],
                    "i2": res["i2"],
                    "n_accounts": int(n),
                    "top2_share": top2,
                    "published": not reasons,
                    "reason": "; ".join(reasons) or "published",
                }
            )
    return pd.DataFrame(rows, columns=INSIGHT_COLUMNS)
