"""The blockwise GLM in ``core.effects`` is the textbook estimator: the same coefficients and
creative-clustered covariance as statsmodels' Poisson GLM on the full dummy design."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from compound_learning.core import effects
from compound_learning.core.effects import fit_effects
from compound_learning_tests.conftest import small_world
from compound_learning_tests.test_learning_core import cells_of


@pytest.mark.parametrize("absorbed", [False, True], ids=["dense", "accounts_absorbed"])
def test_blockwise_fit_equals_statsmodels_with_clustered_covariance(absorbed, monkeypatch):
    if absorbed:  # the path of a fit with many accounts, forced on four
        monkeypatch.setattr(effects, "ABSORB_ACCOUNTS", 0)
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


@pytest.mark.parametrize("inference", ["cluster", "creative"])
def test_absorbing_the_accounts_changes_no_figure(inference, monkeypatch):
    """Effects, interactions and every account's baseline (a contrast with an account
    coefficient) are the same whether the account block is absorbed or not: in the clustered
    GLM, and in the creative-level model (which also gives every interaction)."""
    data, _ = small_world(days=14, accounts=12, creatives=10, seed=8)
    cells, dims = cells_of(data)
    pairs = [(dims[0], dims[1]), (dims[1], dims[2])]
    fits = {}
    # absorbed, the creative-level sums also run over the design's distinct rows, as they do
    # with many creatives per combination of attributes
    monkeypatch.setattr(effects, "DISTINCT_ROWS_SHARE", 1.0)
    for absorb in (10**9, 0):
        monkeypatch.setattr(effects, "ABSORB_ACCOUNTS", absorb)
        fits[absorb] = {
            m: fit_effects(cells, dims, m, inference=inference, interaction_pairs=pairs, min_cell_creatives=3)
            for m in ("ctr", "roas")
        }
    for metric, dense in fits[10**9].items():
        absorbed = fits[0][metric]
        assert isinstance(absorbed, effects.EffectFit) and len(dense.baselines) == 12
        assert len(dense.interactions) > 10 and dense.effects["std_error"].notna().all()
        for name in ("effects", "interactions", "baselines"):
            a, b = getattr(dense, name), getattr(absorbed, name)
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("sparse", [False, True])
def test_distinct_rows_rebuild_the_matrix(sparse):
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    M = rng.integers(0, 2, (400, 6)).astype(float)
    M[:, 5] = 0.0  # a column no row has
    found = effects._distinct_rows(sp.csr_matrix(M) if sparse else M)
    assert found is not None
    codes, U = found
    assert len(U) == len(np.unique(M, axis=0)) and np.array_equal(U[codes], M)
    # every row distinct: nothing to gain, and None says so
    assert effects._distinct_rows(np.eye(50)) is None


def test_interactions_are_centred_cells_whatever_the_reference():
    """Every cell of a fitted pair is a double-centred contrast (how far the pair departs from
    the sum of its main effects), reference levels included, so the estimates mean the same
    whichever value has the most exposure. Reference-coded indicators left the reference
    level's cells out and changed meaning when the majority changed."""
    data, truth = small_world(days=16, accounts=6, creatives=70, seed=3)
    true = {
        (i["attributes"]["hook_type"], i["attributes"]["format"]): i["log_effect"]
        for i in truth["interactions"]
        if i["metric"] == "ctr" and set(i["attributes"]) == {"hook_type", "format"}
    }
    found = {}
    for majority in ("video", "image"):  # drop most of the other format's creatives
        other = data[data["format"] != majority]["creative_id"].unique()
        dropped = set(np.random.default_rng(0).choice(other, size=len(other) * 2 // 3, replace=False))
        cells, dims = cells_of(data[~data["creative_id"].isin(dropped)])
        fit = fit_effects(
            cells, dims, "ctr", interaction_pairs=[("hook_type", "format")], min_cell_creatives=3, inference="creative"
        )
        inter = fit.interactions
        assert set(inter["dimension"] + "|" + inter["dimension2"]) == {"hook_type|format"}
        cells_found = {(r.value, r.value2): (r.log_effect, r.std_error) for r in inter.itertuples()}
        assert set(cells_found) == set(true)  # the reference levels' cells too
        # centred: each row and each column of the table sums to zero
        table = inter.pivot(index="value", columns="value2", values="log_effect")
        assert np.allclose(table.sum(axis=0), 0.0, atol=1e-9) and np.allclose(table.sum(axis=1), 0.0, atol=1e-9)
        est, se = cells_found[("question", "video")]
        assert abs(est - true[("question", "video")]) < 3 * se
        found[majority] = est
    assert true[("question", "video")] > 0.1
    assert found["video"] > 0.05 and found["image"] > 0.05  # the same sign and size either way
