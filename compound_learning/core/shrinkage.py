"""Empirical-Bayes normal-normal shrinkage, used by the DNA weights and the knowledge graph."""

from __future__ import annotations

import numpy as np

# scipy.stats is imported in the functions that use them: every process that loads the
# definitions imports this module, and a day with nothing to fit should not pay a second for it.


def prior_variance(estimates: np.ndarray, std_errors: np.ndarray, prior_mean: np.ndarray | float = 0.0) -> float:
    """Method-of-moments spread of true effects: ``mean((est - m)^2) - mean(se^2)``, floored."""
    est, se = np.asarray(estimates, float), np.asarray(std_errors, float)
    ok = np.isfinite(est) & np.isfinite(se)
    if ok.sum() < 2:
        return 0.0
    m = np.broadcast_to(np.asarray(prior_mean, float), est.shape)[ok]
    return float(max(np.mean((est[ok] - m) ** 2) - np.mean(se[ok] ** 2), 1e-6))


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
