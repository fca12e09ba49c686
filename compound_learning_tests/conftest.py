"""Shared fixtures: small simulated worlds, SQLite and PostgreSQL stores.

PostgreSQL tests use a fresh database per test on 127.0.0.1:5432 (override the admin URL with
``COMPOUND_LEARNING_TEST_PG_ADMIN_URL``). They skip with a reason when no server answers,
except where ``COMPOUND_LEARNING_REQUIRE_POSTGRES=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from compound_learning.config import CycleSettings, load_settings
from compound_learning.core.simulate import WorldConfig, simulate
from compound_learning.steps import CycleContext
from compound_learning.storage import schema as t
from compound_learning.storage.store import Store, get_store

PG_ADMIN_URL = os.environ.get(
    "COMPOUND_LEARNING_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_PG = os.environ.get("COMPOUND_LEARNING_REQUIRE_POSTGRES") == "1"
START = date(2024, 1, 1)


def small_world(days: int = 12, accounts: int = 6, creatives: int = 25, seed: int = 1, **kw):
    return simulate(WorldConfig(days=days, accounts=accounts, creatives_per_account=creatives, seed=seed, **kw))


@pytest.fixture(scope="session", autouse=True)
def dagster_home(tmp_path_factory):
    """A Dagster instance of the test session's own (per pytest-xdist worker): ``make test``
    exports DAGSTER_HOME as the project folder, and runs a test launches must not land in the
    instance the user's ``make demo`` and ``make dev`` share, nor two workers write one SQLite
    run storage. Tests that need another instance set DAGSTER_HOME themselves."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\ntelemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def world():
    """A small world (12 days x 6 accounts x 25 creatives) shared read-only by tests."""
    return small_world()


def _pg_available() -> str | None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    problem = _pg_available()
    if problem:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {problem}"
        if REQUIRE_PG:
            pytest.fail(message + " (COMPOUND_LEARNING_REQUIRE_POSTGRES=1: PostgreSQL tests are mandatory)")
        pytest.skip(message)
    name = f"cl_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    _forget(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _forget(url: str) -> None:
    store = get_store(url)
    store.dispose()
    get_store.cache_clear()


@pytest.fixture
def instance():
    """An ephemeral Dagster instance, closed (its temporary folder removed) after the test."""
    import dagster as dg

    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'cl.db'}"
    yield url
    _forget(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Point the settings (and so the Dagster resource) at a given database URL."""

    def _apply(url: str) -> None:
        monkeypatch.setenv("COMPOUND_LEARNING_DATABASE_URL", url)
        monkeypatch.setenv("COMPOUND_LEARNING_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
        monkeypatch.setenv("COMPOUND_LEARNING_STATE_DIR", str(tmp_path / "state"))

    return _apply


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    """``compound-learning ARGS`` in a child process whose only configuration is the store's URL."""
    env = {"COMPOUND_LEARNING_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "compound_learning.cli", *args], capture_output=True, text=True, env=env, check=False
    )


def make_store(url: str) -> Store:
    return get_store(url)


@contextmanager
def learned_context(tmp_path_factory, name: str, **cfg_changes) -> Iterator[CycleContext]:
    """A module-scoped store of its own: the environment points at a fresh SQLite file and
    artifacts folder for as long as the context is open."""
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        url = f"sqlite:///{root / 'cl.db'}"
        mp.setenv("COMPOUND_LEARNING_DATABASE_URL", url)
        mp.setenv("COMPOUND_LEARNING_ARTIFACTS_DIR", str(root / "artifacts"))
        yield make_context(url, **cfg_changes)
        _forget(url)


def make_context(url: str, **cfg_changes) -> CycleContext:
    """The cycle's context on ``url`` with the environment's settings (see the ``env`` fixture)
    and the given learning knobs changed."""
    from dataclasses import replace

    settings = replace(load_settings(), database_url=url)
    return CycleContext(get_store(url), settings, replace(CycleSettings.from_settings(settings), **cfg_changes))


# Every table a cycle step writes, with the column that names its day.
DERIVED_BY_DAY = [
    (t.creative_daily_stats, "date"),
    (t.attribute_daily_stats, "date"),
    (t.creative_cumulative_stats, "as_of"),
    (t.cumulative_snapshots, "as_of"),
    (t.learning_patterns, "as_of"),
    (t.account_baselines, "as_of"),
    (t.evidence_drift, "as_of"),
    (t.knowledge_nodes, "as_of"),
    (t.knowledge_relationships, "as_of"),
    (t.creative_dna, "as_of"),
    (t.cross_account_insights, "as_of"),
    (t.creative_recommendations, "as_of"),
    (t.improvement_snapshots, "date"),
]


def day_rows(store, table, column, day) -> pd.DataFrame:
    """One day's rows of ``table``, in key order (for comparing runs)."""
    frame = store.read_frame(sa.select(table).where(table.c[column] == day))
    keys = [c.name for c in table.primary_key.columns]
    return frame.sort_values(keys).reset_index(drop=True)


# The Dagster job (any executor) and the plain day-by-day run of the steps do not add up in the
# same order, so their sums can differ in the last bits (1e-14, seen on an AMD EPYC machine; the
# plain run in two processes agrees to the bit). A fit's convergence tolerance (IRLS stops at
# a relative deviance change of 1e-8) or a bounded optimizer can carry that to 1e-6 in an effect.
# Tables from the two paths are compared to this tolerance; text, integers and keys exactly, and
# numbers inside JSON details to the same tolerance.
CROSS_PROCESS_RTOL, CROSS_PROCESS_ATOL = 1e-5, 1e-5


def _close(a, b) -> bool:
    """Equal, with numbers (at any depth of lists and dicts) to the cross-process tolerance."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return bool(np.isclose(a, b, rtol=CROSS_PROCESS_RTOL, atol=CROSS_PROCESS_ATOL, equal_nan=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(p, q) for p, q in zip(a, b, strict=True))
    return a == b


def _json_close(a, b) -> bool:
    """Two JSON texts (a table's details) that hold the same values to the tolerance."""
    import json

    try:
        return _close(json.loads(a), json.loads(b))
    except (TypeError, ValueError):
        return False


def table_differences(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> list[str]:
    """The tables of ``a`` and ``b`` (name -> rows in key order) that differ: in keys, in rows,
    in a text or integer value, or in a float beyond the cross-process tolerance."""
    problems = [f"{name}: only in one run" for name in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        x = a[name].drop(columns=[c for c in a[name].columns if c.endswith("_at")])
        y = b[name].drop(columns=[c for c in b[name].columns if c.endswith("_at")])
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            problems.append(f"{name}: {len(x)} rows against {len(y)}")
            continue
        floats = [c for c in x.columns if pd.api.types.is_float_dtype(x[c]) and pd.api.types.is_float_dtype(y[c])]
        for c in x.columns.difference(floats):
            u, v = x[c].astype(object).to_numpy(), y[c].astype(object).to_numpy()
            if any(str(p) != str(q) and not _json_close(p, q) for p, q in zip(u, v, strict=True)):
                problems.append(f"{name}.{c}: values differ")
        for c in floats:
            u, v = x[c].to_numpy(float), y[c].to_numpy(float)
            if not np.allclose(u, v, rtol=CROSS_PROCESS_RTOL, atol=CROSS_PROCESS_ATOL, equal_nan=True):
                problems.append(f"{name}.{c}: up to {np.nanmax(np.abs(u - v)):.3g} apart")
    return problems


def table_digest(frame: pd.DataFrame) -> str:
    """A content hash of a table's rows (timestamps of when a row was written left out)."""
    import hashlib

    frame = frame.drop(columns=[col for col in frame.columns if col.endswith("_at")])
    return hashlib.sha256(pd.util.hash_pandas_object(frame.astype(str), index=False).values.tobytes()).hexdigest()
