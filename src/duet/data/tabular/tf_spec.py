"""The Keras producer of the tabular spec (``--data-backend tf``): preprocessing layers, same numbers.

As in Keras' structured-data examples, a ``Normalization`` layer is adapted on
each numeric training column and a ``StringLookup`` on each categorical one;
their learned state *is* the spec (``fit_spec_keras``), and ``transform_keras``
applies a spec with the same layers. Both agree exactly with the numpy
producer in ``duet.data.tabular.spec`` (tests/test_tabular_spec.py), because:

- ``Normalization.adapt`` on a numpy array calls ``np.mean``/``np.var``
  (population variance, ddof=0) on it; the layers are built with
  ``dtype="float64"`` so the statistics are kept in float64 rather than
  rounded to float32 weights, and the transform runs in float64 before the
  final float32 cast, as the numpy one does. Keras divides by
  ``max(sqrt(variance), 1e-7)``: the spec's std is never 0 (0 -> 1) and
  ``sqrt(std**2) == std`` in IEEE arithmetic, so only a column whose training
  std is in (0, 1e-7) would differ (not seen in practice; left as is).
- ``StringLookup.adapt`` orders its vocabulary by count, ties by value, both
  descending, which is the order ``spec.vocabulary`` uses. Its OOV token is
  set to "" (never a value: the contract holds missing as ``None``), so a real
  value spelled ``[UNK]`` is not dropped from the counts as the default would.
  ``min_count`` (which Keras lacks) is applied by leaving rarer values out of
  the data adapted on; ``max_tokens`` is Keras' own (plus its one OOV slot).
- Ids: ``StringLookup(vocabulary=["", *tokens], num_oov_indices=1)`` maps an
  unseen value to 0, "" (where ``None`` is put) to 1, token i to 2 + i.

Missing values and the indicators are plain TensorFlow ops: Keras has no
layer for them. ``IntegerLookup`` is not used: the contract holds categorical
columns as strings (also "1", "2") and booleans as 0/1 numbers.
TensorFlow comes only from ``duet.system.tensorflow_import``, imported when
these functions are first called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from duet.data.tabular.schema import ColumnSchema
from duet.data.tabular.spec import (
    CategoricalFeature,
    NumericFeature,
    TabularSpec,
    as_float,
    check_fit_args,
    checked_rows,
    numeric_feature,
    present_strings,
)
from duet.system.tensorflow_import import import_tensorflow


def fit_spec_keras(
    train: Mapping[str, np.ndarray], schema: ColumnSchema, *, min_count: int = 1, max_tokens: int | None = None
) -> TabularSpec:
    """``spec.fit_spec`` with the statistics and vocabularies learned by Keras layers' ``adapt``.

    Same arguments, errors and result as ``duet.data.tabular.spec.fit_spec``
    (``backend="keras"``).
    """
    rows = check_fit_args(train, schema, min_count, max_tokens)
    tf = import_tensorflow()
    numeric: list[NumericFeature] = []
    categorical: list[CategoricalFeature] = []
    for col in schema.features():
        if col.kind == "categorical":
            tokens = adapt_vocabulary(tf, present_strings(train[col.name]), min_count, max_tokens)
            categorical.append(CategoricalFeature(col.name, tokens))
        else:
            x = as_float(train[col.name], col.name)
            present = x[~np.isnan(x)]
            mean, var = adapt_moments(tf, present) if present.size else (0.0, 1.0)
            numeric.append(numeric_feature(col.name, col.kind, mean, var, has_missing=present.size < x.size))
    return TabularSpec(tuple(numeric), tuple(categorical), rows, min_count, max_tokens, "keras")


def adapt_moments(tf: Any, values: np.ndarray) -> tuple[float, float]:
    """A float64 ``Normalization`` adapted on ``values``: its mean and (population) variance."""
    layer = tf.keras.layers.Normalization(axis=None, dtype="float64")
    layer.adapt(values)
    return float(layer.adapt_mean.numpy()), float(layer.adapt_variance.numpy())


def adapt_vocabulary(tf: Any, values: list[str], min_count: int, max_tokens: int | None) -> tuple[str, ...]:
    """A ``StringLookup`` adapted on ``values`` (less those seen under ``min_count`` times): its tokens."""
    if not values:
        return ()
    data = tf.constant(values, dtype=tf.string)
    if min_count > 1:
        _, index, counts = tf.unique_with_counts(data)
        data = tf.boolean_mask(data, tf.gather(counts, index) >= min_count)
        if int(tf.size(data)) == 0:
            return ()
    layer = tf.keras.layers.StringLookup(
        num_oov_indices=1, mask_token=None, oov_token="", max_tokens=None if max_tokens is None else max_tokens + 1
    )
    layer.adapt(data)
    return tuple(str(t) for t in layer.get_vocabulary()[1:])  # [0] is the OOV token


def transform_keras(spec: TabularSpec, table: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``spec.transform`` computed by Keras layers: the same arrays, float32 ``[N, K+M]`` and int64 ``[N, C]``."""
    n = checked_rows(spec, table)
    tf = import_tensorflow()
    numeric = numeric_features(tf, spec, table).astype(np.float32) if spec.numeric else np.zeros((n, 0), np.float32)
    ids = [categorical_ids(tf, f, table[f.name]) for f in spec.categorical]
    categorical = np.stack(ids, axis=1) if ids else np.zeros((n, 0), np.int64)
    return numeric, categorical


def numeric_features(tf: Any, spec: TabularSpec, table: Mapping[str, np.ndarray]) -> np.ndarray:
    """One float64 ``Normalization`` over all numeric columns, missing -> 0, then the indicators."""
    x = np.stack([as_float(table[f.name], f.name) for f in spec.numeric], axis=1)
    layer = tf.keras.layers.Normalization(
        axis=-1,
        mean=np.array([f.mean for f in spec.numeric], dtype=np.float64),  # a list would become float32
        variance=np.array([f.std**2 for f in spec.numeric], dtype=np.float64),
        dtype="float64",
    )
    inputs = tf.constant(x, dtype=tf.float64)
    missing = tf.math.is_nan(inputs)
    values = tf.where(missing, tf.zeros_like(inputs), layer(inputs))
    flagged = [i for i, f in enumerate(spec.numeric) if f.has_missing]
    indicators = tf.cast(tf.gather(missing, flagged, axis=1), tf.float64)
    return np.asarray(tf.concat([values, indicators], axis=1).numpy())


def categorical_ids(tf: Any, feature: CategoricalFeature, column: np.ndarray) -> np.ndarray:
    """A ``StringLookup`` holding the spec's vocabulary after "" (the missing slot): the column's ids."""
    layer = tf.keras.layers.StringLookup(vocabulary=["", *feature.tokens], num_oov_indices=1, mask_token=None)
    strings = tf.constant(["" if v is None else str(v) for v in column], dtype=tf.string, shape=[len(column)])
    return np.asarray(layer(strings).numpy(), dtype=np.int64)
