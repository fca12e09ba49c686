"""One daily partition = one day of performance data."""

from __future__ import annotations

import dagster as dg

from compound_learning.config import load_settings

_settings = load_settings()

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=_settings.partition_start.isoformat(),
    timezone=_settings.timezone,
)
