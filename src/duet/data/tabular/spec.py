"""The tabular preprocessing spec: fitted on the training rows only, applied everywhere.

One spec, two producers. ``fit_spec`` (pure numpy, the default) and
``duet.data.tabular.tf_spec.fit_spec_keras`` (Keras ``Normalization`` and
``StringLookup`` adapted on the same rows, ``--data-backend tf``) produce the
same ``TabularSpec``; ``transform`` and ``tf_spec.transform_keras`` turn a table
into the same features. What the spec holds:

- **numeric** column: the training mean and *population* standard deviation
  (``np.std``, ddof=0: what Keras ``Normalization.adapt`` computes) of its
  non-missing values. A zero std (a constant column) is stored as 1.0, so the
  feature is ``x - mean`` instead of a division by zero (Keras would divide by
  its epsilon, 1e-7, and blow serve-time values up). A column with no value at
  all in training gets mean 0, std 1.
- **boolean** column: left as 0/1 (stored as mean 0, std 1, so one formula
  serves both kinds).
- every numeric/boolean column records whether it had missing values in
  training; only those get a 0/1 missing-indicator feature.
- **categorical** column: a vocabulary of the training values, ordered by
  count descending, ties by value *descending* (code point order, the same as
  UTF-8 byte order): exactly Keras ``StringLookup.adapt``'s order
  (``np.lexsort((tokens, counts))[::-1]`` in keras/src/layers/preprocessing/
  index_lookup.py). ``min_count`` drops rarer values, ``max_tokens`` keeps the
  most frequent ones.

``transform`` gives two arrays:

- ``numeric`` float32 ``[N, K + M]``: the K numeric/boolean columns in schema
  order, ``(x - mean) / std`` computed in float64 then rounded to float32,
  missing -> 0; then the M missing indicators (1.0 where the value is missing)
  of the columns that had missing values in training, in the same order. A
  column that had no missing value in training but has one at serve time gets
  0 (the mean) and no indicator: the model never saw that case, and the
  feature layout cannot change after training (drift monitoring reports the
  missing rate).
- ``categorical`` int64 ``[N, C]``: per categorical column, ``OOV_ID`` (0) for
  a value not in the vocabulary, ``MISSING_ID`` (1) for a missing value
  (``None``; an empty string counts as missing too, the contract never holds
  "" as a value), and ``FIRST_TOKEN_ID + i`` (2 + i) for the vocabulary's i-th
  token. This is a string -> int64 map with a default, which ONNX-ML
  ``LabelEncoder`` reproduces (keys ``["", *tokens]``, values ``[1, 2, ...]``,
  default 0) and which Keras ``StringLookup(vocabulary=["", *tokens],
  num_oov_indices=1, mask_token=None)`` gives as is.

The spec is plain data with a JSON round-trip (``to_dict``/``from_dict``) for
run.json and model.json.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from duet.data.tabular.schema import ColumnSchema, num_rows
from duet.errors import ConfigError, DataError

OOV_ID = 0
MISSING_ID = 1
FIRST_TOKEN_ID = 2
MISSING_SUFFIX = "__missing"
SPEC_VERSION = 1


@dataclass(frozen=True)
class NumericFeature:
    """A numeric or boolean column: ``(x - mean) / std``, missing -> 0 (+ indicator if ``has_missing``)."""

    name: str
    kind: Literal["numeric", "boolean"]
    mean: float
    std: float
    has_missing: bool


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical column: its vocabulary, token i -> id ``FIRST_TOKEN_ID + i``."""

    name: str
    tokens: tuple[str, ...]

    @property
    def cardinality(self) -> int:
        """How many ids the column can take (OOV, missing and the tokens): an embedding's size."""
        return FIRST_TOKEN_ID + len(self.tokens)


@dataclass(frozen=True)
class TabularSpec:
    """Everything ``transform`` needs, fitted on the training rows (``fitted_rows`` of them)."""

    numeric: tuple[NumericFeature, ...]
    categorical: tuple[CategoricalFeature, ...]
    fitted_rows: int
    min_count: int = 1
    max_tokens: int | None = None
    backend: str = "numpy"  # who fitted it: "numpy" or "keras" (the same numbers either way)

    def numeric_names(self) -> list[str]:
        """The names of the numeric array's columns: the values, then ``<name>__missing`` indicators."""
        return [f.name for f in self.numeric] + [f.name + MISSING_SUFFIX for f in self.numeric if f.has_missing]

    def categorical_names(self) -> list[str]:
        return [f.name for f in self.categorical]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = SPEC_VERSION
        d["categorical"] = [{"name": f.name, "tokens": list(f.tokens)} for f in self.categorical]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TabularSpec:
        if d.get("version") != SPEC_VERSION:
            raise DataError(f"tabular spec version {d.get('version')!r} is not {SPEC_VERSION}: refit the spec")
        return cls(
            numeric=tuple(
                NumericFeature(str(f["name"]), f["kind"], float(f["mean"]), float(f["std"]), bool(f["has_missing"]))
                for f in d["numeric"]
            ),
            categorical=tuple(
                CategoricalFeature(str(f["name"]), tuple(map(str, f["tokens"]))) for f in d["categorical"]
            ),
            fitted_rows=int(d["fitted_rows"]),
            min_count=int(d.get("min_count", 1)),
            max_tokens=None if d.get("max_tokens") is None else int(d["max_tokens"]),
            backend=str(d.get("backend", "numpy")),
        )


def fit_spec(
    train: Mapping[str, np.ndarray], schema: ColumnSchema, *, min_count: int = 1, max_tokens: int | None = None
) -> TabularSpec:
    """Fit the spec on ``train``, the training rows only (never validation or test rows).

    Args:
        train: the training table (``duet.data.tabular.schema``'s layout).
        schema: which columns are features and of what kind; the target and
            non-feature columns are ignored.
        min_count: a categorical value seen fewer times than this in training
            is left out of the vocabulary (it becomes out-of-vocabulary).
        max_tokens: at most this many values per vocabulary (the most frequent).

    Raises:
        ConfigError: ``min_count`` < 1 or ``max_tokens`` < 1.
        DataError: no training rows, or a feature column absent from ``train``.
    """
    rows = check_fit_args(train, schema, min_count, max_tokens)
    numeric: list[NumericFeature] = []
    categorical: list[CategoricalFeature] = []
    for col in schema.features():
        if col.kind == "categorical":
            values = present_strings(train[col.name])
            categorical.append(CategoricalFeature(col.name, vocabulary(values, min_count, max_tokens)))
        else:
            x = as_float(train[col.name], col.name)
            present = x[~np.isnan(x)]
            mean, var = (float(np.mean(present)), float(np.var(present))) if present.size else (0.0, 1.0)
            numeric.append(numeric_feature(col.name, col.kind, mean, var, has_missing=present.size < x.size))
    return TabularSpec(tuple(numeric), tuple(categorical), rows, min_count, max_tokens, "numpy")


def check_fit_args(
    train: Mapping[str, np.ndarray], schema: ColumnSchema, min_count: int, max_tokens: int | None
) -> int:
    """The training row count, after checking the arguments both backends take."""
    if min_count < 1:
        raise ConfigError(f"min_count must be at least 1. Received: min_count={min_count}")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens must be at least 1 or unset. Received: max_tokens={max_tokens}")
    require_columns(train, [c.name for c in schema.features()])
    rows = num_rows(train)
    if rows == 0:
        raise DataError("cannot fit the preprocessing spec on 0 training rows")
    return rows


def numeric_feature(name: str, kind: str, mean: float, var: float, *, has_missing: bool) -> NumericFeature:
    """The feature for a column's training mean and population variance (booleans stay 0/1; std 0 -> 1)."""
    if kind == "boolean":
        return NumericFeature(name, "boolean", 0.0, 1.0, has_missing)
    std = math.sqrt(var)
    return NumericFeature(name, "numeric", mean, std if std > 0 else 1.0, has_missing)


def vocabulary(values: Sequence[str], min_count: int = 1, max_tokens: int | None = None) -> tuple[str, ...]:
    """The values seen at least ``min_count`` times, by count then value, both descending (Keras' order)."""
    counts = Counter(values)
    ranked = sorted(((n, v) for v, n in counts.items() if n >= min_count), reverse=True)
    return tuple(v for _, v in ranked[:max_tokens])


def present_strings(column: np.ndarray) -> list[str]:
    """A categorical column's non-missing values (``None`` and "" are missing)."""
    return [str(v) for v in column if v is not None and v != ""]


def as_float(column: np.ndarray, name: str) -> np.ndarray:
    """A numeric/boolean column as float64 (nan = missing); a column that is not numbers is a DataError."""
    try:
        return np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"column {name!r} should hold numbers (float64 with nan for missing), it holds {column.dtype}"
        ) from None


def require_columns(table: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"the table has no column {missing[0]!r} (the spec needs {', '.join(map(repr, missing))})")


def checked_rows(spec: TabularSpec, table: Mapping[str, np.ndarray]) -> int:
    """The row count of the columns ``spec`` needs, after checking they are all there and of one length."""
    names = [f.name for f in spec.numeric] + spec.categorical_names()
    require_columns(table, names)
    try:
        return num_rows({name: table[name] for name in names})
    except ValueError as e:
        raise DataError(f"the table's feature {e}") from None


def transform(spec: TabularSpec, table: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The table's features: ``(numeric float32 [N, K+M], categorical int64 [N, C])`` (module docstring).

    Raises:
        DataError: a column the spec needs is absent or of another length, or a numeric one is not numbers.
    """
    n = checked_rows(spec, table)
    values, indicators = [], []
    for f in spec.numeric:
        x = as_float(table[f.name], f.name)
        missing = np.isnan(x)
        values.append(np.where(missing, 0.0, (x - f.mean) / f.std))
        if f.has_missing:
            indicators.append(missing.astype(np.float64))
    numeric = np.stack(values + indicators, axis=1).astype(np.float32) if spec.numeric else np.zeros((n, 0), np.float32)
    ids = [lookup(f.tokens, table[f.name]) for f in spec.categorical]
    categorical = np.stack(ids, axis=1) if ids else np.zeros((n, 0), np.int64)
    return numeric, categorical


def lookup(tokens: Sequence[str], column: np.ndarray) -> np.ndarray:
    """Vocabulary ids for one categorical column: OOV_ID, MISSING_ID, or FIRST_TOKEN_ID + index."""
    table = {"": MISSING_ID} | {t: FIRST_TOKEN_ID + i for i, t in enumerate(tokens)}
    return np.fromiter(
        (MISSING_ID if v is None else table.get(str(v), OOV_ID) for v in column), dtype=np.int64, count=len(column)
    )
