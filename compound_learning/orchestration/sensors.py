"""Sensors: new or restated data, gaps the schedule missed, and the cycle log.

``new_data_sensor``'s cursor is the ingestion watermark (the newest batch id it has handled).
It requests exactly the days whose stored rows changed; the run key carries the day's data
version (the newest batch that changed it), so a restatement of an already-processed day gets a
new run while a duplicate file (which changes nothing) gets none.
"""

import json
from datetime import date

import dagster as dg

from compound_learning.config import load_settings
from compound_learning.orchestration.jobs import daily_learning_cycle
from compound_learning.orchestration.launch import record_cycle_run, run_partition_range
from compound_learning.orchestration.partitions import daily_partitions
from compound_learning.orchestration.resources import StoreResource
from compound_learning.steps import CYCLE_STEPS, days_between

GAP_LOOKBACK_DAYS = 14
CYCLE_ASSETS = [dg.AssetKey(name) for name in CYCLE_STEPS]  # every asset of daily_learning_cycle


_settings = load_settings()


@dg.sensor(
    job=daily_learning_cycle,
    minimum_interval_seconds=_settings.new_data_sensor_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_data_sensor(context: dg.SensorEvaluationContext, store: StoreResource):
    """Request a run for every day touched by ingestion batches newer than the cursor."""
    s = store.store()
    watermark = s.ingestion_watermark()
    if context.cursor is None:
        # First evaluation: start from the current watermark; days already loaded but never
        # materialized are the gap filler's job, so turning the sensor on does not rerun history.
        context.update_cursor(str(watermark))
        return dg.SkipReason(f"cursor initialised at ingestion batch {watermark}")
    cursor = int(context.cursor)
    batches = s.batches_after(cursor)
    if batches.empty:
        return dg.SkipReason(f"no ingestion batch after {cursor}")
    touched = sorted({d for days in batches["days_touched"] for d in json.loads(days)})
    new_cursor = str(int(batches["batch_id"].max()))
    if not touched:
        context.update_cursor(new_cursor)
        return dg.SkipReason(f"batches up to {new_cursor} changed no stored row (duplicates)")
    keys = set(daily_partitions.get_partition_keys())
    versions = s.day_versions(date.fromisoformat(touched[0]), date.fromisoformat(touched[-1]))
    requests = []
    for day in touched:
        if day not in keys:
            context.log.info(f"{day} is not a complete partition yet; the schedule will process it")
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"{day}:v{versions.get(day, new_cursor)}",
                partition_key=day,
                tags={"compound_learning/trigger": "new_data"},
            )
        )
    return dg.SensorResult(run_requests=requests, cursor=new_cursor)


@dg.sensor(
    job=daily_learning_cycle,
    minimum_interval_seconds=_settings.gap_fill_sensor_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def missing_days_sensor(context: dg.SensorEvaluationContext, store: StoreResource):
    """Fill days with data but no complete cycle in the last 14 partitions (missed ticks, failed
    steps): a day is complete only when every asset of the cycle was materialized for it after
    its newest data arrived."""
    keys = daily_partitions.get_partition_keys()
    if not keys:
        return dg.SkipReason("no complete partition yet")
    recent = keys[-GAP_LOOKBACK_DAYS:]
    s = store.store()
    first, last = date.fromisoformat(recent[0]), date.fromisoformat(recent[-1])
    versions, arrived = s.day_versions(first, last), s.day_version_times(first, last)
    with_data = [k for k in recent if k in versions]
    complete = set(with_data)
    for key in CYCLE_ASSETS:
        latest = _latest_materializations(context.instance, key, with_data)
        complete &= {k for k in with_data if k in latest and latest[k] >= arrived[k].timestamp()}
    busy = _partitions_in_flight(context.instance)
    missing = [k for k in with_data if k not in complete and k not in busy]
    if not missing:
        return dg.SkipReason(f"every day with data in {recent[0]}..{recent[-1]} has a complete cycle")
    return [
        dg.RunRequest(
            run_key=f"fill:{k}:v{versions[k]}", partition_key=k, tags={"compound_learning/trigger": "gap_fill"}
        )
        for k in missing
    ]


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _partitions_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Days a queued or running cycle already covers (the new-data sensor's, a backfill's: those
    run as Dagster's asset job, hence no job filter): the gap filler leaves them to it."""
    days: set[str] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT)):
        first, last = run_partition_range(run)
        if first and last:
            days |= {d.isoformat() for d in days_between(date.fromisoformat(first), date.fromisoformat(last))}
    return days


def _latest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]) -> dict:
    """Partition key -> epoch seconds of the asset's newest materialization of it."""
    if not partitions:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=len(partitions) * 50
    ).records
    latest: dict[str, float] = {}
    for record in records:
        pk = record.partition_key
        latest[pk] = max(latest.get(pk, 0.0), record.timestamp)
    return latest


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[daily_learning_cycle],
    default_status=dg.DefaultSensorStatus.RUNNING,
    name="cycle_success_logger",
)
def cycle_success_logger(context: dg.RunStatusSensorContext, store: StoreResource):
    """Log every successful cycle run to learning_cycle_logs."""
    record_cycle_run(context.instance, store.store(), context.dagster_run, "SUCCESS")


@dg.run_failure_sensor(
    monitored_jobs=[daily_learning_cycle], default_status=dg.DefaultSensorStatus.RUNNING, name="cycle_failure_logger"
)
def cycle_failure_logger(context: dg.RunFailureSensorContext, store: StoreResource):
    """Log every failed cycle run to learning_cycle_logs, with the failure message."""
    message = context.failure_event.message if context.failure_event else "run failed"
    record_cycle_run(context.instance, store.store(), context.dagster_run, "FAILURE", message or "")
