"""The tabular contract: column kinds, how a table holds values, the column schema.

A **table** is ``dict[str, np.ndarray]``: one 1-D array per column, all of one
length (the rows, in file order). How a column holds its values follows its kind:

- ``numeric``: ``float64``; a missing or empty cell is ``nan``.
- ``boolean``: ``float64`` 0.0 / 1.0; missing is ``nan`` (read from true/false,
  yes/no, 1/0, t/f, y/n, any case).
- ``categorical``, ``text``, and the target: ``object`` arrays of ``str``;
  missing is ``None`` (never the string "nan" or "").

Kinds that are not features (``text`` is left out with a note, ``id`` for a
column whose every value is distinct, ``constant`` for one value) are kept in
the schema so reports and model.json can say why a column was dropped.

Pure data: no pandas, no torch, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

ColumnKind = Literal["numeric", "boolean", "categorical", "text", "id", "constant"]
KINDS: tuple[str, ...] = ("numeric", "boolean", "categorical", "text", "id", "constant")
FEATURE_KINDS: tuple[str, ...] = ("numeric", "boolean", "categorical")

Table = dict[str, np.ndarray]


@dataclass(frozen=True)
class Column:
    """One column: its name, its kind, and why it has that kind (shown by ``duet scan``)."""

    name: str
    kind: ColumnKind
    note: str = ""

    @property
    def is_feature(self) -> bool:
        return self.kind in FEATURE_KINDS


@dataclass(frozen=True)
class ColumnSchema:
    """The columns of a table in file order, and which one is the target."""

    columns: tuple[Column, ...]
    target: str
    labels: tuple[str, ...] = field(default=())  # the target's classes, sorted

    def features(self) -> list[Column]:
        """The columns a model sees, in file order (the target never is one)."""
        return [c for c in self.columns if c.is_feature and c.name != self.target]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "labels": list(self.labels), "columns": [asdict(c) for c in self.columns]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnSchema:
        return cls(
            columns=tuple(Column(str(c["name"]), c["kind"], str(c.get("note", ""))) for c in d["columns"]),
            target=str(d["target"]),
            labels=tuple(str(x) for x in d.get("labels", ())),
        )


def num_rows(table: Mapping[str, np.ndarray]) -> int:
    """The table's row count (0 for no columns); raises ValueError if columns differ in length."""
    lengths = {len(v) for v in table.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def take(table: Mapping[str, np.ndarray], rows: Sequence[int] | np.ndarray) -> Table:
    """The same columns restricted to ``rows`` (in that order)."""
    index = np.asarray(rows, dtype=np.int64)
    return {name: values[index] for name, values in table.items()}
