"""Column kinds from a column's cells, each with the note ``duet scan`` shows (why that kind).

The rules, in order, for a column that is not the target (``None`` = missing cell):

1. ``constant``: every cell missing, or one distinct value.
2. ``boolean``: every value is one of ``BOOLEAN_TOKENS`` (true/false, yes/no, 1/0,
   t/f, y/n, any case).
3. ``numeric``: at least ``NUMERIC_SHARE`` of the values are finite numbers (the
   others' rows are skipped when the table is read, each with its reason) — unless
   they are ID-like integers: all distinct, at least ``ID_MIN_ROWS`` of them, and
   either strictly increasing in file order or a range with no gap (1..n).
4. ``text``: free text (values with ``TEXT_MIN_WORDS`` or more words on average and
   more than half of them distinct); left out, as no model here reads text yet.
5. ``id``: all distinct strings (at least ``ID_MIN_ROWS``), e.g. names, UUIDs.
6. ``categorical``: anything else.

The target is ``categorical`` (it holds class names). ``kinds={"col": "categorical"}``
overrides any column but the target; the note says the kind was set, not inferred.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from duet.data.tabular.schema import KINDS, Column, ColumnKind, ColumnSchema
from duet.errors import ConfigError

NUMERIC_SHARE = 0.9
ID_MIN_ROWS = 20
TEXT_MIN_WORDS = 4.0
BOOLEAN_TOKENS: dict[str, float] = {
    **dict.fromkeys(("true", "yes", "1", "t", "y", "1.0"), 1.0),
    **dict.fromkeys(("false", "no", "0", "f", "n", "0.0"), 0.0),
}


def as_number(text: str) -> float | None:
    """``text`` as a finite float, or ``None`` (``1_000``, ``inf`` and ``nan`` are not numbers here)."""
    if "_" in text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_numbers(values: Sequence[str | None]) -> tuple[np.ndarray, list[int]]:
    """The cells as float64 (missing -> ``nan``), and the positions of filled cells that are not
    finite numbers (``nan`` there too). A column is parsed in one pass when it can be."""
    texts = ["nan" if v is None else v for v in values]
    try:
        array = np.fromiter(map(float, texts), dtype=np.float64, count=len(texts))
        if not np.isinf(array).any() and "_" not in "".join(texts):
            return array, []
    except ValueError:
        pass  # some cell is not a number: find which, one by one
    array = np.full(len(values), np.nan)
    bad = []
    for i, v in enumerate(values):
        if v is not None:
            x = as_number(v)
            if x is None:
                bad.append(i)
            else:
                array[i] = x
    return array, bad


def infer_schema(
    cells: Mapping[str, Sequence[str | None]], target: str, kinds: Mapping[str, str] | None = None
) -> ColumnSchema:
    """The schema of a table given as ``{column: cells}`` (file order); labels are filled in by the reader."""
    overrides = _check_overrides(kinds or {}, cells, target)
    columns = []
    for name, values in cells.items():
        if name == target:
            columns.append(Column(name, "categorical", "the target"))
        elif name in overrides:
            columns.append(Column(name, overrides[name], f"{overrides[name]}: set by you, not inferred"))
        else:
            kind, note = infer_kind(values)
            columns.append(Column(name, kind, note))
    return ColumnSchema(columns=tuple(columns), target=target)


def _check_overrides(kinds: Mapping[str, str], cells: Mapping[str, object], target: str) -> dict[str, ColumnKind]:
    checked: dict[str, ColumnKind] = {}
    for name, kind in kinds.items():
        if name not in cells:
            raise ConfigError(f"column kind given for '{name}', which is not a column of the table")
        if name == target:
            raise ConfigError(f"'{name}' is the target; its kind cannot be set (it holds the classes)")
        if kind not in KINDS:
            raise ConfigError(f"kind of column '{name}' must be one of {', '.join(KINDS)}; received {kind!r}")
        checked[name] = kind  # type: ignore[assignment]  # checked against KINDS just above
    return checked


def infer_kind(values: Sequence[str | None]) -> tuple[ColumnKind, str]:
    """One column's kind and the note saying why (see the module docstring for the rules)."""
    present = [v for v in values if v is not None]
    distinct = set(present)
    if len(distinct) <= 1:
        if not present:
            return "constant", "every value is missing: left out"
        return "constant", f"one value ('{_short(present[0])}') in every filled row: left out"
    if all(v.lower() in BOOLEAN_TOKENS for v in distinct):
        return "boolean", f"true/false values ({', '.join(sorted(distinct)[:4])}): used as 0/1"
    array, bad = parse_numbers(values)
    if len(present) - len(bad) >= NUMERIC_SHARE * len(present):
        return _numeric_kind(array[~np.isnan(array)], len(present))
    all_distinct = len(distinct) == len(present)
    words = sum(len(v.split()) for v in present) / len(present)
    if words >= TEXT_MIN_WORDS and len(distinct) > len(present) / 2:
        return "text", f"free text ({words:.1f} words per value on average): left out, no model reads text yet"
    if all_distinct and len(present) >= ID_MIN_ROWS:
        return "id", f"all {len(present)} values distinct, like an ID: left out"
    return "categorical", f"{len(distinct)} distinct values"


def _numeric_kind(numbers: np.ndarray, present: int) -> tuple[ColumnKind, str]:
    bad = present - len(numbers)
    if bad == 0 and _id_like_integers(numbers):
        return "id", f"all {present} values distinct integers in sequence, like an ID: left out"
    if bad:
        return "numeric", (
            f"{bad} of {present} values are not numbers: their rows are skipped "
            f"(set the kind to categorical to keep them)"
        )
    return "numeric", "numbers"


def _id_like_integers(numbers: np.ndarray) -> bool:
    if len(numbers) < ID_MIN_ROWS or not np.all(numbers == np.round(numbers)):
        return False
    if len(np.unique(numbers)) != len(numbers):
        return False
    increasing = bool(np.all(np.diff(numbers) > 0))
    return increasing or float(numbers.max() - numbers.min()) + 1 == len(numbers)


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
