"""The input data contract: one row = one creative, one day, one account.

Required columns: ``date, account_id, creative_id, impressions, clicks, spend``; optional
metrics: ``conversions, revenue``; every other column is a categorical creative attribute.
:func:`validate_frame` splits a raw frame into normalized good rows and rejected rows with a
reason each; a frame that lacks a required column is refused whole with :class:`ContractError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

KEY_COLUMNS = ["account_id", "creative_id", "date"]
REQUIRED_COLUMNS = ["date", "account_id", "creative_id", "impressions", "clicks", "spend"]
OPTIONAL_METRICS = ["conversions", "revenue"]
INTEGER_METRICS = ["impressions", "clicks", "conversions"]
METRIC_COLUMNS = ["impressions", "clicks", "conversions", "spend", "revenue"]
RESERVED_COLUMNS = set(REQUIRED_COLUMNS) | set(OPTIONAL_METRICS)


class ContractError(ValueError):
    """The input as a whole breaks the contract (unreadable, or a required column missing)."""


@dataclass
class ValidationResult:
    """Good rows, normalized, and rejected rows with their reasons."""

    good: pd.DataFrame  # KEY_COLUMNS + METRIC_COLUMNS + attributes (JSON text)
    rejected: pd.DataFrame  # columns: reason, day (date as given), row (JSON of the raw row)
    attribute_columns: list[str]

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        if self.rejected.empty:
            return {}
        return {str(k): int(v) for k, v in self.rejected["reason"].value_counts().items()}


def attribute_columns_of(columns) -> list[str]:
    """Every column that is not a key or metric is a categorical attribute dimension."""
    return [c for c in columns if c not in RESERVED_COLUMNS]


def _clean_columns(df: pd.DataFrame) -> pd.DataFrame:
    renamed = {c: str(c).strip() for c in df.columns}
    df = df.rename(columns=renamed)
    blank = [c for c in df.columns if c == "" or c.lower().startswith("unnamed:")]
    if blank:
        raise ContractError(f"the input has a column without a name (columns: {list(df.columns)})")
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise ContractError(f"the input repeats the column(s) {dupes}")
    return df


def _raw_row_json(row: pd.Series) -> str:
    return json.dumps({k: (None if pd.isna(v) else str(v)) for k, v in row.items()}, sort_keys=True)


def attributes_json(frame: pd.DataFrame, attribute_columns: list[str]) -> pd.Series:
    """One canonical JSON object per row (sorted keys; blank values left out).

    Rows of one creative repeat the same attributes every day, so each distinct combination is
    encoded once and mapped back (about 30x fewer encodings on a month of data)."""
    if not attribute_columns:
        return pd.Series(["{}"] * len(frame), index=frame.index, dtype=object)
    values = frame[attribute_columns].astype(object)
    values = values.where(values.notna(), None).map(lambda v: None if v is None else str(v).strip())
    keys = pd.util.hash_pandas_object(values, index=False)
    first = ~keys.duplicated()
    encoded = {
        key: json.dumps({c: v for c, v in zip(attribute_columns, record, strict=True) if v}, sort_keys=True)
        for key, record in zip(keys[first], values[first].itertuples(index=False, name=None), strict=True)
    }
    return pd.Series(keys.map(encoded).to_numpy(), index=frame.index, dtype=object)


def validate_frame(raw: pd.DataFrame, *, partition_start: date, today: date | None = None) -> ValidationResult:
    """Check every row against the contract.

    Rows are rejected for: a missing or non-numeric metric, a negative or fractional count,
    clicks > impressions, an unparseable date, a date before ``partition_start`` or after
    ``today``, a blank id, or a key repeated inside the input with different values (an exact
    repeat keeps one copy). Raises :class:`ContractError` if a required column is missing.
    """
    today = today or date.today()
    df = _clean_columns(raw.copy())
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ContractError(
            f"missing required column(s) {missing}; required are {REQUIRED_COLUMNS}, found {list(df.columns)}"
        )
    attrs = attribute_columns_of(df.columns)
    reasons = pd.Series("", index=df.index, dtype=object)

    def flag(mask: pd.Series, reason: str) -> None:
        mask = mask.fillna(False).astype(bool) & (reasons == "")
        reasons[mask] = reason

    for col in ["account_id", "creative_id"]:
        text = df[col].astype(object).where(df[col].notna(), "").astype(str).str.strip()
        flag(text == "", f"{col} is blank")
        df[col] = text

    parsed_dates = pd.to_datetime(df["date"].astype(str).str.strip(), format="%Y-%m-%d", errors="coerce")
    flag(parsed_dates.isna(), "date is not a valid YYYY-MM-DD date")
    flag(parsed_dates < pd.Timestamp(partition_start), f"date is before the partition start {partition_start}")
    flag(parsed_dates > pd.Timestamp(today), f"date is in the future (after {today})")

    numeric = {}
    present_metrics = [c for c in METRIC_COLUMNS if c in df.columns]
    for col in present_metrics:
        values = pd.to_numeric(df[col], errors="coerce").astype(float)
        flag(values.isna() | ~np.isfinite(values.fillna(0.0)), f"{col} is missing or not a number")
        flag(values < 0, f"{col} is negative")
        if col in INTEGER_METRICS:
            flag(values != np.floor(values), f"{col} is not a whole number")
        numeric[col] = values
    flag(numeric["clicks"] > numeric["impressions"], "clicks exceed impressions")

    good_mask = reasons == ""
    # Duplicated keys inside one input: an exact repeat keeps one copy, conflicting copies all go.
    keyed = pd.DataFrame({"account_id": df["account_id"], "creative_id": df["creative_id"], "date": parsed_dates})
    content = pd.util.hash_pandas_object(df, index=False)  # row content, NaN-safe
    candidates = keyed[good_mask]
    dup_any = candidates.duplicated(keep=False)
    if dup_any.any():
        dup_index = candidates.index[dup_any]
        groups = pd.DataFrame(
            {"k": pd.util.hash_pandas_object(candidates.loc[dup_index], index=False), "c": content.loc[dup_index]}
        )
        n_contents = groups.groupby("k")["c"].transform("nunique")
        conflicting = groups.index[n_contents > 1]
        exact = groups.index[(n_contents == 1) & groups.duplicated(subset="k", keep="first")]
        flag(
            pd.Series(reasons.index.isin(conflicting), index=reasons.index),
            "duplicate key (account_id, creative_id, date) with different values in the same input",
        )
        flag(pd.Series(reasons.index.isin(exact), index=reasons.index), "exact duplicate row in the same input")
        good_mask = reasons == ""

    rejected = pd.DataFrame(
        {
            "reason": reasons[~good_mask].to_numpy(),
            "day": df.loc[~good_mask, "date"]
            .astype(object)
            .where(df.loc[~good_mask, "date"].notna(), None)
            .map(lambda v: None if v is None else str(v).strip()[:32])
            .to_numpy(),
            "row": [_raw_row_json(r) for _, r in df[~good_mask].iterrows()],
        }
    )
    gd = df[good_mask]
    good = pd.DataFrame(
        {
            "account_id": gd["account_id"].astype(str),
            "creative_id": gd["creative_id"].astype(str),
            "date": parsed_dates[good_mask].dt.date,
        }
    )
    for col in METRIC_COLUMNS:
        if col in numeric:
            series = numeric[col][good_mask]
            good[col] = series.astype("int64") if col in INTEGER_METRICS else series.astype(float)
        else:
            good[col] = pd.Series(np.nan, index=gd.index, dtype=float)  # absent: unknown, not zero
    good["attributes"] = attributes_json(gd, attrs)
    return ValidationResult(good=good.reset_index(drop=True), rejected=rejected, attribute_columns=attrs)


def read_csv_strict(path) -> pd.DataFrame:
    """Read a CSV as text (types are checked by the contract); raises ContractError if unreadable."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
    except FileNotFoundError as exc:
        raise ContractError(f"cannot read {path}: file not found") from exc
    except pd.errors.EmptyDataError as exc:
        raise ContractError(f"cannot read {path}: the file is empty (no header row)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise ContractError(f"cannot read {path} as CSV: {exc}") from exc
