"""Ingestion: the data contract applied to a file or a DataFrame, then one upsert transaction.

``ingest_frame`` is the Python API; the CLI's ``ingest FILE`` calls ``ingest_file``. A file that
cannot be read, or lacks a required column, raises :class:`ContractError` and writes nothing.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from compound_learning.config import Settings, load_settings
from compound_learning.core.contract import (
    ContractError,
    CsvInput,
    read_csv_strict,
    validate_frame,
)
from compound_learning.storage.retry import with_retries
from compound_learning.storage.store import Store, get_store

__all__ = ["ContractError", "ingest_file", "ingest_frame"]


def ingest_frame(
    frame: pd.DataFrame,
    *,
    store: Store | None = None,
    settings: Settings | None = None,
    source: str = "dataframe",
    today: date | None = None,
) -> dict:
    """Validate ``frame`` against the contract and upsert it; returns the ingestion summary.

    The summary has ``accepted``, ``rejected``, ``rejected_by_reason``, ``inserted``,
    ``replaced``, ``unchanged``, ``days_touched``, ``warnings`` (header names that differ from a
    contract column only in case) and the ``batch_id`` (the sensor's watermark).
    """
    return _ingest(frame, None, store=store, settings=settings, source=source, today=today)


def ingest_file(path: str | Path, **kwargs) -> dict:
    """Read a CSV file (as text; the contract checks the types) and ingest it; ragged rows are
    quarantined with the number of fields they have."""
    read = read_csv_strict(path)
    return _ingest(read.frame, read, source=str(path), **kwargs)


def _ingest(frame, read: CsvInput | None, *, store=None, settings=None, source, today=None) -> dict:
    settings = settings or load_settings()
    store = store or get_store(settings.database_url)
    result = validate_frame(
        frame,
        partition_start=settings.partition_start,
        today=today,
        malformed=read.malformed if read else None,
        lines=read.lines if read else None,
    )
    # One transaction: a transient failure rolled everything back, so trying again is safe.
    return with_retries(lambda: store.ingest(result, source=source), f"ingesting {source}")
