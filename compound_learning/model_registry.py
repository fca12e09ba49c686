"""The CTR model lifecycle: retrain on evidence, champion/challenger promotion through the
gate, the registry (promote, rollback), and safe loading of the model that serves.

A model is only ever loaded through :func:`serving_model`, which verifies the artifact's
SHA-256 and type allowlist; if the champion's file is missing or altered, the error is reported
and the most recent earlier model that verifies keeps serving.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from compound_learning.config import CycleSettings
from compound_learning.core import stats
from compound_learning.storage import schema as t
from compound_learning.storage.artifacts import ArtifactError, load_model, remove_artifacts, save_model
from compound_learning.storage.store import Store, utcnow

if TYPE_CHECKING:
    from compound_learning.steps import CycleContext


def _model_rows(store: Store, start: date, end: date) -> tuple[pd.DataFrame, list[str]]:
    rows = store.read_range(t.creative_daily_stats, start, end)
    if rows.empty:
        return rows, []
    wide, dims = stats.expand_attributes(rows)
    wide["date"] = pd.to_datetime(wide["date"]).dt.date
    return wide, dims


def champion(store: Store) -> pd.Series | None:
    reg = store.registry()
    champ = reg[reg["status"] == "champion"]
    return None if champ.empty else champ.iloc[-1]


def model_features(row: pd.Series) -> list[str]:
    """The categorical features a registered model was trained on (its registry row's counts)."""
    return json.loads(row["counts"])["features"]


def load_champion(store: Store):
    """The champion's pipeline and registry row; raises ArtifactError if it cannot be trusted."""
    row = champion(store)
    if row is None:
        raise ArtifactError("no champion model in the registry")
    return load_model(row["artifact_path"], row["sha256"]), row


def serving_model(store: Store) -> tuple[object, pd.Series, list[str]]:
    """The model that serves: the champion, or if its artifact cannot be trusted, the most
    recent earlier model that verifies (with a warning naming the problem)."""
    warnings: list[str] = []
    try:
        model, row = load_champion(store)
        return model, row, warnings
    except ArtifactError as exc:
        warnings.append(f"champion refused: {exc}")
    reg = store.registry()
    for _, row in reg[reg["status"] == "retired"].sort_values("version", ascending=False).iterrows():
        try:
            model = load_model(row["artifact_path"], row["sha256"])
        except ArtifactError as exc:
            warnings.append(f"v{int(row['version'])} refused: {exc}")
            continue
        warnings.append(f"serving the previous champion v{int(row['version'])} instead")
        return model, row, warnings
    raise ArtifactError("; ".join(warnings) or "no model in the registry")


def promote(store: Store, version: int, reason: str = "promoted by hand") -> dict:
    """Make ``version`` the champion (its artifact must verify); the old champion retires."""
    reg = store.registry()
    match = reg[reg["version"] == version]
    if match.empty:
        raise LookupError(f"no model version {version}; versions: {list(reg['version'])}")
    row = match.iloc[0]
    load_model(row["artifact_path"], row["sha256"])  # refuse a missing or altered artifact
    with store.transaction(lock_key="model_registry") as conn:
        for _, old in reg[(reg["status"] == "champion") & (reg["version"] != version)].iterrows():
            store.set_model_status(conn, int(old["version"]), "retired", f"replaced by v{version}: {reason}")
        store.set_model_status(conn, int(version), "champion", reason)
    return {"champion": int(version), "reason": reason}


def rollback(store: Store) -> dict:
    """Retire the current champion and restore the most recent earlier model that verifies."""
    champ = champion(store)
    if champ is None:
        raise LookupError("no champion to roll back")
    reg = store.registry()
    earlier = reg[(reg["version"] < champ["version"]) & reg["status"].isin(["retired", "challenger"])]
    for _, row in earlier[earlier["status"] == "retired"].sort_values("version", ascending=False).iterrows():
        try:
            load_model(row["artifact_path"], row["sha256"])
        except ArtifactError:
            continue
        with store.transaction(lock_key="model_registry") as conn:
            store.set_model_status(
                conn, int(champ["version"]), "rolled_back", f"rolled back in favour of v{int(row['version'])}"
            )
            store.set_model_status(
                conn, int(row["version"]), "champion", f"restored by rollback of v{int(champ['version'])}"
            )
        return {"champion": int(row["version"]), "rolled_back": int(champ["version"])}
    raise LookupError("no earlier champion with a valid artifact to roll back to")


def check_champion(store: Store, day: date, cfg: CycleSettings) -> dict:
    """The blocking check of ``ctr_model``: a champion exists, its artifact verifies, and it
    is calibrated on its holdout. With less history than one training window, a missing
    champion is only a warning (nothing could have been trained yet)."""
    champ = champion(store)
    first = store.latest_day(t.creative_daily_stats, day_column="date")
    window = cfg.model_train_days // 4 + cfg.model_holdout_days
    enough_history = store.count_days(t.creative_daily_stats, day, "date") >= window
    if champ is None:
        return {
            "passed": False,
            "severity": "ERROR" if enough_history and first else "WARN",
            "description": "no champion model" + ("" if enough_history else " yet: not enough history to train one"),
        }
    try:
        load_model(champ["artifact_path"], champ["sha256"])
    except ArtifactError as exc:
        return {
            "passed": False,
            "severity": "ERROR",
            "description": f"champion v{int(champ['version'])} unreadable: {exc}",
        }
    ratio = json.loads(champ["metrics"]).get("calibration_ratio")
    if ratio is None or abs(ratio - 1.0) > cfg.calibration_tolerance:
        return {
            "passed": False,
            "severity": "ERROR",
            "description": f"champion v{int(champ['version'])} uncalibrated: expected/observed clicks {ratio}",
        }
    return {
        "passed": True,
        "severity": "ERROR",
        "description": f"champion v{int(champ['version'])} verified and calibrated",
        "calibration_ratio": ratio,
        "version": int(champ["version"]),
    }


FIGURES = ("log_loss", "normalized_entropy", "auc", "calibration_ratio", "brier")


def _champion_figures(champ) -> dict:
    """The serving champion's holdout figures, so a day that trains nothing still shows what
    serves (in the UI the asset page would otherwise lose them on every skipped day)."""
    if champ is None:
        return {}
    metrics = json.loads(champ["metrics"])
    return {
        "version": int(champ["version"]),
        "family": champ["family"],
        "reliability": metrics.get("reliability", []),
        "per_account": metrics.get("per_account", {}),
        **{k: metrics.get(k) for k in FIGURES},
    }


KEEP_RETIRED = 3  # earlier champions kept for rollback and for serving's fallback
KEEP_CHALLENGERS = 2  # the latest models that did not go live, for inspection


def prune_artifacts(store: Store) -> int:
    """Delete the files of models nobody can still use: the champion, the last few retired
    champions and challengers stay; every other version keeps its registry row (its figures,
    its reason) but not its file, so state stays bounded however often the model retrains."""
    reg = store.registry()
    if reg.empty:
        return 0
    newest = reg.sort_values("version", ascending=False)
    keep = set(newest.loc[newest["status"] == "champion", "version"])
    keep |= set(newest.loc[newest["status"] == "retired", "version"].head(KEEP_RETIRED))
    keep |= set(newest.loc[newest["status"] == "challenger", "version"].head(KEEP_CHALLENGERS))
    return remove_artifacts(reg.loc[~reg["version"].isin(keep), "artifact_path"])


def train_ctr_model(ctx: CycleContext, day: date, force: bool = False) -> dict:
    """Retrain on evidence; the better family is the challenger; promote only through the gate."""
    store, settings, cfg = ctx.store, ctx.settings, ctx.cfg
    champ = champion(store)
    registry = store.registry()
    last = registry.iloc[-1] if len(registry) else None  # the last training, promoted or not
    window_start = day - timedelta(days=cfg.model_train_days + cfg.model_holdout_days - 1)
    holdout_start = day - timedelta(days=cfg.model_holdout_days - 1)
    since = pd.Timestamp(last["holdout_end"]).date() if last is not None else None
    # Counted in the database: most days train nothing, and need not read the window's rows.
    counted_from = window_start if since is None else max(window_start, since + timedelta(days=1))
    new_clicks = int(store.total(t.creative_daily_stats, "clicks", counted_from, day)) if counted_from <= day else 0
    age_days = (day - pd.Timestamp(champ["as_of"]).date()).days if champ is not None else None
    decision = {
        "new_clicks": new_clicks,
        "champion_version": None if champ is None else int(champ["version"]),
        "champion_age_days": age_days,
    }
    if not force and last is not None and since is not None and since >= day:
        return {
            **decision,
            **_champion_figures(champ),
            "action": "skipped: already trained on this day's evidence",
            "reason": f"model v{int(last['version'])} was trained with data up to {since}",
        }
    needed = cfg.min_new_clicks
    if champ is not None:
        trained_on = json.loads(champ["counts"]).get("train_clicks", 0)
        needed = max(needed, int(cfg.min_new_click_share * trained_on))
    fresh = age_days is not None and age_days < cfg.max_model_age_days
    if not force and champ is not None and new_clicks < needed and fresh:
        return {
            **decision,
            **_champion_figures(champ),
            "action": "skipped: not enough new evidence",
            "reason": f"{new_clicks} new clicks < {needed} (the larger of {cfg.min_new_clicks} and "
            f"{cfg.min_new_click_share:.0%} of the champion's training clicks) and the champion is "
            f"{age_days} of at most {cfg.max_model_age_days} days old",
        }
    rows, dims = _model_rows(store, window_start, day)
    train = rows[rows["date"] < holdout_start] if len(rows) else rows
    hold = rows[rows["date"] >= holdout_start] if len(rows) else rows
    if train.empty or hold.empty or train["clicks"].sum() == 0 or hold["clicks"].sum() == 0:
        return {
            **decision,
            "action": "skipped: not enough data",
            "reason": f"need clicks in both the training window (from {window_start}) "
            f"and the holdout (from {holdout_start})",
        }
    from compound_learning.core import ctr_model as cm  # scikit-learn: only a day that trains loads it

    spec = cm.FeatureSpec(categorical=[*dims, "account_id", "dow"])
    aggregated = cm.aggregate(train, spec)  # once for both families
    n_inputs = len(aggregated[0])
    candidates = {}
    for family in cm.FAMILIES:
        model = cm.fit_model(train, spec, family, cfg.model_max_train_inputs, aggregated)
        p = cm.predict_ctr(model, hold, spec)
        candidates[family] = (model, p, cm.evaluate(p, hold))
    family = min(candidates, key=lambda f: candidates[f][2]["log_loss"])
    model, p_new, metrics = candidates[family]
    metrics["per_account"] = cm.per_account_metrics(p_new, hold)
    metrics["families"] = {f: {k: v for k, v in c[2].items() if k != "reliability"} for f, c in candidates.items()}
    boot, champ_note = None, None
    if champ is not None:
        try:
            old_model, _ = load_champion(store)
            p_old = cm.predict_ctr(old_model, hold, spec)
            boot = cm.paired_bootstrap(
                cm.row_log_loss(p_new, hold),
                cm.row_log_loss(p_old, hold),
                hold["impressions"].to_numpy(float),
                hold["creative_id"].to_numpy(),
            )
            metrics["champion_on_holdout"] = {k: v for k, v in cm.evaluate(p_old, hold).items() if k != "reliability"}
        except (ArtifactError, ValueError, KeyError) as exc:
            champ_note = f"champion unusable ({exc}); judged without it"
    promote, reason = cm.promotion_decision(metrics, boot, cfg.calibration_tolerance)
    if champ_note:
        reason = f"{champ_note}; {reason}"
    metrics["bootstrap"] = boot
    with store.transaction(lock_key="model_registry") as conn:
        version = store.next_model_version(conn)
        path, digest = save_model(model, settings.artifacts_dir, f"ctr_model_v{version:04d}")
        if promote:
            try:
                load_model(path, digest)  # a model that cannot be read back never goes live
            except ArtifactError as exc:
                promote, reason = False, f"artifact failed verification after saving: {exc}"
        counts = {
            "train_rows": len(train),
            "train_inputs": n_inputs,
            "train_inputs_used": min(n_inputs, cfg.model_max_train_inputs),
            "holdout_rows": len(hold),
            "train_clicks": int(train["clicks"].sum()),
            "train_impressions": int(train["impressions"].sum()),
            "holdout_clicks": int(hold["clicks"].sum()),
            "features": spec.categorical,
        }
        if promote and champ is not None:
            store.set_model_status(conn, int(champ["version"]), "retired", f"replaced by v{version}: {reason}")
        store.bulk_insert(
            conn,
            t.model_registry,
            pd.DataFrame(
                [
                    {
                        "version": version,
                        "trained_at": utcnow(),
                        "as_of": day,
                        "family": family,
                        "train_start": window_start,
                        "train_end": holdout_start - timedelta(days=1),
                        "holdout_start": holdout_start,
                        "holdout_end": day,
                        "counts": json.dumps(counts),
                        "metrics": json.dumps(metrics, default=float),
                        "status": "champion" if promote else "challenger",
                        "reason": reason,
                        "artifact_path": str(path),
                        "sha256": digest,
                    }
                ]
            ),
        )
    action = "promoted" if promote else "kept champion" if champ is not None else "rejected: no champion yet"
    return {
        **decision,
        "artifacts_removed": prune_artifacts(store),
        "action": action,
        "version": version,
        "family": family,
        "train_inputs": n_inputs,
        "train_inputs_used": counts["train_inputs_used"],
        "reason": reason,
        "reliability": metrics["reliability"],
        "per_account": metrics["per_account"],
        **{k: metrics[k] for k in FIGURES},
    }
