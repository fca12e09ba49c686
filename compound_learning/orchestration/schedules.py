"""The 03:00 schedule: each tick processes the previous day (the last complete partition).

Dagster does not catch up missed ticks after daemon downtime; ``missing_days_sensor`` fills
those gaps."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from compound_learning.config import load_settings
from compound_learning.orchestration.jobs import daily_learning_cycle

TIMEZONE = load_settings().timezone


@dg.schedule(
    job=daily_learning_cycle,
    cron_schedule="0 3 * * *",
    execution_timezone=TIMEZONE,
    name="daily_learning_schedule",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="At 03:00 (partition timezone) learn from the previous day.",
)
def daily_learning_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """The partition of the day before the tick, in the partitions' timezone; the run key is
    the day, so a tick evaluated twice launches one run."""
    day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=day, partition_key=day, tags={"compound_learning/trigger": "schedule"})
