"""Faults survived (issue 11, item 9 and the quick tier of the fault tests).

A database connection killed in the middle of a step's queries (``pg_terminate_backend`` from
another session, the way an operator or a failover does it) is retried and the day's tables end
up identical to a clean run's; errors that a retry cannot fix fail at once.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from compound_learning import steps
from compound_learning.ingestion import ingest_frame
from compound_learning.storage.retry import is_transient, with_retries
from compound_learning_tests.conftest import DERIVED_BY_DAY, START, day_rows, make_context, make_store, small_world

pytestmark = pytest.mark.reliability

CHEAP_STEPS = [s for s in steps.CYCLE_STEPS if s != "ctr_model"]


class _Orig(Exception):
    def __init__(self, message: str, pgcode: str | None = None):
        super().__init__(message)
        self.pgcode = pgcode


def test_transient_errors_are_told_from_permanent_ones():
    def operational(message, pgcode=None):
        return sa_exc.OperationalError("SELECT 1", {}, _Orig(message, pgcode))

    assert is_transient(operational("terminating connection due to administrator command", "57P01"))
    assert is_transient(operational("could not serialize access due to concurrent update", "40001"))
    assert is_transient(operational("deadlock detected", "40P01"))
    assert is_transient(operational("database is locked"))
    assert not is_transient(sa_exc.IntegrityError("INSERT", {}, _Orig("duplicate key value", "23505")))
    assert not is_transient(operational("syntax error at or near", "42601"))
    assert not is_transient(ValueError("a contract error"))

    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise operational("server closed the connection unexpectedly")
        return "done"

    assert with_retries(flaky, "flaky", sleep=slept.append) == "done"
    assert len(calls) == 3 and len(slept) == 2 and slept[1] > slept[0]

    def permanent():
        calls.append(1)
        raise sa_exc.IntegrityError("INSERT", {}, _Orig("duplicate key value", "23505"))

    calls.clear()
    with pytest.raises(sa_exc.IntegrityError):
        with_retries(permanent, "permanent", sleep=slept.append)
    assert len(calls) == 1  # not retried


def _tables(store, day) -> dict[str, pd.DataFrame]:
    return {tb.name: day_rows(store, tb, col, day) for tb, col in DERIVED_BY_DAY}


@pytest.mark.parametrize("victim", [1, 4, 9])
def test_connection_killed_during_a_step_is_retried_and_matches_the_reference(pg_url, env, victim):
    """The ``victim``-th statement of the day's ``learning_patterns`` step finds its backend
    terminated; the step retries and every table of the day equals the clean run's."""
    data, _ = small_world(days=6, accounts=3, creatives=15, seed=3)
    env(pg_url)
    store, ctx = make_store(pg_url), make_context(pg_url)
    ingest_frame(data, store=store, settings=ctx.settings, today=START + timedelta(days=30))
    day = START + timedelta(days=5)
    steps.run_days(ctx, START, day, only=CHEAP_STEPS)
    reference = _tables(store, day)

    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT")
    state = {"statements": 0, "killed": 0}

    def kill_on_victim(conn, cursor, statement, parameters, context, executemany):
        state["statements"] += 1
        if state["statements"] == victim and not state["killed"]:
            pid = conn.connection.dbapi_connection.get_backend_pid()
            with admin.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            state["killed"] += 1

    event.listen(store.engine, "before_cursor_execute", kill_on_victim)
    try:
        summary = steps.run_step(ctx, "learning_patterns", day)
    finally:
        event.remove(store.engine, "before_cursor_execute", kill_on_victim)
        admin.dispose()
    assert state["killed"] == 1 and summary["patterns"] > 0
    after = _tables(store, day)
    for name, frame in reference.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)


def test_a_transient_error_that_outlasts_the_step_retries_is_retried_by_dagster(
    sqlite_url, env, world, monkeypatch, instance
):
    """The step fails with a lost connection every time it runs in the first attempt (longer
    than the in-step backoff): Dagster runs the step again and the run succeeds; a permanent
    error is not retried (``test_cycle.test_failed_run_is_logged_and_leaves_data_intact``)."""
    from compound_learning.orchestration import assets
    from compound_learning.orchestration.launch import run_in_process

    data, _ = world
    env(sqlite_url)
    ingest_frame(data, store=make_store(sqlite_url), today=START + timedelta(days=30))
    real = steps.CYCLE_STEPS["learning_patterns"]
    attempts = []

    def dropped_then_fine(ctx, day):
        attempts.append(day)
        if len(attempts) <= 2:
            raise sa_exc.OperationalError("SELECT 1", {}, _Orig("server closed the connection unexpectedly"))
        return real(ctx, day)

    monkeypatch.setitem(steps.CYCLE_STEPS, "learning_patterns", dropped_then_fine)
    monkeypatch.setattr("compound_learning.storage.retry.DEFAULT_ATTEMPTS", 2)
    monkeypatch.setattr("compound_learning.storage.retry.DEFAULT_BASE_DELAY", 0.01)
    monkeypatch.setattr(assets, "STEP_RETRY_WAIT_SECONDS", 0)
    out = run_in_process(START, START, instance=instance)
    assert out["status"] == "SUCCESS", out["message"]
    assert len(attempts) == 3  # two in the first step attempt (in-step retry), one in Dagster's retry
    retried = [
        e
        for e in instance.all_logs(out["run_id"])
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
    ]
    assert len(retried) == 1
