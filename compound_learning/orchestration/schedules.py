"""The 03:00 schedule: each tick processes the previous day (the last complete partition).

Dagster does not catch up missed ticks after daemon downtime; ``missing_days_sensor`` fills
those gaps."""

from __future__ import annotations

import dagster as dg

from compound_learning.orchestration.jobs import daily_learning_cycle

daily_learning_schedule = dg.build_schedule_from_partitioned_job(
    daily_learning_cycle,
    name="daily_learning_schedule",
    hour_of_day=3,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="At 03:00 (partition timezone) learn from the previous day.",
)
