"""Train/validation/test split of a table's rows, by the same rule as images.

Rows are keyed by a hash of their feature values (``row_keys``), and within each
class the distinct keys are ranked by ``u = H(seed, key)`` exactly as
``duet.data.split`` ranks images by their bytes: the lowest ``k_val`` go to
validation, the highest ``k_test`` to test, with the same exact per-class counts
(``split_counts``). So identical rows always land on the same side (a duplicated
row in train and validation would flatter the model), and the split depends on
the seed and the rows' values only, not on their order in the file.

The test split is held out when ``test_fraction > 0`` and every class has at
least ``TEST_MIN_PER_CLASS`` (20) distinct rows, as for images.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from duet.data.split import TEST_MIN_PER_CLASS, split_counts, split_key

SPLITS: tuple[str, ...] = ("train", "val", "test")


def row_keys(table: Mapping[str, np.ndarray], columns: Sequence[str]) -> list[str]:
    """One sha256 per row over ``columns``' values (missing values hash alike)."""
    keys = []
    for i in range(len(table[columns[0]]) if columns else 0):
        text = "\x1f".join(_cell(table[c][i]) for c in columns)
        keys.append(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
    return keys


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "\x00missing"
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)


def split_rows(
    labels: np.ndarray,
    keys: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_min_per_class: int = TEST_MIN_PER_CLASS,
) -> dict[str, np.ndarray]:
    """Row indices (ascending, int64) of each split: ``{"train", "val", "test"}``.

    ``labels``: each row's class; ``keys``: each row's ``row_keys`` entry."""
    by_class: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (label, key) in enumerate(zip(labels, keys)):
        by_class[str(label)][key].append(i)
    hold_test = test_fraction > 0 and min(len(k) for k in by_class.values()) >= test_min_per_class
    sides: dict[str, list[int]] = {s: [] for s in SPLITS}
    for rows_by_key in by_class.values():
        ranked = sorted(rows_by_key, key=lambda k: (split_key(k, seed), k))
        k_val, k_test = split_counts(len(ranked), val_fraction, test_fraction if hold_test else 0.0)
        for rank, key in enumerate(ranked):
            side = "val" if rank < k_val else "test" if rank >= len(ranked) - k_test else "train"
            sides[side] += rows_by_key[key]
    return {s: np.asarray(sorted(rows), dtype=np.int64) for s, rows in sides.items()}
