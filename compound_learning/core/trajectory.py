"""Improvement trajectory of an account: is its ROAS really getting better, and how fast?

ROAS per day (revenue / spend). The baseline is the first ``baseline_days`` window. Two models
of log ROAS over time are fitted, each with autocorrelation-robust (HAC, Newey-West) errors:

- ``compound``: a constant daily growth rate, ``log roas = a + b t``;
- ``saturating``: growth that levels off, ``log roas = a + c (1 - exp(-t / tau))``, tau on a grid;

the one with the lower error on the held-out last fifth of the days is used. A third, flat
model (no growth) competes too: the daily ``trend`` is ``rising`` / ``falling`` only when the
growth interval excludes zero *and* a growth model beats the flat one on the held-out days.
Projections at 30 / 90 / 365 days carry 95% intervals and follow the growth model only while
that trend goes on; otherwise they hold the recent level. They are given only as far ahead as
the history is long (``MAX_PROJECTION_MULTIPLE`` times its span; a trend fitted on 30 days says
nothing about day 395); the ones withheld are named in ``projection_notes``.
``on_track_for_10x`` only when the *lower* bound of the 365-day projection is 10x the initial
ROAS, so never from an extrapolation.

``change`` is what a marketer asks first: the ROAS of the last two weeks against the first two,
with a 95% interval (day-of-week adjusted, HAC errors). Given the account's creative-day rows,
that interval also carries *creative luck*: which creatives happened to run moves an account by
tens of percent with nothing getting better, and the daily noise does not show it (a creative's
quality lasts its lifetime). A change in the attribute mix that the learned DNA explains is not
luck, and ``attribute_mix_change`` says how much of the change it explains.

``learning_status``: ``improving`` / ``declining`` when that change's interval excludes zero
(the daily trend decides while the history is too short for two windows); otherwise
``volatile`` for an account with fewer than ``LOW_VOLUME_CONVERSIONS`` conversions on a median
recent day (too few to call anything), else ``stable``. Fewer than two snapshots:
``insufficient_data``; fewer than ``min_days_to_judge`` days: ``learning``. ``summary`` says the
change, the status and the trend in one sentence, so the words never contradict the numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from compound_learning.core.effects import Z95
from compound_learning.core.shrinkage import shrunk_variance

# statsmodels and scipy.stats are imported in the functions that use them: every process that loads the
# definitions imports this module, and a day with nothing to fit should not pay a second for it.

HORIZONS = (30, 90, 365)
RECENT_DAYS = 14  # the level a "stable" account is projected to keep
CHANGE_WINDOW_DAYS = 14  # the first and the last two weeks, compared in ``change``
MAX_PROJECTION_MULTIPLE = 1.0  # project at most as far ahead as the history is long
TAUS = (7.0, 14.0, 30.0, 60.0, 120.0)
DEFAULT_CREATIVE_SD = 0.3  # the prior spread of creatives' log ROAS beyond their attributes
LOW_VOLUME_CONVERSIONS = 10  # conversions on a median recent day below which an account is volatile
MIN_SPREAD_CONVERSIONS = 5  # a creative with fewer tells its counting noise, not its quality
SPREAD_PRIOR_DOF = 20  # the prior spread counts as this many creatives beside an account's own


def _design(t: np.ndarray, model: str, tau: float | None, dow: np.ndarray | None = None) -> np.ndarray:
    """Intercept, the growth term, and day-of-week dummies (or their average, for projections)."""
    if model == "level":  # a constant: two full recent weeks balance the days of the week
        return np.ones((len(t), 1))
    week = np.full((len(t), 6), 1.0 / 7.0) if dow is None else (dow[:, None] == np.arange(1, 7)[None, :]).astype(float)
    if model == "flat":
        return np.column_stack([np.ones_like(t), week])
    x = t if model == "compound" else 1.0 - np.exp(-t / tau)
    return np.column_stack([np.ones_like(t), x, week])


def _hac_lags(n: int) -> int:
    return int(min(max(7, n // 4), max(n - 9, 1)))


def fixed_b_critical_value(lags: int, n: int, normal_cv: float) -> float:
    """Two-sided 5% critical value for a Bartlett-kernel HAC t-test with bandwidth b = M / n
    (Kiefer & Vogelsang 2005, fixed-b asymptotics). A wide HAC window estimates the long-run
    variance with few effective blocks; the usual 1.96 then over-rejects, most of all with the
    slowly wandering ROAS that creative turnover produces."""
    b = min((lags + 1) / n, 1.0)
    return max(normal_cv, 1.96 + 2.9694 * b + 0.4160 * b**2 - 0.5324 * b**3)


def _fit(t, y, model, tau=None, dow=None):
    # A week of lags at least: daily ROAS moves with weekly cycles and creative turnover, and a
    # short HAC window underestimates the trend's uncertainty (false "improving" on flat data).
    import statsmodels.api as sm

    lags = _hac_lags(len(t))
    return sm.OLS(y, _design(t, model, tau, dow)).fit(
        cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": True}, use_t=True
    )


def _best_saturating(t, y, dow):
    best = None
    for tau in TAUS:
        res = _fit(t, y, "saturating", tau, dow)
        if best is None or res.ssr < best[1].ssr:
            best = (tau, res)
    return best


def _holdout_error(t, y, dow, model) -> float:
    cut = int(len(t) * 0.8)
    if cut < 12 or len(t) - cut < 2:
        return np.inf
    if model in ("compound", "flat"):
        res, tau = _fit(t[:cut], y[:cut], model, None, dow[:cut]), None
    else:
        tau, res = _best_saturating(t[:cut], y[:cut], dow[:cut])
    pred = _design(t[cut:], model, tau, dow[cut:]) @ res.params
    return float(np.mean((y[cut:] - pred) ** 2))


def window_change(t: np.ndarray, y: np.ndarray, dow: np.ndarray, window: int = CHANGE_WINDOW_DAYS) -> dict | None:
    """Log ROAS of the last ``window`` days against the first ``window`` (day-of-week adjusted,
    HAC errors with fixed-b critical values); None when the history cannot hold two windows.

    ``log_change``, ``noise_se`` and ``critical_value`` are kept so that :func:`trajectory` can
    widen the interval by the creative luck the daily noise does not carry."""
    import statsmodels.api as sm
    from scipy import stats as sps

    window = min(window, int((t[-1] - t[0] + 1) // 2))
    first, last = t < t[0] + window, t > t[-1] - window
    if window < 5 or first.sum() < 4 or last.sum() < 4:
        return None
    keep = first | last
    X = np.column_stack([np.ones(keep.sum()), last[keep].astype(float)])
    if window >= 7:  # whole weeks on both sides: day-of-week terms can be estimated
        X = np.column_stack([X, (dow[keep][:, None] == np.arange(1, 7)[None, :]).astype(float)])
    if keep.sum() < X.shape[1] + 4 or np.linalg.matrix_rank(X) < X.shape[1]:
        return None
    lags = min(_hac_lags(int(keep.sum())), int(keep.sum()) - X.shape[1] - 1)
    res = sm.OLS(y[keep], X).fit(cov_type="HAC", cov_kwds={"maxlags": max(lags, 1), "use_correction": True}, use_t=True)
    est, se = float(res.params[1]), float(np.sqrt(res.cov_params()[1, 1]))
    crit = fixed_b_critical_value(max(lags, 1), int(keep.sum()), float(sps.t.ppf(0.975, res.df_resid)))
    return {
        "days_compared": int(window),
        "roas_change": float(np.expm1(est)),
        "roas_change_ci": [float(np.expm1(est - crit * se)), float(np.expm1(est + crit * se))],
        "log_change": est,
        "noise_se": se,
        "critical_value": crit,
    }


class _CreativeDays:
    """Creative-day rows (with spend) coded once as arrays: creative and day codes, the metrics,
    and the two windows' masks. The trajectory of every account of a day builds one, so this
    is plain numpy: pandas' per-call overhead on a few hundred rows cost 20 ms an account."""

    def __init__(self, creatives, first: tuple, last: tuple):
        spend = np.asarray(creatives["spend"], float)
        keep = spend > 0
        creative, self.ids = pd.factorize(np.asarray(creatives["creative_id"])[keep], sort=True)
        dates = np.asarray(creatives["date"])[keep].astype("datetime64[D]")
        # in (creative, day) order: the sums below then do not depend on the rows' order
        order = np.lexsort((dates, creative))
        self.creative, dates = creative[order], dates[order]
        self.day, days = pd.factorize(dates, sort=True)
        self.n_days = len(days)
        self.n = len(self.ids)

        def column(name: str) -> np.ndarray:
            return np.asarray(creatives[name], float)[keep][order]

        self.spend = spend[keep][order]
        self.revenue = np.nan_to_num(column("revenue"))
        self.conversions = np.nan_to_num(column("conversions"))
        self.windows = [
            (dates >= np.datetime64(pd.Timestamp(start), "D")) & (dates <= np.datetime64(pd.Timestamp(end), "D"))
            for start, end in (first, last)
        ]
        self.predicted = None
        if "predicted" in creatives:
            values = column("predicted")
            if not np.isnan(values).any():
                self.predicted = np.zeros(self.n)
                self.predicted[self.creative] = values  # one value per creative

    def per_creative(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(self.creative[mask], values[mask], minlength=self.n)

    def shares(self, window: int) -> np.ndarray | None:
        """Each creative's mean daily share of the account's spend in the window."""
        mask = self.windows[window]
        if not mask.any():
            return None
        day_spend = np.bincount(self.day, self.spend * mask, minlength=self.n_days)
        share = self.spend / np.where(day_spend[self.day] > 0, day_spend[self.day], 1.0)
        return self.per_creative(share, mask) / len(np.unique(self.day[mask]))

    def spread(self) -> tuple[float, int] | None:
        """The variance of the creatives' log ROAS beyond their attributes (``predicted``, when
        the rows carry it) and beyond their window's level, their Poisson noise removed, with its
        degrees of freedom. Only creatives with at least ``MIN_SPREAD_CONVERSIONS`` conversions in
        the two windows count (below that a log ROAS is mostly counting noise); None with fewer
        than 4."""
        either = self.windows[0] | self.windows[1]
        group = (np.bincount(self.creative[self.windows[0]], minlength=self.n) > 0) + 2 * (
            np.bincount(self.creative[self.windows[1]], minlength=self.n) > 0
        )
        spend, revenue, conversions = (
            self.per_creative(v, either) for v in (self.spend, self.revenue, self.conversions)
        )
        if conversions.sum() <= 0 or revenue.sum() <= 0:
            return None
        roas = revenue.sum() / spend.sum()
        value = revenue.sum() / conversions.sum()  # revenue per conversion
        keep = (group > 0) & (conversions >= MIN_SPREAD_CONVERSIONS)
        if keep.sum() < 4:
            return None
        # Half a conversion at the account's ROAS keeps the log finite and shrinks small creatives.
        y = np.log((revenue[keep] + 0.5 * value) / (spend[keep] + 0.5 * value / roas))
        if self.predicted is not None:  # what the attributes explain is not luck
            y = y - self.predicted[keep]
        # Centred within the window a creative ran in (first, last, both): the change itself,
        # which is what is being measured, must not count as spread.
        g = group[keep]
        means = np.bincount(g, y, minlength=4) / np.maximum(np.bincount(g, minlength=4), 1)
        dof = int(keep.sum() - len(np.unique(g)))
        if dof < 3:
            return None
        noise = 1.0 / (conversions[keep] + 0.5)
        return max(float(((y - means[g]) ** 2).sum() / dof - noise.mean()), 0.0), dof


def creative_luck(creatives: pd.DataFrame | dict, first: tuple, last: tuple) -> dict | None:
    """How much the first-vs-last change in mean daily log ROAS could move from *which creatives
    ran* alone, with nothing getting better or worse.

    An account's daily ROAS is about the spend-weighted mean of its live creatives' own quality.
    With creatives' quality independent draws of spread ``sigma``, the change between the two
    windows carries a composition term ``sum_c (w_c_last - w_c_first) q_c`` whose variance is
    ``sigma^2 * sum_c (w_c_last - w_c_first)^2``, where ``w_c`` is creative c's mean daily share of
    spend in a window. A dozen live creatives with a 0.3 spread move an account by +-20% as they
    come and go; the daily noise does not show it, since a creative's quality lasts its lifetime.

    ``sigma^2`` is the spread of the account's own creatives (``_CreativeDays.spread``), shrunk
    towards a prior spread of ``DEFAULT_CREATIVE_SD`` as if that were ``SPREAD_PRIOR_DOF``
    creatives: two dozen creatives estimate a spread too roughly to carry an interval alone (on
    the demo's accounts one came out 0, another 0.5, around a true 0.32). The prior is fixed,
    not pooled over the accounts, so that an account's trajectory does not depend on which
    accounts share its shard.

    With a ``predicted`` column (each creative's log ROAS from its attributes, by the learned
    weights), the spread is that of the creatives *beyond* their attributes: a change in the
    attribute mix is explained, not luck, and ``attribute_mix_change`` says how much of the
    change it explains.

    ``creatives``: creative-day rows ``date, creative_id, spend, revenue, conversions`` (and
    ``predicted``), a DataFrame or a dict of arrays; ``first`` and ``last``: the windows' (start,
    end) timestamps. None when either window has no spend.
    """
    coded = _CreativeDays(creatives, first, last)
    shares = [coded.shares(0), coded.shares(1)]
    if shares[0] is None or shares[1] is None:
        return None
    delta = shares[1] - shares[0]
    ran = (shares[0] > 0) | (shares[1] > 0)
    own_var, own_dof = coded.spread() or (0.0, 0)
    sigma2 = shrunk_variance(own_var, own_dof, DEFAULT_CREATIVE_SD**2, SPREAD_PRIOR_DOF)
    mix = None if coded.predicted is None else float(np.expm1((delta * coded.predicted).sum()))
    last_days = np.bincount(coded.day, coded.conversions * coded.windows[1], minlength=coded.n_days)
    in_last = np.bincount(coded.day[coded.windows[1]], minlength=coded.n_days) > 0
    return {
        "creatives_compared": int(ran.sum()),
        "creative_sd": float(np.sqrt(sigma2)),
        "luck_se": float(np.sqrt(sigma2 * float((delta**2).sum()))),
        "attribute_mix_change": mix,
        "daily_conversions_median": float(np.median(last_days[in_last])),
    }


def _with_luck(change: dict, luck: dict | None) -> dict:
    """The change's interval widened by creative luck (when the creatives are known)."""
    out = {k: v for k, v in change.items() if k not in ("log_change", "noise_se", "critical_value")}
    est, se, crit = change["log_change"], change["noise_se"], change["critical_value"]
    if luck is not None:
        # The two parts in quadrature, each at its own critical value: the daily noise's is the
        # fixed-b HAC one, the luck's the normal one (its variance is known from the creatives).
        half = float(np.sqrt((crit * se) ** 2 + (Z95 * luck["luck_se"]) ** 2))
        out["roas_change_ci"] = [float(np.expm1(est - half)), float(np.expm1(est + half))]
        out.update({k: luck[k] for k in ("creatives_compared", "creative_sd", "luck_se", "attribute_mix_change")})
    out["includes_creative_luck"] = luck is not None
    return out


def _pct(x: float) -> str:
    return f"{x:+.0%}"


def summary_sentence(out: dict) -> str:
    """The trajectory in words that agree with its numbers."""
    status, change = out["learning_status"], out.get("change")
    if status in ("insufficient_data", "learning") and not change:
        return f"{status.replace('_', ' ')}: {out['snapshots']} days of history, too few to judge"
    parts = []
    if change:
        lo, hi = change["roas_change_ci"]
        clear = lo > 0 or hi < 0
        beyond = " and which creatives happened to run" if change.get("includes_creative_luck") else ""
        parts.append(
            f"ROAS {_pct(change['roas_change'])} [{_pct(lo)}, {_pct(hi)}] between the first and the last "
            f"{change['days_compared']} days"
            + ("" if clear else f" (not distinguishable from no change, given daily noise{beyond})")
        )
    trend = out.get("trend")
    if status in ("improving", "declining"):
        word = "improved" if status == "improving" else "declined"
        parts.append(
            f"{status}: ROAS has {word} beyond daily noise"
            + (" and creative luck" if change and change.get("includes_creative_luck") else "")
        )
        mix = change.get("attribute_mix_change") if change else None
        if mix is not None:
            parts.append(f"the attributes it now runs account for {_pct(mix)} by the learned DNA")
        if trend in ("rising", "falling"):
            parts.append(f"the daily trend is still {trend}")
        else:
            parts.append("no ongoing daily trend beyond noise, so the projection holds the recent level")
    elif status == "volatile":
        parts.append(
            f"volatile: a median of {out['daily_conversions_median']:.0f} conversions a day is too few to call a trend"
        )
    elif status == "stable":
        parts.append("stable: no change beyond noise, so the projection holds the recent level")
    else:
        parts.append(f"{status}: too few days to judge a trend")
    return "; ".join(parts)


def trajectory(
    series: pd.DataFrame,
    baseline_days: int = 7,
    min_days_to_judge: int = 14,
    creatives: pd.DataFrame | dict | None = None,
) -> dict:
    """Fit the trajectory of one account from its daily ``date, spend, revenue`` rows.

    With ``creatives`` (creative-day rows ``date, creative_id, spend, revenue, conversions``
    covering the first and the last comparison windows, a DataFrame or a dict of arrays) the
    change's interval also carries the creative luck of :func:`creative_luck`, and an account
    with fewer than ``LOW_VOLUME_CONVERSIONS`` conversions on a median recent day is
    ``volatile`` rather than ``stable`` when no change is clear."""
    out = _trajectory(series, baseline_days, min_days_to_judge, creatives)
    out["summary"] = summary_sentence(out)
    return out


def _trajectory(series: pd.DataFrame, baseline_days: int, min_days_to_judge: int, creatives) -> dict:
    from scipy import stats as sps

    s = series.copy()
    s = s[(s["spend"] > 0) & s["revenue"].notna()].sort_values("date")
    s["date"] = pd.to_datetime(s["date"])
    n = len(s)
    out = {
        "snapshots": n,
        "initial_roas": None,
        "current_roas": None,
        "daily_improvement_rate": None,
        "daily_improvement_rate_ci": [None, None],
        "model": None,
        "learning_status": "insufficient_data",
        "trend": None,
        "on_track_for_10x": False,
        "holdout_mse": {},
        "change": None,
        "daily_conversions_median": None,
        "projection_holds_level": None,
        "projection_notes": [],
    }
    for h in HORIZONS:
        out[f"projected_{h}d_roas"] = None
        out[f"projected_{h}d_roas_ci"] = [None, None]
        out[f"improvement_{h}d"] = None
    if n == 0:
        return out
    first = s["date"].iloc[0]
    base = s[s["date"] < first + pd.Timedelta(days=baseline_days)]
    last = s[s["date"] > s["date"].iloc[-1] - pd.Timedelta(days=baseline_days)]
    out["initial_roas"] = float(base["revenue"].sum() / base["spend"].sum())
    out["current_roas"] = float(last["revenue"].sum() / last["spend"].sum())
    out["baseline_window"] = [str(base["date"].min().date()), str(base["date"].max().date())]
    if n < 2:
        return out
    positive = s[s["revenue"] > 0]
    if len(positive) < 3:
        out["learning_status"] = "learning"
        return out
    t = (positive["date"] - first).dt.days.to_numpy(float)
    y = np.log((positive["revenue"] / positive["spend"]).to_numpy(float))
    dow = positive["date"].dt.day_of_week.to_numpy()
    change = window_change(t, y, dow)
    luck = None
    if change is not None and creatives is not None and len(creatives["spend"]):
        w = pd.Timedelta(days=change["days_compared"] - 1)
        d0, d1 = positive["date"].iloc[0], positive["date"].iloc[-1]
        luck = creative_luck(creatives, (d0, d0 + w), (d1 - w, d1))
        if luck is not None:
            out["daily_conversions_median"] = luck["daily_conversions_median"]
    out["change"] = None if change is None else _with_luck(change, luck)
    if len(t) < 10:  # too few points for a trend next to 6 day-of-week terms
        out["learning_status"] = "learning"
        return out
    errors = {m: _holdout_error(t, y, dow, m) for m in ("flat", "compound", "saturating")}
    out["holdout_mse"] = {k: (None if not np.isfinite(v) else v) for k, v in errors.items()}
    model = "saturating" if errors["saturating"] < errors["compound"] else "compound"
    # Growth is projected only if a growth model also predicts the held-out days better than no
    # growth at all: in-sample trends from creative turnover do not survive that test.
    growth_predicts = min(errors["compound"], errors["saturating"]) < errors["flat"] or not np.isfinite(errors["flat"])
    tau = None
    if model == "compound":
        res = _fit(t, y, "compound", None, dow)
    else:
        tau, res = _best_saturating(t, y, dow)
    params, cov = np.asarray(res.params), np.asarray(res.cov_params())
    out["model"] = model if model == "compound" else f"saturating(tau={tau:g}d)"
    # The daily rate is reported from the compound fit either way: it is the honest summary
    # of whether the account moves at all; the chosen model drives the projections.
    comp = _fit(t, y, "compound", None, dow)
    b, se_b = float(comp.params[1]), float(np.sqrt(comp.cov_params()[1, 1]))
    crit = fixed_b_critical_value(_hac_lags(len(t)), len(t), float(sps.t.ppf(0.975, comp.df_resid)))
    out["daily_improvement_rate"] = float(np.expm1(b))
    out["daily_improvement_rate_ci"] = [float(np.expm1(b - crit * se_b)), float(np.expm1(b + crit * se_b))]
    if n < min_days_to_judge:
        out["learning_status"] = "learning"
        return out  # too short to project anything honestly
    rising, falling = b - crit * se_b > 0 and growth_predicts, b + crit * se_b < 0 and growth_predicts
    out["trend"] = "rising" if rising else "falling" if falling else "none"
    out["learning_status"] = _status(out["change"], rising, falling, out["daily_conversions_median"])
    # The growth model drives the projection only while the trend goes on in the status's own
    # direction; otherwise the recent level (the last two weeks), not the mean of the whole
    # history, which would sit below an account that has already moved up.
    if not ((out["learning_status"] == "improving" and rising) or (out["learning_status"] == "declining" and falling)):
        model, tau = "level", None
        recent = slice(max(len(t) - RECENT_DAYS, 0), None)
        res = _fit(t[recent], y[recent], "level", None, dow[recent])
        params, cov = np.asarray(res.params), np.asarray(res.cov_params())
        if out["trend"] == "none":
            why = "no ongoing trend"
        elif out["learning_status"] in ("improving", "declining"):
            why = f"a {out['trend']} daily trend against the change is not projected"
        else:
            why = f"a {out['trend']} daily trend without a clear change between the windows is not projected"
        out["model"] = f"flat at the last {min(len(t), RECENT_DAYS)} days' level ({why})"
    out["projection_holds_level"] = model == "level"
    t_last = float(t[-1])
    initial = out["initial_roas"]
    span = t_last - float(t[0]) + 1
    for h in HORIZONS:
        if h > MAX_PROJECTION_MULTIPLE * span:
            out["projection_notes"].append(
                f"{h}-day projection withheld: {span:.0f} days of history support at most "
                f"{MAX_PROJECTION_MULTIPLE * span:.0f} days ahead"
            )
            continue
        x = _design(np.array([t_last + h]), model, tau)[0]
        est, se = float(x @ params), float(np.sqrt(max(x @ cov @ x, 0.0)))
        proj = float(np.exp(est))
        out[f"projected_{h}d_roas"] = proj
        out[f"projected_{h}d_roas_ci"] = [float(np.exp(est - crit * se)), float(np.exp(est + crit * se))]
        out[f"improvement_{h}d"] = float(proj / initial - 1.0) if initial and initial > 0 else None
    low_365 = out["projected_365d_roas_ci"][0]
    out["on_track_for_10x"] = bool(
        out["learning_status"] == "improving" and initial and initial > 0 and low_365 and low_365 / initial >= 10.0
    )
    return out


def _status(change: dict | None, rising: bool, falling: bool, conversions_median: float | None) -> str:
    """``improving`` / ``declining`` when the first-vs-last change is clear beyond noise (and
    creative luck, when known); with no change window, the daily trend decides. Otherwise
    ``volatile`` for a low-volume account, else ``stable``."""
    if change is not None:
        lo, hi = change["roas_change_ci"]
        if lo > 0:
            return "improving"
        if hi < 0:
            return "declining"
    elif rising or falling:
        return "improving" if rising else "declining"
    if conversions_median is not None and conversions_median < LOW_VOLUME_CONVERSIONS:
        return "volatile"
    return "stable"
