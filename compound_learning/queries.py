"""Read models shared by the CLI and the HTTP API: the latest knowledge, in the output contract."""

from __future__ import annotations

import json

import pandas as pd

from compound_learning.config import DEFAULT_MIN_CONFIDENCE, GLOBAL, METRICS, STATES
from compound_learning.core.dna import BASELINE_VALUE, pair_dimensions, score_creative
from compound_learning.core.patterns import patterns_to_records
from compound_learning.storage import schema as t
from compound_learning.storage.artifacts import ArtifactError
from compound_learning.storage.store import Store


class QueryError(ValueError):
    """A bad query parameter (named in the message)."""


def patterns(
    store: Store,
    *,
    account_id: str | None = None,
    pattern_type: str | None = None,
    metric: str | None = None,
    state: str | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    limit: int = 50,
) -> list[dict]:
    """Latest patterns, most confident first. ``account_id`` None: global patterns only."""
    if metric is not None and metric not in METRICS:
        raise QueryError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if state is not None and state not in STATES:
        raise QueryError(f"state must be one of {list(STATES)}, got {state!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise QueryError(f"min_confidence must be within 0..1, got {min_confidence}")
    if limit < 1:
        raise QueryError(f"limit must be at least 1, got {limit}")
    frame = store.latest_patterns(
        account_id=account_id or GLOBAL,
        min_confidence=min_confidence,
        pattern_type=pattern_type,
        metric=metric,
        state=state,
        limit=limit,
    )
    return patterns_to_records(frame) if len(frame) else []


def knowledge_graph(store: Store, limit: int = 50) -> dict:
    """The latest graph's most important nodes, the relationships among them, and each node's
    confidence history (one point per day)."""
    if limit < 1:
        raise QueryError(f"limit must be at least 1, got {limit}")
    day = store.latest_day(t.knowledge_nodes)
    if day is None:
        return {"as_of": None, "nodes": [], "relationships": []}
    nodes = store.graph_nodes(day, limit)
    ids = list(nodes["node_id"])
    rels = store.graph_relationships(day, ids)
    history = store.node_history(ids)
    hist = (
        {
            k: [
                {"as_of": str(pd.Timestamp(d).date()), "confidence": float(cf)}
                for d, cf in zip(g["as_of"], g["confidence"], strict=True)
            ]
            for k, g in history.groupby("node_id")
        }
        if len(history)
        else {}
    )
    return {
        "as_of": str(day),
        "nodes": [
            {
                "node_id": x.node_id,
                "node_type": x.node_type,
                "label": x.label,
                "properties": json.loads(x.properties),
                "confidence": float(x.confidence),
                "importance": float(x.importance),
                "history": hist.get(x.node_id, [])[-90:],
            }
            for x in nodes.itertuples()
        ],
        "relationships": [
            {
                "source": x.source_id,
                "target": x.target_id,
                "type": x.relationship_type,
                "metric": None if x.metric == "-" else x.metric,
                "strength": float(x.strength),
                "confidence": float(x.confidence),
                "evidence": json.loads(x.evidence),
            }
            for x in rels.itertuples()
        ],
    }


def trajectory(store: Store, account_id: str) -> dict:
    """The latest improvement trajectory of an account."""
    frame = store.latest_snapshot(account_id)
    if frame.empty:
        raise LookupError(f"no improvement snapshot for account {account_id!r}")
    row = frame.iloc[0]
    return {"account_id": account_id, "as_of": str(pd.Timestamp(row["date"]).date()), **json.loads(row["trajectory"])}


def roas_series(store: Store, account_id: str) -> list[dict]:
    """The account's daily spend, revenue and ROAS (the trajectory's data points)."""
    frame = store.snapshot_series(account_id)
    return [
        {
            "date": str(pd.Timestamp(r.date).date()),
            "spend": float(r.spend),
            "revenue": None if pd.isna(r.revenue) else float(r.revenue),
            "roas": None if pd.isna(r.roas) else float(r.roas),
        }
        for r in frame.itertuples()
    ]


def accounts(store: Store) -> list[str]:
    """Every account with a trajectory."""
    return store.snapshot_accounts()


def score(store: Store, account_id: str, creative: dict) -> dict:
    if not isinstance(creative, dict) or not creative or not all(isinstance(v, str) for v in creative.values()):
        raise QueryError(
            'creative must be a JSON object of attribute name -> value strings, e.g. {"hook_type": "question"}'
        )
    day = store.latest_day(t.creative_dna)
    if day is None:
        raise LookupError("no creative DNA has been learned yet: run a learning cycle first")
    # Only the rows this creative can touch: its account's and the global ones, its dimensions.
    weights = store.dna_weights_for(day, [account_id, GLOBAL], [*creative, *pair_dimensions(creative), BASELINE_VALUE])
    result = {"as_of": str(day), **score_creative(weights, account_id, creative)}
    from compound_learning.serving import predict_creative_ctr  # scikit-learn loads only to score

    try:
        result["model"] = predict_creative_ctr(store, account_id, creative)
    except ArtifactError as exc:
        result["model"] = {"error": f"no trustworthy CTR model: {exc}"}
    return result


def recommendations(store: Store, account_id: str, n: int = 5) -> dict:
    """The account's latest recommendations: the next ``n`` creatives to launch and tomorrow's
    spend split over its live creatives, with the share of each that is exploration."""
    if n < 1:
        raise QueryError(f"n must be at least 1, got {n}")
    frame = store.latest_recommendations(account_id)
    if frame.empty:
        raise LookupError(f"no recommendations for account {account_id!r} yet: run a learning cycle first")

    def interval(r, low, high):
        return None if pd.isna(r[low]) else [float(r[low]), float(r[high])]

    launches, spend = [], []
    for r in frame.to_dict("records"):
        details = json.loads(r["details"])
        if r["kind"] == "launch":
            launches.append(
                {
                    "rank": int(r["rank"]),
                    "pick": r["pick"],
                    "attributes": json.loads(r["attributes"]),
                    "expected_roas": r["expected_roas"],
                    "roas_ci": interval(r, "roas_ci_low", "roas_ci_high"),
                    "expected_ctr": None if pd.isna(r["expected_ctr"]) else float(r["expected_ctr"]),
                    "ctr_ci": details.get("ctr_ci"),
                    "reason": r["reason"],
                    "contributions": details.get("contributions", []),
                }
            )
        else:
            spend.append(
                {
                    "creative_id": r["creative_id"],
                    "attributes": json.loads(r["attributes"]),
                    "share": float(r["share"]),
                    "p_best": float(r["p_best"]),
                    "expected_roas": float(r["expected_roas"]),
                    "roas_ci": interval(r, "roas_ci_low", "roas_ci_high"),
                    "expected_ctr": None if pd.isna(r["expected_ctr"]) else float(r["expected_ctr"]),
                    "exploration": float(r["exploration"]),
                    "reason": r["reason"],
                }
            )
    # The first n keep the step's explore share: the best exploit picks and the first explore ones.
    n = min(n, len(launches))
    n_explore = round(n * sum(p["pick"] == "explore" for p in launches) / len(launches)) if launches else 0
    picks = [p for p in launches if p["pick"] == "exploit"][: n - n_explore]
    picks += [p for p in launches if p["pick"] == "explore"][:n_explore]
    as_of = pd.Timestamp(frame["as_of"].iloc[0]).date()
    return {
        "account_id": account_id,
        "as_of": str(as_of),
        "launch": picks,
        "explore_picks": sum(p["pick"] == "explore" for p in picks),
        "spend": spend,
        "spend_exploration_share": round(sum(s["exploration"] for s in spend), 4),
        "drift": _drift(store, as_of),
    }


def _drift(store: Store, day) -> dict | None:
    """The day's drift test (``core.drift``): all accounts' evidence, the same for every account."""
    row = store.read_day(t.evidence_drift, day)
    if row.empty:
        return None
    r = row.iloc[0]

    def number(v):
        return None if pd.isna(v) else round(float(v), 4)

    return {
        "summary": r["summary"],
        "level_shift": number(r["level_shift"]),
        "z": number(r["z"]),
        "flagged": bool(r["flagged"]),
        "exploring": bool(r["exploring"]),
        "burst_start": None if pd.isna(r["burst_start"]) else str(pd.Timestamp(r["burst_start"]).date()),
        # the dimensions learned afresh from the evidence since the burst: {"since", "metrics": {metric: {dim: test}}}
        "relearned": json.loads(r["relearned"]) if isinstance(r.get("relearned"), str) else None,
    }


def drift_notice(drift: dict | None) -> str | None:
    """The drift sentence a reader of the recommendations should see: when the test flags a drop,
    a burst explores, or a dimension is learned afresh after one; None on a quiet day."""
    if drift and (drift["flagged"] or drift["exploring"] or drift.get("relearned")):
        return drift["summary"]
    return None


def models(store: Store) -> list[dict]:
    """The model registry, newest first."""
    reg = store.registry()
    out = []
    for r in reg.sort_values("version", ascending=False).itertuples():
        metrics = json.loads(r.metrics)
        out.append(
            {
                "version": int(r.version),
                "status": r.status,
                "family": r.family,
                "trained_at": str(r.trained_at),
                "as_of": str(pd.Timestamp(r.as_of).date()),
                "training_window": [str(pd.Timestamp(r.train_start).date()), str(pd.Timestamp(r.train_end).date())],
                "holdout_window": [str(pd.Timestamp(r.holdout_start).date()), str(pd.Timestamp(r.holdout_end).date())],
                "counts": json.loads(r.counts),
                "metrics": {
                    k: metrics.get(k) for k in ("log_loss", "normalized_entropy", "auc", "calibration_ratio", "brier")
                },
                "reason": r.reason,
                "artifact_path": r.artifact_path,
                "sha256": r.sha256,
            }
        )
    return out


def cross_account(store: Store, limit: int = 50) -> list[dict]:
    """The latest published cross-account insights (relative figures, no account ids)."""
    day = store.latest_day(t.cross_account_insights)
    if day is None:
        return []
    frame = store.published_insights(day, limit)
    return [
        {
            "insight_id": r.insight_id,
            "attributes": json.loads(r.attributes),
            "metric": r.metric,
            "pooled_lift": r.pooled_lift,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "heterogeneity_tau2": r.tau2,
            "i2": r.i2,
            "n_accounts": int(r.n_accounts),
        }
        for r in frame.itertuples()
    ]


def dashboard(store: Store, account_id: str | None = None) -> dict:
    """Everything a person looks at first: trajectory, top patterns, model, last cycles."""
    out: dict = {"account_id": account_id}
    if account_id:
        out["trajectory"] = trajectory(store, account_id)
    out["top_patterns"] = patterns(store, account_id=account_id, state="significant", limit=10)
    out["cross_account_insights"] = cross_account(store, limit=10)
    reg = store.registry()
    champ = reg[reg["status"] == "champion"]
    out["model"] = (
        None
        if champ.empty
        else {
            "version": int(champ.iloc[-1]["version"]),
            "family": champ.iloc[-1]["family"],
            "trained_as_of": str(pd.Timestamp(champ.iloc[-1]["as_of"]).date()),
            **{
                k: v
                for k, v in json.loads(champ.iloc[-1]["metrics"]).items()
                if k in ("log_loss", "normalized_entropy", "auc", "calibration_ratio")
            },
        }
    )
    logs = store.cycle_logs(10)
    out["last_cycles"] = [
        {
            "run_id": r.run_id,
            "partition_start": None if r.partition_start is None else str(r.partition_start),
            "partition_end": None if r.partition_end is None else str(r.partition_end),
            "status": r.status,
            "duration_seconds": r.duration_seconds,
            "message": r.message if isinstance(r.message, str) else "",  # why it failed, or that nothing was ingested
        }
        for r in logs.itertuples()
    ]
    return out
