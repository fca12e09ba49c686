"""The CTR model lifecycle: retrain or skip, the promotion gate, registry, rollback, tampered
artifacts, unseen values at scoring, and the blocking check."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from compound_learning import model_registry as mr
from compound_learning import steps
from compound_learning.config import load_settings
from compound_learning.core import ctr_model as cm
from compound_learning.ingestion import ingest_frame
from compound_learning.orchestration.launch import run_in_process as run_cycle
from compound_learning.serving import predict_creative_ctr
from compound_learning.storage.artifacts import ArtifactError
from compound_learning_tests.conftest import START, make_context, make_store, small_world

CFG = {"calibration_tolerance": 0.25, "min_new_clicks": 1000}


@pytest.fixture(scope="module")
def model_world():
    return small_world(days=20, accounts=6, creatives=25, seed=21)


@pytest.fixture
def prepared(sqlite_url, env, model_world):
    env(sqlite_url)
    data, _ = model_world
    store, ctx = make_store(sqlite_url), make_context(sqlite_url, **CFG)
    ingest_frame(data, store=store, settings=ctx.settings, today=date(2025, 1, 1))
    steps.run_days(ctx, START, START + timedelta(days=19), only=["daily_stats"])
    return store, ctx


def test_retrain_or_skip_on_evidence(prepared):
    store, ctx = prepared
    day = START + timedelta(days=14)
    first = mr.train_ctr_model(ctx, day)
    assert first["action"] == "promoted", first["reason"]
    assert first["family"] in cm.FAMILIES and 0 < first["normalized_entropy"] < 1.2
    again = mr.train_ctr_model(ctx, day)
    assert again["action"].startswith("skipped: already trained")
    # a skipped day still reports the serving champion's figures (the asset page keeps them)
    assert again["version"] == 1 and again["log_loss"] == pytest.approx(first["log_loss"])
    assert again["auc"] == pytest.approx(first["auc"]) and again["reliability"]
    strict = replace(ctx, cfg=replace(ctx.cfg, min_new_clicks=10**9))
    later = mr.train_ctr_model(strict, day + timedelta(days=1))
    assert later["action"] == "skipped: not enough new evidence"
    assert later["new_clicks"] > 0 and str(later["new_clicks"]) in later["reason"]
    # a fixed count is not enough for a big account: the evidence must also grow by a share
    relative = replace(ctx, cfg=replace(ctx.cfg, min_new_clicks=0, min_new_click_share=10.0))
    grown = mr.train_ctr_model(relative, day + timedelta(days=1))
    assert grown["action"] == "skipped: not enough new evidence"
    assert "of the champion's training clicks" in grown["reason"]
    retrained = mr.train_ctr_model(ctx, day + timedelta(days=2))
    assert retrained["action"] in ("promoted", "kept champion") and retrained["version"] == 2
    reg = store.registry()
    assert list(reg["version"]) == [1, 2] and (reg["status"] == "champion").sum() == 1
    row = reg.iloc[-1]
    assert row["sha256"] and row["artifact_path"].endswith(".skops")
    assert pd.Timestamp(row["holdout_start"]) > pd.Timestamp(row["train_end"])  # later window


def test_gate_outcomes():
    calibrated = {"calibration_ratio": 1.02}
    better = {"mean_diff": -0.001, "ci_low": -0.002, "ci_high": -0.0005}
    worse = {"mean_diff": 0.001, "ci_low": 0.0005, "ci_high": 0.002}
    unclear = {"mean_diff": -0.0001, "ci_low": -0.001, "ci_high": 0.0008}
    assert cm.promotion_decision(calibrated, better)[0] is True
    assert cm.promotion_decision(calibrated, worse)[0] is False
    ok, reason = cm.promotion_decision(calibrated, unclear)
    assert ok is False and "not below zero" in reason
    ok, reason = cm.promotion_decision({"calibration_ratio": 1.2}, better)
    assert ok is False and "not calibrated" in reason
    # the paired bootstrap tells a truly better predictor from a worse one
    rng = np.random.default_rng(0)
    n = rng.integers(500, 5000, 300).astype(float)
    p_true = rng.uniform(0.005, 0.03, 300)
    rows = pd.DataFrame({"impressions": n, "clicks": rng.binomial(n.astype(int), p_true)})
    good = cm.row_log_loss(p_true, rows)
    bad = cm.row_log_loss(np.full(300, p_true.mean()), rows)
    groups = np.arange(300)
    assert cm.paired_bootstrap(good, bad, n, groups)["ci_high"] < 0
    assert cm.paired_bootstrap(bad, good, n, groups)["ci_low"] > 0


def test_training_on_more_inputs_than_the_cap_uses_a_fixed_uniform_sample(prepared):
    """Above ``model_max_train_inputs`` distinct inputs a model trains on a uniform sample of
    them (fixed, so a rerun trains the same model), and the registry says how many it used."""
    assert cm.training_sample(10, 20) is None and cm.training_sample(10, None) is None
    picked = cm.training_sample(1000, 300)
    assert len(picked) == 300 and len(np.unique(picked)) == 300 and picked.max() < 1000
    assert np.array_equal(picked, cm.training_sample(1000, 300))
    assert 0.4 < picked.mean() / 1000 < 0.6  # uniform, not the first inputs
    store, ctx = prepared
    rows, dims = mr._model_rows(store, START, START + timedelta(days=14))
    spec = cm.FeatureSpec(categorical=[*dims, "account_id", "dow"])
    X, clicks, impressions = cm.aggregate(rows, spec)
    keep = cm.training_sample(len(X), 400)
    sampled = cm.fit_model(rows, spec, "logistic", 400).named_steps["model"].coef_
    by_hand = (
        cm.fit_model(
            rows, spec, "logistic", aggregated=(X.iloc[keep].reset_index(drop=True), clicks[keep], impressions[keep])
        )
        .named_steps["model"]
        .coef_
    )
    whole = cm.fit_model(rows, spec, "logistic").named_steps["model"].coef_
    assert np.allclose(sampled, by_hand) and sampled.shape == whole.shape and not np.allclose(sampled, whole)
    capped = replace(ctx, cfg=replace(ctx.cfg, model_max_train_inputs=400))
    out = mr.train_ctr_model(capped, START + timedelta(days=14))
    assert out["train_inputs"] > 400 and out["train_inputs_used"] == 400, out
    counts = json.loads(store.registry().iloc[-1]["counts"])
    assert counts["train_inputs_used"] == 400 and counts["train_inputs"] == out["train_inputs"]


def test_forced_worse_challenger_keeps_the_champion(prepared, monkeypatch):
    store, ctx = prepared
    day = START + timedelta(days=14)
    assert mr.train_ctr_model(ctx, day)["action"] == "promoted"

    real_fit = cm.fit_model

    def worse_fit(rows, spec, family, *args):  # takes every feature, uses only the account
        return real_fit(rows, cm.FeatureSpec(categorical=["account_id"]), "logistic")

    monkeypatch.setattr(cm, "fit_model", worse_fit)
    out = mr.train_ctr_model(ctx, day + timedelta(days=3), force=True)
    assert out["action"] == "kept champion", out["reason"]
    assert mr.champion(store)["version"] == 1
    assert store.registry().iloc[-1]["status"] == "challenger"


def test_promote_rollback_and_tampered_artifact(prepared):
    store, ctx = prepared
    day = START + timedelta(days=14)
    mr.train_ctr_model(ctx, day)
    mr.train_ctr_model(ctx, day + timedelta(days=2), force=True)
    mr.promote(store, 2, "test")
    assert mr.champion(store)["version"] == 2
    out = mr.rollback(store)
    assert out == {"champion": 1, "rolled_back": 2}
    mr.promote(store, 2, "again")
    # Tamper with the champion's file: refused with a clear error, the previous one serves.
    path = mr.champion(store)["artifact_path"]
    with open(path, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="altered"):
        mr.load_champion(store)
    _model, row, warnings = mr.serving_model(store)
    assert int(row["version"]) == 1 and any("altered" in w for w in warnings)
    check = mr.check_champion(store, day + timedelta(days=2), ctx.cfg)
    assert check["passed"] is False and check["severity"] == "ERROR" and "unreadable" in check["description"]
    with pytest.raises(ArtifactError):
        mr.promote(store, 2, "tampered must not go live")
    # a missing artifact too
    import os

    os.remove(path)
    with pytest.raises(ArtifactError, match="missing"):
        mr.load_champion(store)


def test_unseen_values_at_scoring(prepared):
    store, ctx = prepared
    mr.train_ctr_model(ctx, START + timedelta(days=14))
    known = predict_creative_ctr(store, "acct_001", {"hook_type": "question", "audience": "retargeting"})
    unseen = predict_creative_ctr(store, "acct_001", {"hook_type": "never_seen_hook", "brand_new_dimension": "x"})
    new_account = predict_creative_ctr(store, "acct_999", {"hook_type": "question"})
    for out in (known, unseen, new_account):
        assert 0 < out["predicted_ctr"] < 0.2 and out["warnings"] == []


def test_blocking_check_fails_the_cycle_when_the_champion_is_unreadable(
    sqlite_url, env, model_world, monkeypatch, instance
):
    env(sqlite_url)
    data, _ = model_world
    store = make_store(sqlite_url)
    ingest_frame(data, store=store, settings=load_settings(), today=date(2025, 1, 1))
    end = START + timedelta(days=17)
    assert run_cycle(START, end, instance=instance)["status"] == "SUCCESS"
    champ = mr.champion(store)
    assert champ is not None
    with open(champ["artifact_path"], "ab") as fh:
        fh.write(b"x")
    # No retraining on the next day (a new calibrated model would otherwise heal the registry).
    monkeypatch.setenv("COMPOUND_LEARNING_MIN_NEW_CLICKS", str(10**9))
    out = run_cycle(end + timedelta(days=1), end + timedelta(days=1), instance=instance)
    assert out["status"] == "FAILURE"
    checks = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("ctr_model"), "champion_usable"), limit=1
    )
    assert checks and checks[0].status.value == "FAILED"


def test_a_registered_artifact_with_foreign_types_is_refused_and_never_run(prepared, tmp_path):
    """Issue 11 item 3: a pipeline holding ``functools.partial(exec, ...)``, registered with its
    own SHA-256 as the champion, is refused before loading; the previous champion serves."""
    import functools

    import skops.io as sio
    import sqlalchemy as sa

    from compound_learning.serving import ModelCache
    from compound_learning.storage import schema as t
    from compound_learning.storage.artifacts import sha256_of

    store, ctx = prepared
    day = START + timedelta(days=14)
    mr.train_ctr_model(ctx, day)
    mr.train_ctr_model(ctx, day + timedelta(days=2), force=True)
    mr.promote(store, 2, "test")
    model, _row = mr.load_champion(store)
    marker = tmp_path / "payload-ran"
    features = model.named_steps["features"]
    transformer = features.transformers_[1][1]
    transformer.func = functools.partial(exec, f"open({str(marker)!r}, 'w').write('x')")
    crafted = tmp_path / "crafted.skops"
    sio.dump(model, crafted)
    with store.transaction() as conn:
        conn.execute(
            t.model_registry.update()
            .where(t.model_registry.c.version == 2)
            .values(artifact_path=str(crafted), sha256=sha256_of(crafted))
        )
    with pytest.raises(ArtifactError, match=r"outside the allowlist: \['builtins.exec'\]"):
        mr.load_champion(store)
    out = predict_creative_ctr(store, "acct_001", {"hook_type": "question"}, cache=ModelCache())
    assert not marker.exists()
    assert out["model_version"] == 1 and 0 < out["predicted_ctr"] < 0.2
    assert any("builtins.exec" in w for w in out["warnings"])
    assert store.read_frame(sa.select(t.model_registry.c.status).where(t.model_registry.c.version == 2)).iloc[0, 0] == (
        "champion"
    )


def test_every_type_our_pipelines_hold_is_on_the_allowlist(tmp_path):
    """Fails when a library upgrade puts a new type in our own models (then review and add it)."""
    import skops.io as sio

    from compound_learning.storage.artifacts import ALLOWED_TYPES

    rng = np.random.default_rng(0)
    n = 300
    rows = pd.DataFrame(
        {
            "hook_type": rng.choice(["a", "b", "c"], n),
            "account_id": rng.choice(["x", "y"], n),
            "dow": rng.integers(0, 7, n).astype(str),
            "age_days": rng.integers(0, 30, n),
            "impressions": 1000,
            "clicks": rng.integers(1, 50, n),
        }
    )
    spec = cm.FeatureSpec(categorical=["hook_type", "account_id", "dow"])
    seen = set()
    for family in cm.FAMILIES:
        path = tmp_path / f"{family}.skops"
        sio.dump(cm.fit_model(rows, spec, family), path)
        seen |= set(sio.get_untrusted_types(file=path))
    assert seen <= ALLOWED_TYPES, sorted(seen - ALLOWED_TYPES)
    assert "functools.partial" in seen  # the list is exercised, not vacuous


def test_old_model_files_are_pruned_and_reset_removes_them(sqlite_url, env, tmp_path):
    """State stays bounded: the champion, 3 retired champions and 2 challengers keep their
    files; older versions keep their registry rows only. ``reset --yes`` removes the files."""
    from datetime import UTC, datetime

    from compound_learning.storage import schema as t
    from compound_learning_tests.conftest import run_cli

    env(sqlite_url)
    store = make_store(sqlite_url)
    statuses = ["retired"] * 5 + ["challenger"] * 3 + ["champion"]
    rows = []
    for version, status in enumerate(statuses, start=1):
        path = tmp_path / f"ctr_model_v{version:04d}.skops"
        path.write_bytes(b"model")
        day = START + timedelta(days=version)
        rows.append(
            {
                "version": version, "trained_at": datetime.now(UTC), "as_of": day, "family": "logistic",
                "train_start": day, "train_end": day, "holdout_start": day, "holdout_end": day, "counts": "{}",
                "metrics": "{}", "status": status, "reason": "test", "artifact_path": str(path), "sha256": "0" * 64,
            }
        )  # fmt: skip
    with store.transaction() as conn:
        store.bulk_insert(conn, t.model_registry, pd.DataFrame(rows))
    assert mr.prune_artifacts(store) == 3
    kept = sorted(int(p.stem[-4:]) for p in tmp_path.glob("*.skops"))
    assert kept == [3, 4, 5, 7, 8, 9]  # retired 3-5, challengers 7-8, the champion 9
    assert len(store.registry()) == 9  # every version's row (figures, reason) stays
    run = run_cli(sqlite_url, "reset", "--yes", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["model_files_removed"] == 6 and not list(tmp_path.glob("*.skops"))


@pytest.mark.parametrize(
    "encoder",
    [
        lambda: cm.OneHotEncoder(handle_unknown="ignore", min_frequency=5),
        lambda: cm.OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan, max_categories=6
        ),
    ],
    ids=["one_hot", "ordinal"],
)
def test_the_encoders_fed_codes_encode_as_they_do_on_the_text(encoder):
    """The pipelines give the encoders ranks instead of text (``CategoryCodes``, for speed): the
    encoded matrix must be the one the encoder gives on the text, rare values grouped the same and
    a value not seen in training (or a new account) unknown to it."""
    rng = np.random.default_rng(3)
    values = ["question", "story", "Offer", "__missing__", "ümlaut", "demo", "rare_1", "rare_2", "z"]
    frame = pd.DataFrame(
        {
            "hook": rng.choice(values, 400, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.0075, 0.0075, 0.035]),
            "account_id": rng.choice([f"acct_{i}" for i in range(30)], 400),
        }
    )
    later = frame.head(60).copy()
    later.loc[:19, "hook"] = "never_seen"
    later.loc[10:29, "account_id"] = "acct_new"
    on_text = encoder().fit(frame)
    on_codes = cm._coded(encoder()).fit(frame)
    expected, got = on_text.transform(later), on_codes.transform(later)
    if hasattr(expected, "toarray"):
        expected, got = expected.toarray(), got.toarray()
    np.testing.assert_array_equal(got, expected)
    unseen = got[10:20]  # a new hook and a new account: nothing known of either
    assert np.isnan(unseen).all() if np.isnan(got).any() else not unseen.any()
