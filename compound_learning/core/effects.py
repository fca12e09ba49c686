"""Adjusted attribute effects from cumulative cells: a log-link GLM with an exposure offset.

For a metric (ctr: clicks per impression; cvr: conversions per click; roas: revenue per spend)
the model is ``log E[y] = log(exposure) + account + day of week + age bucket + attributes``
(+ supported pairwise interactions). Uncertainty comes from the variation *between creatives*:
the covariance is cluster-robust with the creative as the cluster (a quasi-likelihood sandwich),
so millions of impressions of a few creatives do not make an effect look certain.

Effects are reported against the geometric mean over the values of a dimension:
``effect(v) = beta_v - mean_u beta_u``, a linear contrast whose variance is ``c' V c``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from compound_learning.core.stats import MISSING

METRIC_SPECS = {  # metric -> (outcome column, exposure column)
    "ctr": ("clicks", "impressions"),
    "cvr": ("conversions", "clicks"),
    "roas": ("revenue", "spend"),
}
Z95 = 1.959963984540054


@dataclass
class EffectFit:
    """Estimated effects of one metric over one scope (all accounts, or one)."""

    metric: str
    effects: pd.DataFrame  # dimension, value, log_effect, std_error + support columns
    interactions: pd.DataFrame  # dimension, value, dimension2, value2, log_effect, std_error + support
    baselines: pd.DataFrame  # account_id, log_rate, std_error  (a fresh creative, average day)
    n_rows: int = 0
    n_creatives: int = 0
    converged: bool = True
    notes: list[str] = field(default_factory=list)


SUPPORT_SUMS = ["impressions", "clicks", "conversions", "spend", "revenue"]


class _Coded:
    """The frame's categorical columns as integer codes, for fast dummies and support counts."""

    def __init__(self, data: pd.DataFrame):
        self.n = len(data)
        self.sums = {c: data[c].to_numpy(dtype=float) for c in SUPPORT_SUMS}
        self.creative, _ = pd.factorize(data["creative_id"])
        self.account, self.accounts = pd.factorize(data["account_id"])
        self.n_creatives = int(self.creative.max()) + 1

    def support(self, mask: np.ndarray) -> dict:
        out = {}
        for c, v in self.sums.items():
            vals = v[mask]
            out[c] = float(np.nansum(vals)) if np.isfinite(vals).any() else np.nan
        out["creatives"] = len(np.unique(self.creative[mask]))
        out["accounts"] = len(np.unique(self.account[mask]))
        return out


def _indicator(codes: np.ndarray, level: int) -> np.ndarray:
    return (codes == level).astype(float)[:, None]


def fit_effects(
    cells: pd.DataFrame,
    dims: list[str],
    metric: str,
    *,
    interaction_pairs: list[tuple[str, str]] | None = None,
    min_cell_creatives: int = 5,
    inference: str = "cluster",
) -> EffectFit | None:
    """Fit one metric's GLM on cumulative cells (one row per creative x dow x age bucket).

    ``cells`` carries one column per attribute dimension (see ``stats.expand_attributes``).
    Returns None when there is not enough data to fit anything (no exposure, one creative).
    With ``interaction_pairs`` a second fit adds the supported interaction terms; main effects
    always come from the model without them, since with reference-coded interactions a "main"
    coefficient becomes the effect at the partner's reference level.

    ``inference="cluster"`` (many creatives): the cells' Poisson fit with a creative-clustered
    sandwich. ``inference="creative"`` (few creatives, e.g. one account): the point estimates and
    intervals come from a creative-level random-effects meta-regression with Knapp-Hartung
    t-intervals (a sandwich with few clusters per parameter is badly anti-conservative).
    Interactions always use the creative-level model.
    """
    y_col, exp_col = METRIC_SPECS[metric]
    data = cells[(cells[exp_col].astype(float) > 0) & cells[y_col].notna()].reset_index(drop=True)
    if data.empty or data["creative_id"].nunique() < 2:
        return None
    coded = _Coded(data)
    y = data[y_col].to_numpy(dtype=float)
    exposure = data[exp_col].to_numpy(dtype=float)
    offset = np.log(exposure)
    blocks: list[np.ndarray] = []
    names: list[tuple] = []

    n_acc = len(coded.accounts)
    blocks.append(np.eye(n_acc)[coded.account])
    names += [("account", a) for a in coded.accounts]

    def add_nuisance(kind: str, values: np.ndarray) -> list[int]:
        levels = sorted(np.unique(values))
        for lv in levels[1:]:
            blocks.append(_indicator(values, lv))
            names.append((kind, int(lv)))
        return levels

    dows = add_nuisance("dow", data["dow"].to_numpy(dtype=int))
    add_nuisance("age", data["age_bucket"].to_numpy(dtype=int))

    dim_levels: dict[str, tuple[str, list[str]]] = {}
    dim_codes: dict[str, tuple[np.ndarray, list[str]]] = {}
    for dim in dims:
        codes, levels = pd.factorize(data[dim])
        levels = [str(v) for v in levels]
        present = [i for i, lv in enumerate(levels) if lv != MISSING]
        if len(present) < 2:
            continue
        exposure_by_level = np.bincount(codes, weights=exposure, minlength=len(levels))
        ref = max(present, key=lambda i: exposure_by_level[i])
        others = sorted((i for i in present if i != ref), key=lambda i: levels[i])
        for i in others:
            blocks.append(_indicator(codes, i))
            names.append((f"attr:{dim}", levels[i]))
        if MISSING in levels:
            blocks.append(_indicator(codes, levels.index(MISSING)))
            names.append((f"attr:{dim}", MISSING))
        dim_levels[dim] = (levels[ref], [levels[i] for i in others])
        dim_codes[dim] = (codes, levels)

    X = np.hstack(blocks)
    index = {n: i for i, n in enumerate(names)}
    notes: list[str] = []
    fitted = _fit_glm(y, X, offset, coded.creative)
    if fitted is None:
        return EffectFit(
            metric,
            pd.DataFrame(),
            pd.DataFrame(),
            pd.DataFrame(),
            len(data),
            coded.n_creatives,
            False,
            ["GLM fit failed (too little or degenerate data)"],
        )
    params, cov, converged = fitted
    if not converged:
        notes.append("GLM did not converge; estimates are unreliable")
    count = data[COUNT_FOR_VARIANCE[metric]].to_numpy(dtype=float)
    collapsed = _collapse(X, names, params, y, count, exposure, coded)
    dof = float(coded.n_creatives - 1)
    if inference == "creative":
        keep, Xc, y_c, count_c, e_c = collapsed
        meta = _fit_creative_re(y_c, count_c, e_c, Xc)
        if meta is None:
            return EffectFit(
                metric,
                pd.DataFrame(),
                pd.DataFrame(),
                pd.DataFrame(),
                len(data),
                coded.n_creatives,
                False,
                ["too few creatives for the creative-level model"],
            )
        params = params.copy()
        params[keep] = meta[0]
        cov = np.zeros_like(cov)
        cov[np.ix_(keep, keep)] = meta[1]
        dof = meta[2]

    def contrast(vec: np.ndarray) -> tuple[float, float]:
        var = float(vec @ cov @ vec)
        return float(vec @ params), (float(np.sqrt(var)) if var > 0 else np.nan)

    rows = []
    for dim, (ref, others) in dim_levels.items():
        levels = [ref, *others]
        mean_vec = np.zeros(len(params))
        for lv in others:
            mean_vec[index[(f"attr:{dim}", lv)]] += 1.0 / len(levels)
        codes, all_levels = dim_codes[dim]
        for lv in levels:
            vec = -mean_vec.copy()
            if lv != ref:
                vec[index[(f"attr:{dim}", lv)]] += 1.0
            est, se = contrast(vec)
            rows.append(
                {
                    "dimension": dim,
                    "value": lv,
                    "log_effect": est,
                    "std_error": se,
                    "df": dof,
                    **coded.support(codes == all_levels.index(lv)),
                }
            )
    effects = pd.DataFrame(rows)

    irows = []
    terms: list[tuple[str, str, str, str, np.ndarray]] = []
    for d1, d2 in interaction_pairs or []:
        if d1 not in dim_levels or d2 not in dim_levels:
            continue
        (c1, l1), (c2, l2) = dim_codes[d1], dim_codes[d2]
        for v1 in dim_levels[d1][1]:
            m1 = c1 == l1.index(v1)
            for v2 in dim_levels[d2][1]:
                mask = m1 & (c2 == l2.index(v2))
                if mask.any() and len(np.unique(coded.creative[mask])) >= min_cell_creatives:
                    terms.append((d1, v1, d2, v2, mask))
    if terms:
        # One row per creative (day-of-week and age effects from the main fit move into the
        # offset), a random effect per creative, t-intervals: honest for cells of few creatives.
        keep, Xc, y_c, count_c, e_c = collapsed
        first_row = _first_rows(coded)
        Xi = np.hstack([Xc, *[m[first_row].astype(float)[:, None] for *_, m in terms]])
        # A creative's attributes are constant, so the cell indicator at its first row is exact.
        meta = _fit_creative_re(y_c, count_c, e_c, Xi)
        if meta is not None:
            p_i, cov_i, df_i = meta
            for k, (d1, v1, d2, v2, mask) in enumerate(terms):
                j = Xc.shape[1] + k
                se = float(np.sqrt(cov_i[j, j])) if cov_i[j, j] > 0 else np.nan
                irows.append(
                    {
                        "dimension": d1,
                        "value": v1,
                        "dimension2": d2,
                        "value2": v2,
                        "log_effect": float(p_i[j]),
                        "std_error": se,
                        "df": df_i,
                        **coded.support(mask),
                    }
                )
    interactions = pd.DataFrame(irows)

    # Baseline of each account: a fresh creative (first age bucket), average day of week,
    # the geometric-mean value of every dimension.
    common = np.zeros(len(params))
    for d in dows[1:]:
        common[index[("dow", int(d))]] += 1.0 / len(dows)
    for dim, (_ref, others) in dim_levels.items():
        for lv in others:
            common[index[(f"attr:{dim}", lv)]] += 1.0 / (len(others) + 1)
    brows = []
    for a in coded.accounts:
        vec = common.copy()
        vec[index[("account", a)]] += 1.0
        est, se = contrast(vec)
        brows.append({"account_id": a, "log_rate": est, "std_error": se})
    return EffectFit(metric, effects, interactions, pd.DataFrame(brows), len(data), coded.n_creatives, converged, notes)


COUNT_FOR_VARIANCE = {"ctr": "clicks", "cvr": "conversions", "roas": "conversions"}


def _first_rows(coded: _Coded) -> np.ndarray:
    first = np.zeros(coded.n_creatives, dtype=int)
    first[coded.creative[::-1]] = np.arange(coded.n)[::-1]
    return first


def _collapse(X, names, params, y, count, exposure, coded: _Coded):
    """Creative-level rows: outcome, variance count and exposure adjusted by the main fit's
    day-of-week and age effects; the design keeps the account and attribute columns."""
    nuisance = [i for i, n in enumerate(names) if n[0] in ("dow", "age")]
    keep = np.array([i for i, n in enumerate(names) if n[0] not in ("dow", "age")])
    eta = X[:, nuisance] @ params[nuisance] if nuisance else np.zeros(len(y))
    g = coded.creative
    y_c = np.bincount(g, weights=y, minlength=coded.n_creatives)
    count_c = np.bincount(g, weights=np.nan_to_num(count), minlength=coded.n_creatives)
    e_c = np.bincount(g, weights=exposure * np.exp(eta), minlength=coded.n_creatives)
    return keep, X[_first_rows(coded)][:, keep], y_c, count_c, e_c


def _fit_creative_re(y, count, exposure, X):
    """Random-effects meta-regression of creatives' log rates on their attributes.

    Each creative gives ``log((y + 0.5 u) / exposure)`` with sampling variance ~ 1 / count;
    creatives differ beyond their attributes by ``tau^2`` (method of moments); inference uses
    the Knapp-Hartung scale and t with n - k degrees of freedom. Returns (beta, cov, df) or None.
    """
    n, k = X.shape
    if n <= k + 1:
        return None
    unit = float(y.sum() / count.sum()) if count.sum() > 0 else 1.0  # e.g. revenue per conversion
    r = np.log((y + 0.5 * unit) / exposure)
    v = 1.0 / (count + 0.5)
    ridge = 1e-8 * np.eye(k)

    def wls(w):
        xtw = X.T * w
        try:
            inv = np.linalg.inv(xtw @ X + ridge)
        except np.linalg.LinAlgError:
            return None
        beta = inv @ (xtw @ r)
        return beta, inv, r - X @ beta

    fixed = wls(1.0 / v)
    if fixed is None:
        return None
    _, inv_fe, resid = fixed
    w = 1.0 / v
    q = float(np.sum(w * resid**2))
    trace = float(np.sum(w) - np.trace(inv_fe @ ((X.T * w**2) @ X)))
    tau2 = max(0.0, (q - (n - k)) / trace) if trace > 0 else 0.0
    random = wls(1.0 / (v + tau2))
    if random is None:
        return None
    beta, inv, resid = random
    scale = float(np.sum(resid**2 / (v + tau2)) / (n - k))
    cov = inv * max(scale, 1.0)
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(cov))):
        return None
    return beta, cov, float(n - k)


def _fit_glm(y, X, offset, groups, max_iter: int = 50, tol: float = 1e-8):
    """Poisson quasi-likelihood fit by IRLS; covariance clustered by ``groups`` (creatives), or
    with ``groups=None`` the Pearson-scaled model covariance. None if it cannot be fitted.

    A few lines of numpy rather than statsmodels' GLM: the same estimator and sandwich, but ~10x
    less overhead, which matters with ~70 fits per daily cycle.
    """
    n, k = X.shape
    if n <= k or (groups is not None and len(np.unique(groups)) < 2):
        return None  # fewer observations than parameters: nothing honest to report
    ridge = 1e-8 * np.eye(k)  # numerical guard for collinear dummies, not a penalty
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mu = (y + y.mean()) / 2.0 + 1e-9
        eta = np.log(mu)
        beta = np.zeros(k)
        dev_old = np.inf
        converged = False
        for _ in range(max_iter):
            z = eta - offset + (y - mu) / mu
            xtw = X.T * mu
            try:
                beta = np.linalg.solve(xtw @ X + ridge, xtw @ z)
            except np.linalg.LinAlgError:
                return None
            eta = np.clip(X @ beta + offset, -50, 50)
            mu = np.exp(eta)
            pos = y > 0
            dev = 2.0 * (np.sum(y[pos] * np.log(y[pos] / mu[pos])) - np.sum(y - mu))
            if not np.isfinite(dev):
                return None
            if abs(dev - dev_old) <= tol * (abs(dev) + 0.1):
                converged = True
                break
            dev_old = dev
        try:
            bread = np.linalg.inv((X.T * mu) @ X + ridge)
        except np.linalg.LinAlgError:
            return None
        resid = y - mu
        if groups is None:
            scale = float(np.sum(resid**2 / mu) / (n - k))
            cov = bread * scale
        else:
            scores = X * resid[:, None]
            codes, uniques = pd.factorize(groups)
            g = len(uniques)
            summed = np.zeros((g, k))
            np.add.at(summed, codes, scores)
            meat = summed.T @ summed
            correction = g / (g - 1.0) * (n - 1.0) / (n - k)
            cov = correction * bread @ meat @ bread
    if not np.all(np.isfinite(beta)) or not np.all(np.isfinite(cov)):
        return None
    return beta, cov, converged
