"""The baseline a practitioner would try first on a table: scikit-learn's
``HistGradientBoostingClassifier``, default settings, trained on the same split.

It sees the same columns the model does, in the form gradient boosting wants:
numeric and boolean columns raw (NaN stays missing: the trees route it
natively), categorical columns as the spec's vocabulary ids, declared
categorical when the vocabulary fits the trees' 255 bins and used as ordinal
codes beyond that (what ``OrdinalEncoder`` + HistGB would do). The numbers go
into run.json's ``baseline`` and the reports, beside the model's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from duet.data.tabular.spec import TabularSpec, as_float, lookup

MAX_CATEGORIES = 254  # HistGB: categories must be < max_bins (255), and ids start at 0


def baseline_features(spec: TabularSpec, table: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[bool]]:
    """``(X float64 [N, K + C], categorical mask)``: raw numeric columns, then vocabulary ids."""
    n = len(next(iter(table.values())))
    columns = [as_float(table[f.name], f.name) for f in spec.numeric]
    columns += [lookup(f.tokens, table[f.name]).astype(np.float64) for f in spec.categorical]
    mask = [False] * len(spec.numeric) + [f.cardinality <= MAX_CATEGORIES for f in spec.categorical]
    x = np.stack(columns, axis=1) if columns else np.zeros((n, 0))
    return x, mask


def fit_baseline(
    spec: TabularSpec,
    tables: Mapping[str, Mapping[str, np.ndarray]],
    targets: Mapping[str, np.ndarray],
    *,
    seed: int,
) -> dict[str, Any]:
    """Train HistGB on ``tables["train"]`` and score it on every other non-empty split.

    ``targets``: each split's class indices. Returns run.json's ``baseline`` record:
    ``model``, ``params`` (the non-default ones), ``<split>_accuracy``, ``fit_seconds``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, mask = baseline_features(spec, tables["train"])
    clf = HistGradientBoostingClassifier(
        categorical_features=np.asarray(mask) if any(mask) else None, random_state=seed
    )
    t0 = time.perf_counter()
    clf.fit(x, targets["train"])
    record: dict[str, Any] = {
        "model": "sklearn HistGradientBoostingClassifier",
        "params": {"random_state": seed, "categorical_features": sum(mask)},
        "fit_seconds": round(time.perf_counter() - t0, 3),
    }
    for split in ("val", "test"):
        y = targets.get(split)
        if y is not None and len(y):
            xs, _ = baseline_features(spec, tables[split])
            record[f"{split}_accuracy"] = float(np.mean(clf.predict(xs) == y))
    return record
