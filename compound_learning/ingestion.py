"""Ingestion: the data contract applied to a file or a DataFrame, then one upsert transaction.

``ingest_frame`` is the Python API; the CLI's ``ingest FILE`` calls ``ingest_file``. A file that
cannot be read, or lacks a required column, raises :class:`ContractError` and writes nothing.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pandas as pd

from compound_learning.config import Settings, load_settings
from compound_learning.core import contract
from compound_learning.core.contract import (
    ContractError,
    CsvInput,
    file_sha256,
    read_csv_strict,
    validate_in_parts,
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
    quarantined with the number of fields they have.

    A file loaded before, byte for byte, under the same contract, whose days nothing has changed
    since, is recognised by its SHA-256 and recorded as a repeat without being read again."""
    settings = kwargs.pop("settings", None) or load_settings()
    store = kwargs.pop("store", None) or get_store(settings.database_url)
    key = _input_key(file_sha256(path), settings)
    repeat = with_retries(lambda: store.ingest_repeat(key, str(path)), f"ingesting {path}")
    if repeat is not None:
        return repeat
    read = read_csv_strict(path)
    return _ingest(read.frame, read, store=store, settings=settings, source=str(path), input_sha256=key, **kwargs)


def _input_key(file_digest: str, settings: Settings) -> str:
    """The file's bytes and what its verdict depends on besides them: the partition start and
    the contract's own code (any change to the rules is a new key)."""
    contract_code = hashlib.sha256(Path(contract.__file__).read_bytes()).hexdigest()
    return hashlib.sha256(f"{file_digest}|{settings.partition_start}|{contract_code}".encode()).hexdigest()


def _ingest(frame, read: CsvInput | None, *, store=None, settings=None, source, today=None, input_sha256=None) -> dict:
    settings = settings or load_settings()
    store = store or get_store(settings.database_url)
    parts = validate_in_parts(
        frame,
        partition_start=settings.partition_start,
        today=today,
        malformed=read.malformed if read else None,
        lines=read.lines if read else None,
    )
    # One transaction: a transient failure rolled everything back, so trying again is safe.
    return with_retries(lambda: store.ingest(parts, source=source, input_sha256=input_sha256), f"ingesting {source}")
