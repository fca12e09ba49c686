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
    last = date.fromisoformat(data["date"].max())
    import compound_learning.orchestration.sensors as sensors_module

    real = sensors_module.daily_partitions.get_partition_keys
    monkeypatch.setattr(
        sensors_module.daily_partitions,
        "get_partition_keys",
        lambda current_time=None, **kw: real(
            current_time=datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC), **kw
        ),
    )
    result = _evaluate(missing_days_sensor, sqlite_url, instance=instance)
    days_with_data = sorted(data["date"].unique())
    assert sorted(r.partition_key for r in result.run_requests) == days_with_data
    # Mark all but two days as materialized: only those two are requested.
    for key in days_with_data[:-2]:
        instance.report_runless_asset_event(dg.AssetMaterialization("improvement_snapshots", partition=key))
    result = _evaluate(missing_days_sensor, sqlite_url, instance=instance)
    assert sorted(r.partition_key for r in result.run_requests) == days_with_data[-2:]
    assert all(r.run_key.startswith("fill:") for r in result.run_requests)


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
