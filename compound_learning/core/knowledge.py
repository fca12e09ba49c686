"""The knowledge graph: attribute values, metrics and patterns, linked by typed relationships.

Node confidence is a posterior probability (empirical-Bayes shrinkage of the cumulative
evidence), not an ad-hoc counter: a node's confidence is the posterior probability that its
strongest effect has the sign claimed. Relationship types keep what the data can support apart:
``improves`` / ``hurts`` (a significant main effect on a metric), ``synergy`` / ``antagonism``
(a significant, supported interaction), ``co_occurs`` (the library pairs two values more often
than chance: not evidence of anything causal), ``contradicts`` (a claim the new evidence flipped)
and ``describes`` (a pattern node to its attribute values).
"""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pandas as pd

from compound_learning.config import GLOBAL
from compound_learning.core.shrinkage import posterior, prior_variance, sign_probability
from compound_learning.core.stats import MISSING

NODE_COLUMNS = ["node_id", "node_type", "label", "properties", "confidence", "importance"]
EDGE_COLUMNS = ["source_id", "target_id", "relationship_type", "metric", "strength", "confidence", "evidence"]


def value_node(dim: str, value: str) -> str:
    return f"value:{dim}={value}"


def shrink_patterns(patterns: pd.DataFrame) -> pd.DataFrame:
    """Posterior mean / sd / sign probability for every estimable pattern (per metric family)."""
    out = patterns.copy()
    out["post_mean"], out["post_sd"], out["post_prob"] = np.nan, np.nan, 0.5
    for (_metric, _scope, _inter), idx in out.groupby(
        ["metric", out["account_id"] == GLOBAL, out["pattern_type"] == "interaction"]
    ).groups.items():
        sub = out.loc[idx]
        ok = sub["std_error"].notna()
        if not ok.any():
            continue
        tau2 = prior_variance(sub.loc[ok, "log_effect"], sub.loc[ok, "std_error"])
        mean, sd = posterior(sub["log_effect"], sub["std_error"], tau2)
        out.loc[idx, "post_mean"], out.loc[idx, "post_sd"] = mean, sd
        out.loc[idx, "post_prob"] = np.where(ok, sign_probability(mean, sd), 0.5)
    return out


def co_occurrence(
    creatives: pd.DataFrame, dims: list[str], min_creatives: int = 5, min_ratio: float = 1.5
) -> pd.DataFrame:
    """Pairs of values that appear together in the library more than chance would give."""
    rows = []
    n = len(creatives)
    if n == 0:
        return pd.DataFrame(columns=["d1", "v1", "d2", "v2", "together", "ratio"])
    for d1, d2 in combinations(dims, 2):
        sub = creatives[(creatives[d1] != MISSING) & (creatives[d2] != MISSING)]
        joint = sub.groupby([d1, d2]).size()
        p1, p2 = sub[d1].value_counts() / len(sub), sub[d2].value_counts() / len(sub)
        for (v1, v2), together in joint.items():
            ratio = together / (len(sub) * p1[v1] * p2[v2])
            if together >= min_creatives and ratio >= min_ratio:
                rows.append({"d1": d1, "v1": v1, "d2": d2, "v2": v2, "together": int(together), "ratio": float(ratio)})
    return pd.DataFrame(rows, columns=["d1", "v1", "d2", "v2", "together", "ratio"])


def build_graph(patterns: pd.DataFrame, creatives: pd.DataFrame, dims: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nodes and relationships from the cycle's global patterns and the creative library."""
    glob = shrink_patterns(patterns[patterns["account_id"] == GLOBAL]) if not patterns.empty else patterns
    nodes: dict[str, dict] = {}
    edges: list[dict] = []
    total_creatives = max(len(creatives), 1)

    for metric in sorted(glob["metric"].unique()) if not glob.empty else []:
        nodes[f"metric:{metric}"] = {
            "node_id": f"metric:{metric}",
            "node_type": "metric",
            "label": metric,
            "properties": json.dumps({}),
            "confidence": 1.0,
            "importance": 1.0,
        }

    main = glob[glob["pattern_type"] != "interaction"] if not glob.empty else glob
    for (dim_value_json), sub in main.groupby("attributes") if not main.empty else []:
        ((dim, value),) = json.loads(dim_value_json).items()
        share = float((creatives[dim] == value).sum()) / total_creatives if dim in creatives else 0.0
        per_metric = {
            r.metric: {
                "posterior_lift": float(np.expm1(r.post_mean)) if pd.notna(r.post_mean) else None,
                "sign_probability": float(r.post_prob),
                "state": r.state,
                "lift": None if pd.isna(r.lift) else float(r.lift),
            }
            for r in sub.itertuples()
        }
        best = sub.loc[sub["post_prob"].idxmax()]
        strength = float(np.nanmax(np.abs(sub["post_mean"].to_numpy()))) if sub["post_mean"].notna().any() else 0.0
        nid = value_node(dim, value)
        nodes[nid] = {
            "node_id": nid,
            "node_type": "attribute_value",
            "label": f"{dim} = {value}",
            "properties": json.dumps(
                {"dimension": dim, "value": value, "creative_share": share, "metrics": per_metric}, sort_keys=True
            ),
            "confidence": float(best["post_prob"]),
            "importance": strength * np.sqrt(share),
        }
        for r in sub.itertuples():
            pid = f"pattern:{r.pattern_id}"
            nodes[pid] = {
                "node_id": pid,
                "node_type": "pattern",
                "label": f"{dim} = {value} on {r.metric}",
                "properties": json.dumps(
                    {
                        "lift": None if pd.isna(r.lift) else float(r.lift),
                        "ci_low": None if pd.isna(r.ci_low) else float(r.ci_low),
                        "ci_high": None if pd.isna(r.ci_high) else float(r.ci_high),
                        "q_value": None if pd.isna(r.q_value) else float(r.q_value),
                        "state": r.state,
                        "accounts": json.loads(r.support).get("accounts"),
                    },
                    sort_keys=True,
                ),
                "confidence": float(r.post_prob),
                "importance": abs(float(r.post_mean)) * np.sqrt(share) if pd.notna(r.post_mean) else 0.0,
            }
            edges.append(_edge(pid, nid, "describes", r.metric, 1.0, 1.0, {}))
            evidence = {
                "lift": None if pd.isna(r.lift) else float(r.lift),
                "q_value": None if pd.isna(r.q_value) else float(r.q_value),
                "support": json.loads(r.support),
            }
            if r.state == "significant":
                kind = "improves" if r.log_effect > 0 else "hurts"
                edges.append(
                    _edge(nid, f"metric:{r.metric}", kind, r.metric, float(r.post_mean), float(r.post_prob), evidence)
                )
            elif r.state == "contradicted":
                edges.append(
                    _edge(
                        pid,
                        f"metric:{r.metric}",
                        "contradicts",
                        r.metric,
                        float(r.post_mean or 0),
                        float(r.post_prob),
                        evidence,
                    )
                )

    inter = glob[glob["pattern_type"] == "interaction"] if not glob.empty else glob
    for r in inter.itertuples() if not inter.empty else []:
        if r.state != "significant":
            continue
        (d1, v1), (d2, v2) = sorted(json.loads(r.attributes).items())
        kind = "synergy" if r.log_effect > 0 else "antagonism"
        edges.append(
            _edge(
                value_node(d1, v1),
                value_node(d2, v2),
                kind,
                r.metric,
                float(r.post_mean),
                float(r.post_prob),
                {"lift": float(r.lift), "q_value": float(r.q_value), "support": json.loads(r.support)},
            )
        )

    for r in co_occurrence(creatives, dims).itertuples():
        a, b = value_node(r.d1, r.v1), value_node(r.d2, r.v2)
        if a in nodes and b in nodes:
            edges.append(
                _edge(
                    a,
                    b,
                    "co_occurs",
                    "-",
                    float(r.ratio),
                    1.0,
                    {"creatives_together": r.together, "ratio_to_chance": round(r.ratio, 3)},
                )
            )

    node_df = pd.DataFrame(list(nodes.values()), columns=NODE_COLUMNS)
    if not node_df.empty and node_df["importance"].max() > 0:
        node_df["importance"] = node_df["importance"] / node_df["importance"].max()
    edge_df = pd.DataFrame(edges, columns=EDGE_COLUMNS).drop_duplicates(
        subset=["source_id", "target_id", "relationship_type", "metric"]
    )
    return node_df, edge_df


def _edge(source, target, kind, metric, strength, confidence, evidence) -> dict:
    return {
        "source_id": source,
        "target_id": target,
        "relationship_type": kind,
        "metric": metric,
        "strength": float(strength),
        "confidence": float(confidence),
        "evidence": json.dumps(evidence, sort_keys=True),
    }
