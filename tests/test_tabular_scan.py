"""Tabular ingest and validation (#18 item 1): reading, kind inference, the checks, `duet scan data.csv`.

Real files in tmp_path; the realistic tables are scikit-learn's bundled data sets
written to CSV (no download). The CLI tests run the bad-input corpus through a
real `duet scan` subprocess: one clear line and the exit code, or reported skips.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from duet.data.tabular.checks import LEAK_MIN_ROWS, leak_reason, require_trainable_table, table_report
from duet.data.tabular.read import MAX_COLUMNS, read_table
from duet.errors import ConfigError, DataError
from helpers import one_line_error, run_cli

# ---------------------------------------------------------------- builders


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def sklearn_csv(tmp_path: Path, name: str) -> Path:
    datasets = pytest.importorskip("sklearn.datasets")
    d = getattr(datasets, f"load_{name}")(as_frame=False)
    rows = [[*x.tolist(), d.target_names[y]] for x, y in zip(d.data, d.target)]
    return write_csv(tmp_path / f"{name}.csv", [*d.feature_names, "label"], rows)


def mixed_csv(tmp_path: Path) -> Path:
    """60 rows of every kind, one unparsable age (line 7) and one ragged record (line 62)."""
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "with", "dog"]
    rows: list[list[object]] = []
    for i in range(60):
        rows.append(
            [
                i + 1,
                "abc" if i == 5 else ("" if i == 9 else rng.randint(20, 80)),
                rng.choice(["paris", "rome", "oslo", "NA" if i % 7 == 0 else "rome"]),
                rng.choice(["yes", "no", "Yes"]),
                " ".join(rng.choice(words) for _ in range(6)),
                "x",
                f"user-{rng.random():.12f}",
                rng.choice(["p", "q"]),
            ]
        )
    rows.append([99, 1])
    return write_csv(tmp_path / "mixed.csv", ["id", "age", "city", "smoker", "comment", "const", "name", "label"], rows)


# ---------------------------------------------------------------- reading and kinds


@pytest.mark.parametrize(("name", "features", "classes"), [("breast_cancer", 30, 2), ("wine", 13, 3)])
def test_sklearn_tables_read_clean(tmp_path, name, features, classes):
    data = read_table(sklearn_csv(tmp_path, name), "label")
    report = table_report(data)
    assert report["num_features"] == features
    assert len(report["labels"]) == classes
    assert {c["kind"] for c in report["columns"][:-1]} == {"numeric"}
    assert all(v.dtype == np.float64 for k, v in data.table.items() if k != "label")
    # real data: no leakage, no duplicates, nothing skipped, trainable
    assert report["warnings"] == [] and report["errors"] == [] and report["skipped"] == []
    require_trainable_table(data)


def test_mixed_kinds_values_and_skips(tmp_path):
    data = read_table(mixed_csv(tmp_path), "label")
    kinds = {c.name: c.kind for c in data.schema.columns}
    assert kinds == {
        "id": "id",
        "age": "numeric",
        "city": "categorical",
        "smoker": "boolean",
        "comment": "text",
        "const": "constant",
        "name": "id",
        "label": "categorical",
    }
    assert "1 of 59 values are not numbers" in data.schema.column("age").note
    assert [c.name for c in data.schema.features()] == ["age", "city", "smoker"]
    assert [(s.line, s.reason) for s in data.skipped] == [
        (7, "column 'age': 'abc' is not a (finite) number"),
        (62, "2 fields, the header has 8"),
    ]
    assert data.num_records == 61 and len(data.lines) == 59 and 7 not in data.lines.tolist()
    # held as schema.py says: missing age is nan, "NA" city is None, yes/Yes/no -> 1/0
    row10 = data.lines.tolist().index(11)
    assert math.isnan(data.table["age"][row10])
    assert None in data.table["city"].tolist() and "NA" not in data.table["city"].tolist()
    assert set(data.table["smoker"].tolist()) == {0.0, 1.0}


def test_kind_overrides(tmp_path):
    path = mixed_csv(tmp_path)
    data = read_table(path, "label", kinds={"age": "categorical", "id": "numeric"})
    assert data.schema.column("age").kind == "categorical"
    assert "set by you" in data.schema.column("age").note
    assert data.table["age"].dtype == object and "abc" in data.table["age"].tolist()
    assert [s.line for s in data.skipped] == [62]  # 'abc' is a category now, its row kept
    with pytest.raises(ConfigError, match="not a column"):
        read_table(path, "label", kinds={"nope": "numeric"})
    with pytest.raises(ConfigError, match="one of numeric"):
        read_table(path, "label", kinds={"age": "float"})
    with pytest.raises(ConfigError, match="is the target"):
        read_table(path, "label", kinds={"label": "numeric"})


def test_tsv_bom_missing_target_value_and_input_untouched(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"\xef\xbb\xbfa\tlabel\n1\tx\n2\t\n\n3\ty\n")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    data = read_table(path, "label")
    assert list(data.table) == ["a", "label"]  # the BOM is not part of the first name
    assert [(s.line, s.reason) for s in data.skipped] == [(3, "no value in the target column 'label'")]
    assert data.lines.tolist() == [2, 5]  # the blank line is not a record
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "x": [1.5, None, float("nan"), 4.0] * 10,
            "flag": [True, False, None, True] * 10,
            "color": ["red", "blue", None, "red"] * 10,
            "label": ["a", "b", "a", "b"] * 10,
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    data = read_table(tmp_path / "t.parquet", "label")
    assert [c.kind for c in data.schema.columns] == ["numeric", "boolean", "categorical", "categorical"]
    assert data.unit == "row" and data.lines.tolist()[:3] == [1, 2, 3]
    assert int(np.isnan(data.table["x"]).sum()) == 20
    assert data.table["color"].tolist()[:4] == ["red", "blue", None, "red"]
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_table(tmp_path / "bad.parquet", "label")


def test_read_errors(tmp_path):
    cases = {
        "empty.csv": (b"", "is empty"),
        "blank.csv": (b"\n\n  \n", "is empty"),
        "header.csv": (b"a,label\n", "header but no data rows"),
        "notarget.csv": (b"a,b\n1,2\n", "no column 'label'"),
        "latin1.csv": (b"a,label\n1,x\n2,caf\xe9\n", "line 3: byte 0xe9 is not UTF-8"),
        "dupname.csv": (b"a,a,label\n1,2,x\n", "'a' appears twice"),
        "allbad.csv": (b"a,label\n1\n2\n", "all 2 skipped (first, line 2: 1 fields, the header has 2)"),
    }
    for name, (content, needle) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            read_table(tmp_path / name, "label")
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "missing.csv", "label")
    with pytest.raises(ConfigError, match="not a table file"):
        read_table(tmp_path / "data.xlsx", "label")


def test_column_limit(tmp_path):
    header = ",".join(f"c{i}" for i in range(MAX_COLUMNS)) + ",label\n"
    (tmp_path / "huge.csv").write_text(header + ",".join(["1"] * (MAX_COLUMNS + 1)) + "\n")
    with pytest.raises(DataError, match=f"{MAX_COLUMNS + 1} columns; at most {MAX_COLUMNS}"):
        read_table(tmp_path / "huge.csv", "label")


# ---------------------------------------------------------------- checks


def test_leakage_definition():
    rng = np.random.default_rng(0)
    n = 100
    y = rng.integers(0, 2, n)
    copy = np.array([f"grp{v}{i % 3}" for i, v in enumerate(y)], dtype=object)  # 6 values, each one class
    assert leak_reason(copy, y) == "each of its 6 values goes with one class"
    x = rng.normal(size=n)
    threshold = np.where(y == 1, np.abs(x) + 1, -np.abs(x) - 1)
    assert leak_reason(threshold, y) == "sorted by it, each class is one range of values"
    # all-distinct values map to one class each by accident: not leakage
    assert leak_reason(np.array([f"u{i}" for i in range(n)], dtype=object), y) is None
    assert leak_reason(x, y) is None  # an ordinary noisy feature
    # a value tied across the class boundary breaks the threshold rule
    tied = threshold.copy()
    tied[np.argmax(y == 0)] = tied[np.argmax(y == 1)] = 0.0
    assert leak_reason(tied, y) is None
    # too few filled rows to say (coverage under 90 %), and too few rows at all
    sparse = threshold.copy()
    sparse[:20] = np.nan
    assert leak_reason(sparse, y) is None
    assert leak_reason(threshold[: LEAK_MIN_ROWS - 1], y[: LEAK_MIN_ROWS - 1]) is None


def test_warnings_duplicates_conflicts(tmp_path):
    rng = random.Random(1)
    rows: list[list[object]] = []
    for i in range(40):
        rows.append([f"r{i}", f"{rng.random():.6f}", rng.choice(["a", "b", "c"]), 7, rng.choice(["p", "q"])])
    rows.append(["r40", *rows[0][1:]])  # line 42 repeats line 2 (the ID column does not count)
    flipped = "q" if rows[1][4] == "p" else "p"
    rows.append(["r41", *rows[1][1:4], flipped])  # line 43: line 3's features, the other class
    path = write_csv(tmp_path / "w.csv", ["rid", "score", "cat", "const", "label"], rows)
    report = table_report(read_table(path, "label"))
    checks = {(w["check"], w["column"]) for w in report["warnings"]}
    assert checks == {("id", "rid"), ("constant", "const"), ("duplicates", None), ("conflicts", None)}
    assert report["duplicates"] == {"count": 1, "shown": [{"line": 42, "same_as": 2}]}
    assert report["conflicts"] == {"count": 1, "shown": [{"lines": [3, 43], "labels": ["p", "q"]}]}
    by_name = {c["name"]: c for c in report["columns"]}
    assert by_name["cat"]["action"] == "vocabulary of 3 values + an out-of-vocabulary bucket"
    assert by_name["rid"]["action"] == "left out"


def test_leakage_warning(tmp_path):
    rng = random.Random(2)
    labels = [rng.choice(["p", "q"]) for _ in range(40)]
    rows = [[f"{rng.random():.6f}", f"code-{y}{i % 4}", y] for i, y in enumerate(labels)]
    report = table_report(read_table(write_csv(tmp_path / "l.csv", ["score", "code", "label"], rows), "label"))
    assert [(w["check"], w["column"]) for w in report["warnings"]] == [("leakage", "code")]
    assert "each of its 8 values goes with one class" in report["warnings"][0]["message"]


def test_missing_rate_and_actions(tmp_path):
    rows = [
        [("" if i % 4 == 0 else i % 5), ("" if i % 2 else "u"), "t" if i % 3 else "f", "ab"[i % 2]] for i in range(40)
    ]
    data = read_table(write_csv(tmp_path / "m.csv", ["n", "c", "b", "label"], rows), "label")
    cols = {c["name"]: c for c in table_report(data)["columns"]}
    assert cols["n"]["missing"] == 10 and cols["n"]["missing_rate"] == 0.25
    assert cols["n"]["action"] == "normalised (training-split mean/std) + a missing-value indicator"
    assert cols["c"]["kind"] == "constant"  # one value where filled
    assert cols["b"]["kind"] == "boolean" and cols["b"]["action"] == "used as 0/1"


def test_one_class_and_no_features_are_errors(tmp_path):
    one = read_table(write_csv(tmp_path / "one.csv", ["a", "label"], [[i, "x"] for i in range(5)]), "label")
    assert "only 1 class ('x')" in table_report(one)["errors"][0]
    with pytest.raises(DataError, match="at least two classes"):
        require_trainable_table(one)
    ids = read_table(write_csv(tmp_path / "ids.csv", ["k", "label"], [[i, "xy"[i % 2]] for i in range(30)]), "label")
    with pytest.raises(DataError, match="no feature column"):
        require_trainable_table(ids)


# ---------------------------------------------------------------- the CLI (e2e)


# the bad-input corpus run through the CLI: file -> (bytes, what its one error line says)
BAD_INPUTS: dict[str, tuple[bytes, str]] = {
    "empty.csv": (b"", "is empty"),
    "notarget.csv": (b"a,b\n1,2\n", "no column 'label'"),
    "latin1.csv": (b"a,label\n1,x\n2,caf\xe9\n", "line 3: byte 0xe9 is not UTF-8"),
    "oneclass.csv": (b"a,label\n1,x\n2,x\n", "only 1 class ('x')"),
    "allbad.csv": (b"a,b,label\n1,2\n", "no usable row"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_cli_bad_inputs_one_line(tmp_path, name):
    content, needle = BAD_INPUTS[name]
    path = tmp_path / name
    path.write_bytes(content)
    one_line_error(run_cli("scan", str(path), "--target", "label"), 3, needle)
    assert path.read_bytes() == content


@pytest.mark.e2e
def test_cli_target_required_and_folder_refuses_it(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[1, "x"], [2, "y"]])
    one_line_error(run_cli("scan", str(path)), 2, "--target is required")
    one_line_error(run_cli("scan", str(tmp_path), "--target", "label"), 2, "--target is for a table file")


@pytest.mark.e2e
def test_cli_scan_reports_skips_and_warnings(tmp_path):
    path = mixed_csv(tmp_path)
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    proc = run_cli("scan", str(path), "--target", "label")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "skipped line 7: column 'age': 'abc' is not a (finite) number" in proc.stdout
    assert "skipped line 62: 2 fields, the header has 8" in proc.stdout
    assert "column 'id' (id): all 60 values distinct integers in sequence" in proc.stdout
    assert "column 'const' (constant): one value ('x')" in proc.stdout
    proc = run_cli("scan", str(path), "--target", "label", "--json")
    report = json.loads(proc.stdout)
    assert [s["line"] for s in report["skipped"]] == [7, 62]
    assert report["schema"]["target"] == "label"
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.csv"]  # scan writes nothing


@pytest.mark.e2e
def test_cli_ten_thousand_columns(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 10_000)).round(3)
    rows = [[*r.tolist(), "ab"[i % 2]] for i, r in enumerate(x)]
    path = write_csv(tmp_path / "wide.csv", [f"f{i}" for i in range(10_000)] + ["label"], rows)
    proc = run_cli("scan", str(path), "--target", "label", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "10000 feature columns" in proc.stdout
    assert "... and 9961 more columns (use --json)" in proc.stdout


@pytest.mark.e2e
def test_cli_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"x": [1.0, 2.0, None, 4.0], "label": ["a", "b", "a", "b"]}), tmp_path / "t.parquet")
    proc = run_cli("scan", str(tmp_path / "t.parquet"), "--target", "label", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["unit"] == "row" and report["columns"][0]["missing"] == 1


# a sitecustomize.py that makes pyarrow unimportable, as in an install without duet[tabular]
NO_PYARROW = """
import sys


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pyarrow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.mark.e2e
def test_cli_parquet_without_pyarrow_names_the_extra(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"x": [1.0, 2.0], "label": ["a", "b"]}), tmp_path / "t.parquet")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_PYARROW)
    proc = run_cli("scan", str(tmp_path / "t.parquet"), "--target", "label", env={"PYTHONPATH": str(site)})
    one_line_error(proc, 2, "pip install 'duet[tabular]'")
    # CSV needs no extra
    path = write_csv(tmp_path / "d.csv", ["a", "label"], [[1, "x"], [2, "y"]])
    assert run_cli("scan", str(path), "--target", "label", env={"PYTHONPATH": str(site)}).returncode == 0


def test_line_numbers_follow_quoted_multiline_cells(tmp_path):
    path = tmp_path / "ml.csv"
    path.write_text('a,note,label\n1,"two\nlines",x\n2,ok,y\n3,ok\n4,"a, b",y\n')
    data = read_table(path, "label")
    assert data.lines.tolist() == [2, 4, 6]
    assert [(s.line, s.reason) for s in data.skipped] == [(5, "2 fields, the header has 3")]
    assert data.table["note"].tolist() == ["two\nlines", "ok", "a, b"]
