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
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from compound_learning.core.stats import ADJUSTED_EXPOSURE, COLLAPSED, MISSING, SHARE_COLUMNS

if TYPE_CHECKING:
    import scipy.sparse as sp

# scipy.sparse is imported by the functions that build sparse designs: the definitions import
# this module, and a day with nothing to fit should not pay for it.

METRIC_SPECS = {  # metric -> (outcome column, exposure column)
    "ctr": ("clicks", "impressions"),
    "cvr": ("conversions", "clicks"),
    "roas": ("revenue", "spend"),
}
Z95 = 1.959963984540054


@dataclass
class EffectFit:
    """Estimated effects of one metric over one scope (all accounts, or one).

    The estimates are kept as rows (dicts) and become frames only when asked for: a day of 5,000
    accounts has 15,000 fits, whose rows go straight into candidate patterns, and building three
    small frames per fit cost a third of the fits' time."""

    metric: str
    effect_rows: list[dict]  # dimension, value, log_effect, std_error, df + support columns
    interaction_rows: list[dict]  # dimension, value, dimension2, value2, log_effect, std_error, df + support
    baseline_rows: list[dict]  # account_id, log_rate, std_error  (a fresh creative, average day)
    n_rows: int = 0
    n_creatives: int = 0
    converged: bool = True
    notes: list[str] = field(default_factory=list)
    # with a ``period`` column in the cells (1: the recent evidence, 0: the older): the recent
    # part's log level against the older part's, net of everything else, and its std error
    level_shift: tuple[float, float] | None = None
    # the day-of-week and age-bucket terms against Monday and the first bucket: ``{"dow": {d:
    # log effect}, "age": {bucket: log effect}}`` (what ``stats.collapse_cells`` adjusts by);
    # empty when either reference is not the first level (no Monday or no fresh-creative cell)
    nuisance: dict[str, dict[int, float]] = field(default_factory=dict)

    @cached_property
    def effects(self) -> pd.DataFrame:
        return pd.DataFrame(self.effect_rows)

    @cached_property
    def interactions(self) -> pd.DataFrame:
        return pd.DataFrame(self.interaction_rows)

    @cached_property
    def baselines(self) -> pd.DataFrame:
        return pd.DataFrame(self.baseline_rows)


DENSE_LIMIT = 2_000_000  # creatives x columns up to which the creative-level design is dense
SUPPORT_SUMS = ["impressions", "clicks", "conversions", "spend", "revenue"]


class CodedCells:
    """A cycle's cells as arrays, coded once: every fit (all accounts, or one) takes row indices
    instead of a frame, so a thousand per-account fits do not each re-factorize text columns."""

    def __init__(self, cells: pd.DataFrame, dims: list[str]):
        self.n = len(cells)
        self.dims = list(dims)
        self.account, self.accounts = pd.factorize(cells["account_id"])
        creative_id, ids = pd.factorize(cells["creative_id"])
        # An account's creative: the same id in two accounts is two creatives.
        self.creative = self.account.astype(np.int64) * max(len(ids), 1) + creative_id
        self.dow = cells["dow"].to_numpy(dtype=int)
        self.age = cells["age_bucket"].to_numpy(dtype=int)
        # optional: which part of a split evidence a cell belongs to (see ``core.drift``)
        self.period = cells["period"].to_numpy(dtype=int) if "period" in cells else None
        self.values = {c: cells[c].to_numpy(dtype=float) for c in SUPPORT_SUMS}
        # a creative's collapsed row (``stats.collapse_cells``): its mix of days of week and age
        # buckets as shares, its exposures adjusted to stand there
        self.collapsed = self.dow == COLLAPSED
        self.adjusted, self.shares = {}, {}
        if self.collapsed.any():
            self.adjusted = {c: cells[a].to_numpy(dtype=float) for c, a in ADJUSTED_EXPOSURE.items()}
            self.shares = {key: np.nan_to_num(cells[c].to_numpy(dtype=float)) for key, c in SHARE_COLUMNS.items()}
        self.attributes: dict[str, tuple[np.ndarray, list[str]]] = {}
        for dim in self.dims:
            codes, levels = pd.factorize(cells[dim])
            self.attributes[dim] = (codes, [str(v) for v in levels])

    def rows_by_account(self) -> dict[str, np.ndarray]:
        """Each account's row indices (in the cells' order)."""
        order = np.argsort(self.account, kind="stable")
        bounds = np.flatnonzero(np.diff(self.account[order])) + 1
        return {str(self.accounts[self.account[part[0]]]): part for part in np.split(order, bounds) if len(part)}

    def exposure(self, column: str) -> np.ndarray:
        """A metric's exposure per cell: the collapsed rows' adjusted one, the others' as sent."""
        if not self.collapsed.any():
            return self.values[column]
        return np.where(self.collapsed, self.adjusted[column], self.values[column])


class _Coded:
    """The rows of one fit: each cell's creative, and each creative's account and support sums.

    A creative's account and attributes are constant, so the model's design splits into a
    creative-level part (account and attribute dummies, one row per creative) and a small
    cell-level part (day of week and age bucket), which keeps a fit linear in the cells."""

    def __init__(self, cells: CodedCells, rows: np.ndarray):
        self.n = len(rows)
        self.creative, _ = pd.factorize(cells.creative[rows])
        self.n_creatives = int(self.creative.max()) + 1
        self.first_row = np.zeros(self.n_creatives, dtype=int)
        self.first_row[self.creative[::-1]] = np.arange(self.n)[::-1]
        account, present = pd.factorize(cells.account[rows])
        self.accounts = cells.accounts[present]
        self.account = account[self.first_row]  # per creative
        # the rows grouped by creative (in creative order), for sums of several columns at once;
        # cells read in key order already are (a copy of a large matrix per IRLS step is not free)
        contiguous = self.n < 2 or bool(np.all(np.diff(self.creative) >= 0))
        self.order = None if contiguous else np.argsort(self.creative, kind="stable")
        grouped = self.creative if contiguous else self.creative[self.order]
        self.starts = np.flatnonzero(np.r_[True, np.diff(grouped) != 0])
        self.sums, self.known = {}, {}
        for c in SUPPORT_SUMS:
            v = cells.values[c][rows]
            self.sums[c] = self.per_creative(np.nan_to_num(v))
            self.known[c] = self.per_creative(np.isfinite(v).astype(float)) > 0

    def per_creative(self, values: np.ndarray) -> np.ndarray:
        """A cell-level column summed per creative."""
        return np.bincount(self.creative, weights=values, minlength=self.n_creatives)

    def per_creative_columns(self, values: np.ndarray) -> np.ndarray:
        """Each column of a cell-level matrix summed per creative (one row per creative)."""
        if not values.shape[1]:
            return np.zeros((self.n_creatives, 0))
        return np.add.reduceat(values if self.order is None else values[self.order], self.starts, axis=0)

    def support_by_level(self, codes: np.ndarray, n_levels: int) -> list[dict]:
        """:meth:`support` of every level of a per-creative code at once (level ``i``: the
        creatives whose code is ``i``)."""
        sums = {c: np.bincount(codes, weights=v, minlength=n_levels) for c, v in self.sums.items()}
        known = {c: np.bincount(codes, weights=k.astype(float), minlength=n_levels) > 0 for c, k in self.known.items()}
        creatives = np.bincount(codes, minlength=n_levels)
        n_acc = max(len(self.accounts), 1)
        level_accounts = np.unique(codes.astype(np.int64) * n_acc + self.account) // n_acc
        accounts = np.bincount(level_accounts, minlength=n_levels)
        return [
            {
                **{c: float(sums[c][i]) if known[c][i] else np.nan for c in sums},
                "creatives": int(creatives[i]),
                "accounts": int(accounts[i]),
            }
            for i in range(n_levels)
        ]

    def support(self, mask: np.ndarray) -> dict:
        """Sums and counts over the creatives in ``mask`` (one flag per creative)."""
        rows = np.flatnonzero(mask)  # once: a flag array scanned per column costs all the creatives each time
        out = {c: float(v[rows].sum()) if self.known[c][rows].any() else np.nan for c, v in self.sums.items()}
        out["creatives"] = len(rows)
        out["accounts"] = len(np.unique(self.account[rows]))
        return out


def _indicator(codes: np.ndarray, level: int) -> np.ndarray:
    return (codes == level).astype(float)[:, None]


def _design(blocks: list[tuple[np.ndarray, int]], n_rows: int) -> np.ndarray | sp.csr_matrix:
    """Indicator blocks side by side (each a column index per row, -1 for none): dense when
    small (one account: dense products beat sparse bookkeeping), else sparse."""
    import scipy.sparse as sp

    width = sum(n for _, n in blocks)
    if n_rows * width > DENSE_LIMIT:
        return sp.hstack([_one_hot(column, n) for column, n in blocks], format="csr")
    dense = np.zeros((n_rows, width))
    offset = 0
    for column, n in blocks:
        rows = np.flatnonzero(column >= 0)
        dense[rows, offset + column[rows]] = 1.0
        offset += n
    return dense


def _one_hot_columns(masks: list[np.ndarray]) -> sp.csr_matrix:
    """One column per flag array (a row's 1 where its flag is set)."""
    import scipy.sparse as sp

    rows = [np.flatnonzero(m) for m in masks]
    columns = np.repeat(np.arange(len(masks)), [len(r) for r in rows])
    ones = np.ones(len(columns))
    return sp.csr_matrix((ones, (np.concatenate(rows), columns)), shape=(len(masks[0]), len(masks)))


DISTINCT_ROWS_SHARE = 0.25  # above this share of distinct rows, sums over the distinct rows buy nothing


def _distinct_rows(M) -> tuple[np.ndarray, np.ndarray] | None:
    """``M``'s rows as ``(codes, U)``: ``U`` its distinct rows (dense), ``codes`` each row's, so
    that ``M == U[codes]``; None when more than ``DISTINCT_ROWS_SHARE`` of its rows are distinct. The rows of a
    creative-level design past the accounts are attribute (and interaction) flags, so a million
    creatives have a few thousand distinct rows: sums over them cost the distinct rows, not the
    creatives."""
    import scipy.sparse as sp

    n, k = M.shape
    if n == 0 or k == 0:
        return None
    probe = np.random.default_rng(0).standard_normal(k)
    codes, _ = pd.factorize(np.asarray(M @ probe).ravel())
    n_distinct = int(codes.max()) + 1
    if n_distinct > DISTINCT_ROWS_SHARE * n:
        return None
    first = np.zeros(n_distinct, dtype=np.int64)
    first[codes[::-1]] = np.arange(n)[::-1]
    U = M[first].toarray() if sp.issparse(M) else np.asarray(M[first])
    # a projection merges two different rows only by a coincidence of floats: checked exactly
    same = (sp.csr_matrix(U)[codes] != M).nnz == 0 if sp.issparse(M) else np.array_equal(U[codes], M)
    return (codes, U) if same else None


def _one_hot(column_of_row: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """Rows with a column index get a 1 there; rows with -1 stay empty."""
    import scipy.sparse as sp

    rows = np.flatnonzero(column_of_row >= 0)
    ones = np.ones(len(rows))
    return sp.csr_matrix((ones, (rows, column_of_row[rows])), shape=(len(column_of_row), n_columns))


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
    coefficient becomes the effect at the partner's reference level. The interactions are
    reported as double-centred contrasts of every supported cell (``_centred_interactions``).

    ``inference="cluster"`` (many creatives): the cells' Poisson fit with a creative-clustered
    sandwich. ``inference="creative"`` (few creatives, e.g. one account): the point estimates and
    intervals come from a creative-level random-effects meta-regression with Knapp-Hartung
    t-intervals (a sandwich with few clusters per parameter is badly anti-conservative).
    Interactions always use the creative-level model.
    """
    return fit_coded(
        CodedCells(cells, dims),
        metric,
        interaction_pairs=interaction_pairs,
        min_cell_creatives=min_cell_creatives,
        inference=inference,
    )


def fit_coded(
    cells: CodedCells,
    metric: str,
    rows: np.ndarray | None = None,
    *,
    interaction_pairs: list[tuple[str, str]] | None = None,
    min_cell_creatives: int = 5,
    inference: str = "cluster",
) -> EffectFit | None:
    """:func:`fit_effects` on coded cells, over ``rows`` (e.g. one account's) or all of them."""
    import scipy.sparse as sp

    y_col, exp_col = METRIC_SPECS[metric]
    rows = np.arange(cells.n) if rows is None else np.asarray(rows)
    all_exposure = cells.exposure(exp_col)
    usable = (all_exposure[rows] > 0) & ~np.isnan(cells.values[y_col][rows])
    rows = rows[usable]
    if len(rows) == 0 or len(np.unique(cells.creative[rows])) < 2:
        return None
    coded = _Coded(cells, rows)
    y = cells.values[y_col][rows]
    exposure = all_exposure[rows]
    offset = np.log(exposure)
    collapsed = cells.collapsed[rows]
    # The creative-level part of the design: account, then attribute dummies.
    n_acc = len(coded.accounts)
    a_blocks = [(coded.account, n_acc)]  # (column of each creative, columns) per block
    a_names: list[tuple] = [("account", a) for a in coded.accounts]
    # The cell-level part: day of week and age bucket (their first level is the reference).
    z_blocks: list[np.ndarray] = []
    z_names: list[tuple] = []

    def add_nuisance(kind: str, values: np.ndarray) -> list[int]:
        levels = sorted(np.unique(values))
        shares = {}
        if collapsed.any() and kind in ("dow", "age"):
            # a collapsed row's indicators are its shares of each level (level 0: the rest)
            shares = {lv: cells.shares[(k, lv)][rows] for k, lv in SHARE_COLUMNS if k == kind}
            seen = {int(lv) for lv in levels if lv != COLLAPSED}
            levels = sorted(seen | {0} | {lv for lv, sh in shares.items() if np.any(sh[collapsed] > 0)})
        for lv in levels[1:]:
            column = _indicator(values, lv)
            if lv in shares:
                column[collapsed, 0] = shares[lv][collapsed]
            z_blocks.append(column)
            z_names.append((kind, int(lv)))
        return levels

    dows = add_nuisance("dow", cells.dow[rows])
    ages = add_nuisance("age", cells.age[rows])
    periods = add_nuisance("period", cells.period[rows]) if cells.period is not None else []

    dim_levels: dict[str, tuple[str, list[str]]] = {}
    dim_codes: dict[str, tuple[np.ndarray, list[str]]] = {}  # per creative
    creative_exposure = coded.per_creative(exposure)
    for dim in cells.dims:
        all_codes, all_levels = cells.attributes[dim]
        codes, present_codes = pd.factorize(all_codes[rows][coded.first_row])
        levels = [all_levels[i] for i in present_codes]
        present = [i for i, lv in enumerate(levels) if lv != MISSING]
        if len(present) < 2:
            continue
        exposure_by_level = np.bincount(codes, weights=creative_exposure, minlength=len(levels))
        ref = max(present, key=lambda i: exposure_by_level[i])
        others = sorted((i for i in present if i != ref), key=lambda i: levels[i])
        column = np.full(len(levels), -1)
        for j, i in enumerate(others):
            column[i] = j
            a_names.append((f"attr:{dim}", levels[i]))
        if MISSING in levels:
            column[levels.index(MISSING)] = len(others)
            a_names.append((f"attr:{dim}", MISSING))
        a_blocks.append((column[codes], int(column.max()) + 1))
        dim_levels[dim] = (levels[ref], [levels[i] for i in others])
        dim_codes[dim] = (codes, levels)

    A = _design(a_blocks, coded.n_creatives)
    Z = np.hstack(z_blocks) if z_blocks else np.zeros((coded.n, 0))
    names = a_names + z_names
    index = {n: i for i, n in enumerate(names)}
    notes: list[str] = []
    # the creative-level model replaces the covariance: only the point estimates are needed
    fitted = _fit_glm(y, A, Z, offset, coded, n_acc, sandwich=inference != "creative")
    if fitted is None:
        return _failed(metric, coded, "GLM fit failed (too little or degenerate data)")
    params, cov, converged = fitted
    if not converged:
        notes.append("GLM did not converge; estimates are unreliable")
    count = cells.values[COUNT_FOR_VARIANCE[metric]][rows]
    collapsed = _collapse(A, Z, params, y, count, exposure, coded)
    dof = float(coded.n_creatives - 1)
    accounts = (coded.account, n_acc)  # the first columns of the creative-level design
    if inference == "creative":
        keep, Xc, y_c, count_c, e_c = collapsed
        meta = _fit_creative_re(y_c, count_c, e_c, Xc, accounts)
        if meta is None:
            return _failed(metric, coded, "too few creatives for the creative-level model")
        params = params.copy()
        params[keep] = meta[0]
        if isinstance(meta[1], AbsorbedCov):  # keep: the accounts first, then the attributes
            cov = meta[1].padded(len(params))
        else:
            cov = np.zeros((len(params), len(params)))
            cov[np.ix_(keep, keep)] = meta[1]
        dof = meta[2]

    def contrast(vec: np.ndarray) -> tuple[float, float]:
        var = quad(cov, vec)
        return float(vec @ params), (float(np.sqrt(var)) if var > 0 else np.nan)

    erows = []
    for dim, (ref, others) in dim_levels.items():
        levels = [ref, *others]
        mean_vec = np.zeros(len(params))
        for lv in others:
            mean_vec[index[(f"attr:{dim}", lv)]] += 1.0 / len(levels)
        codes, all_levels = dim_codes[dim]
        supports = coded.support_by_level(codes, len(all_levels))
        for lv in levels:
            vec = -mean_vec.copy()
            if lv != ref:
                vec[index[(f"attr:{dim}", lv)]] += 1.0
            est, se = contrast(vec)
            erows.append(
                {
                    "dimension": dim,
                    "value": lv,
                    "log_effect": est,
                    "std_error": se,
                    "df": dof,
                    **supports[all_levels.index(lv)],
                }
            )

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
                if mask.sum() >= min_cell_creatives:
                    terms.append((d1, v1, d2, v2, mask))
    if terms:
        # One row per creative (day-of-week and age effects from the main fit move into the
        # offset), a random effect per creative, t-intervals: honest for cells of few creatives.
        keep, Xc, y_c, count_c, e_c = collapsed
        masks = [m for *_, m in terms]
        if sp.issparse(Xc):  # built from the flags' rows: a dense creatives x terms matrix can take gigabytes
            Xi = sp.hstack([Xc, _one_hot_columns(masks)], format="csr")
        else:
            Xi = np.hstack([Xc, np.column_stack(masks).astype(float)])
        meta = _fit_creative_re(y_c, count_c, e_c, Xi, accounts)
        if meta is not None:
            p_i, cov_i, df_i = meta
            irows = _centred_interactions(
                terms, Xc.shape[1], p_i, cov_i, df_i, dim_levels, dim_codes, coded, min_cell_creatives
            )

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
    level_shift = None
    if len(periods) == 2:
        vec = np.zeros(len(params))
        vec[index[("period", int(periods[1]))]] = 1.0
        level_shift = contrast(vec)
    nuisance = {}
    if dows and ages and dows[0] == 0 and ages[0] == 0:
        nuisance = {
            kind: {int(lv): (float(params[index[(kind, int(lv))]]) if i else 0.0) for i, lv in enumerate(levels)}
            for kind, levels in (("dow", dows), ("age", ages))
        }
    return EffectFit(metric, erows, irows, brows, coded.n, coded.n_creatives, converged, notes, level_shift, nuisance)


def _failed(metric: str, coded: _Coded, note: str) -> EffectFit:
    """A fit that gave nothing to report, and why."""
    return EffectFit(metric, [], [], [], coded.n, coded.n_creatives, False, [note])


def _centred_interactions(
    terms, first, p_i, cov_i, df_i, dim_levels, dim_codes, coded, min_cell_creatives
) -> list[dict]:
    """Every supported cell of every fitted pair as a double-centred contrast: the cell's
    interaction coefficient less its row's and its column's mean, plus the table's mean (the
    fitted indicators are the non-reference cells; the others are zero).

    The indicators alone are effects against the reference levels, which are the values with
    the most exposure: when what an account launches most changes, so would their meaning. The
    centred table does not depend on the reference: every cell (reference levels included) says
    how far the pair departs from the sum of its two main effects, the form the simulator's
    truth and a reader both use."""
    by_pair: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
    for k, (d1, v1, d2, v2, _mask) in enumerate(terms):
        by_pair.setdefault((d1, d2), {})[(v1, v2)] = first + k
    rows = []
    for (d1, d2), cols in by_pair.items():
        levels1 = [dim_levels[d1][0], *dim_levels[d1][1]]
        levels2 = [dim_levels[d2][0], *dim_levels[d2][1]]
        n1, n2 = len(levels1), len(levels2)
        (c1, l1), (c2, l2) = dim_codes[d1], dim_codes[d2]
        for v1 in levels1:
            m1 = c1 == l1.index(v1)
            for v2 in levels2:
                mask = m1 & (c2 == l2.index(v2))
                if mask.sum() < min_cell_creatives:
                    continue
                vec = np.zeros(len(p_i))
                for (k1, k2), j in cols.items():
                    vec[j] = (k1 == v1) * (k2 == v2) - (k2 == v2) / n1 - (k1 == v1) / n2 + 1.0 / (n1 * n2)
                var = quad(cov_i, vec)
                rows.append(
                    {
                        "dimension": d1,
                        "value": v1,
                        "dimension2": d2,
                        "value2": v2,
                        "log_effect": float(vec @ p_i),
                        "std_error": float(np.sqrt(var)) if var > 0 else np.nan,
                        "df": df_i,
                        **coded.support(mask),
                    }
                )
    return rows


COUNT_FOR_VARIANCE = {"ctr": "clicks", "cvr": "conversions", "roas": "conversions"}


def _collapse(A, Z, params, y, count, exposure, coded: _Coded):
    """Creative-level rows: outcome, variance count and exposure adjusted by the main fit's
    day-of-week and age effects; the design keeps the account and attribute columns."""
    k_a = A.shape[1]
    eta = Z @ params[k_a:]
    y_c = coded.per_creative(y)
    count_c = coded.per_creative(np.nan_to_num(count))
    e_c = coded.per_creative(exposure * np.exp(eta))
    return np.arange(k_a), A, y_c, count_c, e_c


def _gram(X, w: np.ndarray) -> np.ndarray:
    """``X' diag(w) X`` as a dense matrix, for a dense or a sparse ``X``."""
    import scipy.sparse as sp

    if sp.issparse(X):
        return (X.T @ sp.diags(w) @ X).toarray()
    return (X.T * w) @ X


def _fit_creative_re(y, count, exposure, X, accounts: tuple[np.ndarray, int] | None = None):
    """Random-effects meta-regression of creatives' log rates on their attributes.

    Each creative gives ``log((y + 0.5 u) / exposure)`` with sampling variance ~ 1 / count;
    creatives differ beyond their attributes by ``tau^2`` (method of moments); inference uses
    the Knapp-Hartung scale and t with n - k degrees of freedom. ``X`` may be sparse (one row
    per creative: most entries are zero). Returns (beta, cov, df) or None.

    ``accounts`` (each row's account, and how many): the first columns of ``X`` are one indicator
    per account. Above ``ABSORB_ACCOUNTS`` of them their block is absorbed, as in the GLM
    (``_absorbed_wls``), and the covariance comes back as an :class:`AbsorbedCov`: with 5,000
    accounts the dense system had 5,000+ columns to invert twice per fit.
    """
    n, k = X.shape
    if n <= k + 1:
        return None
    unit = float(y.sum() / count.sum()) if count.sum() > 0 else 1.0  # e.g. revenue per conversion
    r = np.log((y + 0.5 * unit) / exposure)
    v = 1.0 / (count + 0.5)
    absorb = accounts is not None and accounts[1] > ABSORB_ACCOUNTS
    wls = _AbsorbedWls(X, r, *accounts) if absorb else _DenseWls(X, r)
    w = 1.0 / v
    if not wls.fit(w):
        return None
    q = float(np.sum(w * wls.resid**2))
    trace = float(np.sum(w) - wls.trace_times_gram(w**2))
    tau2 = max(0.0, (q - (n - k)) / trace) if trace > 0 else 0.0
    if not wls.fit(1.0 / (v + tau2)):
        return None
    scale = float(np.sum(wls.resid**2 / (v + tau2)) / (n - k))
    beta, cov = wls.beta, wls.covariance(max(scale, 1.0))
    if not (np.all(np.isfinite(beta)) and cov_is_finite(cov)):
        return None
    return beta, cov, float(n - k)


class _DenseWls:
    """Weighted least squares of ``r`` on ``X`` by the inverse of ``X' W X`` (+ a ridge guard)."""

    def __init__(self, X, r: np.ndarray):
        self.X, self.r = X, r

    def fit(self, w: np.ndarray) -> bool:
        k = self.X.shape[1]
        try:
            self.inv = np.linalg.inv(_gram(self.X, w) + 1e-8 * np.eye(k))
        except np.linalg.LinAlgError:
            return False
        self.beta = self.inv @ (self.X.T @ (w * self.r))
        self.resid = self.r - self.X @ self.beta
        return True

    def trace_times_gram(self, w2: np.ndarray) -> float:
        """``trace((X' W X)^-1 X' W2 X)`` of the last fit."""
        return float(np.sum(self.inv * _gram(self.X, w2)))

    def covariance(self, scale: float) -> np.ndarray:
        return self.inv * scale


class _AbsorbedWls(_DenseWls):
    """:class:`_DenseWls` with the first ``k1`` columns of ``X`` (one indicator per account,
    ``account`` of each row) absorbed: ``X' W X = [[D, B], [B', C]]`` with ``D`` diagonal, so the
    system is solved through the Schur complement ``S = C - B' D^-1 B`` and the inverse is kept
    in parts: ``S^-1``, ``P = D^-1 B`` and ``D`` (``inv = [[D^-1 + P S^-1 P', -P S^-1], [., S^-1]]``).
    The same ridge as the dense path is added to ``D`` and ``C``, so both solve the same system."""

    def __init__(self, X, r: np.ndarray, account: np.ndarray, k1: int):
        super().__init__(X, r)
        self.account, self.k1 = account, k1
        self.rest = X[:, k1:]
        self.to_account = _one_hot(account, k1).T.tocsr()
        self.distinct = _distinct_rows(self.rest)

    def _blocks(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import scipy.sparse as sp

        d = np.bincount(self.account, weights=w, minlength=self.k1)
        if self.distinct is not None:
            codes, U = self.distinct
            # the weights summed per account and distinct row (a sparse matrix sums repeated entries)
            per_account = sp.csr_matrix((w, (self.account, codes)), shape=(self.k1, len(U)))
            return d, np.asarray(per_account @ U), (U.T * np.bincount(codes, weights=w, minlength=len(U))) @ U
        weighted = self.rest.multiply(w[:, None]).tocsr() if sp.issparse(self.rest) else self.rest * w[:, None]
        b = self.to_account @ weighted
        b = b.toarray() if sp.issparse(b) else np.asarray(b)
        return d, b, _gram(self.rest, w)

    def fit(self, w: np.ndarray) -> bool:
        d, b, c = self._blocks(w)
        self.d = d + 1e-8
        self.p = b / self.d[:, None]
        try:
            self.s_inv = np.linalg.inv(c + 1e-8 * np.eye(c.shape[0]) - b.T @ self.p)
        except np.linalg.LinAlgError:
            return False
        wr = w * self.r
        r1 = np.bincount(self.account, weights=wr, minlength=self.k1)
        r2 = np.asarray(self.rest.T @ wr)
        b2 = self.s_inv @ (r2 - self.p.T @ r1)
        self.beta = np.concatenate([r1 / self.d - self.p @ b2, b2])
        self.resid = self.r - self.X @ self.beta
        return True

    def trace_times_gram(self, w2: np.ndarray) -> float:
        d2, b2, c2 = self._blocks(w2)
        p, s_inv = self.p, self.s_inv
        return float(
            np.sum(d2 / self.d)
            + np.sum(s_inv * ((p.T * d2) @ p))
            - 2.0 * np.sum(s_inv * (p.T @ b2))
            + np.sum(s_inv * c2)
        )

    def covariance(self, scale: float) -> AbsorbedCov:
        ps = self.p @ self.s_inv
        account_var = 1.0 / self.d + np.einsum("ij,ij->i", ps, self.p)
        return AbsorbedCov(self.k1, scale * self.s_inv, scale * account_var, -scale * ps)


ABSORB_ACCOUNTS = 64  # above this many accounts the account block is absorbed (see _fit_glm)


@dataclass
class AbsorbedCov:
    """The clustered covariance of a fit whose account effects were absorbed, kept in the parts
    the reported contrasts use: the block of every other parameter (``rest``), each account's
    variance (``account_var``) and its covariance with the rest (``cross``). The full matrix has
    accounts² entries and is never formed."""

    n_accounts: int
    rest: np.ndarray
    account_var: np.ndarray
    cross: np.ndarray

    def padded(self, k: int) -> AbsorbedCov:
        """The same covariance among ``k`` parameters, the ones past its own with none."""
        k2 = k - self.n_accounts
        rest = np.zeros((k2, k2))
        rest[: self.rest.shape[0], : self.rest.shape[1]] = self.rest
        cross = np.zeros((self.n_accounts, k2))
        cross[:, : self.cross.shape[1]] = self.cross
        return AbsorbedCov(self.n_accounts, rest, self.account_var, cross)

    def quad(self, vec: np.ndarray) -> float:
        """``vec' V vec`` for a contrast touching at most one account."""
        k1 = self.n_accounts
        v1, v2 = vec[:k1], vec[k1:]
        touched = np.flatnonzero(v1)
        if len(touched) > 1:
            raise ValueError("an absorbed covariance answers contrasts of at most one account")
        out = float(v2 @ self.rest @ v2)
        if len(touched):
            a, w = int(touched[0]), float(v1[touched[0]])
            out += w * w * float(self.account_var[a]) + 2.0 * w * float(self.cross[a] @ v2)
        return out


def quad(cov: np.ndarray | AbsorbedCov, vec: np.ndarray) -> float:
    """``vec' V vec`` for a dense covariance or an :class:`AbsorbedCov`."""
    return cov.quad(vec) if isinstance(cov, AbsorbedCov) else float(vec @ cov @ vec)


def cov_is_finite(cov: np.ndarray | AbsorbedCov) -> bool:
    if isinstance(cov, AbsorbedCov):
        return all(np.all(np.isfinite(m)) for m in (cov.rest, cov.account_var, cov.cross))
    return bool(np.all(np.isfinite(cov)))


def _per_creative_z(coded: _Coded, Z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sum over each creative's cells of ``w * Z``: one row per creative."""
    return coded.per_creative_columns(w[:, None] * Z)


def _irls(y, offset, A, Z, coded: _Coded, solve, max_iter: int, tol: float):
    """Poisson IRLS on the design ``[A[creative], Z]``: ``solve(mu, z)`` gives the weighted
    least-squares coefficients (None when the system is singular). Returns (beta, mu,
    converged), or None when the fit degenerates."""
    k_a = A.shape[1]
    k = k_a + Z.shape[1]
    mu = (y + y.mean()) / 2.0 + 1e-9
    eta = np.log(mu)
    beta = np.zeros(k)
    dev_old = np.inf
    pos = y > 0
    for _ in range(max_iter):
        z = eta - offset + (y - mu) / mu
        beta = solve(mu, z)
        if beta is None:
            return None
        eta = np.clip((A @ beta[:k_a])[coded.creative] + Z @ beta[k_a:] + offset, -50, 50)
        mu = np.exp(eta)
        dev = 2.0 * (np.sum(y[pos] * np.log(y[pos] / mu[pos])) - np.sum(y - mu))
        if not np.isfinite(dev):
            return None
        if abs(dev - dev_old) <= tol * (abs(dev) + 0.1):
            return beta, mu, True
        dev_old = dev
    return beta, mu, False


def _fit_glm(
    y, A, Z, offset, coded: _Coded, n_accounts: int = 0, max_iter: int = 50, tol: float = 1e-8, sandwich: bool = True
):
    """Poisson quasi-likelihood fit by IRLS with the covariance clustered by creative; the design
    is ``[A[creative], Z]``: ``A`` one (sparse) row per creative, ``Z`` the cell-level columns.
    None if it cannot be fitted.

    Every product is taken block by block (creative-level sums for ``A``), so a fit costs the
    cells times the few cell-level columns, not the cells times all columns squared: the same
    estimator and sandwich as statsmodels' GLM with ``cov_type="cluster"`` (a test holds them
    equal), at a small fraction of the time and memory.

    With more than ``ABSORB_ACCOUNTS`` accounts (the first ``n_accounts`` columns of ``A``, an
    indicator each), their block of the information matrix is diagonal, since a creative belongs
    to one account: it is absorbed (Schur complement), so a step costs accounts x others^2
    instead of accounts^3, and the covariance comes back as an :class:`AbsorbedCov`.

    ``sandwich=False``: the covariance is not computed (None), for a caller that takes only the
    point estimates.
    """
    n, k_a, k_z = len(y), A.shape[1], Z.shape[1]
    k = k_a + k_z
    if n <= k or coded.n_creatives < 2:
        return None  # fewer observations than parameters: nothing honest to report
    if n_accounts > ABSORB_ACCOUNTS:
        return _fit_glm_absorbed(y, A, Z, offset, coded, n_accounts, max_iter, tol)
    ridge = 1e-8 * np.eye(k)  # numerical guard for collinear dummies, not a penalty

    def information(w):
        w_c = coded.per_creative(w)
        az = np.asarray(A.T @ _per_creative_z(coded, Z, w))
        return np.block([[_gram(A, w_c), az], [az.T, (Z.T * w) @ Z]]) + ridge

    def solve(mu, z):
        v = mu * z
        try:
            return np.linalg.solve(information(mu), np.concatenate([A.T @ coded.per_creative(v), Z.T @ v]))
        except np.linalg.LinAlgError:
            return None

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        fitted = _irls(y, offset, A, Z, coded, solve, max_iter, tol)
        if fitted is None:
            return None
        beta, mu, converged = fitted
        if not sandwich:
            return (beta, None, converged) if np.all(np.isfinite(beta)) else None
        try:
            bread = np.linalg.inv(information(mu))
        except np.linalg.LinAlgError:
            return None
        resid = y - mu
        r_c = coded.per_creative(resid)
        zr_c = _per_creative_z(coded, Z, resid)
        meat_az = np.asarray(A.T @ (r_c[:, None] * zr_c))
        meat = np.block([[_gram(A, r_c**2), meat_az], [meat_az.T, zr_c.T @ zr_c]])
        n_g = coded.n_creatives
        correction = n_g / (n_g - 1.0) * (n - 1.0) / (n - k)
        cov = correction * bread @ meat @ bread
    if not np.all(np.isfinite(beta)) or not np.all(np.isfinite(cov)):
        return None
    return beta, cov, converged


def _fit_glm_absorbed(y, A, Z, offset, coded: _Coded, k1: int, max_iter: int, tol: float):
    """:func:`_fit_glm` with the account block absorbed. Writing the information matrix as
    ``[[D, B], [B', C]]`` (``D`` diagonal, accounts first), each IRLS step solves the Schur
    complement ``S = C - B' D^-1 B``. The clustered sandwich is ``sum_c h_c h_c'`` over creatives
    with ``h_c = bread s_c``; since a creative's score ``s_c`` has one account entry ``r_c``,
    ``h_c`` is ``(r_c e_a / D_a + D^-1 B q_c, -q_c)`` with ``q_c = S^-1 (r_c B_a' / D_a - s_c,rest)``,
    which gives every part :class:`AbsorbedCov` keeps in O(creatives x others^2)."""
    import scipy.sparse as sp

    n, k_a, k_z = len(y), A.shape[1], Z.shape[1]
    k = k_a + k_z
    k2 = k - k1
    acc = coded.account
    A2 = A[:, k1:]
    to_account = _one_hot(acc, k1).T.tocsr()  # sums creative rows per account

    def rest_rows(w_c, pcz):  # each creative's rest-block row of X' W, summed over its cells
        a2 = A2.multiply(w_c[:, None]).toarray() if sp.issparse(A2) else A2 * w_c[:, None]
        return np.hstack([a2, pcz])

    def blocks(w):
        w_c = coded.per_creative(w)
        pcz = _per_creative_z(coded, Z, w)
        d = np.bincount(acc, weights=w_c, minlength=k1) + 1e-8
        b = np.asarray(to_account @ rest_rows(w_c, pcz))
        az = np.asarray(A2.T @ pcz)
        c = np.block([[_gram(A2, w_c), az], [az.T, (Z.T * w) @ Z]]) + 1e-8 * np.eye(k2)
        return d, b, c

    def schur(d, b, c):
        bd = b / d[:, None]
        return bd, c - b.T @ bd

    def solve(mu, z):
        v_c = coded.per_creative(mu * z)
        r1 = np.bincount(acc, weights=v_c, minlength=k1)
        r2 = np.concatenate([A2.T @ v_c, Z.T @ (mu * z)])
        d, b, c = blocks(mu)
        bd, s_mat = schur(d, b, c)
        try:
            x2 = np.linalg.solve(s_mat, r2 - bd.T @ r1)
        except np.linalg.LinAlgError:
            return None
        return np.concatenate([(r1 - b @ x2) / d, x2])

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        fitted = _irls(y, offset, A, Z, coded, solve, max_iter, tol)
        if fitted is None:
            return None
        beta, mu, converged = fitted
        d, b, c = blocks(mu)
        bd, s_mat = schur(d, b, c)
        try:
            s_inv = np.linalg.inv(s_mat)
        except np.linalg.LinAlgError:
            return None
        resid = y - mu
        r_c = coded.per_creative(resid)
        s_rest = rest_rows(r_c, _per_creative_z(coded, Z, resid))  # each creative's score, rest block
        q = (r_c[:, None] * bd[acc] - s_rest) @ s_inv  # (S^-1 symmetric)
        rest = q.T @ q
        rq = np.asarray(to_account @ (r_c[:, None] * q))  # per account: sum of r_c q_c
        r2_acc = np.bincount(acc, weights=r_c**2, minlength=k1)
        cross_cov = -rq / d[:, None] - bd @ rest
        account_var = r2_acc / d**2 + 2.0 * np.einsum("ij,ij->i", bd, rq) / d + np.einsum("ij,jk,ik->i", bd, rest, bd)
        n_g = coded.n_creatives
        correction = n_g / (n_g - 1.0) * (n - 1.0) / (n - k)
        cov = AbsorbedCov(k1, correction * rest, correction * account_var, correction * cross_cov)
    if not np.all(np.isfinite(beta)) or not cov_is_finite(cov):
        return None
    return beta, cov, converged
