"""The row split of a table (duet.data.tabular.split) and the tabular config's refusals."""

from __future__ import annotations

import numpy as np
import pytest

from duet.data.tabular.split import row_keys, split_rows
from duet.errors import ConfigError
from duet.training.tabular_config import build_table_config


def _table(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[[5, 7]] = np.nan  # two missing values, in rows that differ otherwise: every row is distinct
    colour = np.array([["red", "green", None][i % 3] for i in range(n)], dtype=object)
    label = np.array(["a" if i % 4 else "b" for i in range(n)], dtype=object)
    return {"x": x, "colour": colour, "label": label}


def _split(table: dict[str, np.ndarray], **kw: float) -> dict[str, np.ndarray]:
    keys = row_keys(table, ["x", "colour"])
    args = {"val_fraction": 0.2, "test_fraction": 0.0, "seed": 0} | kw
    return split_rows(table["label"], keys, **args)  # type: ignore[arg-type]


def test_every_row_lands_in_exactly_one_split_with_exact_per_class_counts() -> None:
    table = _table(200)
    sides = _split(table)
    together = np.concatenate(list(sides.values()))
    assert sorted(together.tolist()) == list(range(200))
    for label, n in (("a", 150), ("b", 50)):
        in_val = int(np.sum(table["label"][sides["val"]] == label))
        assert in_val == round(0.2 * n)


def test_identical_rows_never_straddle_train_and_validation() -> None:
    table = _table(120)
    copies = {k: np.concatenate([v, v[:60]]) for k, v in table.items()}  # rows 120.. repeat rows 0..59
    sides = _split(copies)
    side_of = {int(i): s for s, rows in sides.items() for i in rows}
    assert all(side_of[i] == side_of[120 + i] for i in range(60))


def test_the_split_follows_the_values_not_the_row_order() -> None:
    table = _table(150)
    order = np.random.default_rng(3).permutation(150)
    shuffled = {k: v[order] for k, v in table.items()}
    val = {int(order[i]) for i in _split(shuffled)["val"]}
    assert val == set(_split(table)["val"].tolist())


def test_a_test_split_needs_twenty_distinct_rows_in_every_class() -> None:
    table = _table(200)
    assert len(_split(table, test_fraction=0.1)["test"]) == round(0.1 * 150) + round(0.1 * 50)
    small = {k: v[:60] for k, v in table.items()}  # class b has 15 rows
    assert len(_split(small, test_fraction=0.1)["test"]) == 0


def test_missing_values_hash_alike_and_differ_from_values() -> None:
    keys = row_keys(
        {"x": np.array([np.nan, np.nan, 0.0]), "c": np.array([None, None, "None"], dtype=object)}, ["x", "c"]
    )
    assert keys[0] == keys[1] != keys[2]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"model": "resnet18"}, "tab_mlp, ft_transformer"),
        ({"columns": {"age": "number"}}, "kind of column 'age'"),
        ({"image_size": 32}, "unknown setting `image_size`"),
        ({"val_split": 1.5}, "val_split"),
    ],
)
def test_the_tabular_config_refuses_bad_settings_in_one_line(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_table_config(overrides={"data": "t.csv", "target": "y", **overrides})
    assert fragment in str(err.value) and "\n" not in str(err.value)
