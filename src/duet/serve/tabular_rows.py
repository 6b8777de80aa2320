"""JSON rows of a tabular request -> the table model.json's inputs describe, or one 400 line.

An exported tabular model (model.json ``"modality": "tabular"``) lists one input
per feature column: ``{"name", "column", "kind", "datatype", "shape"}``. Clients
send values keyed by column name (the input's ``name`` is accepted as well), as
rows (``{"col": value, ...}``) or as columns (``{"col": [values]}``). Each value
is read the way ``duet.data.tabular.read`` reads a cell of the training file, so
a row of the CSV sent as JSON gets the prediction its row gets offline:

- **numeric**: a JSON number, or a string holding one (surrounding spaces
  ignored); ``null`` or a missing marker (``""``, ``"NA"``, ``"nan"``, ...,
  ``duet.data.tabular.read.MISSING_MARKERS``) is missing (NaN).
- **boolean**: ``true``/``false``, the numbers 0 and 1, or one of
  ``duet.data.tabular.infer.BOOLEAN_TOKENS`` (yes/no, t/f, ..., any case);
  ``null`` or a missing marker is missing.
- **categorical**: a string (stripped; a missing marker is missing), or a JSON
  number, taken as its decimal text (``3`` -> ``"3"``, ``2.5`` -> ``"2.5"``);
  ``null`` is missing. A value not seen in training is out-of-vocabulary,
  which the model handles (not an error).

Refused (400, naming the row and the column): a row that is not an object, a
row without some feature column, a key that is no column of the model, a
value of the wrong type (``"abc"`` in a numeric column, ``true`` in a
categorical one, any object or list), a non-finite number (JSON ``NaN`` /
``Infinity`` literals, or numbers too large for float64). Columns the model
knows but does not read (the target, ID-like, constant and text columns) are
ignored, so a whole row of the training file can be sent as it is.

The table follows ``duet.data.tabular.schema``: numeric and boolean columns
float64 with NaN for missing, categorical ones object arrays of str with None
for missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from duet.data.tabular.infer import BOOLEAN_TOKENS, as_number
from duet.data.tabular.read import MISSING_MARKERS
from duet.data.tabular.schema import FEATURE_KINDS, ColumnSchema, Table
from duet.serve.errors import ApiError

DATATYPES = {"numeric": "FP64", "boolean": "FP64", "categorical": "BYTES"}


class BadValue(ValueError):
    """A value its column cannot hold; the message says why (the caller adds row and column)."""


def bad_request(message: str, code: str = "bad_row") -> ApiError:
    return ApiError(400, message, code)


@dataclass(frozen=True)
class FeatureInput:
    """One input of the graph: the feature column it carries and how."""

    name: str  # the ONNX input name
    column: str  # the column name in the training file
    kind: str  # numeric | boolean | categorical
    datatype: str  # FP64 | BYTES


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_missing_text(text: str) -> bool:
    return text.lower() in MISSING_MARKERS


def numeric_value(value: Any) -> float:
    """A numeric cell as float64 (NaN = missing)."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise BadValue(f"{_short(value)} is not a number (this column is numeric)")
    if isinstance(value, (int, float)):
        return _finite(value)
    if isinstance(value, str):
        text = value.strip()
        if _is_missing_text(text):
            return math.nan
        number = as_number(text)
        if number is None:
            raise BadValue(f"{_short(value)} is not a number (this column is numeric)")
        return number
    raise BadValue(f"a {_json_type(value)} is not a number (this column is numeric)")


def boolean_value(value: Any) -> float:
    """A boolean cell as 0.0 / 1.0 (NaN = missing)."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        if value in (0, 1):
            return float(value)
        raise BadValue(f"{_short(value)} is not a boolean (send true/false, 0/1 or yes/no)")
    if isinstance(value, str):
        text = value.strip().lower()
        if _is_missing_text(text):
            return math.nan
        token = BOOLEAN_TOKENS.get(text)
        if token is None:
            raise BadValue(f"{_short(value)} is not a boolean (send true/false, 0/1 or yes/no)")
        return token
    raise BadValue(f"a {_json_type(value)} is not a boolean (send true/false, 0/1 or yes/no)")


def categorical_value(value: Any) -> str | None:
    """A categorical cell as its text (None = missing)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        return None if _is_missing_text(text) else text
    if isinstance(value, bool):
        raise BadValue(f'{_short(value)} is not a category; send the category as a string, e.g. "true"')
    if isinstance(value, (int, float)):
        _finite(value)
        return str(value)
    raise BadValue(f"a {_json_type(value)} is not a category (send a string, a number or null)")


def _finite(value: int | float) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise BadValue(f"{_short(value)} is too large for a float64") from None
    if not math.isfinite(number):
        raise BadValue(f"{value!r} is not a finite number (send null for a missing value)")
    return number


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "JSON object"
    if isinstance(value, (list, tuple)):
        return "JSON list"
    return type(value).__name__


PARSERS = {"numeric": numeric_value, "boolean": boolean_value, "categorical": categorical_value}


@dataclass(frozen=True)
class TableLayout:
    """The feature inputs of a tabular model and the columns it ignores."""

    inputs: tuple[FeatureInput, ...]
    ignored: frozenset[str]  # known columns that are not features (target, id, text, constant)
    target: str

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TableLayout:
        """From model.json (``inputs`` and ``columns``); a malformed one is a ValueError."""
        schema = ColumnSchema.from_dict(manifest["columns"])
        inputs = []
        for entry in manifest["inputs"]:
            kind = str(entry["kind"])
            if kind not in FEATURE_KINDS:
                raise ValueError(f"input {entry.get('name')!r} has kind {kind!r}, not one of {FEATURE_KINDS}")
            inputs.append(FeatureInput(str(entry["name"]), str(entry["column"]), kind, DATATYPES[kind]))
        features = {i.column for i in inputs}
        ignored = frozenset(c.name for c in schema.columns if c.name not in features)
        return cls(tuple(inputs), ignored, schema.target)

    @property
    def columns(self) -> list[str]:
        return [i.column for i in self.inputs]

    def lookup(self) -> dict[str, FeatureInput]:
        """Every accepted key -> its input: the column names, then the input names."""
        keys = {i.name: i for i in self.inputs}
        keys.update({i.column: i for i in self.inputs})
        return keys

    def resolve(self, key: str, keys: Mapping[str, FeatureInput], where: str) -> FeatureInput | None:
        """The input ``key`` names; None for a column the model ignores; 400 for an unknown one."""
        found = keys.get(key)
        if found is not None:
            return found
        if key in self.ignored:
            return None
        shown = ", ".join(repr(c) for c in self.columns[:10]) + (", ..." if len(self.inputs) > 10 else "")
        raise bad_request(f"{where}: unknown column {_short(key)}; this model reads {shown}", "unknown_column")

    def empty(self, n: int) -> Table:
        return {
            i.column: np.full(n, np.nan) if i.kind != "categorical" else np.full(n, None, dtype=object)
            for i in self.inputs
        }

    def rows_to_table(self, rows: Sequence[Any]) -> Table:
        """A list of row objects -> the table (400 naming the row and column of the first bad value)."""
        table = self.empty(len(rows))
        keys = self.lookup()
        for r, row in enumerate(rows):
            if not isinstance(row, dict):
                raise bad_request(f"row {r}: expected an object of column -> value, got a {_json_type(row)}")
            seen: set[str] = set()
            for key, value in row.items():
                feature = self.resolve(key, keys, f"row {r}")
                if feature is None:
                    continue
                if feature.column in seen:
                    raise bad_request(f"row {r}, column {feature.column!r}: given twice (by column and input name)")
                seen.add(feature.column)
                table[feature.column][r] = self.parse(feature, value, f"row {r}")
            absent = [c for c in self.columns if c not in seen]
            if absent:
                raise bad_request(
                    f"row {r}, column {absent[0]!r}: missing (every feature column must be given; "
                    "send null for a missing value)",
                    "missing_column",
                )
        return table

    def columns_to_table(self, columns: Mapping[str, Any], n: int | None = None) -> Table:
        """``{column: [values]}`` -> the table; every feature column, all of one length."""
        keys = self.lookup()
        given: dict[str, tuple[FeatureInput, list[Any]]] = {}
        for key, values in columns.items():
            feature = self.resolve(key, keys, "inputs")
            if feature is None:
                continue
            if feature.column in given:
                raise bad_request(f"column {feature.column!r}: given twice (by column and input name)")
            if not isinstance(values, list):
                raise bad_request(f"column {feature.column!r}: expected a list of values, got a {_json_type(values)}")
            given[feature.column] = (feature, values)
        absent = [c for c in self.columns if c not in given]
        if absent:
            raise bad_request(f"column {absent[0]!r}: missing (every feature column must be given)", "missing_column")
        lengths = {len(v) for _, v in given.values()}
        if n is None:
            n = lengths.pop() if len(lengths) == 1 else -1
        if n < 0 or any(len(v) != n for _, v in given.values()):
            sizes = ", ".join(f"{c!r}: {len(v)}" for c, (_, v) in list(given.items())[:5])
            raise bad_request(f"columns of different lengths ({sizes}); send one value per row in each", "bad_shape")
        table = self.empty(n)
        for column, (feature, values) in given.items():
            target = table[column]
            for r, value in enumerate(values):
                target[r] = self.parse(feature, value, f"row {r}")
        return table

    @staticmethod
    def parse(feature: FeatureInput, value: Any, where: str) -> Any:
        try:
            return PARSERS[feature.kind](value)
        except BadValue as e:
            raise bad_request(f"{where}, column {feature.column!r}: {e}", "bad_value") from None


def table_rows(table: Table) -> int:
    return len(next(iter(table.values()))) if table else 0
