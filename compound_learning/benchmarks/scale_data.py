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


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit integer hash (SplitMix64's finalizer), elementwise on an array, wrapping modulo
    2**64 as it is meant to (numpy's array arithmetic wraps silently; its scalars would warn)."""
    x = np.atleast_1d(np.asarray(x, dtype=np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def day_frame(rows: int, day: date, seed: int = 0, lifetime_days: int | None = None) -> pd.DataFrame:
    """One day's rows for ``rows // 200`` accounts; a creative keeps its attributes every day.

    Without ``lifetime_days`` the same creatives run every day. With it, each of an account's
    200 slots runs a creative for ``lifetime_days`` and then a new one (new id, new attributes),
    the slots staggered so that every day some creatives end: the daily volume stays the same
    while the creatives ever seen keep growing, as in an account that keeps launching."""
    rng = np.random.default_rng(seed + day.toordinal())
    accounts = max(1, rows // CREATIVES_PER_ACCOUNT)
    index = np.arange(rows)
    account = index % accounts
    creative = index // accounts
    if lifetime_days:
        generation = (day.toordinal() + creative) // lifetime_days
        # the g-th creative of a slot: a fresh id and attribute draw per generation
        creative = creative + CREATIVES_PER_ACCOUNT * generation
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
    for k, (name, values) in enumerate(ATTRIBUTES.items()):
        if lifetime_days:  # a creative's attributes follow from its own number, whatever the day
            key = (account.astype(np.uint64) << np.uint64(32)) + creative.astype(np.uint64)
            salt = _splitmix64(np.array([seed * len(ATTRIBUTES) + k], dtype=np.uint64))
            codes = (_splitmix64(key ^ salt) % np.uint64(len(values))).astype(int)
        else:
            codes = attr_rng.integers(0, len(values), (accounts, int(creative.max()) + 1))[account, creative]
        frame[name] = np.asarray(values, dtype=object)[codes]
    return frame


def write_days(path: Path, rows: int, first: date, days: int = 1, seed: int = 0) -> Path:
    """Write ``days`` consecutive days of ``rows`` rows each to one CSV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(days):
        day_frame(rows, first + timedelta(days=i), seed).to_csv(
            path, mode="w" if i == 0 else "a", header=i == 0, index=False
        )
    return path
