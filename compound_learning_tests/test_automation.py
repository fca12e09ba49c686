"""Sensors through their cursor states, the gap filler, and the schedule's tick."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from compound_learning.config import load_settings
from compound_learning.definitions import defs
from compound_learning.ingestion import ingest_frame
from compound_learning.orchestration.resources import StoreResource
from compound_learning.orchestration.sensors import missing_days_sensor, new_data_sensor
from compound_learning_tests.conftest import START, make_store


def _ingest(url, frame):
    return ingest_frame(frame, store=make_store(url), settings=load_settings(), today=date(2025, 1, 1))


def _evaluate(sensor, url, cursor=None, instance=None):
    if instance is None:
        with dg.DagsterInstance.ephemeral() as own:
            return _evaluate(sensor, url, cursor, own)
    context = dg.build_sensor_context(
        cursor=cursor, instance=instance, resources={"store": StoreResource(database_url=url)}, definitions=defs
    )
    return sensor.evaluate_tick(context)


def _pretend_today(monkeypatch, today: date) -> None:
    """The sensors see the partitions as they are on ``today`` (the worlds are in 2024)."""
    import compound_learning.orchestration.sensors as sensors_module

    real = sensors_module.daily_partitions.get_partition_keys
    now = datetime.combine(today, datetime.min.time(), tzinfo=UTC)
    monkeypatch.setattr(
        sensors_module.daily_partitions,
        "get_partition_keys",
        lambda current_time=None, **kw: real(current_time=now, **kw),
    )


@pytest.fixture
def loaded(sqlite_url, env, world):
    env(sqlite_url)
    data, _ = world
    first_days = data[data["date"] <= "2024-01-05"]
    _ingest(sqlite_url, first_days)
    return sqlite_url, data


def test_new_data_sensor_walks_its_cursor(loaded):
    url, data = loaded
    # 1. first tick: cursor initialised at the watermark, nothing requested
    result = _evaluate(new_data_sensor, url)
    assert result.run_requests == [] and result.cursor == "1"
    # 2. nothing new
    result = _evaluate(new_data_sensor, url, cursor="1")
    assert result.run_requests == [] and result.cursor in (None, "1")
    # 3. new rows for two new days
    _ingest(url, data[data["date"].isin(["2024-01-06", "2024-01-07"])])
    result = _evaluate(new_data_sensor, url, cursor="1")
    assert sorted(r.partition_key for r in result.run_requests) == ["2024-01-06", "2024-01-07"]
    assert result.cursor == "2"
    first_keys = {r.run_key for r in result.run_requests}
    # 4. a restated old day: exactly that day, under a new run key (new data version)
    restated = data[data["date"] == "2024-01-03"].head(3).assign(clicks=0)
    _ingest(url, restated)
    result = _evaluate(new_data_sensor, url, cursor="2")
    assert [r.partition_key for r in result.run_requests] == ["2024-01-03"]
    assert result.run_requests[0].run_key == "2024-01-03:v3"
    assert result.run_requests[0].run_key not in first_keys
    assert result.cursor == "3"
    # 5. the same file again (duplicates): no run, cursor moves on
    _ingest(url, restated)
    result = _evaluate(new_data_sensor, url, cursor="3")
    assert result.run_requests == [] and result.cursor == "4"
    assert "changed no stored row" in result.skip_message


def test_missing_days_sensor_requests_days_with_data_but_no_cycle(sqlite_url, env, world, monkeypatch, instance):
    env(sqlite_url)
    data, _ = world
    _ingest(sqlite_url, data)
    # Pretend today is the day after the world ends so its days are the recent partitions.
    _pretend_today(monkeypatch, date.fromisoformat(data["date"].max()) + timedelta(days=1))
    result = _evaluate(missing_days_sensor, sqlite_url, instance=instance)
    days_with_data = sorted(data["date"].unique())
    assert sorted(r.partition_key for r in result.run_requests) == days_with_data
    # Every asset materialized for all but the last two days: only those two are requested.
    from compound_learning import steps

    def materialize(key, assets=tuple(steps.CYCLE_STEPS)):
        for asset in assets:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))

    for key in days_with_data[:-2]:
        materialize(key)
    result = _evaluate(missing_days_sensor, sqlite_url, instance=instance)
    assert sorted(r.partition_key for r in result.run_requests) == days_with_data[-2:]
    assert all(r.run_key.startswith("fill:") for r in result.run_requests)
    # A cycle whose one step failed (the last asset still materialized) is not complete.
    materialize(days_with_data[-2], [a for a in steps.CYCLE_STEPS if a != "creative_dna"])
    result = _evaluate(missing_days_sensor, sqlite_url, instance=instance)
    assert sorted(r.partition_key for r in result.run_requests) == days_with_data[-2:]
    # A day restated after its cycle is requested again (its newest data came later).
    materialize(days_with_data[-2])
    materialize(days_with_data[-1])
    assert _evaluate(missing_days_sensor, sqlite_url, instance=instance).run_requests == []
    restated = data[data["date"] == days_with_data[0]].head(3).assign(clicks=0)
    _ingest(sqlite_url, restated)
    result = _evaluate(missing_days_sensor, sqlite_url, instance=instance)
    assert [r.partition_key for r in result.run_requests] == [days_with_data[0]]


def test_schedule_tick_processes_the_previous_day():
    schedule = defs.resolve_schedule_def("daily_learning_schedule")
    tick = datetime(2024, 3, 10, 3, 0, tzinfo=UTC)
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        )
        result = schedule.evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == ["2024-03-09"]
    assert schedule.execution_timezone in (None, "UTC")


def test_run_status_sensor_writes_the_cycle_log(sqlite_url, env, world, instance):
    from compound_learning.orchestration.launch import run_in_process as run_cycle
    from compound_learning.orchestration.sensors import cycle_success_logger

    env(sqlite_url)
    data, _ = world
    _ingest(sqlite_url, data)
    out = run_cycle(START, START, instance=instance)
    store = make_store(sqlite_url)
    store.reset()  # forget the CLI's own log row; the sensor must write it back
    run = instance.get_run_by_id(out["run_id"])
    event = instance.get_records_for_run(out["run_id"]).records[-1].event_log_entry
    context = dg.build_run_status_sensor_context(
        sensor_name="cycle_success_logger",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=event.dagster_event,
        resources={"store": StoreResource(database_url=sqlite_url)},
    )
    cycle_success_logger(context)
    logs = store.cycle_logs()
    assert len(logs) == 1 and logs.iloc[0]["status"] == "SUCCESS"
    assert logs.iloc[0]["run_id"] == out["run_id"] and logs.iloc[0]["duration_seconds"] > 0


def test_a_day_whose_step_failed_is_requested_again_by_the_gap_filler(sqlite_url, env, world, monkeypatch, instance):
    """Issue 13 item 1: ``cross_account_insights`` fails, ``improvement_snapshots`` (which does
    not depend on it) still materializes; the day is not done, so the gap filler asks for it again."""
    from compound_learning import steps
    from compound_learning.orchestration.launch import run_in_process

    env(sqlite_url)
    data, _ = world
    day = date.fromisoformat(data["date"].min())
    _ingest(sqlite_url, data[data["date"] == day.isoformat()])
    _pretend_today(monkeypatch, day + timedelta(days=1))

    def boom(*_a, **_k):
        raise RuntimeError("simulated failure of the insights step")

    with monkeypatch.context() as failing:
        failing.setitem(steps.CYCLE_STEPS, "cross_account_insights", boom)
        assert run_in_process(day, day, instance=instance)["status"] == "FAILURE"
    assert day.isoformat() in instance.get_materialized_partitions(dg.AssetKey("improvement_snapshots"))
    result = _evaluate(missing_days_sensor, sqlite_url, instance=instance)
    assert [r.partition_key for r in result.run_requests] == [day.isoformat()]
    assert run_in_process(day, day, instance=instance)["status"] == "SUCCESS"
    assert _evaluate(missing_days_sensor, sqlite_url, instance=instance).run_requests == []


def test_the_gap_filler_leaves_days_a_queued_or_running_cycle_covers(sqlite_url, env, world, monkeypatch, instance):
    """A day already in a queued run (a new-data run, a backfill's range) is not requested twice."""
    from dagster._core.storage.dagster_run import DagsterRun  # a run record, as the daemon's queue holds it
    from dagster._core.utils import make_new_run_id

    env(sqlite_url)
    data, _ = world
    _ingest(sqlite_url, data)
    days = sorted(data["date"].unique())
    _pretend_today(monkeypatch, date.fromisoformat(days[-1]) + timedelta(days=1))
    waiting = {"dagster/partition": days[0]}
    ranged = {"dagster/asset_partition_range_start": days[2], "dagster/asset_partition_range_end": days[4]}
    for tags, status in ((waiting, dg.DagsterRunStatus.NOT_STARTED), (ranged, dg.DagsterRunStatus.STARTED)):
        instance.add_run(DagsterRun(job_name="__ASSET_JOB", run_id=make_new_run_id(), status=status, tags=tags))
    requested = sorted(
        r.partition_key for r in _evaluate(missing_days_sensor, sqlite_url, instance=instance).run_requests
    )
    assert requested == [d for d in days if d not in {days[0], days[2], days[3], days[4]}]
