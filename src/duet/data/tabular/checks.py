"""The checks of a read table: the tabular counterparts of the image scan's report.

``table_report(data)`` is what ``duet scan data.csv`` prints (JSON-able): per
column its kind, missing rate, cardinality and what will be done with it; the
warnings; the skipped rows, duplicates and conflicting labels; and ``errors``,
the reasons the table cannot be trained on. ``require_trainable_table`` raises
the first of those, after the report is shown (as ``duet scan`` does for images).

Rows are compared on what a model sees: the **feature columns** (columns left out
— ID, constant, text — do not count, so an ID column does not hide a repeated
row). A *duplicate* repeats an earlier row's features and target; a *conflict*
is a group of rows with the same features and different targets.

**Leakage** (a column that predicts the target perfectly), among a feature
column's filled rows, when they are at least ``LEAK_MIN_ROWS`` and at least
``LEAK_MIN_COVERAGE`` of all rows, and hold two or more classes:

- *value map*: every value of the column goes with a single class, and values
  repeat (distinct values <= half the filled rows), so the map is witnessed, not
  an accident of unique values; or
- *threshold* (numeric columns): sorted by the column, each class occupies one
  contiguous range with no value shared across a boundary, so cut-points on this
  one column alone classify every row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from duet.data.tabular.read import TableData, read_table
from duet.data.tabular.schema import Column
from duet.errors import DataError

LEAK_MIN_ROWS = 20
LEAK_MIN_COVERAGE = 0.9
SHOWN = 20  # duplicates / conflicts listed in the report (the counts are always whole)


def table_report(data: TableData) -> dict[str, Any]:
    """Everything ``duet scan`` says about a table (see the module docstring)."""
    schema, table = data.schema, data.table
    target = table[schema.target]
    n = len(target)
    counts = Counter(str(v) for v in target)
    features = schema.features()
    duplicates, conflicts = _repeats(data, features)
    columns = [_column_entry(c, table[c.name], schema.target) for c in schema.columns]
    warnings = _column_warnings(schema.columns, schema.target)
    warnings += _leakage_warnings(data, features)
    if data.skipped:
        warnings.append(_warning("skipped", f"{counted(len(data.skipped), data.unit)} skipped (listed below)"))
    if duplicates["count"]:
        warnings.append(
            _warning(
                "duplicates", f"{counted(duplicates['count'], 'row')} repeating an earlier row (features and target)"
            )
        )
    if conflicts["count"]:
        warnings.append(
            _warning(
                "conflicts",
                f"{counted(conflicts['count'], 'group')} of rows with the same features but different targets",
            )
        )
    return {
        "source": str(data.source),
        "target": schema.target,
        "labels": list(schema.labels),
        "num_records": data.num_records,
        "num_rows": n,
        "num_features": len(features),
        "unit": data.unit,
        "class_counts": dict(sorted(counts.items())),
        "imbalance_ratio": max(counts.values()) / min(counts.values()) if counts else None,
        "columns": columns,
        "warnings": warnings,
        "skipped": [{"line": s.line, "reason": s.reason} for s in data.skipped],
        "duplicates": duplicates,
        "conflicts": conflicts,
        "errors": _errors(data, len(features)),
        "schema": schema.to_dict(),
    }


def require_trainable_table(data: TableData) -> None:
    """Raise :class:`DataError` with the first reason the table cannot be trained on."""
    errors = _errors(data, len(data.schema.features()))
    if errors:
        raise DataError(errors[0])


def _errors(data: TableData, num_features: int) -> list[str]:
    schema, errors = data.schema, []
    if len(schema.labels) < 2:
        errors.append(
            f"the target '{schema.target}' of {data.source} has only 1 class ('{schema.labels[0]}') in its "
            f"{len(data.lines)} usable rows; classification needs at least two classes"
        )
    if num_features == 0:
        errors.append(
            f"{data.source} has no feature column (every column but the target is left out: ID, constant or "
            f"text); a model needs at least one numeric, boolean or categorical column"
        )
    return errors


def counted(n: int, noun: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _warning(check: str, message: str, column: str | None = None) -> dict[str, Any]:
    return {"check": check, "column": column, "message": message}


# ---------------------------------------------------------------- per column


def _present(values: np.ndarray) -> np.ndarray:
    """Mask of filled cells (``nan`` or ``None`` is missing, per schema.py)."""
    if values.dtype == object:
        return np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    return ~np.isnan(values)


def _column_entry(column: Column, values: np.ndarray, target: str) -> dict[str, Any]:
    present = _present(values)
    missing = int(len(values) - present.sum())
    distinct = len(set(values[present].tolist()))
    return {
        "name": column.name,
        "kind": column.kind,
        "note": column.note,
        "missing": missing,
        "missing_rate": missing / len(values) if len(values) else 0.0,
        "distinct": distinct,
        "action": _action(column, distinct, missing, target),
    }


def _action(column: Column, distinct: int, missing: int, target: str) -> str:
    if column.name == target:
        return f"the target: {distinct} classes"
    indicator = " + a missing-value indicator" if missing else ""
    if column.kind == "numeric":
        return "normalised (training-split mean/std)" + indicator
    if column.kind == "boolean":
        return "used as 0/1" + indicator
    if column.kind == "categorical":
        return f"vocabulary of {distinct} values + an out-of-vocabulary bucket" + (
            ", missing as its own id" if missing else ""
        )
    return "left out"


def _column_warnings(columns: tuple[Column, ...], target: str) -> list[dict[str, Any]]:
    return [
        _warning(c.kind, f"column '{c.name}' ({c.kind}): {c.note}", c.name)
        for c in columns
        if c.kind in ("id", "constant", "text") and c.name != target
    ]


# ---------------------------------------------------------------- leakage


def _leakage_warnings(data: TableData, features: list[Column]) -> list[dict[str, Any]]:
    _, classes = np.unique(data.table[data.schema.target].astype(str), return_inverse=True)
    found = []
    for column in features:
        why = leak_reason(data.table[column.name], classes)
        if why:
            found.append(
                _warning(
                    "leakage", f"column '{column.name}' predicts the target perfectly ({why}): leakage?", column.name
                )
            )
    return found


def leak_reason(values: np.ndarray, classes: np.ndarray) -> str | None:
    """Why ``values`` predict ``classes`` (int codes) perfectly, or ``None`` (rules in the module docstring)."""
    present = _present(values)
    filled = int(present.sum())
    if filled < LEAK_MIN_ROWS or filled < LEAK_MIN_COVERAGE * len(values):
        return None
    x, y = values[present], classes[present]
    if len(np.unique(y)) < 2:
        return None
    _, codes = np.unique(x.astype(str) if x.dtype == object else x, return_inverse=True)
    num_values = int(codes.max()) + 1
    pairs = len(np.unique(codes.astype(np.int64) * (int(y.max()) + 1) + y))
    if pairs == num_values and num_values <= filled / 2:
        return f"each of its {num_values} values goes with one class"
    if x.dtype != object:
        order = np.argsort(x, kind="stable")
        xs, ys = x[order], y[order]
        change = ys[1:] != ys[:-1]
        if int(change.sum()) + 1 == len(np.unique(y)) and not np.any(xs[1:][change] == xs[:-1][change]):
            return "sorted by it, each class is one range of values"
    return None


# ---------------------------------------------------------------- duplicates and conflicts


def _repeats(data: TableData, features: list[Column]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rows repeating an earlier row (features and target), and groups with one set of features but two targets."""
    empty: dict[str, Any] = {"count": 0, "shown": []}
    if not features:
        return empty, dict(empty)
    keys = list(zip(*(_hashable(data.table[c.name]) for c in features)))
    target = data.table[data.schema.target].tolist()
    lines = data.lines.tolist()
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    duplicates, conflicts = [], []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        first_of: dict[str, int] = {}
        for i in rows:
            if target[i] in first_of:
                duplicates.append({"line": lines[i], "same_as": lines[first_of[target[i]]]})
            else:
                first_of[target[i]] = i
        if len(first_of) > 1:
            conflicts.append({"lines": [lines[i] for i in rows], "labels": sorted(first_of)})
    duplicates.sort(key=lambda d: d["line"])
    return (
        {"count": len(duplicates), "shown": duplicates[:SHOWN]},
        {"count": len(conflicts), "shown": conflicts[:SHOWN]},
    )


def _hashable(values: np.ndarray) -> list[Any]:
    """The column as a list where missing is always ``None`` (``nan`` never equals itself)."""
    if values.dtype == object:
        return values.tolist()
    return [None if x != x else x for x in values.tolist()]


SHOWN_SKIPS = 3  # skipped rows named in the log line (all of them: the table report, `duet scan`)


def read_trainable_table(
    path: str | Path, target: str, kinds: Mapping[str, str] | None, log: Callable[[str], None]
) -> TableData:
    """``read_table`` + ``require_trainable_table``, logging the skipped rows in one line.

    Imports no torch: `duet train` calls it first, so a bad table's one-line
    error comes before the trainer's imports."""
    data = read_table(path, target, kinds)
    if data.skipped:
        shown = "; ".join(f"{data.unit} {s.line}: {s.reason}" for s in data.skipped[:SHOWN_SKIPS])
        more = f"; +{len(data.skipped) - SHOWN_SKIPS} more" if len(data.skipped) > SHOWN_SKIPS else ""
        log(f"{counted(len(data.skipped), data.unit)} of {data.source} skipped ({shown}{more}; all: duet scan)")
    require_trainable_table(data)
    return data
