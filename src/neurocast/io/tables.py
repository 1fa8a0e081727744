"""Tables (TSV/CSV) read and validated against the JSON Schemas in ``data_specs``.

Each schema in ``data_specs/`` describes **one row** of a table as a JSON object: its
``properties`` are the columns, ``required`` the columns that must exist, and the optional
top-level ``x-unique`` lists columns whose values must not repeat. Cells are read as text, ``n/a``
and empty cells become ``null``, and numbers are converted where the schema asks for them, so a
value like ``"abc"`` in a numeric column is reported, not silently turned into NaN.

:func:`read_table` reports **every** problem at once (column, row, value, message) in one
:class:`~neurocast.errors.InvalidTableError`.

Example:
    >>> from neurocast.io.tables import read_table  # doctest: +SKIP
    >>> participants = read_table("participants.tsv", "participants")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd

from neurocast.errors import InvalidTableError

NA_VALUES = ("n/a", "N/A", "")


@functools.lru_cache(maxsize=64)
def load_schema(name: str) -> dict[str, Any]:
    """Load ``data_specs/<name>.schema.json`` (``name`` without the suffix)."""
    fname = name if name.endswith(".json") else f"{name}.schema.json"
    try:
        text = resources.files("neurocast.data_specs").joinpath(fname).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ValueError(f"no schema named {name!r} in data_specs") from exc
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _types(prop: dict[str, Any]) -> set[str]:
    t = prop.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def _coerce(value: str | None, prop: dict[str, Any]) -> Any:
    if value is None or value in NA_VALUES:
        return None
    types = _types(prop)
    text = value.strip()
    if "integer" in types:
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer():
                return int(f)
    if "number" in types:
        try:
            f = float(text)
        except ValueError:
            return value
        return f if math.isfinite(f) else value
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def _rows_as_records(frame: pd.DataFrame, schema: dict[str, Any]) -> list[dict[str, Any]]:
    props = schema.get("properties", {})
    records = []
    for raw in frame.to_dict(orient="records"):
        rec = {}
        for col, val in raw.items():
            val = (
                None if (val is None or (isinstance(val, float) and math.isnan(val))) else str(val)
            )
            rec[col] = _coerce(val, props[col]) if col in props else val
        records.append(rec)
    return records


def validate_frame(
    frame: pd.DataFrame, schema: dict[str, Any] | str, path: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """Validate a table of text cells against a row schema and return it with typed columns.

    Args:
        frame: the table, every cell a string (or ``None``/NaN for missing).
        schema: a row schema, or the name of one in ``data_specs``.
        path: the file it came from, for error messages.

    Returns:
        A new DataFrame with schema columns converted (numbers as float/int, ``n/a`` as ``None``),
        in the original column order.

    Raises:
        InvalidTableError: listing every problem (column, 1-based row, value, message).
    """
    if isinstance(schema, str):
        schema = load_schema(schema)
    problems: list[dict[str, Any]] = []
    missing = [c for c in schema.get("required", []) if c not in frame.columns]
    for col in missing:
        problems.append(
            {"column": col, "row": None, "value": None, "message": "required column is missing"}
        )
    dupes = frame.columns[frame.columns.duplicated()].tolist()
    for col in dupes:
        problems.append(
            {"column": col, "row": None, "value": None, "message": "column appears twice"}
        )
    if problems:
        raise InvalidTableError(path, problems)

    records = _rows_as_records(frame, schema)
    validator = jsonschema.Draft202012Validator(schema)
    for i, rec in enumerate(records, start=1):
        for err in sorted(validator.iter_errors(rec), key=lambda e: list(e.path)):
            col = err.path[0] if err.path else None
            value = rec.get(col) if col is not None else None
            problems.append({"column": col, "row": i, "value": value, "message": _message(err)})
    for col in schema.get("x-unique", []):
        if col in frame.columns:
            seen: dict[Any, int] = {}
            for i, rec in enumerate(records, start=1):
                v = rec.get(col)
                if v is None:
                    continue
                if v in seen:
                    problems.append(
                        {
                            "column": col,
                            "row": i,
                            "value": v,
                            "message": f"duplicate of row {seen[v]}",
                        }
                    )
                else:
                    seen[v] = i
    if problems:
        raise InvalidTableError(path, problems)
    out = pd.DataFrame.from_records(records, columns=list(frame.columns))
    return out


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "type":
        expected = err.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"expected {expected.replace('null', 'n/a')}"
    if err.validator == "enum":
        allowed = [v for v in err.validator_value if v is not None]
        return f"must be one of {allowed} (or n/a)"
    if err.validator == "pattern":
        return f"does not match the expected form {err.validator_value}"
    if err.validator in ("minimum", "maximum"):
        return f"{err.validator} is {err.validator_value}"
    return err.message


def read_table(path: str | os.PathLike[str], schema: dict[str, Any] | str) -> pd.DataFrame:
    """Read a TSV (or ``.csv``) file and validate it against a schema.

    Args:
        path: the table; tab separated unless the name ends with ``.csv``.
        schema: a row schema dict, or the name of a schema in ``data_specs``
            (``"participants"``, ``"sessions"``, ...).

    Returns:
        The validated table with typed columns (see :func:`validate_frame`).

    Raises:
        InvalidTableError: the file is missing, unreadable, empty, or breaks the schema; every
            problem is listed.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidTableError(path, [{"message": "file does not exist", "column": None}])
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        # index_col=False: a row with more cells than the header must not turn the first
        # columns into an index (which shifts every value into the wrong column); such rows
        # are reported below, so pandas' warning about them is not needed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8",
                index_col=False,
            )  # fmt: skip
    except pd.errors.EmptyDataError as exc:
        raise InvalidTableError(
            path, [{"message": "table is empty (no header)", "column": None}]
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidTableError(
            path, [{"message": f"not UTF-8 text ({exc}); save the table as UTF-8", "column": None}]
        ) from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise InvalidTableError(
            path, [{"message": f"cannot parse table ({exc})", "column": None}]
        ) from exc
    header, ragged = _header_and_ragged_rows(path, sep)
    if ragged:
        raise InvalidTableError(
            path,
            [
                {"column": None, "row": i, "message": f"{n} cells but the header has {len(header)}"}
                for i, n in ragged
            ],
        )
    # pandas renames a repeated column ("age", "age.1"); keep the names as written so that
    # validate_frame reports the repetition
    if len(header) == len(frame.columns):
        frame.columns = header
    frame.columns = [str(c).strip() for c in frame.columns]
    return validate_frame(frame, schema, path)


def _header_and_ragged_rows(path: Path, sep: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The header cells as written, and (1-based data row, cells) of rows longer than it."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh, delimiter=sep)
        header = next(rows, [])
        ragged = [(i, len(r)) for i, r in enumerate(rows, start=1) if len(r) > len(header)]
    return header, ragged
