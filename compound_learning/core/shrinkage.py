"""Empirical-Bayes normal-normal shrinkage, used by the DNA weights and the knowledge graph."""

from __future__ import annotations

import numpy as np

# scipy.stats is imported in the functions that use them: every process that loads the
# definitions imports this module, and a day with nothing to fit should not pay a second for it.


def prior_variance(estimates: np.ndarray, std_errors: np.ndarray, prior_mean: np.ndarray | float = 0.0) -> float:
    """Spread ``tau^2`` of the true effects around ``prior_mean``, by maximum likelihood.

    Each estimate is taken as ``N(prior_mean, tau^2 + se^2)``; the prior mean is known (zero for
    weights against a dimension's geometric mean, the global weight for an account's), so
    maximum likelihood is also REML here. The likelihood weighs each estimate by its precision:
    a few precise, large effects are not cancelled by many wide, small ones, which is what the
    unweighted moment estimate ``mean(d^2) - mean(se^2)`` did (it shrank every weight of a metric
    to zero on days when the wide errors outnumbered the precise effects). Floored at 1e-6.
    """
    est, se = np.asarray(estimates, float), np.asarray(std_errors, float)
    ok = np.isfinite(est) & np.isfinite(se) & (se > 0)
    if ok.sum() < 2:
        return 0.0
    m = np.broadcast_to(np.asarray(prior_mean, float), est.shape)[ok]
    d2, s2 = (est[ok] - m) ** 2, se[ok] ** 2

    def neg_log_likelihood(tau2: float) -> float:
        v = s2 + tau2
        return 0.5 * float(np.sum(np.log(v) + d2 / v))

    # The likelihood in tau^2 can have more than one local optimum when the errors differ by
    # orders of magnitude: a log grid finds the right basin, a bounded search then refines it.
    high = max(float(d2.max()), 1e-6)
    grid = np.concatenate([[0.0], np.geomspace(1e-8, high, 80)])
    # the grid's likelihoods in one pass (each row summed as neg_log_likelihood sums it: the same
    # values to the bit), not 81 calls: the spend split asks this twice per account a day
    v = s2[None, :] + grid[:, None]
    values = 0.5 * np.sum(np.log(v) + d2[None, :] / v, axis=1)
    best = int(np.argmin(values))
    tau2 = float(grid[best])
    if 0 < best < len(grid) - 1:
        from scipy.optimize import minimize_scalar

        found = minimize_scalar(neg_log_likelihood, bounds=(grid[best - 1], grid[best + 1]), method="bounded")
        if found.fun <= values[best]:
            tau2 = float(found.x)
    return max(tau2, 1e-6)


def shrunk_variance(own: float, own_dof: float, prior: float, prior_dof: float) -> float:
    """A variance estimated from few observations, shrunk towards a prior one that counts as
    ``prior_dof`` observations (the scaled-inverse-chi-square posterior's point estimate)."""
    return (own_dof * own + prior_dof * prior) / (own_dof + prior_dof)


def posterior(estimates, std_errors, tau2: float, prior_mean=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of each effect under a N(prior_mean, tau2) prior."""
    est, se = np.asarray(estimates, float), np.asarray(std_errors, float)
    se2 = np.where(np.isfinite(se), se**2, np.inf)
    weight = tau2 / (tau2 + se2)
    est = np.where(np.isfinite(est), est, 0.0)
    mean = prior_mean + weight * (est - prior_mean)
    var = np.where(np.isfinite(se2), tau2 * se2 / (tau2 + se2), tau2)
    return mean, np.sqrt(var)


def sign_probability(mean, sd) -> np.ndarray:
    """Posterior probability that the effect has the sign of its posterior mean (0.5..1)."""
    from scipy import stats as sps

    mean, sd = np.asarray(mean, float), np.asarray(sd, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, np.abs(mean) / sd, 0.0)
    return sps.norm.cdf(z)
