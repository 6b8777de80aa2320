"""duet serve for a tabular model: JSON rows -> the table model.json describes, and the three protocols.

Fast tests check the row reader against a model.json written to the contract
(docs/tabular.md); the e2e tests train a run on a small CSV with the CLI, export
it, serve it, and check that every validation row gets from each protocol the
probabilities the run gives offline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from duet.serve.errors import ApiError
from duet.serve.tabular_rows import TableLayout

COLUMNS = {
    "target": "y",
    "labels": ["no", "yes"],
    "columns": [
        {"name": "id", "kind": "id", "note": ""},
        {"name": "age", "kind": "numeric", "note": ""},
        {"name": "member", "kind": "boolean", "note": ""},
        {"name": "city", "kind": "categorical", "note": ""},
        {"name": "comment", "kind": "text", "note": ""},
        {"name": "y", "kind": "categorical", "note": ""},
        {"name": "petal width", "kind": "numeric", "note": ""},
    ],
}
MANIFEST = {
    "modality": "tabular",
    "columns": COLUMNS,
    "inputs": [
        {"name": "age", "column": "age", "kind": "numeric", "datatype": "FP64", "shape": [-1, 1]},
        {"name": "member", "column": "member", "kind": "boolean", "datatype": "FP64", "shape": [-1, 1]},
        {"name": "city", "column": "city", "kind": "categorical", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "petal_width", "column": "petal width", "kind": "numeric", "datatype": "FP64", "shape": [-1, 1]},
    ],
}


@pytest.fixture(scope="module")
def layout() -> TableLayout:
    return TableLayout.from_manifest(MANIFEST)


def row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"age": 30, "member": True, "city": "Oslo", "petal width": 1.5}
    base.update(values)
    return base


def refused(call: Any, *needles: str) -> str:
    """The 400 message of ``call()``: one line holding every needle."""
    with pytest.raises(ApiError) as info:
        call()
    err = info.value
    assert err.status == 400, (err.status, err.message)
    assert "\n" not in err.message
    for needle in needles:
        assert needle in err.message, err.message
    return err.message


def test_rows_become_the_schema_table(layout: TableLayout) -> None:
    table = layout.rows_to_table(
        [
            row(),
            row(age="41.5", member="no", city=" Bergen ", **{"petal width": None}),
            row(age=None, member=None, city=None),
            row(age=" NA ", member="Yes", city=7),
            row(age=2, member=0, city=2.5, id="x", y="yes", comment="ignored"),
        ]
    )
    assert set(table) == {"age", "member", "city", "petal width"}
    assert table["age"].dtype == np.float64 and table["city"].dtype == object
    np.testing.assert_array_equal(table["age"], [30.0, 41.5, np.nan, np.nan, 2.0])
    np.testing.assert_array_equal(table["member"], [1.0, 0.0, np.nan, 1.0, 0.0])
    assert table["city"].tolist() == ["Oslo", "Bergen", None, "7", "2.5"]
    np.testing.assert_array_equal(table["petal width"], [1.5, np.nan, 1.5, 1.5, 1.5])


def test_the_input_name_is_accepted_for_its_column(layout: TableLayout) -> None:
    r = row()
    r["petal_width"] = r.pop("petal width")
    assert layout.rows_to_table([r])["petal width"].tolist() == [1.5]
    refused(lambda: layout.rows_to_table([{**r, "petal width": 2}]), "row 0", "'petal width'", "twice")


def test_missing_markers_are_missing_as_in_the_csv_reader(layout: TableLayout) -> None:
    for marker in ("", "NA", "n/a", "nan", "NULL", "None", "?"):
        table = layout.rows_to_table([row(age=marker, member=marker, city=marker)])
        assert math.isnan(table["age"][0]) and math.isnan(table["member"][0]) and table["city"][0] is None


@pytest.mark.parametrize(
    ("values", "column", "needle"),
    [
        ({"age": "abc"}, "'age'", "not a number"),
        ({"age": True}, "'age'", "not a number"),
        ({"age": float("nan")}, "'age'", "finite"),
        ({"age": float("inf")}, "'age'", "finite"),
        ({"age": "inf"}, "'age'", "not a number"),
        ({"age": 10**400}, "'age'", "too large"),
        ({"age": [1]}, "'age'", "JSON list"),
        ({"age": {"v": 1}}, "'age'", "JSON object"),
        ({"member": 2}, "'member'", "not a boolean"),
        ({"member": "maybe"}, "'member'", "not a boolean"),
        ({"member": [True]}, "'member'", "JSON list"),
        ({"city": True}, "'city'", "not a category"),
        ({"city": ["Oslo"]}, "'city'", "JSON list"),
        ({"city": {"name": "Oslo"}}, "'city'", "JSON object"),
        ({"city": float("nan")}, "'city'", "finite"),
    ],
)
def test_a_bad_value_names_its_row_and_column(
    layout: TableLayout, values: dict[str, Any], column: str, needle: str
) -> None:
    rows = [row(), row(), row(**values)]
    refused(lambda: layout.rows_to_table(rows), "row 2", f"column {column}", needle)


def test_a_row_without_a_feature_column_is_refused(layout: TableLayout) -> None:
    r = row()
    del r["city"]
    refused(lambda: layout.rows_to_table([row(), r]), "row 1", "'city'", "missing")


def test_an_unknown_column_is_refused_and_known_non_features_ignored(layout: TableLayout) -> None:
    refused(lambda: layout.rows_to_table([row(colour="red")]), "row 0", "unknown column 'colour'", "'age'")
    table = layout.rows_to_table([row(id=3, y="no", comment="a long remark")])
    assert set(table) == {"age", "member", "city", "petal width"}


def test_a_row_that_is_not_an_object_is_refused(layout: TableLayout) -> None:
    refused(lambda: layout.rows_to_table([row(), [1, 2, 3]]), "row 1", "object")
    refused(lambda: layout.rows_to_table(["age=3"]), "row 0", "object")


def test_columns_become_the_same_table_as_rows(layout: TableLayout) -> None:
    rows = [row(), row(age="7", member="f", city=None)]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    by_columns, by_rows = layout.columns_to_table(columns), layout.rows_to_table(rows)
    for name in by_rows:
        np.testing.assert_array_equal(by_columns[name], by_rows[name])


def test_bad_columns_are_refused(layout: TableLayout) -> None:
    good = {"age": [1, 2], "member": [0, 1], "city": ["a", "b"], "petal width": [1, 2]}
    refused(lambda: layout.columns_to_table({**good, "age": [1]}), "different lengths")
    refused(lambda: layout.columns_to_table({k: v for k, v in good.items() if k != "city"}), "'city'", "missing")
    refused(lambda: layout.columns_to_table({**good, "age": 3}), "'age'", "list")
    refused(lambda: layout.columns_to_table({**good, "age": [1, "x"]}), "row 1", "'age'", "not a number")
    refused(lambda: layout.columns_to_table({**good, "zip": [1, 2]}), "unknown column 'zip'")
