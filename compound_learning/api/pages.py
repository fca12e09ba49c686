"""HTML pages of the API: an account's dashboard, charts rendered on the server."""

from __future__ import annotations

import html

from compound_learning import charts, queries
from compound_learning.api.access import shared_graph, shared_patterns
from compound_learning.storage.store import Store


def render_dashboard(db: Store, account_id: str, shared_only: bool = False) -> str:
    """The account's page; with ``shared_only`` pooled patterns need enough accounts behind them."""
    traj = queries.trajectory(db, account_id)
    series = queries.roas_series(db, account_id)
    top = queries.patterns(db, account_id=account_id, state="significant", limit=15)
    if not top:  # nothing significant for the account yet: show what holds across accounts
        pooled = queries.patterns(db, state="significant", limit=50)
        top = (shared_patterns(pooled) if shared_only else pooled)[:15]
    graph = queries.knowledge_graph(db, limit=40)
    if shared_only:
        graph = shared_graph(graph)
    dash = queries.dashboard(db, account_id)
    e = html.escape

    def fmt(v, pct=False):
        if v is None:
            return "–"
        return f"{v:+.1%}" if pct else f"{v:.3g}"

    rows = "".join(
        f"<tr><td>{e(p['metric'])}</td><td>{e(', '.join(f'{k}={v}' for k, v in p['attributes'].items()))}</td>"
        f"<td>{fmt(p['lift'], True)}</td><td>[{fmt(p['ci_low'], True)}, {fmt(p['ci_high'], True)}]</td>"
        f"<td>{fmt(p['q_value'])}</td><td>{p['support'].get('creatives')}</td><td>{p['support'].get('accounts')}</td></tr>"
        for p in top
    )
    cycles = "".join(
        f"<tr><td>{e(c['status'])}</td><td>{e(str(c['partition_start']))} .. {e(str(c['partition_end']))}</td>"
        f"<td>{fmt(c['duration_seconds'])}</td><td>{e(c['message'])}</td></tr>"
        for c in dash["last_cycles"]
    )
    try:
        rec = queries.recommendations(db, account_id, n=5)
    except LookupError:
        rec = None
    picks = (
        ""
        if rec is None
        else "".join(
            f"<tr><td>{p['rank']}</td><td>{e(p['pick'])}</td>"
            f"<td>{e(', '.join(f'{k}={v}' for k, v in p['attributes'].items()))}</td>"
            f"<td>{p['expected_roas']:.2f} [{p['roas_ci'][0]:.2f}, {p['roas_ci'][1]:.2f}]</td><td>{e(p['reason'])}</td></tr>"
            for p in rec["launch"]
        )
    )
    spend = (
        ""
        if rec is None
        else "".join(
            f"<tr><td>{e(s['creative_id'])}</td><td>{s['share']:.1%}</td><td>{s['p_best']:.0%}</td>"
            f"<td>{s['expected_roas']:.2f}"
            + (f" [{s['roas_ci'][0]:.2f}, {s['roas_ci'][1]:.2f}]" if s["roas_ci"] else "")
            + "</td>"
            f"<td>{'' if s.get('expected_ctr') is None else format(s['expected_ctr'], '.2%')}</td></tr>"
            for s in rec["spend"][:10]
        )
    )
    rec_html = (
        "<p>No recommendations yet: run a learning cycle.</p>"
        if rec is None
        else f"<p>As of {e(rec['as_of'])}; {rec['explore_picks']} of {len(rec['launch'])} picks explore "
        f"little-tested values; {rec['spend_exploration_share']:.0%} of tomorrow's spend goes beyond the "
        "best-looking creative, so the others keep earning evidence.</p>"
        + (
            f"<p><strong>Drift:</strong> {e(queries.drift_notice(rec['drift']))}</p>"
            if queries.drift_notice(rec["drift"])
            else ""
        )
        + "<table><tr><th>#</th><th>pick</th><th>attributes</th><th>expected ROAS [95%]</th><th>why</th></tr>"
        f"{picks}</table><h3>Tomorrow's spend</h3>"
        "<table><tr><th>creative</th><th>share</th><th>P(best)</th><th>expected ROAS [95%]</th>"
        "<th>expected CTR</th></tr>"
        f"{spend}</table>"
    )
    model = dash["model"]
    model_html = (
        "<p>No champion model yet.</p>"
        if not model
        else f"<p>Champion v{model['version']} ({e(model['family'])}), trained as of {e(model['trained_as_of'])}: "
        f"log loss {fmt(model.get('log_loss'))}, normalized entropy {fmt(model.get('normalized_entropy'))}, "
        f"AUC {fmt(model.get('auc'))}, calibration {fmt(model.get('calibration_ratio'))}</p>"
    )
    proj = "".join(
        f"<li>{h} days: {fmt(traj[f'projected_{h}d_roas'])} "
        f"[{fmt(traj[f'projected_{h}d_roas_ci'][0])}, {fmt(traj[f'projected_{h}d_roas_ci'][1])}]</li>"
        for h in (30, 90, 365)
        if traj[f"projected_{h}d_roas"] is not None
    ) + "".join(f"<li>{e(note)}</li>" for note in traj.get("projection_notes", []))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>compound_learning: {e(account_id)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;color:#222}}
table{{border-collapse:collapse;font-size:0.9em}}td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}}
.grid{{display:grid;grid-template-columns:1fr 1fr;gap:1em}} img{{max-width:100%}} h2{{margin-top:1.4em}}</style></head>
<body><h1>{e(account_id)}</h1>
<p>ROAS {fmt(traj["initial_roas"])} (first week) → {fmt(traj["current_roas"])} (last week). {e(traj.get("summary", ""))}.
Status: <b>{e(traj["learning_status"])}</b>; ongoing daily trend: {e(traj.get("trend") or "n/a")}, daily change {fmt(traj["daily_improvement_rate"], True)}. As of {e(traj["as_of"])}.</p>
<img alt="ROAS trajectory" src="{charts.data_uri(charts.trajectory_chart(series, traj))}">
<ul>{proj}</ul>
<h2>Top patterns</h2><img alt="patterns" src="{charts.data_uri(charts.patterns_chart(top))}">
<table><tr><th>metric</th><th>attributes</th><th>lift</th><th>95% interval</th><th>q</th><th>creatives</th><th>accounts</th></tr>{rows}</table>
<h2>Knowledge graph</h2><img alt="knowledge graph" src="{charts.data_uri(charts.graph_chart(graph))}">
<h2>Launch next</h2>{rec_html}
<h2>CTR model</h2>{model_html}
<h2>Last cycles</h2><table><tr><th>status</th><th>days</th><th>seconds</th><th>note</th></tr>{cycles}</table>
</body></html>"""
