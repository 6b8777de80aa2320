"""duet serve for a tabular model: JSON rows -> the table model.json describes, and the three protocols.

Fast tests check the row reader against a model.json written to the contract
(docs/tabular.md); the e2e tests train a run on a small CSV with the CLI, export
it, serve it, and check that every validation row gets from each protocol the
probabilities the run gives offline.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from duet.serve.errors import ApiError
from duet.serve.protocols.kserve_v2 import serialize_bytes
from duet.serve.tabular_rows import TableLayout
from helpers import run_cli
from serve_support import metric_value, running_server

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


def test_kserve_tensors_give_python_values_by_datatype() -> None:
    from duet.serve.protocols.tabular import tensor_values

    assert tensor_values({"datatype": "INT64", "data": [[1], [None]]}, None, "a") == [1, None]
    assert tensor_values({"datatype": "BOOL", "data": [True, False]}, None, "a") == [True, False]
    raw = np.array([1.5, np.nan], "<f4").tobytes()
    assert tensor_values({"datatype": "FP32"}, raw, "a") == [1.5, None]  # binary NaN is missing
    assert tensor_values({"datatype": "BYTES"}, serialize_bytes([b"Z\xc3\xbcrich", b""]), "a") == ["Zürich", ""]
    refused(lambda: tensor_values({"datatype": "FP64", "data": [1.0, True]}, None, "a"), "row 1", "'a'", "FP64")
    refused(lambda: tensor_values({"datatype": "INT32", "data": [1.5]}, None, "a"), "row 0", "INT32")
    refused(lambda: tensor_values({"datatype": "BYTES", "data": [3]}, None, "a"), "row 0", "BYTES")
    refused(lambda: tensor_values({"datatype": "STRING", "data": ["x"]}, None, "a"), "datatype 'STRING'")
    refused(lambda: tensor_values({"datatype": "FP64"}, b"\x00" * 12, "a"), "whole number")
    refused(lambda: tensor_values({"datatype": "BYTES"}, serialize_bytes([b"\xff"]), "a"), "UTF-8")
    refused(lambda: tensor_values({"datatype": "FP64"}, None, "a"), "neither 'data'")


# ---------------------------------------------------------------- e2e: a trained, exported, served table model

CITIES = ("Oslo", "Bergen", "Tromsø", "Stavanger", "Bodø")


def write_table(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A CSV with an ID column, numeric, boolean and categorical features, missing cells and a 3-class target."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row_id", "age", "income", "member", "city", "plan", "y"])
        for i in range(n):
            age, income = rng.normal(40, 12), rng.lognormal(10, 0.5)
            member, city = bool(rng.random() < 0.4), CITIES[rng.integers(0, 5)]
            score = (age - 40) / 12 + (1.0 if member else -0.5) + (0.8 if city in CITIES[:2] else -0.3)
            score += rng.normal(0, 0.5)
            y = "high" if score > 0.8 else ("mid" if score > -0.4 else "low")
            w.writerow(
                [
                    i + 1,
                    "" if rng.random() < 0.1 else f"{age:.1f}",
                    "NA" if rng.random() < 0.05 else f"{income:.2f}",
                    "" if rng.random() < 0.08 else ("yes" if member else "no"),
                    "" if rng.random() < 0.07 else city,
                    ["basic", "plus", "pro"][rng.integers(0, 3)],
                    y,
                ]
            )
    return path


@dataclass
class Served:
    url: str
    name: str
    inputs: list[dict[str, Any]]
    rows: list[dict[str, Any]]  # every validation row, typed JSON values (null = missing)
    offline: np.ndarray  # the run's own probabilities for those rows (PyTorch)
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from duet.training.tabular_run import load_split_tables, load_tabular_model, predict_proba

    root = tmp_path_factory.mktemp("serve-tabular")
    data = write_table(root / "customers.csv")
    proc = run_cli(
        "train", str(data), "--target", "y", "--epochs", "4", "--out", str(root / "runs"), "--name", "tab",
        "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = root / "runs" / "tab"
    proc = run_cli("export", str(run))
    assert proc.returncode == 0, proc.stderr
    val = load_split_tables(run)["val"]
    model, spec, schema, _ = load_tabular_model(run)
    offline = predict_proba(model, spec, val)
    rows = [{c.name: json_value(val[c.name][i]) for c in schema.features()} for i in range(len(offline))]
    manifest = json.loads((run / "export" / "model.json").read_text())
    limits = ["--max-images", "1000", "--max-body-bytes", "200000", "--drift-interval", "0.5"]
    with running_server(run / "export", root, *limits) as server:
        yield Served(server.url, manifest["name"], manifest["inputs"], rows, offline, server.log)


def json_value(value: Any) -> Any:
    """A table cell as JSON: NaN and None -> null, numbers as floats, strings as they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) if isinstance(value, (float, np.floating)) else value


def assert_offline(served: Served, probabilities: Any) -> None:
    got = np.asarray(probabilities, dtype=np.float64)
    assert got.shape == served.offline.shape
    np.testing.assert_allclose(got, served.offline, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.argmax(1), served.offline.argmax(1))


def as_text(value: Any, kind: str) -> Any:
    """The cell as the CSV holds it: numbers and booleans as text, missing as ""."""
    if value is None:
        return ""
    if kind == "boolean":
        return "yes" if value else "no"
    return str(value)


@pytest.mark.e2e
def test_simple_predict_gives_the_offline_probabilities_for_every_validation_row(served: Served) -> None:
    assert len(served.rows) >= 60
    r = httpx.post(f"{served.url}/v1/predict", json={"rows": served.rows}, timeout=30)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    labels = list(predictions[0]["probabilities"])
    assert_offline(served, [[p["probabilities"][lab] for lab in labels] for p in predictions])
    assert [p["row"] for p in predictions] == list(range(len(served.rows)))
    for p in predictions:
        assert p["label"] == p["top"][0]["label"] and p["probability"] == max(p["probabilities"].values())
    one = httpx.post(f"{served.url}/v1/predict", json=served.rows[3], timeout=30).json()["predictions"]
    assert len(one) == 1 and one[0]["label"] == predictions[3]["label"]


@pytest.mark.e2e
def test_kserve_infer_one_input_per_column_gives_the_offline_probabilities(served: Served) -> None:
    meta = httpx.get(f"{served.url}/v2/models/{served.name}", timeout=10).json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        (i["name"], i["datatype"], [-1, 1]) for i in served.inputs
    ]
    n = len(served.rows)
    json_inputs, binary_inputs, chunks = [], [], []
    for i in served.inputs:
        values = [row[i["column"]] for row in served.rows]
        if i["datatype"] == "BYTES":
            json_inputs.append({"name": i["name"], "datatype": "BYTES", "shape": [n, 1], "data": values})
            raw = serialize_bytes([("" if v is None else v).encode() for v in values])
            binary_inputs.append({"name": i["name"], "datatype": "BYTES", "shape": [n, 1]})
        else:
            json_inputs.append({"name": i["name"], "datatype": "FP64", "shape": [n, 1], "data": values})
            raw = np.array([np.nan if v is None else v for v in values], "<f8").tobytes()
            binary_inputs.append({"name": i["name"], "datatype": "FP64", "shape": [n]})
        binary_inputs[-1]["parameters"] = {"binary_data_size": len(raw)}
        chunks.append(raw)
    r = httpx.post(f"{served.url}/v2/models/{served.name}/infer", json={"inputs": json_inputs}, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert_offline(served, np.reshape(out["probabilities"]["data"], out["probabilities"]["shape"]))
    header = json.dumps(
        {"inputs": binary_inputs, "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    ).encode()
    r = httpx.post(
        f"{served.url}/v2/models/{served.name}/infer",
        content=header + b"".join(chunks),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    head_len = int(r.headers["Inference-Header-Content-Length"])
    assert_offline(served, np.frombuffer(r.content[head_len:], "<f4").reshape(n, -1))


@pytest.mark.e2e
def test_tfserving_rows_and_columns_as_csv_text_give_the_offline_probabilities(served: Served) -> None:
    kinds = {i["column"]: i["kind"] for i in served.inputs}
    text_rows = [{c: as_text(v, kinds[c]) for c, v in row.items()} for row in served.rows]
    url = f"{served.url}/v1/models/{served.name}:predict"
    r = httpx.post(url, json={"instances": text_rows}, timeout=30)
    assert r.status_code == 200, r.text
    assert_offline(served, [p["probabilities"] for p in r.json()["predictions"]])
    columns = {c: [[row[c]] for row in served.rows] for c in kinds}  # each value of shape [1]
    r = httpx.post(url, json={"inputs": columns}, timeout=30)
    assert r.status_code == 200, r.text
    assert_offline(served, r.json()["outputs"]["probabilities"])
    meta = httpx.get(f"{served.url}/v1/models/{served.name}/metadata", timeout=10).json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == sorted(i["name"] for i in served.inputs)


@pytest.mark.e2e
def test_bad_rows_are_one_line_400s_naming_row_and_column(served: Served) -> None:
    good = served.rows[0]
    column = next(i["column"] for i in served.inputs if i["kind"] == "numeric")
    missing = {k: v for k, v in good.items() if k != column}
    cases = [
        (
            f"{served.url}/v1/predict",
            {"rows": [good, {**good, column: "abc"}]},
            ["row 1", repr(column), "not a number"],
        ),
        (f"{served.url}/v1/predict", [good, good, missing], ["row 2", repr(column), "missing"]),
        (f"{served.url}/v1/predict", {**good, "colour": "red"}, ["row 0", "unknown column 'colour'"]),
        (f"{served.url}/v1/predict", {**good, column: {"x": 1}}, ["row 0", repr(column), "JSON object"]),
        (f"{served.url}/v1/models/{served.name}:predict", {"instances": [good, [1, 2]]}, ["row 1", "object"]),
        (f"{served.url}/v1/models/{served.name}:predict", {"inputs": {column: [1]}}, ["missing"]),
    ]
    for url, body, needles in cases:
        r = httpx.post(url, json=body, timeout=10)
        assert r.status_code == 400, (body, r.text)
        message = r.json()["error"]
        assert "\n" not in message and all(n in message for n in needles), message
    nan_body = json.dumps({**good, column: 1.0}).replace("1.0", "NaN")
    r = httpx.post(f"{served.url}/v1/predict", content=nan_body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "finite" in r.json()["error"] and repr(column) in r.json()["error"], r.text
    inputs = [
        {
            "name": i["name"],
            "datatype": i["datatype"],
            "shape": [1, 1],
            "data": ["abc" if i["column"] == column else None],
        }
        for i in served.inputs
    ]
    for t in inputs:
        t["datatype"] = "BYTES" if t["data"] == ["abc"] else t["datatype"]
    r = httpx.post(f"{served.url}/v2/models/{served.name}/infer", json={"inputs": inputs}, timeout=10)
    assert r.status_code == 400, r.text
    assert all(n in r.json()["error"] for n in ("row 0", repr(column), "not a number")), r.text
    r = httpx.post(f"{served.url}/v1/predict", json={"rows": [good] * 1001}, timeout=10)
    assert r.status_code == 413 and r.json()["code"] == "too_many_rows", r.text
    r = httpx.post(f"{served.url}/v1/predict", json={"rows": [good] * 5000}, timeout=10)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large", r.text
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert 'code="500"' not in metrics


@pytest.mark.e2e
def test_concurrent_requests_batched_together_each_get_their_own_rows(served: Served) -> None:
    """Rows of concurrent requests share runtime calls (structured arrays concatenated and split
    by the batcher); each answer must still be its own rows' probabilities."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [list(range(i, len(served.rows), 7)) for i in range(7)]

    def post(index: list[int]) -> tuple[list[int], list[list[float]]]:
        with httpx.Client(timeout=30) as client:
            r = client.post(f"{served.url}/v1/predict", json=[served.rows[i] for i in index])
        assert r.status_code == 200, r.text
        return index, [list(p["probabilities"].values()) for p in r.json()["predictions"]]

    for _ in range(3):
        with ThreadPoolExecutor(len(chunks)) as pool:
            for index, probabilities in pool.map(post, chunks):
                np.testing.assert_allclose(probabilities, served.offline[index], atol=1e-5, rtol=0)
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert metric_value(metrics, "duet_batch_size_images_count") > 0


@pytest.mark.e2e
def test_the_server_reports_drift_per_column_on_recent_rows(served: Served) -> None:
    """Runs last: it fills the window with rows whose numeric column moved far from the reference."""
    url = f"{served.url}/v1/monitor"
    before = httpx.get(url, timeout=30)
    assert before.status_code == 200, before.text
    assert before.json()["modality"] == "tabular"
    assert {c["column"] for c in before.json()["columns"]} >= {i["column"] for i in served.inputs}
    column = next(i["column"] for i in served.inputs if i["kind"] == "numeric")
    shifted = [{**row, column: 1e6 + 10 * i} for i, row in enumerate(served.rows * 7)][:500]
    r = httpx.post(f"{served.url}/v1/predict", json={"rows": shifted}, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while True:  # the verdict is recomputed every --drift-interval (0.5 s)
        report = httpx.get(url, timeout=30).json()
        if report["seen"] >= before.json()["seen"] + len(shifted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert report["status"] == "drift" and column in report["drifted"], report["sentence"]
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert metric_value(metrics, "duet_drift_detected") == 1.0
    assert metric_value(metrics, "duet_drift_window_images") == 500
