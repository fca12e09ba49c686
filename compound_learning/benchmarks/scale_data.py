"""Large daily CSV files for the scale benchmarks, written without the project's simulator.

A day of ``rows`` rows: ``rows / 200`` accounts with 200 live creatives each, five attribute
columns fixed per creative, and counts drawn so that clicks never exceed impressions. The
generator is plain numpy and pandas so the files can be reproduced, and checked, by anyone.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

CREATIVES_PER_ACCOUNT = 200
ATTRIBUTES = {
    "hook_type": ["question", "statistic", "story", "offer", "testimonial", "demo"],
    "template": ["ugc", "studio", "carousel", "static", "motion"],
    "audience": ["broad", "lookalike", "retargeting", "interest"],
    "format": ["video", "image", "carousel"],
    "cta": ["shop_now", "learn_more", "sign_up", "get_offer"],
}


def day_frame(rows: int, day: date, seed: int = 0) -> pd.DataFrame:
    """One day's rows for ``rows // 200`` accounts; a creative keeps its attributes every day."""
    rng = np.random.default_rng(seed + day.toordinal())
    accounts = max(1, rows // CREATIVES_PER_ACCOUNT)
    index = np.arange(rows)
    account = index % accounts
    creative = index // accounts
    attr_rng = np.random.default_rng(seed)  # the same creative has the same attributes each day
    impressions = rng.integers(100, 20_000, rows)
    clicks = rng.binomial(impressions, 0.012)
    conversions = rng.binomial(clicks, 0.05)
    spend = np.round(impressions * rng.uniform(0.002, 0.012, rows), 2)
    revenue = np.round(conversions * rng.uniform(20, 80, rows), 2)
    frame = pd.DataFrame(
        {
            "date": day.isoformat(),
            "account_id": pd.Series(account).map(lambda a: f"acct_{a:05d}"),
            "creative_id": [f"cr_{a:05d}_{c:04d}" for a, c in zip(account, creative, strict=True)],
            "impressions": impressions,
            "clicks": clicks,
            "conversions": conversions,
            "spend": spend,
            "revenue": revenue,
        }
    )
    max_creatives = int(creative.max()) + 1
    for name, values in ATTRIBUTES.items():
        table = attr_rng.integers(0, len(values), (accounts, max_creatives))
        frame[name] = np.asarray(values, dtype=object)[table[account, creative]]
    return frame


def write_days(path: Path, rows: int, first: date, days: int = 1, seed: int = 0) -> Path:
    """Write ``days`` consecutive days of ``rows`` rows each to one CSV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(days):
        day_frame(rows, first + timedelta(days=i), seed).to_csv(
            path, mode="w" if i == 0 else "a", header=i == 0, index=False
        )
    return path
