"""SIGKILL of the run worker at random moments of a cycle and of an ingestion (issue 11, the
fault tests). Each trial starts from a copy of one state, kills a worker process after a random delay
(drawn over the whole length of a clean run, so kills land in every step, including during the
*first* build of the day), then checks that every table holds exactly the old or the new state
(content hashes against a clean reference run) and that a rerun completes and equals the
reference.

Quick tier (CI): ``COMPOUND_LEARNING_KILL_TRIALS`` trials per database and kind (default 2).
Full tier: ``make reliability`` (20 trials each, and prints the figures for RELIABILITY.md).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from compound_learning import steps
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import (
    DERIVED_BY_DAY,
    PG_ADMIN_URL,
    START,
    _forget,
    day_rows,
    make_context,
    make_store,
    small_world,
    table_digest,
)

pytestmark = pytest.mark.reliability

TRIALS = int(os.environ.get("COMPOUND_LEARNING_KILL_TRIALS", "2"))
DAY = START + timedelta(days=5)

# The run worker: the Dagster job for one partition, executed in this process the way
# `dagster api execute_run` executes a launched run (the definitions are imported before
# "ready", so that kills land in the run, not in the imports).
CYCLE_WORKER = """
import sys
from datetime import date
import compound_learning.definitions
from compound_learning.orchestration.launch import run_in_process
print("ready", flush=True)
day = date.fromisoformat(sys.argv[2])
out = run_in_process(day, day)
assert out["status"] == "SUCCESS", out
print("done", flush=True)
"""

INGEST_WORKER = """
import sys
from datetime import date
from compound_learning.config import load_settings
from compound_learning.ingestion import ingest_file
from compound_learning.storage.store import get_store
store = get_store(sys.argv[1])
print("ready", flush=True)
ingest_file(sys.argv[2], store=store, settings=load_settings(), today=date(2025, 1, 1))
print("done", flush=True)
"""


def _state(url: str) -> dict[str, str]:
    """Content hash of every table the cycle writes for DAY, and of the raw and model tables."""
    store = make_store(url)
    out = {tb.name: table_digest(day_rows(store, tb, col, DAY)) for tb, col in DERIVED_BY_DAY}
    out["model_registry"] = table_digest(
        store.read_frame(sa.select(t.model_registry.c.version, t.model_registry.c.status))
    )
    perf = store.read_frame(sa.select(t.performance).order_by(*t.performance.primary_key.columns))
    out[t.performance.name] = table_digest(perf.drop(columns=["batch_id"]))
    _forget(url)
    return out


def _run_worker(script: str, *args: str, kill_after: float | None = None) -> tuple[int, float]:
    """Run a worker; with ``kill_after``, SIGKILL it that many seconds after it is ready.
    Returns its exit code and how long it worked after getting ready."""
    env = {**os.environ, "COMPOUND_LEARNING_DATABASE_URL": args[0], "COMPOUND_LEARNING_ARTIFACTS_DIR": args[-1]}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args[:-1]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    started = time.perf_counter()
    if kill_after is None:
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        return 0, time.perf_counter() - started
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, time.perf_counter() - started


class _Copies:
    """Copies of one base database: files for SQLite, template databases for PostgreSQL."""

    def __init__(self, kind: str, tmp_path: Path):
        self.kind, self.tmp_path, self.made = kind, tmp_path, []
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT") if kind == "postgresql" else None

    def new(self, template: str | None = None) -> str:
        name = f"cl_kill_{uuid.uuid4().hex[:10]}"
        if self.kind == "sqlite":
            path = self.tmp_path / f"{name}.db"
            if template:
                _forget(template)
                shutil.copy(template.removeprefix("sqlite:///"), path)
            url = f"sqlite:///{path}"
        else:
            if template:
                _forget(template)
            with self.admin.connect() as conn:
                suffix = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
                conn.execute(sa.text(f'CREATE DATABASE "{name}"{suffix}'))
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        self.made.append(url)
        return url

    def drop_all(self) -> None:
        for url in self.made:
            _forget(url)
            if self.admin is not None:
                with self.admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        if self.admin is not None:
            self.admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def copies(request, tmp_path):
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")  # skips (or fails in CI) when PostgreSQL is absent
    made = _Copies(request.param, tmp_path)
    yield made
    made.drop_all()


def _trial_report(kind: str, what: str, outcomes: list[dict]) -> None:
    killed = sum(o["killed"] for o in outcomes)
    partial = sum(0 < o["new_tables"] < o["tables"] for o in outcomes)
    complete = sum(o["new_tables"] == o["tables"] for o in outcomes)
    print(
        f"\n[kill faults] {kind} {what}: {len(outcomes)} trials, {killed} killed before the end; tables found "
        f"all old in {len(outcomes) - partial - complete}, some new in {partial}, all new in {complete}; "
        "0 tables outside {old, new}; every rerun equal to the reference"
    )


def test_sigkill_during_a_cycle_leaves_each_table_old_or_new(copies, tmp_path, monkeypatch):
    data, _ = small_world(days=6, accounts=4, creatives=20, seed=5)
    base = copies.new()
    monkeypatch.setenv("COMPOUND_LEARNING_DATABASE_URL", base)
    ingest_frame(data, store=make_store(base), today=START + timedelta(days=30))
    monkeypatch.setenv("COMPOUND_LEARNING_ARTIFACTS_DIR", str(tmp_path / "base-artifacts"))
    steps.run_days(make_context(base), START, DAY - timedelta(days=1))  # the days before are built
    old = _state(base)  # the first build of DAY: nothing derived exists for it yet
    reference = copies.new(template=base)
    _code, duration = _run_worker(CYCLE_WORKER, reference, DAY.isoformat(), str(tmp_path / "ref-artifacts"))
    new = _state(reference)
    assert {k for k in new if new[k] != old[k]} >= {t.learning_patterns.name, t.creative_dna.name}

    changing = sum(new[k] != old[k] for k in new)
    rng = random.Random(11)
    outcomes = []
    for trial in range(TRIALS):
        url = copies.new(template=base)
        artifacts = str(tmp_path / f"artifacts-{trial}")
        code, _ = _run_worker(CYCLE_WORKER, url, DAY.isoformat(), artifacts, kill_after=rng.uniform(0, duration))
        state = _state(url)
        for table, digest in state.items():
            assert digest in (old[table], new[table]), f"trial {trial}: {table} is neither the old nor the new state"
        done = sum(state[k] == new[k] != old[k] for k in state)
        outcomes.append({"killed": code == -signal.SIGKILL, "tables": changing, "new_tables": done})
        _run_worker(CYCLE_WORKER, url, DAY.isoformat(), artifacts)
        assert _state(url) == new, f"trial {trial}: the rerun after the kill differs from the reference"
    _trial_report(copies.kind, "cycle", outcomes)


def test_sigkill_during_an_ingestion_writes_all_of_it_or_nothing(copies, tmp_path):
    data, _ = small_world(days=10, accounts=6, creatives=25, seed=6)
    path = tmp_path / "day.csv"
    data.to_csv(path, index=False)
    base = copies.new()
    make_store(base)  # the schema
    old = _state(base)
    reference = copies.new(template=base)
    _code, duration = _run_worker(INGEST_WORKER, reference, str(path), str(tmp_path / "a"))
    new = _state(reference)
    assert new[t.performance.name] != old[t.performance.name]

    rng = random.Random(12)
    outcomes = []
    for trial in range(TRIALS):
        url = copies.new(template=base)
        code, _ = _run_worker(INGEST_WORKER, url, str(path), str(tmp_path / "a"), kill_after=rng.uniform(0, duration))
        stored = make_store(url).count_rows(t.performance)
        batches = make_store(url).count_rows(t.ingest_batches)
        assert (stored, batches) in ((0, 0), (len(data), 1)), f"trial {trial}: {stored} rows, {batches} batches"
        outcomes.append({"killed": code == -signal.SIGKILL, "tables": 1, "new_tables": int(stored > 0)})
        _run_worker(INGEST_WORKER, url, str(path), str(tmp_path / "a"))
        assert _state(url)[t.performance.name] == new[t.performance.name]
    _trial_report(copies.kind, "ingestion", outcomes)
