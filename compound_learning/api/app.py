"""The HTTP API: the original service's endpoints, account-scoped, plus scoring and health.

JSON shapes are the CLI's (``compound_learning.queries``). Bad parameters answer 422 with the
problem named; an account a key may not see answers 403 (checked before existence, so nothing
leaks); unknown resources 404.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator

from compound_learning import charts, queries
from compound_learning.api.access import Principal, load_keys
from compound_learning.config import load_settings
from compound_learning.storage.artifacts import ArtifactError
from compound_learning.storage.store import Store, get_store

PREFIX = "/api/compound-learning"
MIN_ACCOUNTS_FOR_SHARED = 5  # restricted keys see pooled figures only when this many accounts back them


class Metric(str, Enum):
    ctr = "ctr"
    cvr = "cvr"
    roas = "roas"


class State(str, Enum):
    insufficient_data = "insufficient_data"
    learning = "learning"
    significant = "significant"
    contradicted = "contradicted"


class RunCycleRequest(BaseModel):
    """One day (``date``) or a range (``start`` and ``end``). ``account_id`` is accepted for
    compatibility with the original service; a cycle always learns from every account."""

    account_id: str | None = None
    date: dt.date | None = None
    start: dt.date | None = None
    end: dt.date | None = None

    @model_validator(mode="after")
    def one_day_or_range(self):
        if self.date is not None and (self.start or self.end):
            raise ValueError("give either date, or start and end, not both")
        if self.date is None and (self.start is None or self.end is None):
            raise ValueError("give date, or both start and end")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        return self


class ScoreRequest(BaseModel):
    account_id: str = Field(min_length=1, max_length=200)
    creative: dict[str, str] = Field(min_length=1, description='attribute -> value, e.g. {"hook_type": "question"}')


class Pattern(BaseModel):
    pattern_id: str
    pattern_type: str
    attributes: dict[str, str]
    metric: str
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    q_value: float | None
    confidence: float | None
    state: str
    support: dict[str, Any]
    account_id: str | None
    first_seen: str
    last_updated: str


def create_app(store: Store | None = None, keys: dict[str, Principal] | None | str = "env",
               launcher=None) -> FastAPI:
    """The app; ``store`` and ``keys`` default to the environment's configuration, ``launcher``
    (start, end) -> dict to :func:`launch_cycle`."""
    launch = launcher or launch_cycle
    app = FastAPI(title="compound_learning", version="0.1.0",
                  description="Compounding, auditable knowledge from daily ad-creative performance.")
    key_map = load_keys() if keys == "env" else keys
    app.state.keys = key_map

    def get_db() -> Store:
        return store or get_store(load_settings().database_url)

    def principal(request: Request) -> Principal:
        if app.state.keys is None:
            return Principal(None)  # no keys configured: loopback only, trusted
        key = request.headers.get("x-api-key") or request.query_params.get("api_key")
        if not key or key not in app.state.keys:
            raise HTTPException(401, "missing or unknown API key (send it as the X-API-Key header)")
        return app.state.keys[key]

    def require(who: Principal, account_id: str) -> None:
        if not who.may_see(account_id):
            raise HTTPException(403, f"this API key may not read account {account_id!r}")

    @app.exception_handler(queries.QueryError)
    async def _bad_query(_request, exc):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(LookupError)
    async def _not_found(_request, exc):
        return JSONResponse(status_code=404, content={"detail": str(exc.args[0]) if exc.args else str(exc)})

    @app.exception_handler(ArtifactError)
    async def _no_model(_request, exc):
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.get("/health", tags=["meta"])
    def health(db: Store = Depends(get_db)) -> dict:
        """Liveness and database reachability."""
        try:
            db.ingestion_watermark()
            return {"status": "ok", "database": "ok"}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return JSONResponse(status_code=503, content={"status": "degraded", "database": str(exc)[:200]})

    @app.get(f"{PREFIX}/patterns", response_model=list[Pattern], tags=["knowledge"])
    def patterns(
        pattern_type: str | None = Query(None, max_length=200, description="a dimension, or 'interaction'"),
        min_confidence: float = Query(0.5, ge=0.0, le=1.0),
        limit: int = Query(50, ge=1, le=1000),
        account_id: str | None = Query(None, max_length=200, description="omit for global patterns"),
        metric: Metric | None = None,
        state: State | None = None,
        who: Principal = Depends(principal),
        db: Store = Depends(get_db),
    ) -> list[dict]:
        """Latest patterns, most confident first (the CLI's `patterns --json` shape)."""
        if account_id:
            require(who, account_id)
        items = queries.patterns(db, account_id=account_id, pattern_type=pattern_type or None,
                                 metric=metric.value if metric else None, state=state.value if state else None,
                                 min_confidence=min_confidence, limit=limit)
        if who.restricted and not account_id:
            items = [p for p in items if (p["support"].get("accounts") or 0) >= MIN_ACCOUNTS_FOR_SHARED]
        return items

    @app.get(f"{PREFIX}/knowledge-graph", tags=["knowledge"])
    def knowledge_graph(limit: int = Query(50, ge=1, le=1000), who: Principal = Depends(principal),
                        db: Store = Depends(get_db)) -> dict:
        """Most important nodes, their relationships and confidence history. A scoped key sees
        pattern nodes and evidence only where at least 5 accounts stand behind them."""
        graph = queries.knowledge_graph(db, limit=limit)
        if who.restricted:
            def shared(accounts) -> bool:
                return (accounts or 0) >= MIN_ACCOUNTS_FOR_SHARED

            graph["nodes"] = [n for n in graph["nodes"]
                              if n["node_type"] != "pattern" or shared(n["properties"].get("accounts"))]
            kept = {n["node_id"] for n in graph["nodes"]}
            graph["relationships"] = [
                r for r in graph["relationships"]
                if r["source"] in kept and r["target"] in kept
                and ("support" not in r["evidence"] or shared(r["evidence"]["support"].get("accounts")))]
        return graph

    @app.get(f"{PREFIX}/cross-account-insights", tags=["knowledge"])
    def cross_account_insights(limit: int = Query(50, ge=1, le=1000), who: Principal = Depends(principal),
                               db: Store = Depends(get_db)) -> list[dict]:
        """Effects that hold across at least 5 accounts (relative figures, no account ids)."""
        return queries.cross_account(db, limit=limit)

    @app.get(f"{PREFIX}/improvement-trajectory/{{account_id}}", tags=["accounts"])
    def improvement_trajectory(account_id: str, who: Principal = Depends(principal), db: Store = Depends(get_db)) -> dict:
        """The account's ROAS trajectory with projections and intervals."""
        require(who, account_id)
        return queries.trajectory(db, account_id)

    @app.get(f"{PREFIX}/dashboard", tags=["accounts"])
    def dashboard(account_id: str | None = Query(None, max_length=200), who: Principal = Depends(principal),
                  db: Store = Depends(get_db)) -> dict:
        """Trajectory, top patterns, cross-account insights, model status and the last cycles."""
        if account_id:
            require(who, account_id)
        dash = queries.dashboard(db, account_id)
        if who.restricted and not account_id:
            dash["top_patterns"] = [p for p in dash["top_patterns"]
                                    if (p["support"].get("accounts") or 0) >= MIN_ACCOUNTS_FOR_SHARED]
        return dash

    @app.post(f"{PREFIX}/score", tags=["accounts"])
    def score(body: ScoreRequest, who: Principal = Depends(principal), db: Store = Depends(get_db)) -> dict:
        """Score a new creative against the account's baseline (DNA weights + the champion model)."""
        require(who, body.account_id)
        return queries.score(db, body.account_id, body.creative)

    @app.post(f"{PREFIX}/run-cycle", status_code=202, tags=["operations"])
    def run_cycle(body: RunCycleRequest, who: Principal = Depends(principal)) -> dict:
        """Launch daily_learning_cycle for a day or a range; returns the run ids."""
        if who.restricted:
            raise HTTPException(403, "running the cycle needs an API key for every account ('*')")
        start, end = (body.date, body.date) if body.date else (body.start, body.end)
        return launch(start, end)

    @app.get(f"{PREFIX}/scheduler/status", tags=["operations"])
    def scheduler_status(who: Principal = Depends(principal), db: Store = Depends(get_db)) -> dict:
        """Schedule and sensor states, next tick, and the last cycles."""
        return scheduler_state(db)

    @app.get("/dashboard/{account_id}", response_class=HTMLResponse, tags=["pages"])
    def dashboard_page(account_id: str, who: Principal = Depends(principal), db: Store = Depends(get_db)) -> str:
        """An HTML dashboard for one account, charts rendered on the server."""
        require(who, account_id)
        return render_dashboard(db, account_id, shared_only=who.restricted)

    return app


# -- run-cycle ------------------------------------------------------------------------------------
def launch_cycle(start: date, end: date) -> dict:
    """Through the running Dagster deployment's GraphQL API when configured, else in-process."""
    import os

    from compound_learning.orchestration.partitions import daily_partitions

    keys = daily_partitions.get_partition_keys()
    for d in (start, end):
        if d.isoformat() not in keys:
            raise queries.QueryError(f"{d} is not a complete daily partition "
                                     f"({keys[0] if keys else '-'} .. {keys[-1] if keys else '-'})")
    tags = ({"dagster/partition": start.isoformat()} if start == end else
            {"dagster/asset_partition_range_start": start.isoformat(), "dagster/asset_partition_range_end": end.isoformat()})
    url = os.environ.get("COMPOUND_LEARNING_DAGSTER_URL", "").strip()
    if url:
        from urllib.parse import urlparse

        from dagster_graphql import DagsterGraphQLClient

        parsed = urlparse(url)
        client = DagsterGraphQLClient(parsed.hostname, port_number=parsed.port or 3000)
        run_id = client.submit_job_execution("daily_learning_cycle", repository_location_name="compound_learning",
                                             tags=tags)
        return {"run_ids": [run_id], "mode": "dagster", "start": str(start), "end": str(end)}
    from compound_learning.cli import run_cycle

    run_id = str(uuid.uuid4())
    thread = threading.Thread(target=run_cycle, args=(start, end), kwargs={"run_id": run_id}, daemon=True)
    thread.start()
    return {"run_ids": [run_id], "mode": "in_process", "start": str(start), "end": str(end)}


# -- scheduler status ------------------------------------------------------------------------------
def scheduler_state(db: Store) -> dict:
    from compound_learning.cli import dagster_instance
    from compound_learning.definitions import defs

    settings = load_settings()
    instance = dagster_instance()
    # DECLARED_IN_CODE means "whatever the definition's default says"
    stored = {s.name: s.status.value for s in instance.all_instigator_state() if s.status.value != "DECLARED_IN_CODE"}
    schedule = defs.resolve_schedule_def("daily_learning_schedule")
    now = datetime.now(ZoneInfo(settings.timezone))
    next_tick = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if next_tick <= now:
        next_tick += timedelta(days=1)
    out = {
        "schedule": {"name": schedule.name, "cron": schedule.cron_schedule, "timezone": settings.timezone,
                     "status": stored.get(schedule.name, schedule.default_status.value),
                     "next_tick": next_tick.isoformat(), "processes": "the previous day"},
        "sensors": [{"name": s.name, "status": stored.get(s.name, s.default_status.value)} for s in defs.sensors],
        "last_cycles": [],
        "dagster_home_runs": [],
    }
    logs = db.cycle_logs(10)
    out["last_cycles"] = [{"run_id": r.run_id, "status": r.status,
                           "partition_start": None if r.partition_start is None else str(r.partition_start)[:10],
                           "partition_end": None if r.partition_end is None else str(r.partition_end)[:10],
                           "duration_seconds": r.duration_seconds,
                           "ended_at": None if r.ended_at is None else str(r.ended_at)} for r in logs.itertuples()]
    from dagster import RunsFilter

    runs = instance.get_runs(filters=RunsFilter(job_name="daily_learning_cycle"), limit=10)
    out["dagster_home_runs"] = [{"run_id": r.run_id, "status": r.status.value, "tags": {
        k: v for k, v in r.tags.items() if k.startswith("dagster/") and "partition" in k}} for r in runs]
    return out


# -- HTML dashboard ----------------------------------------------------------------------------------
def render_dashboard(db: Store, account_id: str, shared_only: bool = False) -> str:
    """The account's page; with ``shared_only`` pooled patterns need >= 5 accounts behind them."""
    import html

    traj = queries.trajectory(db, account_id)
    series = queries.roas_series(db, account_id)
    top = queries.patterns(db, account_id=account_id, state="significant", limit=15)
    if not top:  # nothing significant for the account yet: show what holds across accounts
        top = [p for p in queries.patterns(db, state="significant", limit=50)
               if not shared_only or (p["support"].get("accounts") or 0) >= MIN_ACCOUNTS_FOR_SHARED][:15]
    graph = queries.knowledge_graph(db, limit=40)
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
        for p in top)
    cycles = "".join(f"<tr><td>{e(c['status'])}</td><td>{e(str(c['partition_start']))} .. {e(str(c['partition_end']))}</td>"
                     f"<td>{fmt(c['duration_seconds'])}</td></tr>" for c in dash["last_cycles"])
    model = dash["model"]
    model_html = ("<p>No champion model yet.</p>" if not model else
                  f"<p>Champion v{model['version']} ({e(model['family'])}), trained as of {e(model['trained_as_of'])}: "
                  f"log loss {fmt(model.get('log_loss'))}, normalized entropy {fmt(model.get('normalized_entropy'))}, "
                  f"AUC {fmt(model.get('auc'))}, calibration {fmt(model.get('calibration_ratio'))}</p>")
    proj = "".join(f"<li>{h} days: {fmt(traj[f'projected_{h}d_roas'])} "
                   f"[{fmt(traj[f'projected_{h}d_roas_ci'][0])}, {fmt(traj[f'projected_{h}d_roas_ci'][1])}]</li>"
                   for h in (30, 90, 365))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>compound_learning: {e(account_id)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;color:#222}}
table{{border-collapse:collapse;font-size:0.9em}}td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}}
.grid{{display:grid;grid-template-columns:1fr 1fr;gap:1em}} img{{max-width:100%}} h2{{margin-top:1.4em}}</style></head>
<body><h1>{e(account_id)}</h1>
<p><b>{e(traj['learning_status'])}</b>: ROAS {fmt(traj['initial_roas'])} (first week) → {fmt(traj['current_roas'])} (last week);
daily change {fmt(traj['daily_improvement_rate'], True)}; on track for 10x: {traj['on_track_for_10x']}. As of {e(traj['as_of'])}.</p>
<img alt="ROAS trajectory" src="{charts.data_uri(charts.trajectory_chart(series, traj))}">
<ul>{proj}</ul>
<h2>Top patterns</h2><img alt="patterns" src="{charts.data_uri(charts.patterns_chart(top))}">
<table><tr><th>metric</th><th>attributes</th><th>lift</th><th>95% interval</th><th>q</th><th>creatives</th><th>accounts</th></tr>{rows}</table>
<h2>Knowledge graph</h2><img alt="knowledge graph" src="{charts.data_uri(charts.graph_chart(graph))}">
<h2>CTR model</h2>{model_html}
<h2>Last cycles</h2><table><tr><th>status</th><th>days</th><th>seconds</th></tr>{cycles}</table>
</body></html>"""
