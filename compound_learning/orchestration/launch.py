"""The one launch path: validate a day or a range, open the Dagster instance, launch
``daily_learning_cycle`` in-process or through a running deployment's GraphQL API, and record
each finished run in ``learning_cycle_logs``. The CLI, the HTTP API and the sensors call this
module; none of them launches a run or writes a cycle log another way.

Nothing here changes the environment: the instance is ``DAGSTER_HOME``'s when that is set
(the Makefile sets it to the project folder), else an ephemeral one, and the caller is told.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import dagster as dg

from compound_learning.config import GLOBAL, Settings, load_settings
from compound_learning.orchestration.jobs import JOB_NAME
from compound_learning.orchestration.partitions import daily_partitions
from compound_learning.steps import NOTHING_INGESTED
from compound_learning.storage import schema as t
from compound_learning.storage.store import Store, get_store

CODE_LOCATION = "compound_learning"


class LaunchError(ValueError):
    """A launch that cannot be made as asked (bad range, no such partition); names the problem."""


# -- the instance -----------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _instance_at(home: str) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(home)


@lru_cache(maxsize=1)
def _ephemeral() -> dg.DagsterInstance:
    print(
        "note: DAGSTER_HOME is not set; runs go to an ephemeral instance the Dagster UI will not show "
        "(`make` targets set it to the project folder)",
        file=sys.stderr,
    )
    return dg.DagsterInstance.ephemeral()


def dagster_instance(settings: Settings | None = None) -> dg.DagsterInstance:
    """The persistent instance of ``DAGSTER_HOME``, else one ephemeral instance per process."""
    settings = settings or load_settings()
    if settings.dagster_home is not None:
        return _instance_at(str(settings.dagster_home))
    return _ephemeral()


# -- what a run covers ---------------------------------------------------------------------------
def validate_range(start: date, end: date) -> None:
    """Both ends must be complete daily partitions, in order; raises :class:`LaunchError`."""
    if end < start:
        raise LaunchError(f"the end {end} is before the start {start}")
    keys = daily_partitions.get_partition_keys()
    for d in (start, end):
        if d.isoformat() not in keys:
            first, last = (keys[0], keys[-1]) if keys else ("-", "-")
            raise LaunchError(f"{d} is not a complete daily partition (partitions run {first} .. {last})")


def run_tags(start: date, end: date) -> dict[str, str]:
    """One partition's tag, or a single-run backfill's range tags."""
    if start == end:
        return {"dagster/partition": start.isoformat()}
    return {
        "dagster/asset_partition_range_start": start.isoformat(),
        "dagster/asset_partition_range_end": end.isoformat(),
    }


def run_partition_range(run: dg.DagsterRun) -> tuple[str | None, str | None]:
    """The first and last day a run covers, from its tags."""
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"], tags["dagster/partition"]
    return tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")


# -- the cycle log --------------------------------------------------------------------------------
def record_cycle_run(
    instance: dg.DagsterInstance, store: Store, run: dg.DagsterRun, status: str, message: str = ""
) -> dict:
    """Write one ``learning_cycle_logs`` row for a finished run (idempotent by run id)."""
    start, end = run_partition_range(run)
    stats = instance.get_run_stats(run.run_id)
    started = datetime.fromtimestamp(stats.start_time, UTC) if stats.start_time else None
    ended = datetime.fromtimestamp(stats.end_time, UTC) if stats.end_time else datetime.now(UTC)
    skipped = len(instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_SKIPPED).records)
    counts = {
        "materializations": int(stats.materializations),
        "steps_succeeded": int(stats.steps_succeeded),
        "steps_failed": int(stats.steps_failed),
        "steps_skipped": skipped,
    }
    if status == "SUCCESS" and skipped and not message:  # only performance_data's output is optional
        message = f"{NOTHING_INGESTED} ({skipped} steps skipped)"
    if end:
        end_day = date.fromisoformat(end)
        counts["significant_global_patterns"] = store.count_rows(
            t.learning_patterns, as_of=end_day, account_id=GLOBAL, state="significant"
        )
        counts["performance_rows"] = store.count_rows(t.performance, date=end_day)
    row = {
        "run_id": run.run_id,
        "job_name": run.job_name,
        "partition_start": date.fromisoformat(start) if start else None,
        "partition_end": date.fromisoformat(end) if end else None,
        "status": status,
        "started_at": started,
        "ended_at": ended,
        "duration_seconds": (ended - started).total_seconds() if started else None,
        "counts": json.dumps(counts),
        "message": message[:2000],
    }
    store.log_cycle(row)
    return row


def failure_message(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> str:
    """The first failed step and the user's own error beneath Dagster's wrappers."""
    failures = [e for e in result.all_events if e.is_failure]
    if not failures:
        return "run failed"
    error = getattr(failures[0].event_specific_data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    return failures[0].message + (f" {error.message.strip()}" if error is not None else "")


# -- launching ------------------------------------------------------------------------------------
_BACKGROUND_NEEDS_DEPLOYMENT = (
    "a background run with COMPOUND_LEARNING_EXECUTOR={executor} goes through a deployment: "
    "set COMPOUND_LEARNING_DAGSTER_URL, or run `compound-learning cycle`"
)


def run_in_process(
    start: date,
    end: date,
    *,
    instance: dg.DagsterInstance | None = None,
    settings: Settings | None = None,
    log_level: str = "WARNING",
    run_id: str | None = None,
) -> dict:
    """Materialize the daily lineage graph for [start, end] as one run (a single-run backfill
    for a range), wait for it, log it to ``learning_cycle_logs`` and return its outcome.

    This process orchestrates the run; its steps run where ``COMPOUND_LEARNING_EXECUTOR`` says:
    here (the default), in one process per step, or on Celery workers. The last two need a
    persistent instance (``DAGSTER_HOME``) that the step processes open too."""
    # The code location is imported here, not at module level: the sensors import this module
    # and are themselves part of the code location.
    from compound_learning.definitions import defs

    validate_range(start, end)
    settings = settings or load_settings()
    instance = instance or dagster_instance(settings)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    tags = run_tags(start, end)
    if settings.executor == "in_process":
        job = defs.resolve_job_def(JOB_NAME)
        result = job.execute_in_process(
            instance=instance, tags=tags, run_config=run_config, raise_on_error=False, run_id=run_id
        )
    else:
        if instance.is_ephemeral:
            raise LaunchError(
                f"COMPOUND_LEARNING_EXECUTOR={settings.executor} runs steps in other processes, which need a "
                "persistent Dagster instance: set DAGSTER_HOME (the `make` targets set it to the project folder)"
            )
        if run_id is not None:
            raise LaunchError(_BACKGROUND_NEEDS_DEPLOYMENT.format(executor=settings.executor))
        job = dg.build_reconstructable_job("compound_learning.definitions", "cycle_job")
        result = dg.execute_job(job, instance, run_config=run_config, tags=tags, raise_on_error=False)
    status = "SUCCESS" if result.success else "FAILURE"
    message = "" if result.success else failure_message(result)
    row = record_cycle_run(
        instance, get_store(settings.database_url), instance.get_run_by_id(result.run_id), status, message
    )
    return {
        "run_id": result.run_id,
        "status": status,
        "start": str(start),
        "end": str(end),
        "days": (end - start).days + 1,
        "message": row["message"],
    }


def submit_to_deployment(url: str, start: date, end: date) -> str:
    """Submit the run to a running Dagster webserver's GraphQL API; returns its run id."""
    from urllib.parse import urlparse

    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

    parsed = urlparse(url)
    if not parsed.hostname:
        raise LaunchError(f"COMPOUND_LEARNING_DAGSTER_URL is not a URL: {url!r}")
    client = DagsterGraphQLClient(parsed.hostname, port_number=parsed.port or 3000, use_https=parsed.scheme == "https")
    try:
        return client.submit_job_execution(JOB_NAME, repository_location_name=CODE_LOCATION, tags=run_tags(start, end))
    except DagsterGraphQLClientError as exc:
        raise LaunchError(f"the Dagster deployment at {url} refused the run: {exc}") from exc


def launch(
    start: date, end: date, settings: Settings | None = None, runner: Callable[..., dict] = run_in_process
) -> dict:
    """Start a cycle without waiting: through the deployment's GraphQL API when
    ``COMPOUND_LEARNING_DAGSTER_URL`` is set (the daemon's queue, retries and monitoring
    apply), else in a background thread of this process. Returns the run id and the mode."""
    validate_range(start, end)
    settings = settings or load_settings()
    if settings.dagster_url:
        run_id = submit_to_deployment(settings.dagster_url, start, end)
        return {"run_ids": [run_id], "mode": "dagster", "start": str(start), "end": str(end)}
    if settings.executor != "in_process":
        raise LaunchError(_BACKGROUND_NEEDS_DEPLOYMENT.format(executor=settings.executor))
    run_id = str(uuid.uuid4())
    threading.Thread(
        target=runner,
        args=(start, end),
        kwargs={"run_id": run_id, "settings": settings},
        daemon=True,
        name=f"cycle-{run_id[:8]}",
    ).start()
    return {"run_ids": [run_id], "mode": "in_process", "start": str(start), "end": str(end)}


# -- status ---------------------------------------------------------------------------------------
def scheduler_status(store: Store, settings: Settings | None = None) -> dict:
    """The schedule's and sensors' states on the instance, the next tick, and the last cycles."""
    from compound_learning.definitions import defs

    settings = settings or load_settings()
    instance = dagster_instance(settings)
    # DECLARED_IN_CODE means "whatever the definition's default says"
    stored = {s.name: s.status.value for s in instance.all_instigator_state() if s.status.value != "DECLARED_IN_CODE"}
    schedule = defs.resolve_schedule_def("daily_learning_schedule")
    now = datetime.now(ZoneInfo(settings.timezone))
    next_tick = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if next_tick <= now:
        next_tick += timedelta(days=1)
    logs = store.cycle_logs(10)
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME), limit=10)
    return {
        "schedule": {
            "name": schedule.name,
            "cron": schedule.cron_schedule,
            "timezone": settings.timezone,
            "status": stored.get(schedule.name, schedule.default_status.value),
            "next_tick": next_tick.isoformat(),
            "processes": "the previous day",
        },
        "sensors": [{"name": s.name, "status": stored.get(s.name, s.default_status.value)} for s in defs.sensors],
        "last_cycles": [
            {
                "run_id": r.run_id,
                "status": r.status,
                "partition_start": None if r.partition_start is None else str(r.partition_start)[:10],
                "partition_end": None if r.partition_end is None else str(r.partition_end)[:10],
                "duration_seconds": r.duration_seconds,
                "ended_at": None if r.ended_at is None else str(r.ended_at),
                "message": r.message if isinstance(r.message, str) else "",
            }
            for r in logs.itertuples()
        ],
        "dagster_home_runs": [
            {
                "run_id": r.run_id,
                "status": r.status.value,
                "tags": {k: v for k, v in r.tags.items() if k.startswith("dagster/") and "partition" in k},
            }
            for r in runs
        ],
    }
