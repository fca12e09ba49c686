"""Decisions from what was learned: which creatives an account should launch next, and how to
split its spend over the creatives it runs.

Both read the creative DNA (shrunk log multipliers per attribute value with their posterior
standard deviations, and the account's baseline) as an additive model of log ROAS / log CTR:

- **launches**: the exploit picks are the attribute combinations with the best posterior mean
  (an exact k-best search over the additive model); the explore picks are Thompson draws from
  the posterior (each weight drawn from its normal posterior, the best combination of the draw
  taken), so values with little evidence, whose posterior is wide, keep being tried. Values of
  the design space that the DNA has never seen get the prior (mean 0, the widest sd of their
  dimension), so they are explored rather than ignored.
- **spend**: each live creative's log ROAS is the sum of two parts, its log CTR and its log
  (ROAS / CTR), the value of a click for the spend of an impression. Each part combines the
  DNA's prediction for the creative's attributes (widened by the spread of creatives around
  their prediction, learned from the account's own creatives) with the creative's own evidence:
  clicks for CTR (variance ~ 1 / clicks), conversions for the value (~ 1 / conversions). Clicks
  are 20 to 100 times more numerous than conversions, so a creative's CTR is known within days,
  long before its ROAS. Where the account's creatives show that more clicks come with worse
  ones (click bait: the parts stray together, negatively), a high CTR promises correspondingly
  less. Less the learned fatigue for the impressions it has had. The split is the probability
  that a creative comes out best once the evidence it can still gather is in (Thompson draws
  from the preposterior: the spread of the posterior mean after as much evidence again as the
  account's live creatives have on average), mixed with an even floor; the share spent away
  from the single best-looking creative is stated. Drawing from the whole posterior instead
  spent on uncertainty no spend could resolve: a creative's handful of conversions does not tell
  its value per click within its life, so that part of its uncertainty is acted on at its mean.

Everything is deterministic for a given random generator (the caller seeds it with the day).
Pure: no Dagster, no database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from compound_learning.config import DEFAULT_SPEND_FLOOR_SHARE, GLOBAL
from compound_learning.core.dna import BASELINE_VALUE, PAIR_PREFIX, WEIGHT_COLUMNS, is_pair
from compound_learning.core.effects import Z95
from compound_learning.core.shrinkage import prior_variance, shrunk_variance

DEFAULT_PRIOR_SD = 0.5  # an attribute value never seen: about a 1.6x multiplier either way
CREATIVE_SD = 0.3  # prior spread of creatives' log ROAS beyond their attributes (quality)
SPREAD_PRIOR_DOF = 20  # the prior spread counts as this many creatives beside an account's own
THOMPSON_DRAWS = 2000
DOMINATED_Z = 6.0  # sds apart at which a creative cannot be the best of a draw (spend_split)
CANDIDATES = 200  # best combinations by main effects, re-ranked with the synergy weights


Weight = tuple[float, float, int]  # (posterior mean, posterior sd, creatives)


@dataclass
class MetricPosterior:
    """One metric's additive posterior for one account: baseline and per-value weights."""

    metric: str
    base: float
    base_sd: float
    weights: dict[str, dict[str, Weight]]  # dim -> value -> weight
    pairs: dict[tuple[str, str], dict[tuple[str, str], Weight]]  # (dim_a, dim_b) sorted -> (value_a, value_b) -> weight

    def prior_sd(self, dim: str) -> float:
        """The widest posterior sd of ``dim``: the prior of a value the DNA has never seen."""
        sds = [sd for _, sd, _ in self.weights.get(dim, {}).values()]
        return max(sds) if sds else DEFAULT_PRIOR_SD

    def value(self, dim: str, value: str) -> Weight:
        found = self.weights.get(dim, {}).get(value)
        return found if found is not None else (0.0, self.prior_sd(dim), 0)


class DNA:
    """A creative-DNA weights frame read once: every account's posterior per metric, and the
    design space. The cycle asks for 500 accounts' posteriors; filtering the frame for each one
    cost more than all the decisions."""

    def __init__(self, weights: pd.DataFrame):
        self.base: dict[tuple[str, str], tuple[float, float]] = {}
        self.mains: dict[tuple[str, str], dict[str, dict[str, Weight]]] = {}
        self.pairs: dict[tuple[str, str], dict[tuple[str, str], dict[tuple[str, str], Weight]]] = {}
        self._cache: dict[tuple[str, str], MetricPosterior | None] = {}
        decoded: dict[str, tuple[str, str]] = {}
        rows = weights if len(weights) else pd.DataFrame(columns=WEIGHT_COLUMNS)
        for account, metric, dim, value, w, se, n in rows[WEIGHT_COLUMNS].itertuples(index=False, name=None):
            scope = (account, metric)
            if dim == BASELINE_VALUE:
                self.base[scope] = (float(w), float(se))
            elif is_pair(dim):
                if dim not in decoded:
                    decoded[dim] = tuple(json.loads(dim[len(PAIR_PREFIX) :]))
                values = tuple(json.loads(value))
                self.pairs.setdefault(scope, {}).setdefault(decoded[dim], {})[values] = (float(w), float(se), int(n))
            else:
                self.mains.setdefault(scope, {}).setdefault(dim, {})[value] = (float(w), float(se), int(n))
        glob = {}
        for (account, _metric), table in self.mains.items():
            if account == GLOBAL:
                for dim, values in table.items():
                    glob.setdefault(dim, set()).update(values)
        self.space = {d: sorted(v) for d, v in sorted(glob.items())}

    @property
    def accounts(self) -> list[str]:
        """The accounts with a baseline (the global scope left out)."""
        return sorted({a for a, _ in self.base if a != GLOBAL})

    def posterior(self, account_id: str, metric: str) -> MetricPosterior | None:
        """The account's posterior for ``metric``: its own (partially pooled) weight where it has
        one, else the global one. None when the account has no baseline for the metric."""
        key = (account_id, metric)
        if key not in self._cache:
            self._cache[key] = self._build(account_id, metric)
        return self._cache[key]

    def _build(self, account_id: str, metric: str) -> MetricPosterior | None:
        if (account_id, metric) not in self.base:
            return None
        mains: dict[str, dict[str, Weight]] = {}
        pairs: dict[tuple[str, str], dict[tuple[str, str], Weight]] = {}
        for scope in dict.fromkeys((GLOBAL, account_id)):  # the account's rows override the global ones
            for dim, values in self.mains.get((scope, metric), {}).items():
                mains.setdefault(dim, {}).update(values)
            for dims, values in self.pairs.get((scope, metric), {}).items():
                pairs.setdefault(dims, {}).update(values)
        # Sorted pairs of dimensions: the order synergy terms are summed and drawn in.
        pairs = {dims: pairs[dims] for dims in sorted(pairs)}
        base, base_sd = self.base[(account_id, metric)]
        return MetricPosterior(metric, base, base_sd, mains, pairs)


def as_dna(weights: pd.DataFrame | DNA | None) -> DNA:
    return weights if isinstance(weights, DNA) else DNA(weights if weights is not None else pd.DataFrame())


def _pair_terms(post: MetricPosterior, attributes: dict[str, str]):
    """The synergy weights that apply to a combination: ((dim_a, dim_b, values), (mean, sd, creatives))."""
    for (da, db), table in post.pairs.items():
        va, vb = attributes.get(da), attributes.get(db)
        if va is None or vb is None:
            continue
        found = table.get((va, vb))
        if found is not None:
            yield (da, db, (va, vb)), found


def _terms(post: MetricPosterior, attributes: dict[str, str]):
    """Every weight that applies to a combination: (dimension label, value label, weight, is_pair)."""
    for dim, value in sorted(attributes.items()):
        yield dim, value, post.value(dim, value), False
    for (da, db, _), weight in _pair_terms(post, attributes):
        yield f"{da} x {db}", f"{attributes[da]} x {attributes[db]}", weight, True


def predict_log_rate(post: MetricPosterior, attributes: dict[str, str]) -> tuple[float, float]:
    """The combination's posterior log rate: mean and sd (the terms of :func:`_terms`, in its
    order): :func:`predict_log_rates` of one combination, to the bit, without its arrays (the
    launch picks describe ten combinations per account and metric)."""
    mean, var = post.base, post.base_sd * post.base_sd
    for dim in sorted(attributes):
        m, sd, _ = post.value(dim, attributes[dim])
        mean, var = mean + m, var + sd * sd
    for (da, db), table in post.pairs.items():
        m, sd, _ = table.get((attributes.get(da), attributes.get(db)), (0.0, 0.0, 0))
        mean, var = mean + m, var + sd * sd
    return float(mean), math.sqrt(var)


_ABSENT = object()  # a creative without a value of a dimension (a value may be any JSON text, even null)
_NO_WEIGHT = (0.0, 0.0, 0)


@dataclass
class AttributeCodes:
    """Creatives' attribute values as integer codes: for each dimension its distinct values
    (``values``) and each creative's position among them (``codes``; -1 where the creative has
    no value of that dimension). Each distinct attribute set is read once: creatives of one set
    share one dict (``steps.live_creatives``), so the predictions of 100k creatives cost a numpy
    pass per dimension, not a dictionary lookup per creative and dimension."""

    values: dict[str, list]
    codes: dict[str, np.ndarray]
    n: int

    @classmethod
    def of(cls, attributes: Sequence[dict[str, str]]) -> AttributeCodes:
        position: dict[int, int] = {}
        distinct: list[dict[str, str]] = []
        set_of = np.empty(len(attributes), dtype=np.int64)
        for i, a in enumerate(attributes):
            j = position.get(id(a))
            if j is None:
                j = position[id(a)] = len(distinct)
                distinct.append(a)
            set_of[i] = j
        values, codes = {}, {}
        for dim in dict.fromkeys(d for a in distinct for d in a):
            per_set = [a.get(dim, _ABSENT) for a in distinct]
            index = {v: k for k, v in enumerate(dict.fromkeys(v for v in per_set if v is not _ABSENT))}
            values[dim] = list(index)
            codes[dim] = np.array([index.get(v, -1) for v in per_set], dtype=np.int64)[set_of]
        return cls(values, codes, len(attributes))

    def part(self, start: int, stop: int) -> AttributeCodes:
        """The creatives ``start:stop`` (views, not copies)."""
        return AttributeCodes(self.values, {d: c[start:stop] for d, c in self.codes.items()}, stop - start)


def predict_log_rates(
    post: MetricPosterior, attributes: Sequence[dict[str, str]] | AttributeCodes
) -> tuple[np.ndarray, np.ndarray]:
    """The posterior log rates of many combinations: means and sds, each the sum of the
    baseline and the terms of :func:`_terms` (in its order), one pass per dimension and synergy
    table (the cycle predicts every live creative of every account)."""
    coded = attributes if isinstance(attributes, AttributeCodes) else AttributeCodes.of(attributes)
    mean, var = np.full(coded.n, post.base), np.full(coded.n, post.base_sd**2)
    present = {d: c for d, c in coded.codes.items() if (c >= 0).any()}
    for dim in sorted(present):
        table, prior = post.weights.get(dim, {}), (0.0, post.prior_sd(dim), 0)
        found = [table.get(v, prior) for v in coded.values[dim]] + [_NO_WEIGHT]  # the last: no value (code -1)
        mean += np.array([f[0] for f in found])[present[dim]]
        var += np.array([f[1] for f in found])[present[dim]] ** 2
    for (da, db), table in post.pairs.items():
        if da not in present or db not in present:
            continue  # no creative has both: every term is 0
        index_a = {v: k for k, v in enumerate(coded.values[da])}
        index_b = {v: k for k, v in enumerate(coded.values[db])}
        m = np.zeros((len(index_a) + 1, len(index_b) + 1))  # the last row and column: no value
        s = np.zeros_like(m)
        for (va, vb), (w, sd, _n) in table.items():
            if va in index_a and vb in index_b:
                m[index_a[va], index_b[vb]], s[index_a[va], index_b[vb]] = w, sd
        mean += m[present[da], present[db]]
        var += s[present[da], present[db]] ** 2
    return mean, np.sqrt(var)


def _describe(post: MetricPosterior, attributes: dict[str, str]) -> tuple[float, float, list[dict]]:
    """Mean, sd and the named contributions (every value, and each synergy worth naming)."""
    parts = []
    for dim, value, (m, sd, creatives), pair in _terms(post, attributes):
        if pair and abs(m) <= 0.01:
            continue
        parts.append(
            {
                "dimension": dim,
                "value": value,
                "metric": post.metric,
                "lift": math.expm1(m),
                "ci_low": math.expm1(m - Z95 * sd),
                "ci_high": math.expm1(m + Z95 * sd),
                "creatives": creatives,
            }
        )
    return *predict_log_rate(post, attributes), parts


def _key(combo: dict[str, str]) -> tuple:
    return tuple(sorted(combo.items()))


@dataclass
class _Space:
    """One posterior over a design space as arrays, for the combinatorial search: each
    dimension's weight means and sds over its values (in the space's order), and each synergy
    table as dense ``values_a x values_b`` arrays (``present`` marks the pairs the DNA has). The
    cycle searches 500-5,000 accounts' spaces a day; dictionaries of combinations were most of
    the step."""

    dims: list[str]
    values: list[list[str]]
    means: list[np.ndarray]
    sds: list[np.ndarray]
    pairs: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]  # (dim a, dim b, mean, sd, present)

    @classmethod
    def of(cls, post: MetricPosterior, space: dict[str, list[str]]) -> _Space:
        dims = sorted(space)
        values = [list(space[d]) for d in dims]
        weights = [[post.value(d, v) for v in vals] for d, vals in zip(dims, values, strict=True)]
        means = [np.array([w[0] for w in ws], dtype=float) for ws in weights]
        sds = [np.array([w[1] for w in ws], dtype=float) for ws in weights]
        position = {d: i for i, d in enumerate(dims)}
        pairs = []
        for (da, db), table in post.pairs.items():  # sorted pairs of dimensions: the order terms add in
            if da not in position or db not in position:
                continue
            ia, ib = position[da], position[db]
            index_a = {v: i for i, v in enumerate(values[ia])}
            index_b = {v: i for i, v in enumerate(values[ib])}
            mean = np.zeros((len(values[ia]), len(values[ib])))
            sd = np.zeros_like(mean)
            present = np.zeros(mean.shape, dtype=bool)
            for (va, vb), (m, s, _n) in table.items():
                if va in index_a and vb in index_b:
                    i, j = index_a[va], index_b[vb]
                    mean[i, j], sd[i, j], present[i, j] = m, s, True
            if present.any():
                pairs.append((ia, ib, mean, sd, present))
        return cls(dims, values, means, sds, pairs)

    def combo(self, index: np.ndarray) -> dict[str, str]:
        return {d: self.values[i][int(j)] for i, (d, j) in enumerate(zip(self.dims, index, strict=True))}


def _k_best(scores: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k combinations with the highest sum of per-dimension scores: (sums, value indices,
    one column per dimension), best first, ties in the order the combinations are enumerated.
    Exact for an additive model: a beam of width k over the dimensions keeps every prefix of the
    k best."""
    total = np.zeros(1)
    index = np.zeros((1, 0), dtype=np.int64)
    for s in scores:
        grown = (total[:, None] + s[None, :]).ravel()
        order = np.argsort(-grown, kind="stable")[:k]
        index = np.column_stack([index[order // len(s)], order % len(s)]) if len(s) else index[:0]
        total = grown[order]
    return total, index


def _ranked(space: _Space, mains: list[np.ndarray], synergy: list[np.ndarray], k: int) -> list[dict[str, str]]:
    """The ``k`` best combinations: the best by main effects, re-ranked with the synergy terms
    (``synergy``: one table per ``space.pairs`` entry, the posterior means or a draw)."""
    total, index = _k_best(mains, max(CANDIDATES, k))
    terms = np.zeros(len(total))
    for (ia, ib, _mean, _sd, present), table in zip(space.pairs, synergy, strict=True):
        a, b = index[:, ia], index[:, ib]
        terms = terms + np.where(present[a, b], table[a, b], 0.0)
    order = np.argsort(-(total + terms), kind="stable")[:k]
    return [space.combo(index[i]) for i in order]


def _thompson(space: _Space, rng: np.random.Generator, k: int, seen: set[tuple]) -> list[dict[str, str]]:
    """The best combinations under one posterior draw of every weight (synergies included) that
    are not in ``seen``."""
    mains = [rng.normal(m, s) for m, s in zip(space.means, space.sds, strict=True)]
    synergy = [rng.normal(mean, sd) for _ia, _ib, mean, sd, _present in space.pairs]
    ranked = _ranked(space, mains, synergy, len(seen) + k)
    return [c for c in ranked if _key(c) not in seen][:k]


def _uniform(space: dict[str, list[str]], rng: np.random.Generator, seen: set[tuple]) -> list[dict[str, str]]:
    """A combination drawn evenly from the design space that is not in ``seen`` ([] when every
    one is)."""
    total = math.prod(len(v) for v in space.values())
    if len(seen) >= total:
        return []
    while True:  # rejection: the seen combinations are a few of many
        combo = {d: str(vals[rng.integers(len(vals))]) for d, vals in sorted(space.items())}
        if _key(combo) not in seen:
            return [combo]


def uniform_pick(space: dict[str, list[str]], rng: np.random.Generator) -> dict[str, str]:
    """One combination drawn evenly from the design space (an exploration burst's launch)."""
    return _uniform(space, rng, set())[0]


RESTART_LEAD = "exploration after a drop of what runs (the evidence may be out of date)"


def _reason(parts: list[dict], kind: str, restart: bool = False) -> str:
    label = {"ctr": "CTR", "cvr": "conversion rate", "roas": "ROAS"}
    if kind == "exploit":
        strongest = sorted(parts, key=lambda p: -abs(p["lift"]))[:2]
    else:  # say what is being tested: the value with the least evidence, then the strongest
        least = min(parts, key=lambda p: (p["creatives"], -(p["ci_high"] - p["ci_low"])))
        strongest = [least, *[p for p in sorted(parts, key=lambda p: -abs(p["lift"])) if p is not least][:1]]
    words = []
    for p in strongest:
        if p["creatives"] == 0:
            words.append(f"{p['dimension']}={p['value']} never tried yet")
        else:
            words.append(
                f"{p['value']} {p['dimension'].replace('_', ' ')} {p['lift']:+.0%} {label[p['metric']]} "
                f"[{p['ci_low']:+.0%}, {p['ci_high']:+.0%}], {p['creatives']} creatives"
            )
    lead = "best expected ROAS" if kind == "exploit" else "exploration: a plausible winner with little evidence"
    if restart and kind == "explore":
        lead = RESTART_LEAD
    return f"{lead}: " + "; ".join(words)


def thompson_pick(
    weights: pd.DataFrame | DNA, account_id: str, rng: np.random.Generator, space: dict[str, list[str]] | None = None
) -> dict[str, str] | None:
    """One Thompson draw: every weight drawn from its posterior, the best combination under the
    draw. When the posterior is sure, this is the exploit pick; where it is not, a plausible
    alternative, so exploration fades exactly as fast as the uncertainty does."""
    dna = as_dna(weights)
    roas = dna.posterior(account_id, "roas")
    if roas is None:
        return None
    found = _thompson(_Space.of(roas, space or dna.space), rng, 1, set())
    return found[0] if found else None


def launch_picks(
    weights: pd.DataFrame | DNA,
    account_id: str,
    n: int,
    explore_share: float,
    rng: np.random.Generator,
    space: dict[str, list[str]] | None = None,
    restart: bool = False,
) -> list[dict]:
    """The next ``n`` creatives to launch for ``account_id``: ``round(n * explore_share)``
    Thompson picks, the rest the best posterior means; each with expected ROAS and CTR, 95%
    intervals, per-attribute contributions and a reason. The picks are distinct combinations.

    ``restart`` (an exploration burst after the evidence drifted, ``core.drift``): the explore
    picks are drawn evenly from the design space instead, since the drop says the posterior no
    longer describes what runs, and a value it is sure is poor may be the one that changed."""
    dna = as_dna(weights)
    roas = dna.posterior(account_id, "roas")
    if roas is None or n <= 0:
        return []
    ctr = dna.posterior(account_id, "ctr")
    space = space or dna.space
    n_explore = round(n * explore_share)
    arrays = _Space.of(roas, space)
    picks: list[tuple[str, dict[str, str]]] = []
    seen: set[tuple] = set()
    for combo in _ranked(arrays, arrays.means, [mean for *_, mean, _sd, _p in arrays.pairs], n - n_explore):
        key = _key(combo)
        if key not in seen and len(picks) < n - n_explore:
            picks.append(("exploit", combo))
            seen.add(key)
    while len(picks) < n:
        # Thompson: one draw of every weight from its posterior; the best combination under the
        # draw that is not proposed already (so the configured share is honoured).
        fresh = _uniform(space, rng, seen) if restart else _thompson(arrays, rng, 1, seen)
        if not fresh:
            break  # the design space is exhausted
        picks.append(("explore", fresh[0]))
        seen.add(_key(fresh[0]))
    out = []
    for rank, (kind, combo) in enumerate(picks, start=1):
        mean, sd, parts = _describe(roas, combo)
        reason = _reason(parts, kind, restart)
        row = {
            "rank": rank,
            "kind": kind,
            "attributes": combo,
            "expected_roas": float(np.exp(mean)),
            "roas_ci": [float(np.exp(mean - Z95 * sd)), float(np.exp(mean + Z95 * sd))],
            "contributions": parts,
            "reason": reason,
        }
        if ctr is not None:
            cmean, csd, cparts = _describe(ctr, combo)
            row["expected_ctr"] = float(np.exp(cmean))
            row["ctr_ci"] = [float(np.exp(cmean - Z95 * csd)), float(np.exp(cmean + Z95 * csd))]
            row["contributions"] = parts + cparts
        out.append(row)
    return out


def fatigue_slope(daily: pd.DataFrame) -> float:
    """Change of log CTR per 100k cumulative impressions of a creative, estimated within
    creatives (each creative's own mean removed, so quality does not leak in), click-weighted.
    ``daily``: creative_id (and account_id, when ids repeat across accounts), date, impressions,
    clicks. 0 when there is too little to tell; never positive (a creative is not assumed to
    improve with exposure)."""
    return slope_from_sums(*fatigue_sums(daily))


def fatigue_sums(daily: pd.DataFrame) -> tuple[float, float]:
    """The slope's weighted sums of squares (``sxx``) and products (``sxy``) about each
    creative's own weighted means (see :func:`fatigue_slope`)."""
    if daily.empty:
        return 0.0, 0.0
    keys = ["account_id", "creative_id"] if "account_id" in daily else ["creative_id"]
    d = daily.sort_values([*keys, "date"])
    creative = d.groupby(keys, sort=False).ngroup()
    cum = d.groupby(creative)["impressions"].cumsum() - d["impressions"]
    y = np.log((d["clicks"].to_numpy(float) + 0.5) / (d["impressions"].to_numpy(float) + 1.0))
    w = d["clicks"].to_numpy(float) + 0.5
    frame = pd.DataFrame({"c": creative.to_numpy(), "x": cum.to_numpy(float) / 1e5, "y": y, "w": w})
    for col in ("x", "y"):
        wm = (frame[col] * frame["w"]).groupby(frame["c"]).transform("sum") / frame.groupby("c")["w"].transform("sum")
        frame[col] = frame[col] - wm
    return float((frame["w"] * frame["x"] ** 2).sum()), float((frame["w"] * frame["x"] * frame["y"]).sum())


def slope_from_sums(sxx: float, sxy: float) -> float:
    """The fatigue slope from its within-creative sums (:func:`fatigue_slope`; the database
    computes the same sums in ``storage.rollup.fatigue_sums``)."""
    if sxx <= 1e-9:
        return 0.0
    return min(0.0, sxy / sxx)


@dataclass
class _Part:
    """One additive part of each live creative's log ROAS: what its attributes predict (mean and
    the prediction's variance) and what the creative itself showed (value and its sampling
    variance; infinite where it has shown nothing)."""

    prior_mean: np.ndarray
    prediction_var: np.ndarray
    obs: np.ndarray
    obs_var: np.ndarray

    def spread(self, prior_var: float) -> float:
        """The variance of the creatives' own rates around their prediction (their quality beyond
        the attributes): the maximum-likelihood estimate from this account's creatives, shrunk
        towards ``prior_var`` as if that were ``SPREAD_PRIOR_DOF`` creatives (a dozen creatives
        estimate a spread too roughly alone). Fixed, not pooled over accounts, so that an
        account's split does not depend on which accounts share its shard."""
        seen = np.isfinite(self.obs_var)
        own_dof = int(seen.sum()) - 1
        if own_dof < 1:
            return prior_var
        own = prior_variance(
            self.obs[seen], np.sqrt(self.obs_var[seen] + self.prediction_var[seen]), self.prior_mean[seen]
        )
        return shrunk_variance(own, own_dof, prior_var, SPREAD_PRIOR_DOF)

    def evidence(self) -> tuple[np.ndarray, np.ndarray]:
        """The observations' precisions and precision-weighted values (0 where nothing was seen)."""
        seen = np.isfinite(self.obs_var)
        precision = np.where(seen, 1.0 / np.where(seen, self.obs_var, 1.0), 0.0)
        return precision, precision * np.where(seen, self.obs, 0.0)

    def posterior(self, spread: float) -> tuple[np.ndarray, np.ndarray]:
        """Each creative's mean and variance: its prediction (widened by ``spread``) and its own
        evidence, weighed by their precisions."""
        prior_var = self.prediction_var + spread
        obs_precision, weighted = self.evidence()
        precision = 1.0 / prior_var + obs_precision
        return (self.prior_mean / prior_var + weighted) / precision, 1.0 / precision

    def variance_later(self, spread: float) -> np.ndarray:
        """Each creative's posterior variance once the evidence still to come (:meth:`to_come`) is in."""
        return 1.0 / (1.0 / self.posterior(spread)[1] + self.to_come())

    def to_come(self) -> np.ndarray:
        """The precision each live creative can still be expected to gather: as much as the
        account's live creatives have gathered on average so far (in steady state a live creative
        is on average halfway through its life, and spend is split among them)."""
        return np.full(len(self.obs), float(np.mean(self.evidence()[0])))

    def anything_seen(self) -> bool:
        return bool(np.isfinite(self.obs_var).any())


def _covariance(ctr: _Part, value: _Part, ctr_spread: float, value_spread: float) -> float:
    """How a creative's CTR and the value of its clicks stray together beyond their predictions:
    negative where creatives that draw more clicks draw worse ones (click bait), which would
    otherwise make a creative's high CTR promise more than its conversions will bear out. The
    moment estimate over the account's creatives that showed both (their sampling errors are
    independent: the value part is what conversions add to clicks), shrunk towards 0 as if
    ``SPREAD_PRIOR_DOF`` creatives had shown none, within a correlation of +-0.9."""
    seen = np.isfinite(ctr.obs_var) & np.isfinite(value.obs_var)
    own_dof = int(seen.sum()) - 1
    if own_dof < 1:
        return 0.0
    du, dv = (ctr.obs - ctr.prior_mean)[seen], (value.obs - value.prior_mean)[seen]
    own = float(np.sum((du - du.mean()) * (dv - dv.mean())) / own_dof)
    bound = 0.9 * np.sqrt(ctr_spread * value_spread)
    return float(np.clip(shrunk_variance(own, own_dof, 0.0, SPREAD_PRIOR_DOF), -bound, bound))


def _joint_posterior(
    ctr: _Part, value: _Part, ctr_spread: float, value_spread: float, covariance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each creative's posterior log CTR, and the mean and variance of its log ROAS (the sum of
    the two parts), under a bivariate normal prior of the parts (their predictions, widened by
    the spreads and the covariance of creatives around them) and their independent evidence;
    and the variance its log ROAS will have once the evidence still to come (``_Part.to_come``)
    is in."""
    a, d, b = ctr.prediction_var + ctr_spread, value.prediction_var + value_spread, covariance
    det = a * d - b * b
    pa, pb, pd = d / det, -b / det, a / det  # the prior's precision matrix, per creative
    wu, hu = ctr.evidence()
    wv, hv = value.evidence()

    def covariance_given(qa, qd):  # the posterior's covariance matrix, per creative
        det = qa * qd - pb * pb
        return qd / det, qa / det, -pb / det

    cuu, cvv, cuv = covariance_given(pa + wu, pd + wv)
    rhs_u = pa * ctr.prior_mean + pb * value.prior_mean + hu
    rhs_v = pb * ctr.prior_mean + pd * value.prior_mean + hv
    mean_u = cuu * rhs_u + cuv * rhs_v
    mean_v = cuv * rhs_u + cvv * rhs_v
    later = covariance_given(pa + wu + ctr.to_come(), pd + wv + value.to_come())
    return mean_u, mean_u + mean_v, cuu + cvv + 2.0 * cuv, later[0] + later[1] + 2.0 * later[2]


@dataclass
class LiveFigures:
    """Live creatives' totals so far as arrays: one account's, or many accounts' in account order
    (:meth:`by_account` gives each account's rows as views of them)."""

    creative_id: np.ndarray
    attributes: AttributeCodes
    impressions: np.ndarray
    clicks: np.ndarray  # NaN where unknown
    spend: np.ndarray
    revenue: np.ndarray  # 0 where unknown
    conversions: np.ndarray  # 0 where unknown

    @classmethod
    def of(cls, live: pd.DataFrame) -> LiveFigures:
        """From a frame of creative_id, attributes (dict), impressions, spend, and where known
        clicks, revenue and conversions."""
        n = len(live)
        return cls(
            creative_id=live["creative_id"].to_numpy(),
            attributes=AttributeCodes.of(list(live["attributes"])),
            impressions=live["impressions"].to_numpy(float),
            clicks=live["clicks"].to_numpy(float) if "clicks" in live else np.full(n, np.nan),
            spend=live["spend"].to_numpy(float),
            revenue=live["revenue"].fillna(0).to_numpy(float),
            conversions=live["conversions"].fillna(0).to_numpy(float) if "conversions" in live else np.zeros(n),
        )

    def __len__(self) -> int:
        return len(self.creative_id)

    def part(self, start: int, stop: int) -> LiveFigures:
        return LiveFigures(
            self.creative_id[start:stop],
            self.attributes.part(start, stop),
            *(getattr(self, f)[start:stop] for f in ("impressions", "clicks", "spend", "revenue", "conversions")),
        )

    @staticmethod
    def by_account(live: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[int, LiveFigures]]]:
        """``live`` (with account_id) in account order, each account's rows in their order there,
        and each account's first position in it with its figures: the arrays are built once for
        every account (500 accounts' frames cost more than their decisions)."""
        ordered = live.sort_values("account_id", kind="stable", ignore_index=True)
        if ordered.empty:
            return ordered, {}
        figures = LiveFigures.of(ordered)
        accounts = ordered["account_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, accounts[1:] != accounts[:-1]])
        stops = np.r_[starts[1:], len(accounts)]
        return ordered, {
            accounts[lo]: (int(lo), figures.part(int(lo), int(hi))) for lo, hi in zip(starts, stops, strict=True)
        }


def _roas_parts(live: LiveFigures, roas: MetricPosterior | None, ctr: MetricPosterior | None) -> list[_Part]:
    """Each live creative's log ROAS as the parts its own evidence measures, with their
    predictions: log CTR (from clicks: a creative with 2,000 clicks knows its CTR within 5%) and
    log (ROAS / CTR), the value of a click for the spend of an impression (from conversions,
    which are 20 to 100 times fewer). One part, log ROAS from conversions alone, without clicks or
    without the DNA's CTR weights. One pseudo-event at the prediction keeps a creative with no
    click or conversion yet finite."""
    n = len(live)
    if roas is not None:
        mean, sd = predict_log_rates(roas, live.attributes)
        prediction_var = sd**2
    else:
        mean, prediction_var = np.zeros(n), np.full(n, DEFAULT_PRIOR_SD**2)
    spend, revenue, conversions, clicks = live.spend, live.revenue, live.conversions, live.clicks
    if roas is None and spend.sum() > 0 and revenue.sum() > 0:  # no DNA: the account's own pooled ROAS
        mean = np.full(n, np.log(revenue.sum() / spend.sum()))
    per_conversion = spend.sum() / max(conversions.sum(), 1.0) if spend.sum() > 0 else 1.0
    obs = np.log((revenue + np.exp(mean) * per_conversion) / (spend + per_conversion))
    obs_var = np.where(spend > 0, 1.0 / (conversions + 1.0), np.inf)
    if ctr is None or roas is None or not np.isfinite(clicks).all():
        return [_Part(mean, prediction_var, obs, obs_var)]
    ctr_mean, ctr_sd = predict_log_rates(ctr, live.attributes)
    impressions = live.impressions
    ctr_obs = np.log((clicks + 1.0) / (impressions + np.exp(-ctr_mean)))
    ctr_obs_var = np.where(impressions > 0, 1.0 / (clicks + 1.0), np.inf)
    # The value part's prediction is ROAS's less CTR's; its variance is taken as ROAS's alone:
    # the two fits' covariance is not kept, so the difference's variance is not known (wider than
    # ROAS's if the fits' errors were independent, narrower if they move together).
    return [
        _Part(ctr_mean, ctr_sd**2, ctr_obs, ctr_obs_var),
        _Part(mean - ctr_mean, prediction_var, obs - ctr_obs, obs_var),
    ]


SPLIT_COLUMNS = [
    "creative_id",
    "share",
    "p_best",
    "expected_roas",
    "roas_ci_low",
    "roas_ci_high",
    "expected_ctr",
    "exploration",
]


def spend_split(
    live: pd.DataFrame,
    weights: pd.DataFrame | DNA | None,
    account_id: str,
    rng: np.random.Generator,
    fatigue_per_100k: float = 0.0,
    floor_share: float = DEFAULT_SPEND_FLOOR_SHARE,
    use_evidence: bool = True,
    preposterior: bool = True,
) -> pd.DataFrame:
    """Shares of tomorrow's spend over the live creatives.

    ``live``: creative_id, attributes (dict), impressions, clicks, spend, revenue, conversions
    (the creative's totals so far). ``weights`` None (or ``use_evidence`` False for the
    creative's own figures) leaves only what is given: with neither, the split is even up to
    fatigue. Each creative's log ROAS is its DNA prediction and its own evidence combined part by
    part (:func:`_roas_parts`): clicks tell a creative's CTR within days, long before its
    conversions tell its ROAS. Returns creative_id, share, p_best, expected_roas, its 95%
    interval, expected_ctr (unknown without clicks or CTR weights) and ``exploration`` (the part
    of each share beyond what the best-looking creative alone would get). ``preposterior``
    False draws from the whole posterior (the split before 2026-12-07, for comparison).
    :func:`split_spend` is the same on arrays."""
    if live.empty:
        return pd.DataFrame(columns=SPLIT_COLUMNS)
    found = split_spend(
        LiveFigures.of(live), weights, account_id, rng, fatigue_per_100k, floor_share, use_evidence, preposterior
    )
    return pd.DataFrame(found, columns=SPLIT_COLUMNS)


def split_spend(
    live: LiveFigures,
    weights: pd.DataFrame | DNA | None,
    account_id: str,
    rng: np.random.Generator,
    fatigue_per_100k: float = 0.0,
    floor_share: float = DEFAULT_SPEND_FLOOR_SHARE,
    use_evidence: bool = True,
    preposterior: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`spend_split` of one account's live creatives (at least one) given as arrays: its
    columns as a dict of arrays, in the creatives' order. The cycle calls this for each account's
    part of one :class:`LiveFigures` of every account."""
    dna = as_dna(weights) if weights is not None else None
    roas = dna.posterior(account_id, "roas") if dna is not None else None
    ctr = dna.posterior(account_id, "ctr") if dna is not None else None
    parts = _roas_parts(live, roas, ctr)
    n = len(live)
    prior_spread = CREATIVE_SD**2 / len(parts)  # without a better guess, the spread is shared evenly
    log_ctr = np.full(n, np.nan)
    if not use_evidence:
        mean = sum(part.prior_mean for part in parts)
        var = sum(part.prediction_var + prior_spread for part in parts)
        later = np.zeros(n)
    elif len(parts) == 1:
        spread = parts[0].spread(prior_spread)
        mean, var = parts[0].posterior(spread)
        later = parts[0].variance_later(spread)
    else:
        spreads = [part.spread(prior_spread) for part in parts]
        log_ctr, mean, var, later = _joint_posterior(*parts, *spreads, _covariance(*parts, *spreads))
    # What it earned was earned at half its impressions so far, on average; tomorrow it is at all of them.
    fatigue = fatigue_per_100k * live.impressions / (2e5 if use_evidence else 1e5)
    mean = mean + fatigue
    expected_ctr = np.exp(log_ctr + fatigue)
    sd = np.sqrt(var)
    if not preposterior or not all(part.anything_seen() for part in parts):
        later = np.zeros(n)  # nothing shown yet: no pace to judge what is still to come by
    # The draws are of what a creative's mean will be once the evidence it can still gather is
    # in (the part of its uncertainty that spending on it can resolve), not of its worth itself:
    # a creative's conversions are too few to tell its ROAS within its life, and spend that
    # chases an uncertainty it cannot resolve is neither exploitation nor exploration.
    resolvable = np.sqrt(np.clip(var - later, 0.0, None))
    # A creative whose upper tail lies below the lower tail of another never wins a draw
    # (P < 1e-8 a draw): it gets p_best 0 without being drawn, which most of the time went to.
    contenders = np.flatnonzero(mean + DOMINATED_Z * resolvable >= np.max(mean - DOMINATED_Z * resolvable))
    # single precision: the draws only rank the creatives, and they were most of the step's time
    z = rng.standard_normal((THOMPSON_DRAWS, len(contenders)), dtype=np.float32)
    draws = mean[contenders].astype(np.float32) + resolvable[contenders].astype(np.float32) * z
    p_best = np.zeros(n)
    p_best[contenders] = np.bincount(draws.argmax(axis=1), minlength=len(contenders)) / THOMPSON_DRAWS
    share = (1.0 - floor_share) * p_best + floor_share / n
    greedy = np.zeros(n)
    greedy[int(np.argmax(mean))] = 1.0
    return {
        "creative_id": live.creative_id,
        "share": share,
        "p_best": p_best,
        "expected_roas": np.exp(mean),
        "roas_ci_low": np.exp(mean - Z95 * sd),
        "roas_ci_high": np.exp(mean + Z95 * sd),
        "expected_ctr": expected_ctr,
        "exploration": np.clip(share - greedy, 0.0, None),
    }
