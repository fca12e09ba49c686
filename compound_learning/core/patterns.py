"""Patterns: adjusted effects turned into auditable claims with a state.

Every attribute value (and every supported pair) gets, per metric and scope (global or one
account): relative lift with a 95% interval, a q-value, a confidence in 0..1, its support and a
state. The q-values come from one Benjamini-Hochberg family over every test of the cycle (main
effects, interactions and per-account patterns), *weighted* (Genovese, Roeder & Wasserman 2006):
the global main effects, a few hundred tests, hold at least ``primary_share`` (a quarter) of
the family's error budget, and the thousands of interactions and per-account patterns the rest.
The false discovery rate of the whole family stays at ``alpha``, and the primary claims are not
swamped by the secondary ones; where the main effects are already a quarter of the family, it is
plain BH. Separate families were measured before and not kept: the null dimension
correlated with a strong one became significant in one of two correlated worlds. States:

- ``insufficient_data``: fewer than ``min_creatives`` creatives carry the value (or the
  contrast is not estimable); nothing is claimed;
- ``learning``: estimable, not (yet) significant, or significant for fewer than
  ``persistence`` consecutive cycles (daily re-testing is peeking: a claim must hold);
- ``significant``: q < alpha with the same sign for ``persistence`` consecutive cycles;
- ``contradicted``: was significant, and new evidence is significant the other way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from itertools import combinations

import numpy as np
import pandas as pd

# scipy.stats is imported in the functions that use them: every process that loads the
# definitions imports this module, and a day with nothing to fit should not pay a second for it.
from compound_learning.config import GLOBAL, PatternSettings
from compound_learning.core import stats
from compound_learning.core.effects import METRIC_SPECS, CodedCells, EffectFit, fit_coded

PATTERN_COLUMNS = [
    "pattern_id",
    "pattern_type",
    "account_id",
    "attributes",
    "metric",
    "lift",
    "ci_low",
    "ci_high",
    "log_effect",
    "std_error",
    "p_value",
    "q_value",
    "confidence",
    "state",
    "streak",
    "support",
    "first_seen",
    "last_updated",
]


@dataclass
class CycleFits:
    """The fits of one cycle, kept for the assets downstream (DNA, insights)."""

    global_fits: dict[str, EffectFit]
    account_fits: dict[tuple[str, str], EffectFit]  # (account_id, metric) -> fit


# the one Benjamini-Hochberg family (see the module docstring)
TEST_FAMILY = "every test of the cycle (weighted: the global main effects hold at least a quarter of the error budget)"


def pattern_id(metric: str, account_id: str, attributes: dict) -> str:
    attrs = "&".join(f"{k}={v}" for k, v in sorted(attributes.items()))
    return f"{metric}|{account_id}|{attrs}"


def _rows_from_fit(fit: EffectFit, account_id: str, settings: PatternSettings) -> list[dict]:
    rows = []
    for records, is_inter in ((fit.effect_rows, False), (fit.interaction_rows, True)):
        for r in records:
            if is_inter:
                attrs = {r["dimension"]: r["value"], r["dimension2"]: r["value2"]}
                ptype = "interaction"
            else:
                attrs = {r["dimension"]: r["value"]}
                ptype = r["dimension"]
            support = {
                k: (None if pd.isna(r.get(k)) else float(r[k]) if k in ("spend", "revenue") else round(r[k]))
                for k in ("impressions", "clicks", "conversions", "spend", "revenue", "creatives", "accounts")
                if k in r
            }
            est, se = r["log_effect"], r["std_error"]
            # |log effect| > 10 (a 22,000x lift) only comes from separation, never from evidence.
            estimable = np.isfinite(est) and np.isfinite(se) and se > 0 and abs(est) < 10
            needed = settings.min_interaction_creatives if is_inter else settings.min_creatives
            enough = support.get("creatives", 0) >= needed
            rows.append(
                {
                    "pattern_id": pattern_id(fit.metric, account_id, attrs),
                    "pattern_type": ptype,
                    "account_id": account_id,
                    "attributes": json.dumps(attrs, sort_keys=True),
                    "metric": fit.metric,
                    "log_effect": float(est) if np.isfinite(est) else np.nan,
                    "std_error": float(se) if estimable else np.nan,
                    "df": float(r.get("df", np.inf)),
                    "testable": bool(estimable and enough),
                    "support": json.dumps(support, sort_keys=True),
                }
            )
    return rows


def fit_global(
    coded: CodedCells, settings: PatternSettings, metrics: Sequence[str] | None = None
) -> dict[str, EffectFit]:
    """The global fits of one cycle, one per metric (of ``metrics``, all by default), with
    interactions of every pair of dimensions. Each metric's fit is independent of the others'."""
    pairs = list(combinations(coded.dims, 2)) if settings.interactions else []
    out = {}
    for metric in METRIC_SPECS if metrics is None else metrics:
        fit = fit_coded(
            coded,
            metric,
            interaction_pairs=pairs,
            inference=settings.global_inference,
            min_cell_creatives=settings.min_interaction_creatives,
        )
        if fit is not None:
            out[metric] = fit
    return out


def fit_accounts(
    coded: CodedCells, settings: PatternSettings, accounts: Callable[[str], bool] | None = None
) -> dict[tuple[str, str], EffectFit]:
    """Per-account fits (each account alone), for the accounts ``accounts`` keeps (all by default).

    Each account's fit reads only its own rows of the shared coding, so any split of the accounts
    gives the same fits: that is what lets the cycle run them as shards."""
    out = {}
    if not settings.per_account:
        return out
    for account_id, rows in coded.rows_by_account().items():
        if accounts is not None and not accounts(account_id):
            continue
        if len(np.unique(coded.creative[rows])) < settings.min_creatives:
            continue
        for metric in METRIC_SPECS:
            fit = fit_coded(coded, metric, rows, inference="creative")
            if fit is not None:
                out[(account_id, metric)] = fit
    return out


# What a per-account fit reads of a cell: its keys within the account, its sums (and its attributes).
DIGEST_COLUMNS = [*stats.CELL_KEYS[1:], *stats.METRICS, *stats.COLLAPSED_COLUMNS]


@lru_cache(maxsize=1)
def fit_code_version() -> str:
    """A digest of the code a per-account fit runs (this module, the effects and the cells'
    statistics): a cached fit is not reused across a change of it."""
    import hashlib
    from pathlib import Path

    from compound_learning.core import effects

    h = hashlib.sha256()
    for module in (effects, stats):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def account_digests(cells: pd.DataFrame, rows_by_account: dict[str, np.ndarray], salt: str) -> dict[str, str]:
    """Per account, a SHA-256 of its cells (``DIGEST_COLUMNS`` and the attributes, its rows of
    ``cells`` as ``CodedCells.rows_by_account`` gives them) and ``salt`` (the fitting code and
    settings): equal digests, equal per-account fits, since an account's fit reads only its own
    rows (``fit_accounts``)."""
    import hashlib

    if cells.empty:
        return {}
    columns = [c for c in (*DIGEST_COLUMNS, "attributes") if c in cells.columns]
    row_hashes = pd.util.hash_pandas_object(cells[columns], index=False).to_numpy()
    out = {}
    for account, rows in rows_by_account.items():
        h = hashlib.sha256(salt.encode())
        h.update(np.ascontiguousarray(row_hashes[rows]).tobytes())
        out[account] = h.hexdigest()
    return out


def fit_cycle(cells: pd.DataFrame, dims: list[str], settings: PatternSettings) -> CycleFits:
    """All GLM fits of one cycle: global (with interactions) and per account."""
    coded = CodedCells(cells, dims)
    return CycleFits(fit_global(coded, settings), fit_accounts(coded, settings))


CANDIDATE_COLUMNS = [
    "pattern_id",
    "pattern_type",
    "account_id",
    "attributes",
    "metric",
    "log_effect",
    "std_error",
    "df",
    "testable",
    "support",
]


def pattern_candidates(fits: CycleFits, settings: PatternSettings) -> pd.DataFrame:
    """Every estimate of the fits as a candidate pattern (effect, standard error, support), before
    the cycle's multiple testing: the part of :func:`build_patterns` that splits by account."""
    rows: list[dict] = []
    for fit in fits.global_fits.values():
        rows += _rows_from_fit(fit, GLOBAL, settings)
    for (account_id, _metric), fit in fits.account_fits.items():
        rows += _rows_from_fit(fit, account_id, settings)
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def build_patterns(
    fits: CycleFits, as_of: date, previous: pd.DataFrame | None, settings: PatternSettings
) -> pd.DataFrame:
    """Pattern rows for ``as_of`` from the cycle's fits and the previous cycle's patterns."""
    return patterns_from_candidates(pattern_candidates(fits, settings), as_of, previous, settings)


def patterns_from_candidates(
    candidates: pd.DataFrame, as_of: date, previous: pd.DataFrame | None, settings: PatternSettings
) -> pd.DataFrame:
    """q-values over every candidate of the cycle (one family), intervals, confidence and states.

    The result does not depend on the order of the candidates (the rows are sorted by key)."""
    if candidates.empty:
        return pd.DataFrame(columns=PATTERN_COLUMNS)
    from scipy import stats as sps  # after the check: a day with nothing to test does not load scipy.stats

    df = candidates.reset_index(drop=True)
    df["testable"] = df["testable"].astype(bool)
    for col in ("log_effect", "std_error", "df"):
        df[col] = df[col].astype(float)
    z = (df["log_effect"] / df["std_error"]).fillna(0).abs().to_numpy()
    dof = df["df"].fillna(np.inf).clip(lower=1).to_numpy()
    df["p_value"] = np.where(df["testable"], 2 * sps.t.sf(z, dof), np.nan)
    df["q_value"] = np.nan
    testable = df["testable"].to_numpy()
    if testable.any():
        tested = df[testable]
        primary = ((tested["pattern_type"] != "interaction") & (tested["account_id"] == GLOBAL)).to_numpy()
        df.loc[testable, "q_value"] = weighted_bh(tested["p_value"].to_numpy(), primary, settings.primary_share)
    half = sps.t.ppf(0.975, dof) * df["std_error"]
    df["lift"] = np.expm1(df["log_effect"].clip(-10, 10))
    # Bounds are clipped at e^20 (a "no upper bound in practice" interval from tiny support).
    df["ci_low"] = np.where(df["testable"], np.expm1((df["log_effect"] - half).clip(-20, 20)), np.nan)
    df["ci_high"] = np.where(df["testable"], np.expm1((df["log_effect"] + half).clip(-20, 20)), np.nan)
    df["confidence"] = np.where(df["testable"], 1.0 - df["q_value"].fillna(1.0), 0.0)
    df = _apply_states(df, as_of, previous, settings)
    return df[PATTERN_COLUMNS].sort_values(["metric", "account_id", "pattern_id"]).reset_index(drop=True)


def bh_weights(primary: np.ndarray, primary_share: float) -> np.ndarray:
    """Weights (mean 1) that give the ``primary`` tests at least ``primary_share`` of the family's
    error budget, the others the rest. A family where the primary tests already hold that share
    gets plain BH (all ones): the weighting only keeps a few primary tests from being swamped by
    thousands of secondary ones, it never favours them beyond their fair share."""
    if not 0.0 < primary_share < 1.0:
        raise ValueError(f"primary_share must be between 0 and 1 (exclusive), got {primary_share}")
    m, k = len(primary), int(primary.sum())
    w_primary = max(1.0, primary_share * m / k) if 0 < k < m else 1.0
    return np.where(primary, w_primary, (m - k * w_primary) / (m - k) if k < m else 1.0)


def weighted_bh(p_values: np.ndarray, primary: np.ndarray, primary_share: float) -> np.ndarray:
    """q-values of the weighted Benjamini-Hochberg procedure (Genovese, Roeder & Wasserman,
    2006): BH on ``p / w`` with weights of mean 1, which keeps the false discovery rate of the
    whole family at the level while the primary tests are not swamped by the secondary ones."""
    from scipy import stats as sps

    w = bh_weights(np.asarray(primary, bool), primary_share)
    return sps.false_discovery_control(np.minimum(np.asarray(p_values, float) / w, 1.0), method="bh")


def _apply_states(df: pd.DataFrame, as_of: date, previous: pd.DataFrame | None, s: PatternSettings) -> pd.DataFrame:
    cols = ["pattern_id", "log_effect", "state", "streak", "first_seen"]
    prev = previous[cols] if previous is not None and not previous.empty else pd.DataFrame(columns=cols)
    merged = df.merge(prev.rename(columns={c: f"prev_{c}" for c in cols[1:]}), on="pattern_id", how="left")
    has_prev = merged["prev_state"].notna().to_numpy()
    sign = np.sign(merged["log_effect"].fillna(0.0)).to_numpy()
    prev_sign = np.sign(merged["prev_log_effect"].astype(float).fillna(0.0)).to_numpy()
    prev_streak = merged["prev_streak"].astype(float).fillna(0.0).to_numpy()
    prev_state = merged["prev_state"].fillna("").to_numpy()
    testable = merged["testable"].to_numpy(bool)
    sig_now = testable & (merged["q_value"].fillna(1.0).to_numpy() < s.alpha)
    # streak > 0: consecutive significant cycles in the positive direction; < 0: negative.
    continuing = prev_streak * sign > 0
    streak = np.where(sig_now, np.where(continuing, (np.abs(prev_streak) + 1) * sign, sign), 0).astype(int)
    established = np.isin(prev_state, ["significant", "contradicted"])
    state = np.full(len(merged), "learning", dtype=object)
    state[established & sig_now & (prev_sign != 0) & (sign != prev_sign)] = "contradicted"
    state[(prev_state == "contradicted") & ~sig_now] = "contradicted"
    state[sig_now & (np.abs(streak) >= s.persistence)] = "significant"
    state[~testable] = "insufficient_data"
    streak[~testable] = 0
    out = df.copy()
    out["state"], out["streak"] = state, streak
    first = pd.to_datetime(merged["prev_first_seen"]).dt.date
    out["first_seen"] = np.where(has_prev, first, as_of)
    out["last_updated"] = as_of
    return out


def reading(state: str, family: str, ci_low, ci_high, q_value, settings: PatternSettings | None = None) -> str:
    """What a pattern's interval and state mean, in words (a 95% interval that excludes zero is
    not yet a claim: the claim also needs the family's q-value to hold for several cycles)."""
    s = settings or PatternSettings()
    rule = f"q < {s.alpha:g} over {family} on {s.persistence} consecutive cycles"
    if state == "insufficient_data":
        return "too few creatives carry it to estimate anything; nothing is claimed"
    if state == "significant":
        return f"established: {rule}"
    if state == "contradicted":
        return "contradicted: it was established, and newer evidence points the other way"
    excludes = ci_low is not None and ci_high is not None and (ci_low > 0 or ci_high < 0)
    q = "" if q_value is None else f" (q now {q_value:.2g})"
    if excludes:
        return f"the 95% interval excludes no change, but it is not established yet: that needs {rule}{q}"
    return f"the 95% interval includes no change: not established{q}"


def patterns_to_records(df: pd.DataFrame) -> list[dict]:
    """The output contract shared by the CLI and the HTTP API."""
    out = []
    family = TEST_FAMILY
    for r in df.to_dict("records"):

        def num(v):
            return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v)

        out.append(
            {
                "pattern_id": r["pattern_id"],
                "pattern_type": r["pattern_type"],
                "attributes": json.loads(r["attributes"]),
                "metric": r["metric"],
                "lift": num(r["lift"]),
                "ci_low": num(r["ci_low"]),
                "ci_high": num(r["ci_high"]),
                "q_value": num(r["q_value"]),
                "confidence": num(r["confidence"]),
                "state": r["state"],
                "support": json.loads(r["support"]),
                "account_id": None if r["account_id"] == GLOBAL else r["account_id"],
                "first_seen": str(pd.Timestamp(r["first_seen"]).date()),
                "last_updated": str(pd.Timestamp(r["last_updated"]).date()),
                "test_family": family,
                "reading": reading(r["state"], family, num(r["ci_low"]), num(r["ci_high"]), num(r["q_value"])),
            }
        )
    return out


def main_effects(patterns: pd.DataFrame) -> pd.DataFrame:
    """Estimable main-effect patterns as (account_id, metric, dimension, value, est, se, creatives)."""
    main = patterns[(patterns["pattern_type"] != "interaction") & patterns["std_error"].notna()]
    if main.empty:
        return pd.DataFrame(
            columns=["account_id", "metric", "dimension", "value", "log_effect", "std_error", "creatives"]
        )
    pairs = [next(iter(json.loads(a).items())) for a in main["attributes"]]
    return pd.DataFrame(
        {
            "account_id": main["account_id"].to_numpy(),
            "metric": main["metric"].to_numpy(),
            "dimension": [d for d, _ in pairs],
            "value": [v for _, v in pairs],
            "log_effect": main["log_effect"].to_numpy(float),
            "std_error": main["std_error"].to_numpy(float),
            "creatives": [json.loads(s).get("creatives", 0) for s in main["support"]],
        }
    )
