"""The CTR model: scikit-learn pipelines trained on aggregated creative-day rows.

Rows with the same inputs are added together, and each distinct input becomes two weighted
examples: a click (weight = clicks) and a non-click (weight = impressions - clicks), so training
costs the number of distinct inputs, not the number of rows or impressions. Features: the
attribute values, the account, the day of week and the creative's age (unseen values are
handled: one-hot ignores them, the ordinal encoder maps them to missing, which gradient boosting
routes natively).

Two families are trained and compared on a *later* time window (the holdout): an L2-penalized
logistic regression and HistGradientBoosting with native categorical features. The better one
on the holdout is the challenger; :func:`promotion_decision` decides whether it replaces the
champion (paired bootstrap of the log-loss difference, plus calibration within 5%).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder

NUMERIC = ["log_age"]
EPS = 1e-12


@dataclass
class FeatureSpec:
    categorical: list[str]  # attribute dimensions + account_id + dow


def feature_frame(rows: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Model inputs from creative-day rows (attributes already expanded to columns)."""
    out = pd.DataFrame(index=rows.index)
    for col in spec.categorical:
        out[col] = rows[col].astype(str) if col in rows else "__missing__"
    out["log_age"] = np.log1p(rows["age_days"].astype(float)) if "age_days" in rows else 0.0
    return out


def aggregate(rows: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The model's distinct inputs (attribute combination, account, day of week, age) with the
    clicks and impressions of every row that has them: the likelihood of a click model is a sum
    over impressions, so rows with the same inputs add into one with their summed weights."""
    X = feature_frame(rows, spec)
    X["__clicks"] = rows["clicks"].to_numpy(float)
    X["__impressions"] = rows["impressions"].to_numpy(float)
    grouped = X.groupby([*spec.categorical, *NUMERIC], sort=False, as_index=False)[["__clicks", "__impressions"]].sum()
    clicks = grouped.pop("__clicks").to_numpy()
    impressions = grouped.pop("__impressions").to_numpy()
    return grouped, clicks, impressions


class CategoryCodes(TransformerMixin, BaseEstimator):
    """Text columns as the rank of each value among the values seen in ``fit`` (sorted as text),
    and an unseen value as missing (NaN).

    It comes before the encoders so that they count and look up numbers: on text they count
    every value in Python (of a 10k-row day's cycle, half of the CTR model's time), on numbers
    with numpy. Ranks keep the sorted order of the text, so each encoder gives the columns and
    codes it gives on the text itself, and an unseen value stays unknown to it."""

    def fit(self, X: pd.DataFrame, y=None) -> CategoryCodes:
        self.categories_ = [np.sort(pd.unique(np.asarray(X.iloc[:, j], dtype=object))) for j in range(X.shape[1])]
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        out = np.empty(X.shape, dtype=float)
        for j, categories in enumerate(self.categories_):
            codes = pd.Index(categories).get_indexer(np.asarray(X.iloc[:, j], dtype=object))  # unseen: -1
            out[:, j] = np.where(codes >= 0, codes, np.nan)
        return out

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(input_features if input_features is not None else [], dtype=object)


def _coded(encoder) -> Pipeline:
    """``encoder`` fed :class:`CategoryCodes` instead of text."""
    return Pipeline([("codes", CategoryCodes()), ("encode", encoder)])


def make_pipeline(family: str, spec: FeatureSpec) -> Pipeline:
    cats = list(spec.categorical)
    if family == "logistic":
        pre = ColumnTransformer(
            [
                ("cat", _coded(OneHotEncoder(handle_unknown="ignore", min_frequency=5)), cats),
                ("num", FunctionTransformer(), NUMERIC),
            ]
        )
        return Pipeline([("features", pre), ("model", LogisticRegression(C=1.0, max_iter=2000))])
    if family == "hist_gradient_boosting":
        pre = ColumnTransformer(
            [
                # Native categorical splits allow at most 255 values: rarer ones (e.g. the 600th
                # account) share one "infrequent" code.
                (
                    "cat",
                    _coded(
                        OrdinalEncoder(
                            handle_unknown="use_encoded_value",
                            unknown_value=np.nan,
                            encoded_missing_value=np.nan,
                            max_categories=250,
                        )
                    ),
                    cats,
                ),
                ("num", FunctionTransformer(), NUMERIC),
            ]
        )
        model = HistGradientBoostingClassifier(
            categorical_features=list(range(len(cats))),
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=0,
        )
        return Pipeline([("features", pre), ("model", model)])
    raise ValueError(f"unknown model family {family!r}")


FAMILIES = ("logistic", "hist_gradient_boosting")


def training_sample(n_inputs: int, max_inputs: int | None, seed: int = 0) -> np.ndarray | None:
    """Which of ``n_inputs`` distinct inputs train the model when there are more than
    ``max_inputs`` (sorted positions of a uniform sample, fixed by ``seed``); None: all of them.

    The log-likelihood is a sum over inputs, so a uniform sample with the inputs' own weights
    estimates it without bias; a few hundred thousand inputs pin down a model of a few hundred
    features and splits, while a cycle's training time stays bounded however many creatives run."""
    if max_inputs is None or n_inputs <= max_inputs:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_inputs, size=max_inputs, replace=False))


def fit_model(
    rows: pd.DataFrame,
    spec: FeatureSpec,
    family: str,
    max_inputs: int | None = None,
    aggregated: tuple[pd.DataFrame, np.ndarray, np.ndarray] | None = None,
) -> Pipeline:
    """A fitted pipeline for ``family``. Training runs on the distinct inputs (:func:`aggregate`
    of ``rows``, or ``aggregated`` when the caller has it already; at most ``max_inputs`` of
    them, see :func:`training_sample`), each one twice: a click weighted by its clicks and a
    non-click weighted by the rest. The encoders are fitted and applied once, on the distinct
    inputs (what they count as frequent is a value's share of distinct inputs), and only the
    encoded matrix is doubled."""
    X, clicks, impressions = aggregated if aggregated is not None else aggregate(rows, spec)
    sample = training_sample(len(X), max_inputs)
    if sample is not None:
        X, clicks, impressions = X.iloc[sample].reset_index(drop=True), clicks[sample], impressions[sample]
    y = np.r_[np.ones(len(X)), np.zeros(len(X))]
    w = np.r_[clicks, impressions - clicks]
    keep = w > 0
    if len(np.unique(y[keep])) < 2:
        raise ValueError("training window has no clicks or no non-clicks: cannot train a CTR model")
    pipe = make_pipeline(family, spec)
    features, model = pipe.named_steps["features"], pipe.named_steps["model"]
    encoded = features.fit_transform(X)
    both = (
        sparse.vstack([encoded, encoded], format="csr") if sparse.issparse(encoded) else np.vstack([encoded, encoded])
    )
    model.fit(both[keep], y[keep], sample_weight=w[keep])
    return pipe


def predict_ctr(model: Pipeline, rows: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    return model.predict_proba(feature_frame(rows, spec))[:, 1]


def row_log_loss(p: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """Total log loss of each aggregated row (sum over its impressions)."""
    p = np.clip(p, EPS, 1 - EPS)
    c = rows["clicks"].to_numpy(float)
    n = rows["impressions"].to_numpy(float)
    return -(c * np.log(p) + (n - c) * np.log1p(-p))


def evaluate(p: np.ndarray, rows: pd.DataFrame, bins: int = 10) -> dict:
    """Holdout metrics: log loss, normalized entropy, AUC, calibration ratio, Brier, reliability."""
    c = rows["clicks"].to_numpy(float)
    n = rows["impressions"].to_numpy(float)
    total_n, total_c = n.sum(), c.sum()
    if total_n <= 0:
        raise ValueError("holdout window has no impressions")
    ll = row_log_loss(p, rows).sum() / total_n
    base = np.clip(total_c / total_n, EPS, 1 - EPS)
    entropy = -(base * np.log(base) + (1 - base) * np.log1p(-base))
    pp = np.clip(p, EPS, 1 - EPS)
    brier = float(np.sum(c * (1 - pp) ** 2 + (n - c) * pp**2) / total_n)
    y = np.r_[np.ones(len(p)), np.zeros(len(p))]
    w = np.r_[c, n - c]
    auc = float(roc_auc_score(y[w > 0], np.r_[p, p][w > 0], sample_weight=w[w > 0])) if 0 < total_c < total_n else None
    expected = float(np.sum(p * n))
    order = np.argsort(p)
    edges = np.linspace(0, len(p), bins + 1).astype(int)
    reliability = []
    for lo, hi in itertools.pairwise(edges):
        idx = order[lo:hi]
        if len(idx) == 0 or n[idx].sum() == 0:
            continue
        reliability.append(
            {
                "predicted_ctr": float(np.sum(p[idx] * n[idx]) / n[idx].sum()),
                "observed_ctr": float(c[idx].sum() / n[idx].sum()),
                "impressions": int(n[idx].sum()),
            }
        )
    return {
        "log_loss": float(ll),
        "normalized_entropy": float(ll / entropy),
        "auc": auc,
        "calibration_ratio": float(expected / total_c) if total_c > 0 else None,
        "brier": brier,
        "impressions": int(total_n),
        "clicks": int(total_c),
        "reliability": reliability,
    }


def per_account_metrics(p: np.ndarray, rows: pd.DataFrame) -> dict:
    out = {}
    for account_id, idx in rows.groupby("account_id").indices.items():
        sub = rows.iloc[idx]
        c, n = sub["clicks"].sum(), sub["impressions"].sum()
        out[str(account_id)] = {
            "log_loss": float(row_log_loss(p[idx], sub).sum() / n) if n else None,
            "calibration_ratio": float(np.sum(p[idx] * sub["impressions"]) / c) if c else None,
            "clicks": int(c),
            "impressions": int(n),
        }
    return out


def paired_bootstrap(
    ll_new: np.ndarray,
    ll_old: np.ndarray,
    impressions: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 500,
    seed: int = 0,
) -> dict:
    """Bootstrap (over creatives) of the per-impression log-loss difference new - old."""
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(groups)
    k = len(uniques)
    d_sum = np.bincount(codes, weights=ll_new - ll_old, minlength=k)
    n_sum = np.bincount(codes, weights=impressions, minlength=k)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, k, k), minlength=k)
        diffs[b] = np.sum(counts * d_sum) / max(np.sum(counts * n_sum), EPS)
    return {
        "mean_diff": float(d_sum.sum() / max(n_sum.sum(), EPS)),
        "ci_low": float(np.quantile(diffs, 0.025)),
        "ci_high": float(np.quantile(diffs, 0.975)),
    }


def promotion_decision(
    challenger_metrics: dict, bootstrap: dict | None, calibration_tolerance: float = 0.05
) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, and why (recorded in the registry)."""
    ratio = challenger_metrics.get("calibration_ratio")
    if ratio is None or abs(ratio - 1.0) > calibration_tolerance:
        return False, f"challenger not calibrated: expected/observed clicks = {ratio}"
    if bootstrap is None:
        return True, "no champion yet: first calibrated model becomes champion"
    if bootstrap["ci_high"] < 0:
        return True, (
            f"better on the holdout: log-loss difference {bootstrap['mean_diff']:.3g} "
            f"per impression, 95% CI [{bootstrap['ci_low']:.3g}, {bootstrap['ci_high']:.3g}]"
        )
    return False, (
        f"not better on the holdout: log-loss difference {bootstrap['mean_diff']:.3g}, "
        f"95% CI upper bound {bootstrap['ci_high']:.3g} is not below zero"
    )
