"""Export of a tabular run (issue #18): one ONNX input per column, all preprocessing inside
the graph, behind the same parity gate as images, described by model.json.

The run folders here are built from the pieces a tabular run is made of (a real CSV
file, ``fit_spec`` on the training rows, ``build_tabular``, ``save_weights``,
run.json and splits.json as ``duet.training.tabular_fit`` writes them), so the
export is tested on tables with every edge at once: a column name with a space,
one named like an output, one starting with a digit, booleans, missing numbers
(in a column that had none in training too), missing and unseen categories, and
a left-out ID column. One test trains a run with ``duet train data.csv`` instead.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from duet.artifacts.model_package import ArtifactError, ModelPackage, read_package, sha256_file
from duet.data.tabular.schema import Column, ColumnSchema, Table, take
from duet.data.tabular.spec import MISSING_ID, OOV_ID, TabularSpec, fit_spec, transform
from duet.errors import ConfigError
from duet.exporting import tabular_export, tabular_graph
from duet.exporting.parity import ParityError
from duet.exporting.tabular_graph import CATEGORICAL_EDGE, NUMERIC_EDGE, graph_feed, input_names, signature_inputs
from duet.monitor.tabular_profile import write_tabular_profile
from duet.training.checkpoint import save_weights, weights_state
from duet.training.tabular_models import TABULAR_MODELS, build_tabular
from helpers import one_line_error, run_cli

CITIES = ["Bern", "Zürich", "Genève", "Basel", "Lugano", "Chur"]
SCHEMA = ColumnSchema(
    (
        Column("row_id", "id"),
        Column("age", "numeric"),
        Column("has pet", "boolean"),
        Column("city", "categorical"),
        Column("income", "numeric"),
        Column("logits", "categorical"),  # a column named like an output: sanitised
        Column("2nd visit", "boolean"),  # starts with a digit: sanitised
        Column("y", "categorical"),
    ),
    target="y",
    labels=("high", "low", "mid"),
)
FEATURES = [c.name for c in SCHEMA.features()]


def make_table(rows: int = 150, seed: int = 0) -> tuple[Table, dict[str, np.ndarray]]:
    """A table whose validation rows hold what training never saw: the city Chur (OOV),
    missing incomes (income is complete in training) and a row with every feature missing."""
    rng = np.random.default_rng(seed)
    age = rng.normal(45, 12, rows).round(1)
    age[rng.random(rows) < 0.15] = np.nan
    pet = rng.integers(0, 2, rows).astype(np.float64)
    pet[rng.random(rows) < 0.1] = np.nan
    city = np.array([CITIES[i] for i in rng.integers(0, 5, rows)], dtype=object)
    city[rng.random(rows) < 0.1] = None
    income = rng.lognormal(11, 0.5, rows).round(2)
    tier = np.array([("a", "b", "c")[i] for i in rng.integers(0, 3, rows)], dtype=object)
    visit = rng.integers(0, 2, rows).astype(np.float64)
    score = np.nan_to_num(age, nan=45) / 10 + income / 3e4 + rng.normal(0, 1, rows)
    y = np.array(["low" if s < 7.5 else "mid" if s < 9.5 else "high" for s in score], dtype=object)
    table: Table = {
        "row_id": np.array([f"r{i:04d}" for i in range(rows)], dtype=object),
        "age": age,
        "has pet": pet,
        "city": city,
        "income": income,
        "logits": tier,
        "2nd visit": visit,
        "y": y,
    }
    order = rng.permutation(rows)
    splits = {"train": np.sort(order[: rows * 3 // 4]), "val": np.sort(order[rows * 3 // 4 :])}
    val = splits["val"]
    table["city"][val[:6]] = "Chur"
    table["income"][val[6:10]] = np.nan
    for name in FEATURES:
        table[name][val[10]] = None if table[name].dtype == object else np.nan
    assert "Chur" not in set(table["city"][splits["train"]])
    return table, splits


def write_csv(path: Path, table: Table) -> Path:
    """The table as a user's CSV file: floats by repr (exact round trip), missing as empty cells."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(table))
        for i in range(len(table["y"])):
            writer.writerow([cell(table[name][i]) for name in table])
    return path


def make_run(root: Path, model_name: str, table: Table, splits: dict[str, np.ndarray]) -> Path:
    """A tabular run folder as ``duet train data.csv`` writes it (untrained weights: the
    gate compares two computations of the same function; BatchNorm statistics are set
    from a forward pass over the training rows so they are not the identity)."""
    root.mkdir(parents=True)
    data = write_csv(root.parent / f"{root.name}.csv", table)
    train = take(table, splits["train"])
    spec = fit_spec(train, SCHEMA)
    torch.manual_seed(0)
    model = build_tabular(model_name, spec, len(SCHEMA.labels))
    with torch.no_grad():
        model.train()
        model(*[torch.from_numpy(a) for a in transform(spec, train)])
    (root / "checkpoints").mkdir()
    save_weights(root / "checkpoints" / "best.safetensors", weights_state(model))
    info = {
        "modality": "tabular",
        "model": model_name,
        "labels": list(SCHEMA.labels),
        "num_classes": len(SCHEMA.labels),
        "target": SCHEMA.target,
        "columns": SCHEMA.to_dict(),
        "tabular_spec": spec.to_dict(),
        "source": {"data": str(data.resolve()), "sha256": sha256_file(data)},
        "best": {"epoch": 1, "val_accuracy": 0.5, "epochs_done": 1},
        "baseline": {"model": "sklearn HistGradientBoostingClassifier", "val_accuracy": 0.6},
    }
    (root / "run.json").write_text(json.dumps(info), encoding="utf-8")
    rows = {name: idx.tolist() for name, idx in splits.items()} | {"test": []}
    (root / "splits.json").write_text(json.dumps(rows), encoding="utf-8")
    return root


def edge_rows() -> Table:
    """Rows a client may send that no split holds: extremes, zeros, every kind of missing,
    unseen and near-miss spellings of categories."""
    n = 8
    return {
        "age": np.array([0.0, -1e6, 1e12, np.nan, 45.0, 1e-300, np.nan, 33.3]),
        "has pet": np.array([0.0, 1.0, np.nan, 1.0, 0.0, np.nan, 1.0, 0.0]),
        "city": np.array(["Bern", "bern", "Zürich ", None, "", "Chur", "Genève", "Zu\u0308rich"], dtype=object),
        "income": np.array([np.nan, 0.0, 1e9, -5.0, np.nan, 7e4, 5e4, np.nan]),
        "logits": np.array(["a", "c", None, "d", "b", "", "a", "A"], dtype=object),
        "2nd visit": np.array([1.0, 0.0, np.nan, 1.0, np.nan, 0.0, 1.0, np.nan]),
        "row_id": np.array([f"e{i}" for i in range(n)], dtype=object),
    }


def run_graph(path: Path, inputs: list[dict[str, Any]], rows: Table, *, edges: bool = False) -> list[np.ndarray]:
    """model.onnx on ``rows`` (raw columns); with ``edges``, the preprocessing's two outputs too."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    if edges:
        for name, kind in ((NUMERIC_EDGE, onnx.TensorProto.FLOAT), (CATEGORICAL_EDGE, onnx.TensorProto.INT64)):
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, kind, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, graph_feed(inputs, rows)))


# ---------------------------------------------------------------- fast: names, the preprocessing graph, the package


def test_input_names_keep_identifiers_and_sanitise_the_rest() -> None:
    names = input_names(["age", "has pet", "has_pet", "logits", "2nd visit", "größe", "probabilities"])
    assert names == ["age", "has_pet_2", "has_pet", "logits_2", "c_2nd_visit", "gr__e", "probabilities_2"]
    assert len(set(names)) == len(names)
    entries = signature_inputs(SCHEMA)
    assert [(e["name"], e["column"], e["kind"], e["datatype"]) for e in entries] == [
        ("age", "age", "numeric", "FP64"),
        ("has_pet", "has pet", "boolean", "FP64"),
        ("city", "city", "categorical", "BYTES"),
        ("income", "income", "numeric", "FP64"),
        ("logits_2", "logits", "categorical", "BYTES"),
        ("c_2nd_visit", "2nd visit", "boolean", "FP64"),
    ]
    assert all(e["shape"] == [-1, 1] for e in entries)


def test_preprocessing_graph_is_transform_bit_for_bit() -> None:
    """The hand-built preprocessing alone (no model), on validation and edge rows: the same
    float32 features and the same ids as ``spec.transform``, exactly."""
    import onnxruntime as ort

    table, splits = make_table()
    spec = fit_spec(take(table, splits["train"]), SCHEMA)
    proto = tabular_graph.preprocess_proto(spec, SCHEMA, opset=20, ir_version=10)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = signature_inputs(SCHEMA)
    for rows in (take(table, splits["val"]), edge_rows()):
        numeric, categorical = session.run([NUMERIC_EDGE, CATEGORICAL_EDGE], graph_feed(inputs, rows))
        want_numeric, want_categorical = transform(spec, rows)
        assert numeric.dtype == np.float32 and categorical.dtype == np.int64
        np.testing.assert_array_equal(numeric, want_numeric)
        np.testing.assert_array_equal(categorical, want_categorical)
    assert {OOV_ID, MISSING_ID} <= set(categorical[:, 0].tolist())


def test_a_spec_that_does_not_match_the_columns_is_refused() -> None:
    table, splits = make_table()
    spec = fit_spec(take(table, splits["train"]), SCHEMA)
    shuffled = TabularSpec(spec.numeric[::-1], spec.categorical, spec.fitted_rows)
    with pytest.raises(Exception, match="tabular_spec and columns disagree"):
        tabular_graph.preprocess_proto(shuffled, SCHEMA, opset=20, ir_version=10)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"quantize": "int8", "formats": "onnx", "data_dir": None}, "--quantize"),
        ({"quantize": None, "formats": "onnx,tflite", "data_dir": None}, "--format"),
        ({"quantize": None, "formats": "onnx", "data_dir": Path("elsewhere")}, "--data"),
    ],
)
def test_image_only_export_options_are_refused_for_tables(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        tabular_export.refuse_image_options(**options)
    tabular_export.refuse_image_options(quantize=None, formats="onnx", data_dir=None)  # the defaults pass


def test_model_package_reads_the_tabular_keys_and_refuses_the_image_spec(tmp_path: Path) -> None:
    table, splits = make_table()
    spec = fit_spec(take(table, splits["train"]), SCHEMA)
    manifest = {"modality": "tabular", "columns": SCHEMA.to_dict(), "tabular_spec": spec.to_dict(), "preprocess": None}
    package = ModelPackage(tmp_path, manifest)
    assert package.modality == "tabular"
    assert package.columns == SCHEMA and package.tabular_spec == spec
    with pytest.raises(ArtifactError, match="no image preprocessing"):
        _ = package.spec
    image = ModelPackage(tmp_path, {"preprocess": {}})
    assert image.modality == "image"
    with pytest.raises(ArtifactError, match="no columns"):
        _ = image.columns


# ---------------------------------------------------------------- e2e: whole exports


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """``{model name: (run, export folder)}``: a run of each tabular model, exported once."""
    root = tmp_path_factory.mktemp("tabular-export")
    table, splits = make_table()
    out = {}
    for name in TABULAR_MODELS:
        run = make_run(root / name, name, table, splits)
        if name == "tab_mlp":  # one run with its drift reference, which must travel with the model
            write_tabular_profile(run)
        result = tabular_export.export_tabular_run(run, progress=False, log=lambda _: None)
        out[name] = (run, result.export_dir)
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("name", TABULAR_MODELS)
def test_export_writes_the_model_json_contract(exported: dict[str, tuple[Path, Path]], name: str) -> None:
    run, folder = exported[name]
    files = ["MODEL_CARD.md", "model.json", "model.onnx", "model.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(files + (["profile"] if name == "tab_mlp" else []))
    package = read_package(run)  # verifies every file's sha256
    if name == "tab_mlp":
        assert "profile/tabular.json" in package.manifest["files"]
        assert (folder / "profile" / "tabular.json").read_bytes() == (run / "profile" / "tabular.json").read_bytes()
    m = package.manifest
    assert (m["modality"], m["preprocess"], m["architecture"]) == ("tabular", None, name)
    assert package.columns == SCHEMA and package.labels == list(SCHEMA.labels)
    assert package.tabular_spec == TabularSpec.from_dict(json.loads((run / "run.json").read_text())["tabular_spec"])
    assert m["inputs"] == signature_inputs(SCHEMA)
    assert [(o["name"], o["datatype"], o["shape"]) for o in m["outputs"]] == [
        ("logits", "FP32", [-1, 3]),
        ("probabilities", "FP32", [-1, 3]),
    ]
    gate = m["metrics"]["parity"]
    val_rows = len(json.loads((run / "splits.json").read_text())["val"])
    assert gate["passed"] and gate["rows"] == gate["images"] == val_rows and gate["split"] == "val"
    assert gate["top1_agreement"] == 1.0 and gate["max_abs_prob_diff"] <= 1e-4 and 1 in gate["batch_sizes"]
    assert m["formats"] == {"onnx": {"files": ["model.onnx"], "runtime": "onnxruntime", "gate": gate}}
    assert m["data"]["per_split"] == {"train": 112, "val": val_rows, "test": 0}
    assert m["metrics"]["baseline"]["val_accuracy"] == 0.6
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Tabular classifier" in card and "`has pet` | boolean | `has_pet`" in card
    assert "left out: `row_id`" in card and f"{val_rows} val rows" in card
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


@pytest.mark.e2e
@pytest.mark.parametrize("name", TABULAR_MODELS)
def test_shipped_graph_is_transform_plus_model_on_edge_rows(exported: dict[str, tuple[Path, Path]], name: str) -> None:
    """model.onnx as shipped, fed raw columns: its preprocessing outputs equal ``transform``
    bit for bit (a drift of the graph's preprocessing fails here), and its probabilities
    equal the torch model's on ``transform`` of the same rows, at batch sizes 8 and 1."""
    from duet.training.tabular_run import features, load_tabular_model

    run, folder = exported[name]
    model, spec, _, _ = load_tabular_model(run)
    inputs = json.loads((folder / "model.json").read_text())["inputs"]
    rows = edge_rows()
    logits, probs, numeric, categorical = run_graph(folder / "model.onnx", inputs, rows, edges=True)
    want_numeric, want_categorical = transform(spec, rows)
    np.testing.assert_array_equal(numeric, want_numeric)
    np.testing.assert_array_equal(categorical, want_categorical)
    with torch.no_grad():
        ref = torch.softmax(model(*features(spec, rows)).float(), 1).numpy()
    assert probs.dtype == logits.dtype == np.float32 and probs.shape == logits.shape == (8, 3)
    np.testing.assert_array_equal(probs.argmax(1), ref.argmax(1))
    assert np.abs(probs - ref).max() <= 1e-4
    one = run_graph(folder / "model.onnx", inputs, take(rows, [3]))[1]
    assert np.abs(one - ref[3:4]).max() <= 1e-4


@pytest.mark.e2e
def test_drifted_preprocessing_fails_the_gate_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph whose preprocessing differs from the run's spec (here: income's mean off by a
    tenth of its std, as a wrong statistic or a float32 normalisation would give) must not ship."""
    table, splits = make_table()
    run = make_run(tmp_path / "runs" / "drift", "tab_mlp", table, splits)
    real = tabular_export.write_tabular_onnx

    def drifted(model, spec, schema, labels, architecture, path, *, opset):  # type: ignore[no-untyped-def]
        shifted = tuple(
            type(f)(f.name, f.kind, f.mean + 0.1 * f.std, f.std, f.has_missing) if f.name == "income" else f
            for f in spec.numeric
        )
        other = TabularSpec(shifted, spec.categorical, spec.fitted_rows)
        return real(model, other, schema, labels, architecture, path, opset=opset)

    monkeypatch.setattr(tabular_export, "write_tabular_onnx", drifted)
    with pytest.raises(ParityError) as info:
        tabular_export.export_tabular_run(run, progress=False, log=lambda _: None)
    assert "parity gate" in str(info.value) and "rows" in str(info.value) and "images" not in str(info.value)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "run.json", "splits.json"]


@pytest.mark.e2e
def test_cli_exports_a_tabular_run_and_refuses_image_options(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(exported["tab_mlp"][0], run, ignore=shutil.ignore_patterns("export"))
    proc = run_cli("export", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["parity"]["passed"] and summary["export"] == str(run / "export")
    assert (run / "export" / "model.json").is_file()
    one_line_error(run_cli("export", str(run)), 5, "already exists", "--force")
    for args, needle in ((("--quantize", "int8"), "--quantize"), (("--format", "tflite"), "--format")):
        proc = run_cli("export", str(run), "--out", str(tmp_path / "other"), *args)
        one_line_error(proc, 2, needle)
    assert not (tmp_path / "other").exists()


@pytest.mark.e2e
def test_duet_train_then_export_serves_what_the_run_predicts(tmp_path: Path) -> None:
    """The whole path a user takes: `duet train data.csv --target y`, `duet export RUN`; then
    model.onnx on every validation row, fed raw columns, gives the run's own probabilities.
    Tracked with MLflow, the export logs the graph (several inputs: a dict example) without a traceback."""
    from duet.training.tabular_run import load_split_tables, load_tabular_model, predict_proba

    table, _ = make_table(rows=160, seed=3)
    data = write_csv(tmp_path / "data.csv", table)
    args = ("--target", "y", "--model", "ft_transformer", "--epochs", "2", "--out", str(tmp_path / "runs"))
    proc = run_cli("train", str(data), *args, "--name", "t", "--quiet", "--track", "mlflow")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "t"
    proc = run_cli("export", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert json.loads((run / "tracking.json").read_text(encoding="utf-8"))["model_uri"].startswith("models:/")
    manifest = read_package(run).manifest
    val = load_split_tables(run)["val"]
    assert manifest["metrics"]["parity"]["rows"] == len(val["y"]) > 0
    assert f"{len(val['y'])} val rows" in proc.stdout and "column inputs" in proc.stdout
    assert "profile/tabular.json" in manifest["files"]  # training wrote the drift reference; it travels
    model, spec, _, _ = load_tabular_model(run)
    _, probs = run_graph(run / "export" / "model.onnx", manifest["inputs"], val)
    offline = predict_proba(model, spec, val)
    np.testing.assert_array_equal(probs.argmax(1), offline.argmax(1))
    assert np.abs(probs - offline).max() <= 1e-4


def test_parity_chunks_cover_every_row_once_and_run_batch_size_one() -> None:
    for n, batch in ((1, 32), (31, 32), (32, 32), (33, 32), (100, 7), (5, 1)):
        chunks = tabular_export.parity_chunks(n, batch)
        covered = [i for lo, hi in chunks for i in range(lo, hi)]
        assert covered == list(range(n))
        assert any(hi - lo == 1 for lo, hi in chunks) and all(hi - lo <= batch for lo, hi in chunks)


@pytest.mark.e2e
@pytest.mark.parametrize(("kind", "model_name"), [("numeric", "ft_transformer"), ("categorical", "tab_mlp")])
def test_a_table_with_one_kind_of_column_exports(tmp_path: Path, kind: str, model_name: str) -> None:
    """No categorical column (or no numeric one): the graph has no input for the absent kind
    and the model gets an empty [N, 0] tensor for it, as in training. The numeric columns are
    renamed to names torch gives its own edges (``linear``, ``val_1``): no clash."""
    table, splits = make_table()
    rename = {"age": "linear", "income": "val_1"}
    table = {rename.get(name, name): values for name, values in table.items()}
    keep = [Column(rename.get(c.name, c.name), c.kind) for c in SCHEMA.columns if c.kind == kind or c.name == "y"]
    schema = ColumnSchema(tuple(keep), "y", SCHEMA.labels)
    spec = fit_spec(take(table, splits["train"]), schema)
    model = build_tabular(model_name, spec, 3).eval()
    path = tmp_path / "model.onnx"
    tabular_graph.write_tabular_onnx(model, spec, schema, list(SCHEMA.labels), model_name, path)
    inputs = signature_inputs(schema)
    assert [i["name"] for i in inputs] == (["linear", "val_1"] if kind == "numeric" else ["city", "logits_2"])
    rows = take(table, splits["val"])
    _, probs = run_graph(path, inputs, rows)
    with torch.no_grad():
        ref = torch.softmax(model(*[torch.from_numpy(a) for a in transform(spec, rows)]), 1).numpy()
    np.testing.assert_array_equal(probs.argmax(1), ref.argmax(1))
    assert np.abs(probs - ref).max() <= 1e-4
