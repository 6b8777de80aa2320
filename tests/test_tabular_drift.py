"""Tabular drift (#18): per-column tests and the model's outputs against the reference,
few false alarms on windows of the same distribution, planted shifts caught, and
the server's rolling window."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from duet.monitor.tabular_drift import (
    compare_table,
    false_alarm_rate,
    holm,
    pooled_chi2,
    rate_test,
)
from duet.monitor.tabular_profile import (
    OTHER,
    UNSEEN,
    TabularProfile,
    TabularProfileError,
    build_profile,
)
from duet.serve.table_drift_watch import TableDriftWatch

Table = dict[str, np.ndarray]

COLORS = ("red", "green", "blue", "yellow", "purple")
CITIES = tuple(f"city{i:02d}" for i in range(30))
COLUMNS = [
    ("x1", "numeric"),
    ("x2", "numeric"),
    ("x3", "numeric"),
    ("x4", "numeric"),
    ("flag", "boolean"),
    ("color", "categorical"),
    ("city", "categorical"),
]
LABELS = ("a", "b", "c")
KNOWN = {"color": list(COLORS), "city": list(CITIES)}


def synthetic(n: int, seed: int) -> Table:
    """Mixed columns: Gaussian, log-normal, integer counts (ties), 5 % missing, a boolean
    with missing values, a categorical of 5 values and one of 30 (Zipf, 3 % missing)."""
    r = np.random.default_rng(seed)
    x4 = r.normal(5, 2, size=n)
    x4[r.random(n) < 0.05] = np.nan
    flag = (r.random(n) < 0.3).astype(float)
    flag[r.random(n) < 0.02] = np.nan
    zipf = 1 / np.arange(1, 31)
    city = np.array(r.choice(CITIES, size=n, p=zipf / zipf.sum()), dtype=object)
    city[r.random(n) < 0.03] = None
    return {
        "x1": r.normal(size=n),
        "x2": r.lognormal(size=n),
        "x3": r.poisson(3, size=n).astype(float),
        "x4": x4,
        "flag": flag,
        "color": np.array(r.choice(COLORS, size=n, p=[0.4, 0.25, 0.2, 0.1, 0.05]), dtype=object),
        "city": city,
    }


def model(t: Table) -> np.ndarray:
    """A fixed 3-class model of the synthetic rows (its outputs move when its inputs do)."""
    x4, flag = np.nan_to_num(t["x4"], nan=5.0), np.nan_to_num(t["flag"])
    red = np.array([c == "red" for c in t["color"]], dtype=float)
    logits = np.stack([1.5 * t["x1"] + red, -1.5 * t["x1"] + 0.3 * (t["x3"] - 3), 0.5 * (x4 - 5) + flag], 1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def rows(t: Table, index: np.ndarray) -> Table:
    return {k: v[index].copy() for k, v in t.items()}


@pytest.fixture(scope="module")
def population() -> tuple[Table, TabularProfile, np.ndarray]:
    """20,000 rows; a profile of 1,000 of them; the indices of the rest (held out)."""
    t = synthetic(20_000, 0)
    order = np.random.default_rng(1).permutation(20_000)
    ref = order[:1000]
    profile = build_profile(rows(t, ref), COLUMNS, model(rows(t, ref)), LABELS, known=KNOWN)
    return t, profile, order[1000:]


# ---------------------------------------------------------------- the tests themselves


def test_rate_test_is_exact_for_a_column_never_missing_before() -> None:
    assert rate_test(0, 1000, 0, 200) == 1.0
    assert rate_test(0, 1000, 60, 200) < 1e-20  # 0 % -> 30 %
    assert rate_test(50, 1000, 10, 200) > 0.5  # 5 % both


def test_pooled_chi2_pools_rare_bins_and_needs_two() -> None:
    _, p, dof = pooled_chi2(np.array([500, 300, 3, 2]), np.array([100, 60, 1, 0]), 5.0)
    assert dof == 1 and p > 0.5  # the two rare bins pooled, and that pool folded into a big one
    assert pooled_chi2(np.array([10, 0]), np.array([5, 0]), 5.0)[1] == 1.0  # one bin: nothing to test
    assert pooled_chi2(np.array([500, 500]), np.array([180, 20]), 5.0)[1] < 1e-10


def test_holm_adjusts_in_order_and_caps_at_one() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    assert holm([0.9, 0.8])[0] == 1.0


# ---------------------------------------------------------------- the profile


def test_profile_round_trips_through_its_json(
    tmp_path: Path, population: tuple[Table, TabularProfile, np.ndarray]
) -> None:
    _, profile, _ = population
    path = profile.save(tmp_path / "profile" / "tabular.json")
    loaded = TabularProfile.load(path)
    assert loaded.to_dict() == profile.to_dict()
    color = next(c for c in loaded.columns if c.name == "color")
    assert color.bins() == ["red", "green", "blue", "yellow", "purple", OTHER, UNSEEN]
    x4 = next(c for c in loaded.columns if c.name == "x4")
    assert 0.02 < x4.missing / x4.rows < 0.08 and len(x4.sample) == x4.rows - x4.missing
    assert loaded.rows == 1000 and loaded.class_counts.sum() == 1000


def test_profile_is_bounded_and_top_k_pools_the_rest() -> None:
    t = synthetic(3000, 2)
    profile = build_profile(t, COLUMNS, model(t), LABELS, max_reference=500, top_k=5)
    assert profile.rows == 500 and profile.meta["reference"] == {"rows": 500, "of": 3000}
    city = next(c for c in profile.columns if c.name == "city")
    assert len(city.counts) == 5 and city.other > 0 and city.known is None  # 30 values > top_k: no "unseen" test


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "damaged"),
        ('{"schema": "other/1"}', "schema 'other/1'"),
        ('{"schema": "duet.tabular_profile/1"}', "damaged"),
    ],
)
def test_a_damaged_profile_is_one_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "tabular.json"
    path.write_text(content)
    with pytest.raises(TabularProfileError, match=needle):
        TabularProfile.load(path)
    with pytest.raises(TabularProfileError, match="no tabular drift profile"):
        TabularProfile.load(tmp_path / "absent.json")


# ---------------------------------------------------------------- false alarms


def test_windows_of_the_same_distribution_rarely_alarm() -> None:
    """60 random reference/window splits of one synthetic distribution (measured: 1 alarm;
    1,000 splits: 2.2 %, docs/tabular.md): at most 3 (5 %)."""
    t = synthetic(6000, 3)
    got = false_alarm_rate(
        t, COLUMNS, model(t), LABELS, reference_rows=1000, window=200, trials=60, known=KNOWN, seed=4
    )
    assert got["alarms"] <= 3, got


@pytest.mark.e2e  # importing scikit-learn alone takes 1-3 s
def test_breast_cancer_windows_rarely_alarm() -> None:
    """A real table (sklearn's breast_cancer, 30 numeric columns) and a real model
    (logistic regression fitted on other rows): 50 random splits of the held-out rows."""
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = datasets.load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(data.target))
    fit, held = order[:169], order[169:]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(data.data[fit], data.target[fit])
    names = [f"f{i}" for i in range(data.data.shape[1])]
    table = {name: data.data[held, i].astype(np.float64) for i, name in enumerate(names)}
    got = false_alarm_rate(
        table,
        [(n, "numeric") for n in names],
        clf.predict_proba(data.data[held]),
        ("malignant", "benign"),
        reference_rows=250,
        window=150,
        trials=50,
        seed=1,
    )
    assert got["alarms"] <= 2, got  # <= 4 %


# ---------------------------------------------------------------- planted shifts


def shift_mean(w: Table, r: np.random.Generator) -> Table:
    w["x1"] = w["x1"] + 1.0  # one reference std
    return w


def fewer_red(w: Table, r: np.random.Generator) -> Table:
    red = np.flatnonzero(w["color"] == "red")
    w["color"][red[r.random(len(red)) < 0.75]] = "blue"  # red 40 % -> 10 %
    return w


def now_missing(w: Table, r: np.random.Generator) -> Table:
    w["x1"][r.random(len(w["x1"])) < 0.3] = np.nan  # 0 % -> 30 %
    return w


def new_city(w: Table, r: np.random.Generator) -> Table:
    w["city"][r.random(len(w["city"])) < 0.1] = "atlantis"  # never seen, 10 % of rows
    return w


@pytest.mark.parametrize(
    "shift, column, test",
    [
        (shift_mean, "x1", "KS"),
        (fewer_red, "color", "chi-square"),
        (now_missing, "x1", "missing rate (Fisher exact)"),
        (new_city, "city", "unseen rate (Fisher exact)"),
    ],
)
def test_planted_shifts_are_caught_in_their_column(
    population: tuple[Table, TabularProfile, np.ndarray],
    shift: Callable[[Table, np.random.Generator], Table],
    column: str,
    test: str,
) -> None:
    """10 windows of 200 held-out rows, each shifted: every one drifts, in that column,
    and the column's most significant test is the one for that kind of change."""
    t, profile, held = population
    r = np.random.default_rng(11)
    for _ in range(10):
        w = shift(rows(t, r.choice(held, 200, replace=False)), r)
        result = compare_table(profile, w, model(w))
        got = result.column(column)
        assert result.status == "drift" and got is not None and got.drift, result.sentence
        assert min(got.tests, key=lambda x: x["p_value"])["test"] == test
        assert column in result.sentence


def test_the_new_category_is_named(population: tuple[Table, TabularProfile, np.ndarray]) -> None:
    t, profile, held = population
    w = new_city(rows(t, held[:200]), np.random.default_rng(0))
    got = compare_table(profile, w, model(w)).column("city")
    assert got is not None and got.details["new_values"][0]["value"] == "atlantis"
    assert "'atlantis'" in got.sentence


def test_a_changed_mix_of_predicted_classes_is_caught(population: tuple[Table, TabularProfile, np.ndarray]) -> None:
    t, profile, held = population
    probs = model(t)
    classes = probs.argmax(1)
    r = np.random.default_rng(5)
    for _ in range(10):  # class 'a' is ~46 % of predictions in the reference, 80 % here
        w = np.concatenate(
            [
                r.choice(held[classes[held] == 0], 160, replace=False),
                r.choice(held[classes[held] != 0], 40, replace=False),
            ]
        )
        result = compare_table(profile, rows(t, w), probs[w])
        got = result.column("predicted_class")
        assert got is not None and got.drift and "'a'" in got.sentence


def test_a_stable_window_says_no_drift_and_a_tiny_one_is_insufficient(
    population: tuple[Table, TabularProfile, np.ndarray],
) -> None:
    t, profile, held = population
    w = rows(t, held[:300])
    result = compare_table(profile, w, model(w))
    assert result.status == "no_drift" and result.drift is False, result.sentence
    assert len(result.columns) == len(COLUMNS) + 2 and all(c.adjusted_p is not None for c in result.columns)
    json.dumps(result.to_dict())  # JSON-able
    small = rows(t, held[:10])
    tiny = compare_table(profile, small, model(small))
    assert tiny.status == "insufficient" and tiny.drift is None and "10 rows" in tiny.sentence


def test_a_column_absent_from_the_window_counts_as_missing(
    population: tuple[Table, TabularProfile, np.ndarray],
) -> None:
    t, profile, held = population
    w = rows(t, held[:200])
    del w["color"]
    got = compare_table(profile, w, model(rows(t, held[:200]))).column("color")
    assert got is not None and got.drift and got.details["current_missing"] == 1.0


# ---------------------------------------------------------------- the server's window


def test_watch_window_is_bounded_thread_safe_and_reports(population: tuple[Table, TabularProfile, np.ndarray]) -> None:
    t, profile, held = population
    watch = TableDriftWatch(profile, window=300)
    assert watch.report()["status"] == "insufficient"
    batches = [held[i : i + 7] for i in range(0, 7 * 80, 7)]  # 560 rows in batches of 7, from 4 threads

    def feed(part: list[np.ndarray]) -> None:
        for b in part:
            w = rows(t, b)
            watch.observe(w, model(w))

    threads = [threading.Thread(target=feed, args=(batches[k::4],)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert watch.seen == 560 and watch.rows == 300
    table, probs = watch.snapshot()
    assert len(probs) == 300 and all(len(v) == 300 for v in table.values())
    report = watch.report()
    assert report["status"] == "no_drift" and report["n_current"] == 300 and report["window"] == 300

    for i in range(0, 300, 50):  # the window fills with shifted rows: drift, in x1
        w = shift_mean(rows(t, held[1000 + i : 1050 + i]), np.random.default_rng(0))
        watch.observe(w, model(w))
    report = watch.report()
    assert report["status"] == "drift" and "x1" in report["drifted"]
    watch.reset()
    assert watch.rows == 0 and watch.report()["status"] == "insufficient"


def test_watch_refuses_probabilities_of_another_shape(population: tuple[Table, TabularProfile, np.ndarray]) -> None:
    t, profile, held = population
    watch = TableDriftWatch(profile)
    w = rows(t, held[:5])
    with pytest.raises(ValueError, match="probabilities must be"):
        watch.observe(w, np.ones((5, 2)))
    with pytest.raises(ValueError, match="has 5 rows"):
        watch.observe(w, np.ones((4, 3)) / 3)


def test_watch_from_package_needs_a_listed_profile(
    tmp_path: Path, population: tuple[Table, TabularProfile, np.ndarray]
) -> None:
    from duet.artifacts.model_package import ModelPackage

    _, profile, _ = population
    assert TableDriftWatch.from_package(ModelPackage(tmp_path, {"files": {}})) is None  # no profile
    profile.save(tmp_path / "profile" / "tabular.json")
    assert TableDriftWatch.from_package(ModelPackage(tmp_path, {"files": {}})) is None  # not listed: not checked
    listed = ModelPackage(tmp_path, {"files": {"profile/tabular.json": {}}})
    watch = TableDriftWatch.from_package(listed, window=50)
    assert watch is not None and watch.window == 50 and watch.profile.to_dict() == profile.to_dict()


# ---------------------------------------------------------------- e2e: a trained run, `duet drift`


def write_csv(path: Path, t: Table, target: np.ndarray | None = None) -> Path:
    """The synthetic table as a user's CSV (booleans as yes/no, missing as empty cells)."""
    import csv

    def cell(name: str, v: object) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if name == "flag":
            return "yes" if v else "no"
        return repr(float(v)) if isinstance(v, float) else str(v)  # type: ignore[arg-type]

    names = list(t)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names + (["y"] if target is not None else []))
        for i in range(len(t["x1"])):
            row = [cell(n, t[n][i].item() if isinstance(t[n][i], np.generic) else t[n][i]) for n in names]
            w.writerow(row + ([str(target[i])] if target is not None else []))
    return path


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tab_mlp run (3 epochs) on 1,500 synthetic rows, and a folder of new-row files."""
    from helpers import run_cli

    root = tmp_path_factory.mktemp("tabdrift")
    t = synthetic(1500, 0)
    r = np.random.default_rng(0)
    labels = np.array(LABELS)[[r.choice(3, p=p) for p in model(t)]]
    data = write_csv(root / "train.csv", t, labels)
    proc = run_cli(
        "train", str(data), "--target", "y", "--epochs", "3", "--out", str(root / "runs"), "--name", "tab", "-q"
    )
    assert proc.returncode == 0, proc.stderr
    new = synthetic(300, 9)
    write_csv(root / "same.csv", new)
    write_csv(root / "shifted.csv", fewer_red(shift_mean(rows(new, np.arange(300)), r), r))
    return root / "runs" / "tab", root


@pytest.mark.e2e
def test_ensure_profile_writes_the_tabular_profile_of_a_run(tabular_run: tuple[Path, Path]) -> None:
    from duet.monitor.profile import ensure_profile
    from duet.monitor.tabular_profile import profile_path
    from duet.training.tabular_run import load_split_tables

    run, _ = tabular_run
    assert profile_path(run).is_file()  # duet train wrote it
    profile_path(run).unlink()
    assert ensure_profile(run, log=lambda _m: None) is None  # written again; the image profile's type does not apply
    profile = TabularProfile.load(profile_path(run))
    val = load_split_tables(run)["val"]
    assert profile.rows == len(val["x1"]) and profile.meta["reference"]["split"] == "val"
    assert [c.name for c in profile.columns] == [n for n, _ in COLUMNS]
    assert [c.kind for c in profile.columns] == [k for _, k in COLUMNS]
    color = next(c for c in profile.columns if c.name == "color")
    assert color.known == frozenset(COLORS)  # the model's vocabulary, from the run's spec
    assert profile.class_counts.sum() == profile.rows and len(profile.confidences) == profile.rows


@pytest.mark.e2e
def test_duet_drift_on_new_rows_of_a_tabular_run(tabular_run: tuple[Path, Path]) -> None:
    from helpers import one_line_error, run_cli

    run, root = tabular_run
    same = run_cli("drift", str(run), "--data", str(root / "same.csv"), "--json", "--fail-on-drift")
    assert same.returncode == 0, same.stderr
    got = json.loads(same.stdout)
    assert got["status"] == "no_drift" and got["rows"] == 300 and len(got["columns"]) == len(COLUMNS) + 2
    assert Path(got["report"]["json"]).is_file()

    shifted = run_cli("drift", str(run), "--data", str(root / "shifted.csv"), "--fail-on-drift")
    assert shifted.returncode == 1, shifted.stderr
    assert "DRIFT" in shifted.stdout and "x1" in shifted.stdout and "color" in shifted.stdout
    report = json.loads((run / "drift" / "shifted" / "report.json").read_text())
    assert {"x1", "color"} <= set(report["drifted"])
    page = (run / "drift" / "shifted" / "report.html").read_text()
    assert "<b>DRIFT</b>" in page and "<h2>x1</h2>" in page and "<h2>color</h2>" in page  # a plot per drifted column

    # Parquet reads the same; a cell its column cannot hold leaves that row out, counted
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    lines = (root / "same.csv").read_text().splitlines()
    (root / "one_bad.csv").write_text("\n".join([*lines, "abc" + lines[1][lines[1].index(",") :]]) + "\n")
    bad = json.loads(run_cli("drift", str(run), "--data", str(root / "one_bad.csv"), "--json").stdout)
    assert bad["skipped_rows"] == 1 and bad["rows"] == 300
    pq.write_table(
        pa.table(dict(zip(lines[0].split(","), zip(*(ln.split(",") for ln in lines[1:]))))), root / "same.parquet"
    )
    parquet = json.loads(run_cli("drift", str(run), "--data", str(root / "same.parquet"), "--json").stdout)
    assert parquet["rows"] == 300 and parquet["status"] == got["status"]
    assert [c["p_value"] for c in parquet["columns"]] == [c["p_value"] for c in got["columns"]]  # the same values

    (root / "no_x2.csv").write_text("x1,x3\n1,2\n")
    one_line_error(run_cli("drift", str(run), "--data", str(root / "no_x2.csv")), 3, "no column 'x2'")
