"""The blockwise GLM in ``core.effects`` is the textbook estimator: the same coefficients and
creative-clustered covariance as statsmodels' Poisson GLM on the full dummy design."""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from compound_learning.core.effects import fit_effects
from compound_learning_tests.conftest import small_world
from compound_learning_tests.test_learning_core import cells_of


def test_blockwise_fit_equals_statsmodels_with_clustered_covariance():
    data, _ = small_world(days=20, accounts=4, creatives=12, seed=5)
    # The same creative id in two accounts is two creatives (two clusters), not one.
    data.loc[data["account_id"] == data["account_id"].unique()[1], "creative_id"] = data["creative_id"].map(
        lambda c: c.split("_")[-1]
    )
    data.loc[data["account_id"] == data["account_id"].unique()[2], "creative_id"] = data["creative_id"].map(
        lambda c: c.split("_")[-1]
    )
    cells, dims = cells_of(data)
    dim = dims[0]
    fit = fit_effects(cells, [dim], "ctr", inference="cluster")

    d = cells[cells["impressions"] > 0].reset_index(drop=True)
    exposure = d.groupby(dim)["impressions"].sum()
    ref = exposure.idxmax()
    design = pd.concat(
        [
            pd.get_dummies(d["account_id"], prefix="account", dtype=float),
            pd.get_dummies(d[dim], prefix="attr", dtype=float).drop(columns=f"attr_{ref}"),
            pd.get_dummies(d["dow"], prefix="dow", dtype=float).iloc[:, 1:],
            pd.get_dummies(d["age_bucket"], prefix="age", dtype=float).iloc[:, 1:],
        ],
        axis=1,
    )
    clusters = pd.factorize(d["account_id"] + "|" + d["creative_id"])[0]
    assert len(np.unique(clusters)) > d["creative_id"].nunique()  # the shared ids are apart
    ref_fit = sm.GLM(
        d["clicks"].to_numpy(float),
        design,
        family=sm.families.Poisson(),
        offset=np.log(d["impressions"].to_numpy(float)),
    ).fit(cov_type="cluster", cov_kwds={"groups": clusters}, tol=1e-12)
    levels = sorted(d[dim].unique())
    for value in levels:
        vec = pd.Series(0.0, index=design.columns)
        for other in levels:
            if other != ref:
                vec[f"attr_{other}"] -= 1.0 / len(levels)
        if value != ref:
            vec[f"attr_{value}"] += 1.0
        expected = float(vec @ ref_fit.params)
        expected_se = float(np.sqrt(vec @ ref_fit.cov_params() @ vec))
        row = fit.effects[fit.effects["value"] == value].iloc[0]
        assert abs(row["log_effect"] - expected) < 1e-6
        assert abs(row["std_error"] - expected_se) < 1e-6 * max(1.0, expected_se)
        assert row["creatives"] == d.loc[d[dim] == value, ["account_id", "creative_id"]].drop_duplicates().shape[0]
