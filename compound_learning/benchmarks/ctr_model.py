"""CTR model quality against the oracle, and training time on 1M aggregated rows.

Quality: a simulated world is split in time (train, then a later holdout); both families are
trained on the creative-day rows and scored on the holdout next to the oracle that knows every
row's true click probability. Time: 1M aggregated creative-day rows (a large world's library,
generated directly) trained with sample weights, per family.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from compound_learning.core import ctr_model as cm
from compound_learning.core import stats
from compound_learning.core.simulate import DIMENSIONS, WorldConfig, simulate


def _prepare(data: pd.DataFrame) -> pd.DataFrame:
    frame = data.copy()
    frame["date"] = pd.to_datetime(frame["date"])
    first = frame.groupby(["account_id", "creative_id"])["date"].transform("min")
    frame["age_days"] = stats.creative_age_days(frame["date"], first).to_numpy()
    frame["dow"] = frame["date"].dt.day_of_week.astype(str)
    return frame


SAMPLE_SHARES = (1.0, 0.5, 0.25, 0.1)


def quality(
    days: int = 60, accounts: int = 20, holdout_days: int = 7, seed: int = 3, shares: tuple = SAMPLE_SHARES
) -> dict:
    """Holdout figures of each family next to the oracle's, trained on every distinct input and
    on uniform samples of them (``shares``: what ``model_max_train_inputs`` does to a large day)."""
    data, _ = simulate(WorldConfig(days=days, accounts=accounts, seed=seed), true_rates=True)
    frame = _prepare(data)
    cut = frame["date"].max() - pd.Timedelta(days=holdout_days - 1)
    train, hold = frame[frame["date"] < cut], frame[frame["date"] >= cut]
    spec = cm.FeatureSpec(categorical=[*DIMENSIONS, "account_id", "dow"])
    oracle = cm.evaluate(hold["true_ctr"].to_numpy(), hold)
    out = {
        "train_rows": len(train),
        "holdout_rows": len(hold),
        "holdout_clicks": int(hold["clicks"].sum()),
        "oracle": {k: oracle[k] for k in ("log_loss", "normalized_entropy", "calibration_ratio", "auc")},
    }
    aggregated = cm.aggregate(train, spec)
    out["train_inputs"] = len(aggregated[0])
    for family in cm.FAMILIES:
        for share in shares:
            start = time.perf_counter()
            model = cm.fit_model(train, spec, family, round(share * len(aggregated[0])), aggregated)
            fit_s = time.perf_counter() - start
            m = cm.evaluate(cm.predict_ctr(model, hold, spec), hold)
            figures = {
                "fit_seconds": round(fit_s, 3),
                "ne_vs_oracle": m["normalized_entropy"] / oracle["normalized_entropy"],
                **{k: m[k] for k in ("log_loss", "normalized_entropy", "calibration_ratio", "auc")},
            }
            if share == 1.0:
                out[family] = figures
            else:
                out.setdefault(f"{family}_on_a_sample", {})[f"{share:.0%} of the inputs"] = figures
    return out


def training_time(rows: int = 1_000_000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({d: rng.choice(v, rows) for d, v in DIMENSIONS.items()})
    frame["account_id"] = rng.choice([f"acct_{i:04d}" for i in range(500)], rows)
    frame["dow"] = rng.integers(0, 7, rows).astype(str)
    frame["age_days"] = rng.integers(0, 60, rows)
    frame["impressions"] = rng.integers(100, 20_000, rows)
    frame["clicks"] = rng.binomial(frame["impressions"], 0.012)
    spec = cm.FeatureSpec(categorical=[*DIMENSIONS, "account_id", "dow"])
    out = {"aggregated_rows": rows}
    for family in cm.FAMILIES:
        start = time.perf_counter()
        cm.fit_model(frame, spec, family)
        out[f"{family}_fit_seconds"] = round(time.perf_counter() - start, 2)
    return out


def main(rows: int = 1_000_000) -> dict:
    result = {"quality": quality(), "training_time": training_time(rows)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
