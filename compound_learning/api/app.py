"""The HTTP API: the original service's endpoints, account-scoped, plus scoring and health.

JSON shapes are the CLI's (``compound_learning.queries``). Bad parameters answer 422 with the
problem named; an account a key may not see answers 403 (checked before existence, so nothing
leaks); unknown resources 404. Routes are plain functions on one router; what differs between
apps (the store, the keys, how a cycle is launched) lives in ``app.state`` and reaches the
routes through the dependencies below.
"""

from __future__ import annotations

import datetime as dt
import html
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator

from compound_learning import queries
from compound_learning.api.access import Principal, load_keys, shared_graph, shared_patterns
from compound_learning.api.pages import render_dashboard
from compound_learning.config import DEFAULT_MIN_CONFIDENCE, METRICS, STATES, load_settings
from compound_learning.core.contract import has_control_character
from compound_learning.orchestration.launch import LaunchError, launch, scheduler_status
from compound_learning.storage.artifacts import ArtifactError
from compound_learning.storage.store import Store, get_store

PREFIX = "/api/compound-learning"
PAGES_PREFIX = "/dashboard/"
MAX_ATTRIBUTES = 64

Metric = Enum("Metric", {m: m for m in METRICS}, type=str)
State = Enum("State", {s: s for s in STATES}, type=str)


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
    # Bounded: a score touches every pair of the creative's attributes (synergies).
    creative: dict[str, str] = Field(
        min_length=1, max_length=MAX_ATTRIBUTES, description='attribute -> value, e.g. {"hook_type": "question"}'
    )


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
    test_family: str = Field(description="the Benjamini-Hochberg family the q-value is computed in")
    reading: str = Field(description="what the interval and the state mean, in words")


# -- dependencies ---------------------------------------------------------------------------------
def get_db(request: Request) -> Store:
    """The app's store, or the configured one."""
    return request.app.state.store or get_store(load_settings().database_url)


def principal(request: Request) -> Principal:
    """Who is asking, from the ``X-API-Key`` header (every request is trusted without keys)."""
    keys = request.app.state.keys
    if keys is None:
        return Principal(None)  # no keys configured: loopback only, trusted
    key = request.headers.get("x-api-key")
    if key is None and request.url.path.startswith(PAGES_PREFIX):
        key = request.query_params.get("api_key")  # a browser cannot set a header on a link
    if not key or key not in keys:
        hint = "" if request.url.path.startswith(PAGES_PREFIX) else " (?api_key= is accepted on the HTML pages only)"
        raise HTTPException(401, "missing or unknown API key (send it as the X-API-Key header)" + hint)
    return keys[key]


def plain_text(value: str | None, what: str) -> None:
    """422 for text holding a control character, before any lookup: the contract stores no id,
    attribute name or value with one, and PostgreSQL refuses a NUL even as a parameter (the
    lookup would fail with a server error, not answer "not found")."""
    if value is not None and has_control_character(value):
        raise HTTPException(422, f"{what} {value!r} contains a control character: nothing stored has one")


def require(who: Principal, account_id: str) -> None:
    """422 for an account id no account can have; 403 for an account the key may not read,
    before anything about it is looked up."""
    plain_text(account_id, "account_id")
    if not who.may_see(account_id):
        raise HTTPException(403, f"this API key may not read account {account_id!r}")


# -- routes ---------------------------------------------------------------------------------------
router = APIRouter()


@router.get("/health", tags=["meta"])
def health(db: Store = Depends(get_db)) -> dict:
    """Liveness and database reachability."""
    try:
        db.ingestion_watermark()
        return {"status": "ok", "database": "ok"}
    except Exception as exc:
        return JSONResponse(status_code=503, content={"status": "degraded", "database": str(exc)[:200]})


@router.get(f"{PREFIX}/patterns", response_model=list[Pattern], tags=["knowledge"])
def patterns(
    pattern_type: str | None = Query(None, max_length=200, description="a dimension, or 'interaction'"),
    min_confidence: float = Query(DEFAULT_MIN_CONFIDENCE, ge=0.0, le=1.0),
    limit: int = Query(50, ge=1, le=1000),
    account_id: str | None = Query(None, max_length=200, description="omit for global patterns"),
    metric: Metric | None = None,
    state: State | None = None,
    who: Principal = Depends(principal),
    db: Store = Depends(get_db),
) -> list[dict]:
    """Latest patterns, most confident first (the CLI's `patterns --json` shape)."""
    plain_text(pattern_type, "pattern_type")
    if account_id:
        require(who, account_id)
    items = queries.patterns(
        db,
        account_id=account_id,
        pattern_type=pattern_type or None,
        metric=metric.value if metric else None,
        state=state.value if state else None,
        min_confidence=min_confidence,
        limit=limit,
    )
    return shared_patterns(items) if who.restricted and not account_id else items


@router.get(f"{PREFIX}/knowledge-graph", tags=["knowledge"])
def knowledge_graph(
    limit: int = Query(50, ge=1, le=1000), who: Principal = Depends(principal), db: Store = Depends(get_db)
) -> dict:
    """Most important nodes, their relationships and confidence history. A scoped key sees
    pattern nodes and evidence only where enough accounts stand behind them."""
    graph = queries.knowledge_graph(db, limit=limit)
    return shared_graph(graph) if who.restricted else graph


@router.get(f"{PREFIX}/cross-account-insights", tags=["knowledge"])
def cross_account_insights(
    limit: int = Query(50, ge=1, le=1000), who: Principal = Depends(principal), db: Store = Depends(get_db)
) -> list[dict]:
    """Effects that hold across enough accounts (relative figures, no account ids)."""
    return queries.cross_account(db, limit=limit)


@router.get(f"{PREFIX}/improvement-trajectory/{{account_id}}", tags=["accounts"])
def improvement_trajectory(account_id: str, who: Principal = Depends(principal), db: Store = Depends(get_db)) -> dict:
    """The account's ROAS trajectory with projections and intervals."""
    require(who, account_id)
    return queries.trajectory(db, account_id)


@router.get(f"{PREFIX}/dashboard", tags=["accounts"])
def dashboard(
    account_id: str | None = Query(None, max_length=200),
    who: Principal = Depends(principal),
    db: Store = Depends(get_db),
) -> dict:
    """Trajectory, top patterns, cross-account insights, model status and the last cycles."""
    if account_id:
        require(who, account_id)
    dash = queries.dashboard(db, account_id)
    if who.restricted and not account_id:
        dash["top_patterns"] = shared_patterns(dash["top_patterns"])
    return dash


@router.get(f"{PREFIX}/recommendations/{{account_id}}", tags=["accounts"])
def recommendations(
    account_id: str, n: int = Query(5, ge=1, le=100), who: Principal = Depends(principal), db: Store = Depends(get_db)
) -> dict:
    """What the account should launch next (exploit and explore picks, with reasons) and
    tomorrow's spend split over its live creatives."""
    require(who, account_id)
    return queries.recommendations(db, account_id, n=n)


@router.post(f"{PREFIX}/score", tags=["accounts"])
def score(body: ScoreRequest, who: Principal = Depends(principal), db: Store = Depends(get_db)) -> dict:
    """Score a new creative against the account's baseline (DNA weights + the champion model)."""
    require(who, body.account_id)
    for name, value in body.creative.items():
        plain_text(name, "attribute name")
        plain_text(value, f"the value of {name!r}")
    return queries.score(db, body.account_id, body.creative)


@router.post(f"{PREFIX}/run-cycle", status_code=202, tags=["operations"])
def run_cycle(body: RunCycleRequest, request: Request, who: Principal = Depends(principal)) -> dict:
    """Launch daily_learning_cycle for a day or a range; returns the run ids."""
    if who.restricted:
        raise HTTPException(403, "running the cycle needs an API key for every account ('*')")
    start, end = (body.date, body.date) if body.date else (body.start, body.end)
    return request.app.state.launcher(start, end)


@router.get(f"{PREFIX}/scheduler/status", tags=["operations"])
def scheduler(who: Principal = Depends(principal), db: Store = Depends(get_db)) -> dict:
    """Schedule and sensor states, next tick, and the last cycles."""
    return scheduler_status(db)


@router.get(PAGES_PREFIX + "{account_id}", response_class=HTMLResponse, tags=["pages"])
def dashboard_page(account_id: str, who: Principal = Depends(principal), db: Store = Depends(get_db)):
    """An HTML dashboard for one account, charts rendered on the server (a page, also when the
    account is unknown: a browser gets HTML, not JSON)."""
    require(who, account_id)
    try:
        return render_dashboard(db, account_id, shared_only=who.restricted)
    except LookupError as exc:
        message = html.escape(str(exc.args[0] if exc.args else exc))
        return HTMLResponse(
            f"<!doctype html><html lang='en'><meta charset='utf-8'><title>not found</title>"
            f"<body style='font-family:system-ui,sans-serif'><h1>Not found</h1><p>{message}</p></body></html>",
            status_code=404,
        )


# -- the app --------------------------------------------------------------------------------------
def _error(status: int):
    async def handler(_request, exc):
        detail = exc.args[0] if isinstance(exc, LookupError) and exc.args else exc
        return JSONResponse(status_code=status, content={"detail": str(detail)})

    return handler


def create_app(store: Store | None = None, keys: dict[str, Principal] | str | None = "env", launcher=None) -> FastAPI:
    """The app; ``store`` and ``keys`` default to the environment's configuration, ``launcher``
    (start, end) -> dict to :func:`compound_learning.orchestration.launch.launch`."""
    app = FastAPI(
        title="compound_learning",
        version="0.1.0",
        description="Compounding, auditable knowledge from daily ad-creative performance.",
    )
    app.state.store = store
    app.state.keys = load_keys() if keys == "env" else keys
    app.state.launcher = launcher or launch
    app.include_router(router)
    app.add_exception_handler(queries.QueryError, _error(422))
    app.add_exception_handler(LaunchError, _error(422))
    app.add_exception_handler(LookupError, _error(404))
    app.add_exception_handler(ArtifactError, _error(503))
    return app
