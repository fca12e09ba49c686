"""The code location: ``dagster dev -m compound_learning.definitions`` (or workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from compound_learning.orchestration.assets import (
    CYCLE_ASSETS,
    compound_performance_data,
)
from compound_learning.orchestration.jobs import daily_learning_cycle
from compound_learning.orchestration.resources import StoreResource
from compound_learning.orchestration.schedules import daily_learning_schedule
from compound_learning.orchestration.sensors import (
    cycle_failure_logger,
    cycle_success_logger,
    missing_days_sensor,
    new_data_sensor,
)

defs = dg.Definitions(
    assets=[compound_performance_data, *CYCLE_ASSETS],
    jobs=[daily_learning_cycle],
    schedules=[daily_learning_schedule],
    sensors=[new_data_sensor, missing_days_sensor, cycle_success_logger, cycle_failure_logger],
    # Configured from the environment (COMPOUND_LEARNING_DATABASE_URL, ...; see config.py).
    resources={"store": StoreResource()},
)


def cycle_job() -> dg.JobDefinition:
    """The daily job, for executors that rebuild it in other processes (``dg.execute_job``)."""
    return defs.resolve_job_def(daily_learning_cycle.name)
