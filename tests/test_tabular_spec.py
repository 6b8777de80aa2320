"""The tabular preprocessing spec: fitted on training rows only, and the numpy and
Keras producers give identical features (issue #18 item 2)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from duet.data.tabular.schema import Column, ColumnSchema, Table, take
from duet.data.tabular.spec import (
    FIRST_TOKEN_ID,
    MISSING_ID,
    OOV_ID,
    TabularSpec,
    fit_spec,
    transform,
    vocabulary,
)
from duet.errors import ConfigError, DataError


def schema_of(table: Table, kinds: dict[str, str], target: str = "target") -> ColumnSchema:
    cols = tuple(Column(name, kinds.get(name, "numeric")) for name in table)  # type: ignore[arg-type]
    return ColumnSchema(cols, target)


def small_table() -> tuple[Table, ColumnSchema]:
    table: Table = {
        "x": np.array([1.0, 2.0, 3.0, np.nan, 6.0]),
        "flat": np.array([4.0, 4.0, 4.0, 4.0, 4.0]),
        "flag": np.array([1.0, 0.0, np.nan, 1.0, 1.0]),
        "colour": np.array(["red", "blue", None, "red", "green"], dtype=object),
        "target": np.array(["a", "b", "a", "b", "a"], dtype=object),
    }
    return table, schema_of(table, {"flag": "boolean", "colour": "categorical", "target": "categorical"})


def test_fit_statistics_population_std_zero_std_and_missing_flags() -> None:
    table, schema = small_table()
    spec = fit_spec(table, schema)
    x, flat, flag = spec.numeric
    present = np.array([1.0, 2.0, 3.0, 6.0])
    assert (x.mean, x.std, x.has_missing) == (present.mean(), present.std(ddof=0), True)
    assert (flat.mean, flat.std, flat.has_missing) == (4.0, 1.0, False)  # zero std -> 1
    assert (flag.kind, flag.mean, flag.std, flag.has_missing) == ("boolean", 0.0, 1.0, True)
    assert spec.categorical[0].tokens == ("red", "green", "blue")  # count, then value, descending
    assert spec.numeric_names() == ["x", "flat", "flag", "x__missing", "flag__missing"]
    assert spec.categorical_names() == ["colour"] and spec.fitted_rows == 5


def test_transform_layout_missing_and_unseen() -> None:
    table, schema = small_table()
    spec = fit_spec(table, schema)
    serve: Table = {
        "x": np.array([np.nan, 1.0]),
        "flat": np.array([np.nan, 5.0]),  # no missing in training: 0, no indicator
        "flag": np.array([0.0, np.nan]),
        "colour": np.array(["green", "purple"], dtype=object),
    }
    num, cat = transform(spec, serve)
    assert num.dtype == np.float32 and cat.dtype == np.int64
    x = spec.numeric[0]
    expected = [[0.0, 0.0, 0.0, 1.0, 0.0], [(1.0 - x.mean) / x.std, 1.0, 0.0, 0.0, 1.0]]
    np.testing.assert_array_equal(num, np.array(expected, dtype=np.float32))
    assert cat[:, 0].tolist() == [FIRST_TOKEN_ID + 1, OOV_ID]
    _, train_cat = transform(spec, table)
    assert train_cat[:, 0].tolist() == [2, 4, MISSING_ID, 2, 3]


def test_vocabulary_order_min_count_and_max_tokens() -> None:
    values = ["b", "a", "c", "a", "b", "é", "z", "z", "[UNK]"]
    assert vocabulary(values) == ("z", "b", "a", "é", "c", "[UNK]")
    assert vocabulary(values, min_count=2) == ("z", "b", "a")
    assert vocabulary(values, max_tokens=2) == ("z", "b")


def test_statistics_come_from_the_training_rows_only() -> None:
    table, schema = breast_cancer_table(seed=1)
    train_rows, val_rows = split(len(table["target"]), seed=1)
    spec = fit_spec(take(table, train_rows), schema)
    val = take(table, val_rows)
    val["mean radius"] = np.full(len(val_rows), 1e9)  # extreme validation values
    val["band"] = np.array(["only-in-val"] * len(val_rows), dtype=object)
    assert spec == fit_spec(take(table, train_rows), schema)
    leaky = fit_spec({k: np.concatenate([take(table, train_rows)[k], val[k]]) for k in table}, schema)
    assert leaky.numeric[0].mean > 1e8 and "only-in-val" in leaky.categorical[0].tokens
    assert spec.numeric[0].mean < 100 and "only-in-val" not in spec.categorical[0].tokens
    _, cat = transform(spec, val)
    assert (cat[:, 0] == OOV_ID).all()


def test_json_round_trip_gives_the_same_spec_and_features() -> None:
    table, schema = unicode_table(seed=2)
    spec = fit_spec(table, schema, min_count=2, max_tokens=5)
    again = TabularSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    for a, b in zip(transform(spec, table), transform(again, table)):
        np.testing.assert_array_equal(a, b)


def test_user_mistakes_are_one_line_errors() -> None:
    table, schema = small_table()
    spec = fit_spec(table, schema)
    with pytest.raises(DataError, match="no column 'colour'"):
        transform(spec, {k: v for k, v in table.items() if k != "colour"})
    with pytest.raises(DataError, match="columns of different lengths"):
        transform(spec, {**table, "x": table["x"][:3]})
    with pytest.raises(DataError, match="should hold numbers"):
        transform(spec, {**table, "x": table["colour"]})
    with pytest.raises(DataError, match="0 training rows"):
        fit_spec({k: v[:0] for k, v in table.items()}, schema)
    with pytest.raises(ConfigError, match="min_count"):
        fit_spec(table, schema, min_count=0)
    with pytest.raises(DataError, match="version"):
        TabularSpec.from_dict({**spec.to_dict(), "version": 99})


# ---- the data sets the two backends are compared on


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = int(n * 0.7)
    return order[:cut], order[cut:]


def with_holes(table: Table, seed: int, rate: float = 0.05) -> Table:
    """Missing values injected at ``rate`` in every feature column."""
    rng = np.random.default_rng(seed)
    out: Table = {}
    for name, col in table.items():
        holes = rng.random(len(col)) < rate
        if name == "target":
            out[name] = col
        elif col.dtype == object:
            out[name] = np.where(holes, None, col)
        else:
            out[name] = np.where(holes, np.nan, col)
    return out


def sklearn_table(loader: Callable[..., object], seed: int) -> tuple[Table, ColumnSchema]:
    """A bundled scikit-learn data set, a categorical 'band' (quartile of feature 0) and holes."""
    data = loader()
    x, y, names = data.data, data.target, list(data.feature_names)  # type: ignore[attr-defined]
    table: Table = {name: x[:, i].astype(np.float64) for i, name in enumerate(names)}
    quart = np.searchsorted(np.quantile(x[:, 0], [0.25, 0.5, 0.75]), x[:, 0])
    table["band"] = np.array([f"q{q}" for q in quart], dtype=object)
    table["target"] = np.array([str(v) for v in y], dtype=object)
    table = with_holes(table, seed)
    return table, schema_of(table, {"band": "categorical", "target": "categorical"})


def breast_cancer_table(seed: int) -> tuple[Table, ColumnSchema]:
    from sklearn.datasets import load_breast_cancer

    table, schema = sklearn_table(load_breast_cancer, seed)
    return {"band": table.pop("band"), **table}, schema  # band first, mean radius first numeric


def unicode_table(seed: int, n: int = 600) -> tuple[Table, ColumnSchema]:
    """Numbers, booleans, a constant, and Unicode categories with ties, rare values and holes."""
    rng = np.random.default_rng(seed)
    cities = ["Zürich", "東京", "São Paulo", "Łódź", "Αθήνα", "[UNK]", "café", "cafe\u0301", "🙂", "a b"]
    table: Table = {
        "age": rng.normal(40, 12, n).round(1),
        "income": rng.lognormal(10, 1, n),
        "constant": np.full(n, 3.5),
        "member": rng.integers(0, 2, n).astype(np.float64),
        "city": np.array(rng.choice(cities, n, p=[0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.04, 0.01]), dtype=object),
        "tier": np.array(rng.choice(["gold", "silver", "bronze"], n), dtype=object),
        "target": np.array(rng.choice(["yes", "no"], n), dtype=object),
    }
    table = with_holes(table, seed)
    table["constant"] = np.full(n, 3.5)
    kinds = {"member": "boolean", "city": "categorical", "tier": "categorical", "target": "categorical"}
    return table, schema_of(table, kinds)


def unseen(table: Table, column: str, values: list[str]) -> Table:
    """A copy with some of ``column``'s cells replaced by values the training rows never had."""
    out = dict(table)
    col = table[column].copy()
    col[: len(values)] = values
    out[column] = col
    return out


# ---- the Keras producer


@pytest.fixture(scope="module")
def tf_spec():  # type: ignore[no-untyped-def]
    """duet.data.tabular.tf_spec, TensorFlow imported duet's way (after torch and triton), else skip."""
    from duet.system.extras import MissingExtra
    from duet.system.tensorflow_import import import_tensorflow

    try:
        import_tensorflow()
    except MissingExtra:
        pytest.skip("TensorFlow is not importable (pip install 'duet[tf]')")
    from duet.data.tabular import tf_spec as module

    return module


def data_sets() -> list[tuple[str, Table, ColumnSchema, str]]:
    from sklearn.datasets import load_wine

    wine, wine_schema = sklearn_table(load_wine, seed=3)
    bc, bc_schema = breast_cancer_table(seed=4)
    syn, syn_schema = unicode_table(seed=5)
    return [
        ("breast_cancer", bc, bc_schema, "band"),
        ("wine", wine, wine_schema, "band"),
        ("unicode", syn, syn_schema, "city"),
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("min_count,max_tokens", [(1, None), (3, 4)])
def test_keras_and_numpy_give_identical_specs_and_features(tf_spec, min_count: int, max_tokens: int | None) -> None:  # type: ignore[no-untyped-def]
    for name, table, schema, cat_col in data_sets():
        train_rows, val_rows = split(len(table["target"]), seed=7)
        train = take(table, train_rows)
        val = unseen(take(table, val_rows), cat_col, ["never-seen", "ÄÖÜ-neu", "[UNK]x"])
        native = fit_spec(train, schema, min_count=min_count, max_tokens=max_tokens)
        keras = tf_spec.fit_spec_keras(train, schema, min_count=min_count, max_tokens=max_tokens)
        assert keras.backend == "keras"
        # Exact: adapt's float64 statistics and vocabularies are ours, bit for bit.
        assert {**keras.to_dict(), "backend": "numpy"} == native.to_dict(), name
        assert any(f.has_missing for f in native.numeric), name
        for rows in (train, val):
            n_num, n_cat = transform(native, rows)
            k_num, k_cat = tf_spec.transform_keras(keras, rows)
            np.testing.assert_array_equal(k_num, n_num, err_msg=name)  # exact, not within a tolerance
            np.testing.assert_array_equal(k_cat, n_cat, err_msg=name)
        _, val_cat = transform(native, val)
        assert (val_cat == OOV_ID).any() and (val_cat == MISSING_ID).any(), name


@pytest.mark.e2e
def test_keras_string_lookup_order_is_the_native_order(tf_spec) -> None:  # type: ignore[no-untyped-def]
    """The fact the native vocabulary relies on: Keras ranks ties by value, descending; and
    columns with no value in training (nothing to adapt on) come out the same too."""
    table, schema = small_table()
    table["colour"] = np.array(["b", "a", "c", "a", "b"], dtype=object)
    table["void"] = np.full(5, np.nan)
    table["nothing"] = np.array([None] * 5, dtype=object)
    schema = schema_of(
        table, {"flag": "boolean", "colour": "categorical", "nothing": "categorical", "target": "categorical"}
    )
    keras, native = tf_spec.fit_spec_keras(table, schema), fit_spec(table, schema)
    assert keras.categorical[0].tokens == ("b", "a", "c") == native.categorical[0].tokens
    assert {**keras.to_dict(), "backend": "numpy"} == native.to_dict()
    void = native.numeric[-1]
    assert (void.mean, void.std, void.has_missing, native.categorical[1].tokens) == (0.0, 1.0, True, ())
    for a, b in zip(tf_spec.transform_keras(native, table), transform(native, table)):
        np.testing.assert_array_equal(a, b)


def test_onnx_label_encoder_reproduces_the_ids() -> None:
    """The id map is what the exported graph can hold: ONNX-ML LabelEncoder, string -> int64 with a default."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    table, schema = unicode_table(seed=6)
    spec = fit_spec(table, schema)
    city = spec.categorical[0]
    encoder = helper.make_node(
        "LabelEncoder",
        ["city"],
        ["ids"],
        domain="ai.onnx.ml",
        keys_strings=["", *city.tokens],
        values_int64s=[MISSING_ID, *range(FIRST_TOKEN_ID, city.cardinality)],
        default_int64=OOV_ID,
    )
    graph = helper.make_graph(
        [encoder],
        "lookup",
        [helper.make_tensor_value_info("city", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    column = unseen(table, "city", ["never-seen", "Zürich ", "ZÜRICH"])["city"]
    served = np.array(["" if v is None else v for v in column], dtype=object)  # a server sends None as ""
    (ids,) = session.run(None, {"city": served})
    _, expected = transform(spec, {**table, "city": column})
    np.testing.assert_array_equal(ids, expected[:, 0])
    assert {OOV_ID, MISSING_ID} <= set(ids.tolist())
    onnx.checker.check_model(model)
