"""The input data contract: one row = one creative, one day, one account.

Required columns: ``date, account_id, creative_id, impressions, clicks, spend``; optional
metrics: ``conversions, revenue``; every other column is a categorical creative attribute.
:func:`validate_frame` splits a raw frame into normalized good rows and rejected rows with a
reason each; a frame that lacks a required column, or whose header is unusable (a blank,
repeated, over-long or control-character name), is refused whole with :class:`ContractError`.

Every bound is part of the contract and the same on SQLite and PostgreSQL: counts are whole
numbers in [0, MAX_COUNT], money in [0, MAX_AMOUNT] (so no sum over a year of rows can overflow),
ids at most MAX_ID_LENGTH characters, attribute names MAX_ATTRIBUTE_NAME_LENGTH and values
MAX_ATTRIBUTE_VALUE_LENGTH, and no text may hold a control character (PostgreSQL cannot store NUL).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

KEY_COLUMNS = ["account_id", "creative_id", "date"]
REQUIRED_COLUMNS = ["date", "account_id", "creative_id", "impressions", "clicks", "spend"]
OPTIONAL_METRICS = ["conversions", "revenue"]
INTEGER_METRICS = ["impressions", "clicks", "conversions"]
METRIC_COLUMNS = ["impressions", "clicks", "conversions", "spend", "revenue"]
RESERVED_COLUMNS = set(REQUIRED_COLUMNS) | set(OPTIONAL_METRICS)

MAX_COUNT = 10_000_000_000  # impressions, clicks or conversions of one creative on one day
MAX_AMOUNT = 1_000_000_000_000.0  # spend or revenue of one creative on one day
MAX_ID_LENGTH = 200  # account_id, creative_id (the key columns' width)
MAX_ATTRIBUTE_NAME_LENGTH = 64
MAX_ATTRIBUTE_VALUE_LENGTH = 200
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # tab, CR and LF are whitespace, stripped or refused as such
_CONTROL_ANY = r"[\x00-\x1f\x7f]"


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a control character (tab, CR and LF included): no id, attribute
    name or value the contract stores does."""
    return re.search(_CONTROL_ANY, text) is not None


_STRING = pd.ArrowDtype(pa.string())  # text columns are Arrow strings: vectorized in C++


class ContractError(ValueError):
    """The input as a whole breaks the contract (unreadable, or a required column missing)."""


@dataclass
class ValidationResult:
    """Good rows, normalized, and rejected rows with their reasons."""

    good: pd.DataFrame  # KEY_COLUMNS + METRIC_COLUMNS + attributes (JSON text)
    rejected: pd.DataFrame  # columns: reason, day (date as given), row (JSON of the raw row), line
    attribute_columns: list[str]
    warnings: list[str] = field(default_factory=list)  # read as intended, but worth a look

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return rejected_by_reason(self.rejected)

    def rejected_lines(self, first: int = 5) -> dict[str, list[int]]:
        return rejected_lines(self.rejected, first)


def rejected_by_reason(rejected: pd.DataFrame) -> dict[str, int]:
    """How many rows were rejected for each reason."""
    if rejected.empty:
        return {}
    return {str(k): int(v) for k, v in rejected["reason"].value_counts().items()}


def rejected_lines(rejected: pd.DataFrame, first: int = 5) -> dict[str, list[int]]:
    """For each reason, the first ``first`` lines of the input rejected for it."""
    if rejected.empty:
        return {}
    grouped = rejected.sort_values("line").groupby("reason")["line"]
    return {str(k): [int(x) for x in v.head(first)] for k, v in grouped}


ROWS_PER_PART = 50_000  # small enough that the server never waits long for the next part


@dataclass
class ValidatedParts:
    """An input validated a part at a time as it is consumed, so that writing part k overlaps
    checking part k+1 (the database parses a COPY while the next rows are checked). What the
    whole input decides (the header, the days it names) is known before the first part."""

    attribute_columns: list[str]
    warnings: list[str]
    days: list[date]  # every valid date the rows give (a superset of the accepted rows' days)
    rows_in_input: int
    parts: Callable[[], Iterator[ValidationResult]]

    def __iter__(self) -> Iterator[ValidationResult]:
        return self.parts()


def validate_in_parts(
    raw: pd.DataFrame,
    *,
    partition_start: date,
    today: date | None = None,
    malformed: dict[int, tuple[str, list[str]]] | None = None,
    lines: pd.Series | None = None,
    rows_per_part: int | None = None,
) -> ValidatedParts:
    """:func:`validate_frame` over consecutive parts of ``raw``, with the same verdict on every
    row as one call: the only rule that looks across rows (a key repeated inside the input) is
    checked first, and an input that repeats a key is validated in one part. Raises
    :class:`ContractError` at once for an unusable header or a missing column."""
    today = today or date.today()
    rows_per_part = rows_per_part or ROWS_PER_PART
    names = _usable_header(raw.columns)
    frame = raw.set_axis(names, axis=1)
    malformed = malformed or {}
    if lines is None:
        lines = pd.Series(np.arange(len(frame)) + 2, index=frame.index)
    dates = pd.to_datetime(_text(frame["date"]), format="%Y-%m-%d", errors="coerce")
    valid = dates[(dates >= pd.Timestamp(partition_start)) & (dates <= pd.Timestamp(today))]
    keys = pd.DataFrame(
        {"account_id": _text(frame["account_id"]), "creative_id": _text(frame["creative_id"]), "date": dates}
    )
    step = len(frame) if len(frame) <= rows_per_part or _has_repeats(keys.dropna()) else rows_per_part
    if step < len(frame):
        # parts in key order: each part then extends the primary key's B-tree at its right edge
        # (a COPY in file order lands all over it and takes 60% longer)
        order = pc.sort_indices(
            pa.table({c: pa.array(keys[c]) for c in keys}), sort_keys=[(c, "ascending") for c in keys]
        ).to_numpy()
        frame, lines = frame.take(order), lines.take(order)

    def parts() -> Iterator[ValidationResult]:
        for start in range(0, max(len(frame), 1), max(step, 1)):
            part = frame.iloc[start : start + step]
            yield validate_frame(
                part,
                partition_start=partition_start,
                today=today,
                malformed={k: v for k, v in malformed.items() if k in part.index},
                lines=lines.iloc[start : start + step],
                keys_known_unique=step < len(frame),
            )

    return ValidatedParts(
        attribute_columns=attribute_columns_of(names),
        warnings=header_warnings(names),
        days=sorted({d.date() for d in valid.drop_duplicates()}),
        rows_in_input=len(frame),
        parts=parts,
    )


def attribute_columns_of(columns) -> list[str]:
    """Every column that is not a key or metric is a categorical attribute dimension."""
    return [c for c in columns if c not in RESERVED_COLUMNS]


def check_header(names) -> list[str]:
    """The column names, stripped; raises :class:`ContractError` for a header that cannot be read
    unambiguously (a blank, repeated, over-long or control-character name)."""
    names = [str(c).strip() for c in names]
    blank = [i + 1 for i, c in enumerate(names) if c == "" or c.lower().startswith("unnamed:")]
    if blank:
        raise ContractError(f"the header has a column without a name (column {blank[0]} of {names})")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ContractError(f"the header repeats the column(s) {dupes}: each column must appear once")
    for c in names:
        if re.search(_CONTROL_ANY, c):
            raise ContractError(f"the column name {c!r} contains a control character")
        if c not in RESERVED_COLUMNS and len(c) > MAX_ATTRIBUTE_NAME_LENGTH:
            raise ContractError(
                f"the column name {c[:40]!r}... is {len(c)} characters long; "
                f"attribute names may have at most {MAX_ATTRIBUTE_NAME_LENGTH}"
            )
    return names


def header_warnings(names: list[str]) -> list[str]:
    """Names that differ from a contract column, or from each other, only in case: they are read
    as separate attribute dimensions, which is rarely what was meant."""
    out = []
    lowered: dict[str, list[str]] = {}
    for c in names:
        lowered.setdefault(c.lower(), []).append(c)
    for low, group in lowered.items():
        if len(group) < 2 and not (low in RESERVED_COLUMNS and group[0] != low):
            continue
        extra = [c for c in group if c not in RESERVED_COLUMNS]
        if low in RESERVED_COLUMNS:
            out.extend(
                f"column {c!r} differs from the contract column {low!r} only in case; "
                "it was read as an attribute dimension (column names are case-sensitive)"
                for c in extra
            )
        else:
            out.append(f"columns {group} differ only in case; they were read as {len(group)} separate dimensions")
    return out


def _usable_header(columns) -> list[str]:
    """The checked names; raises :class:`ContractError` for an unusable header or a missing column."""
    names = check_header(columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ContractError(
            f"missing required column(s) {missing}{_missing_hint(missing, names)}; "
            f"required are {REQUIRED_COLUMNS}, found {names}"
        )
    return names


def _missing_hint(missing: list[str], names: list[str]) -> str:
    near = [c for c in names if c.lower() in missing and c not in missing]
    return f" (found {near}: column names are case-sensitive)" if near else ""


def _raw_row_json(row: pd.Series) -> str:
    return json.dumps({k: (None if pd.isna(v) else str(v)) for k, v in row.items()}, sort_keys=True)


def attributes_json(texts: dict[str, pd.Series], index: pd.Index) -> pd.Series:
    """One canonical JSON object per row (sorted keys; blank values left out), from the stripped
    text of each attribute column.

    Rows of one creative repeat the same attributes every day, so each distinct combination is
    encoded once and mapped back (a day of 1M rows has a few thousand combinations)."""
    if not texts:
        return pd.Series(["{}"] * len(index), index=index, dtype=_STRING)
    frame = pd.DataFrame(texts, index=index)
    codes = frame.groupby(list(texts), sort=False, dropna=False).ngroup().to_numpy()
    first = np.unique(codes, return_index=True)[1]
    values = [pa.array(texts[c]).take(pa.array(first)).to_pylist() for c in texts]
    names = tuple(texts)
    encoded = pa.array([_attributes_text(names, record) for record in zip(*values, strict=True)], pa.string())
    # decoded in Arrow: a million rows of JSON text without a million Python strings
    column = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), encoded).cast(pa.string())
    return pd.Series(pd.arrays.ArrowExtensionArray(column), index=index)


@functools.lru_cache(maxsize=65_536)
def _attributes_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """The canonical JSON of one combination (cached: the parts of one input share them)."""
    return json.dumps({c: v for c, v in zip(names, values, strict=True) if v}, sort_keys=True)


def _text(column: pd.Series) -> pd.Series:
    """The column as stripped text, '' where missing, in Arrow strings (vectorized whatever the
    input's type: a CSV read as text, or a DataFrame of numbers and objects)."""
    if column.dtype != _STRING:
        column = column.astype(object).where(column.notna(), "").astype(str).astype(_STRING)
    return column.fillna("").str.strip()


def _numbers(column: pd.Series, text: pd.Series | None) -> pd.Series:
    """The column as floats, NaN where missing or not a number.

    Numeric input is taken as is; text is parsed by Arrow's cast (C++, correctly rounded), and
    only a column holding something that cast refuses goes through pandas' slower coercion,
    which reads every valid number the same way and turns the rest into NaN."""
    if pd.api.types.is_numeric_dtype(column) and column.dtype != _STRING:
        return pd.to_numeric(column, errors="coerce").astype(float)
    if column.dtype == _STRING:
        try:  # a clean column of numbers, as a CSV exporter writes it: no stripping needed
            values = pc.cast(pa.array(column), pa.float64())
            return pd.Series(values.to_numpy(zero_copy_only=False), index=column.index, dtype=float)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    text = _text(column) if text is None else text
    try:
        values = pc.cast(pa.array(text.where(text != "", None)), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(text.astype(object), errors="coerce").astype(float)
    return pd.Series(values.to_numpy(zero_copy_only=False), index=column.index, dtype=float)


def _has_repeats(keys: pd.DataFrame) -> bool:
    """Whether any (account_id, creative_id, date) occurs twice: one Arrow pass over joined keys
    (the common answer, no, costs a tenth of pandas' ``duplicated``)."""
    if len(keys) < 2:
        return False
    parts = [pa.array(keys["account_id"]), pa.array(keys["creative_id"])]
    if keys["date"].min() != keys["date"].max():  # a one-day file (the daily case) needs no date
        parts.append(pc.cast(pa.array(keys["date"]), pa.string()))
    joined = pc.binary_join_element_wise(*parts, "\x1f")  # a control character: refused in ids
    return pc.count_distinct(joined).as_py() < len(keys)


def validate_frame(
    raw: pd.DataFrame,
    *,
    partition_start: date,
    today: date | None = None,
    malformed: dict[int, tuple[str, list[str]]] | None = None,
    lines: pd.Series | None = None,
    keys_known_unique: bool = False,
) -> ValidationResult:
    """Check every row against the contract.

    Rows are rejected for: a missing or non-numeric metric, a negative, fractional or
    out-of-range count, money out of range, clicks > impressions, an unparseable date, a date
    before ``partition_start`` or after ``today``, a blank, over-long or control-character id or
    attribute value, or a key repeated inside the input with different values (an exact repeat
    keeps one copy). ``malformed`` maps row labels to (reason, raw fields) found before (a ragged
    CSV row, quarantined with all its fields);
    ``lines`` gives each row's line in its file (default: as if the frame were a CSV with a
    header); ``keys_known_unique`` says the caller found no key repeated in the input (the
    parts of :func:`validate_in_parts`). Raises :class:`ContractError` if a required column is
    missing or the header is unusable.
    """
    today = today or date.today()
    df = raw.copy(deep=False)  # columns are replaced, never changed in place
    df.columns = _usable_header(df.columns)
    warnings = header_warnings(list(df.columns))
    attrs = attribute_columns_of(df.columns)
    reasons = pd.Series("", index=df.index, dtype=object)
    still_good = np.ones(len(df), dtype=bool)  # the first reason found is the one reported

    def flag(mask: pd.Series, reason: str) -> None:
        hit = np.asarray(mask.fillna(False), dtype=bool) & still_good
        if hit.any():
            reasons.iloc[np.flatnonzero(hit)] = reason
            still_good[hit] = False

    malformed = malformed or {}
    for label, (reason, _fields) in malformed.items():
        reasons[label] = reason
        still_good[df.index.get_loc(label)] = False

    for col in ["account_id", "creative_id"]:
        text = _text(df[col])
        flag(text == "", f"{col} is blank")
        flag(text.str.len() > MAX_ID_LENGTH, f"{col} is longer than {MAX_ID_LENGTH} characters")
        flag(text.str.contains(_CONTROL_ANY, regex=True), f"{col} contains a control character")
        df[col] = text
    attr_text = {}
    for col in attrs:
        text = attr_text[col] = _text(df[col])
        flag(
            text.str.len() > MAX_ATTRIBUTE_VALUE_LENGTH,
            f"attribute {col} is longer than {MAX_ATTRIBUTE_VALUE_LENGTH} characters",
        )
        flag(text.str.contains(_CONTROL, regex=True), f"attribute {col} contains a control character")

    parsed_dates = pd.to_datetime(_text(df["date"]), format="%Y-%m-%d", errors="coerce")
    flag(parsed_dates.isna(), "date is not a valid YYYY-MM-DD date")
    flag(parsed_dates < pd.Timestamp(partition_start), f"date is before the partition start {partition_start}")
    flag(parsed_dates > pd.Timestamp(today), f"date is in the future (after {today})")

    numeric = {}
    present_metrics = [c for c in METRIC_COLUMNS if c in df.columns]
    for col in present_metrics:
        values = _numbers(df[col], None)
        flag(values.isna() | ~np.isfinite(values.fillna(0.0)), f"{col} is missing or not a number")
        flag(values < 0, f"{col} is negative")
        if col in INTEGER_METRICS:
            flag(values != np.floor(values), f"{col} is not a whole number")
            flag(values > MAX_COUNT, f"{col} is above the contract's maximum of {MAX_COUNT:,}")
        else:
            flag(values > MAX_AMOUNT, f"{col} is above the contract's maximum of {MAX_AMOUNT:,.0f}")
        numeric[col] = values
    flag(numeric["clicks"] > numeric["impressions"], "clicks exceed impressions")

    good_mask = pd.Series(still_good, index=df.index)
    # Duplicated keys inside one input: an exact repeat keeps one copy, conflicting copies all go.
    keyed = pd.DataFrame({"account_id": df["account_id"], "creative_id": df["creative_id"], "date": parsed_dates})
    candidates = keyed[good_mask]
    if not keys_known_unique and _has_repeats(candidates):
        dup_any = candidates.duplicated(keep=False)
        dup_index = candidates.index[dup_any]
        content = df.loc[dup_index].astype(object)  # the rows (ids stripped), NaN-safe
        groups = pd.DataFrame(
            {
                "k": pd.util.hash_pandas_object(candidates.loc[dup_index], index=False),
                "c": pd.util.hash_pandas_object(content.where(content.notna(), None), index=False),
            }
        )
        n_contents = groups.groupby("k")["c"].transform("nunique")
        conflicting = groups.index[n_contents > 1]
        exact = groups.index[(n_contents == 1) & groups.duplicated(subset="k", keep="first")]
        flag(
            pd.Series(reasons.index.isin(conflicting), index=reasons.index),
            "duplicate key (account_id, creative_id, date) with different values in the same input",
        )
        flag(pd.Series(reasons.index.isin(exact), index=reasons.index), "exact duplicate row in the same input")
        good_mask = pd.Series(still_good, index=df.index)

    rejected = pd.DataFrame(
        {
            "reason": reasons[~good_mask].to_numpy(),
            "day": df.loc[~good_mask, "date"]
            .astype(object)
            .where(df.loc[~good_mask, "date"].notna(), None)
            # as given, but storable: PostgreSQL text cannot hold NUL or other control characters
            .map(lambda v: None if v is None else re.sub(_CONTROL_ANY, "\ufffd", str(v).strip()[:32]))
            .to_numpy(),
            "row": [
                json.dumps(malformed[label][1]) if label in malformed else _raw_row_json(r)
                for label, r in df[~good_mask].iterrows()
            ],
            "line": (lines if lines is not None else pd.Series(np.arange(len(df)) + 2, index=df.index))[~good_mask]
            .astype("int64")
            .to_numpy(),
        }
    )
    gd = df[good_mask]
    good = pd.DataFrame(
        {
            "account_id": gd["account_id"],
            "creative_id": gd["creative_id"],
            "date": pd.Series(
                pd.arrays.ArrowExtensionArray(pa.array(parsed_dates[good_mask].to_numpy()).cast(pa.date32())),
                index=gd.index,
            ),
        }
    )
    for col in METRIC_COLUMNS:
        if col in numeric:
            series = numeric[col][good_mask]
            good[col] = series.astype("int64") if col in INTEGER_METRICS else series.astype(float)
        else:
            good[col] = pd.Series(np.nan, index=gd.index, dtype=float)  # absent: unknown, not zero
    good["attributes"] = attributes_json({c: v[good_mask] for c, v in attr_text.items()}, gd.index)
    return ValidationResult(
        good=good.reset_index(drop=True), rejected=rejected, attribute_columns=attrs, warnings=warnings
    )


@dataclass
class CsvInput:
    """A CSV file read as text: the rows that have the header's shape, and the ones that do not."""

    frame: pd.DataFrame  # every row, as strings (blank = missing); ragged rows cut or padded to the header
    malformed: dict[int, tuple[str, list[str]]]  # row label -> (why it cannot be read, its fields)
    lines: pd.Series  # row label -> the line of the file it ends on (header = line 1)


def read_csv_strict(path) -> CsvInput:
    """Read a CSV as text (types are checked by the contract).

    A row with more or fewer fields than the header is kept as a row to quarantine, with a reason
    that says so (pandas would shift it into an index column or pad it silently). Raises
    :class:`ContractError` if the file cannot be read, is empty, is not UTF-8 or has an unusable
    header; a UTF-8 byte-order mark is accepted.

    Files where every row is one line of the header's width (what exporters write) are parsed by
    Arrow's multi-threaded reader; any other file by Python's csv module, which reports each
    ragged row and its line. Both give the same frame (a test holds them to it).
    """
    data = _file(path, lambda handle: handle.read())
    return _read_csv_arrow(data) or _read_csv_exact(data, path)


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (the same errors as :func:`read_csv_strict`)."""
    return _file(path, lambda handle: hashlib.file_digest(handle, "sha256").hexdigest())


def _file(path, use):
    try:
        with open(path, "rb") as handle:
            return use(handle)
    except FileNotFoundError as exc:
        raise ContractError(f"cannot read {path}: file not found") from exc
    except (IsADirectoryError, PermissionError) as exc:
        raise ContractError(f"cannot read {path} as CSV: {exc}") from exc


def _not_utf8(path, exc: UnicodeDecodeError) -> ContractError:
    return ContractError(
        f"cannot read {path}: it is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    )


def _read_csv_arrow(data: bytes) -> CsvInput | None:
    """The fast reader, or None when the file is not one row per line at the header's width
    (blank or multi-line rows, ragged rows, a space after a delimiter, not UTF-8, a quoted
    header, a carriage return not followed by a line feed): the exact reader then reads it,
    with a reason for each row it cannot take."""
    import pyarrow.csv as pacsv

    end = data.find(b"\n")
    if end < 0 or b'"' in data[:end] or b", " in data or b"\n " in data or b"\n\n" in data or b"\n\r\n" in data:
        return None
    if data.count(b"\r") != data.count(b"\r\n"):  # a lone CR ends a line for the csv module, not for Arrow
        return None
    try:
        data.decode("utf-8")  # (50 ms a 100 MB) Arrow's handler of a ragged row cannot take other bytes
        names = check_header(data[:end].decode("utf-8-sig").rstrip("\r").split(","))
    except (UnicodeDecodeError, ContractError):
        return None
    body = data[end + 1 :]
    ragged = []

    def on_invalid(row):
        ragged.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.BufferReader(body),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except pa.ArrowInvalid:  # not UTF-8, or a quote that does not close
        return None
    lines_in_body = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
    if ragged or table.num_rows != lines_in_body:
        return None
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    return CsvInput(frame=frame, malformed={}, lines=pd.Series(np.arange(len(frame)) + 2, dtype="int64"))


def _read_csv_exact(data: bytes, path) -> CsvInput:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from exc
    try:
        reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
        header = next(reader, None)
        if header is None:
            raise ContractError(f"cannot read {path}: the file is empty (no header row)")
        names = check_header(header)
        width = len(names)
        rows, lines, malformed = [], [], {}
        for fields in reader:
            if not fields:  # a blank line
                continue
            if len(fields) != width:
                reason = f"row has {len(fields)} fields where the header has {width}"
                malformed[len(rows)] = (reason, fields)
                fields = (fields + [""] * width)[:width]
            rows.append(fields)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise ContractError(f"cannot read {path} as CSV: {exc}") from exc
    frame = pd.DataFrame(rows, columns=names, dtype=object)
    if len(frame):
        frame = frame.where(frame != "", None)
    return CsvInput(frame=frame, malformed=malformed, lines=pd.Series(lines, index=frame.index, dtype="int64"))
