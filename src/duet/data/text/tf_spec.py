"""The Keras producer of the text spec (``--data-backend tf``): ``TextVectorization``, same ids.

``fit_text_spec_keras`` adapts a ``TextVectorization`` layer on the training
texts and takes its vocabulary as the spec; ``encode_keras`` applies a spec
with a layer built from that vocabulary. Both agree exactly with the native
producer in ``duet.data.text.spec`` (tests/test_text_spec.py: the same
vocabulary in the same order and the same ids, on real text and on Unicode
edge cases, every standardize mode, ngrams 1 and 2, max_tokens set and not),
because the native one reproduces Keras' steps (see that module's docstring).

The layer is configured straight from the spec: ``standardize`` (``"none"`` is
Keras' ``None``), ``split="whitespace"``, ``ngrams`` (1 is Keras' ``None``),
``max_tokens`` (Keras' meaning: pad and OOV ids included),
``output_mode="int"`` and ``output_sequence_length``.
TensorFlow comes only from ``duet.system.tensorflow_import``, imported when
these functions are first called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from duet.data.text.spec import FIRST_TOKEN_ID, TextSpec, check_settings, require_vocabulary
from duet.system.tensorflow_import import import_tensorflow

BATCH = 4096  # texts per layer call in encode_keras (bounds the ragged intermediate's memory)


def _layer(tf: Any, standardize: str, ngrams: int, max_tokens: int | None, sequence_length: int, **kw: Any) -> Any:
    return tf.keras.layers.TextVectorization(
        max_tokens=max_tokens,
        standardize=None if standardize == "none" else standardize,
        split="whitespace",
        ngrams=None if ngrams == 1 else ngrams,
        output_mode="int",
        output_sequence_length=sequence_length,
        **kw,
    )


def fit_text_spec_keras(
    texts: Sequence[str],
    *,
    standardize: str = "lower_and_strip_punctuation",
    ngrams: int = 1,
    max_tokens: int | None = 20000,
    sequence_length: int = 256,
) -> TextSpec:
    """``spec.fit_text_spec`` with the vocabulary learned by ``TextVectorization.adapt``.

    Same arguments, errors and result as ``duet.data.text.spec.fit_text_spec`` (``backend="keras"``).
    """
    check_settings(standardize, ngrams, max_tokens, sequence_length)
    require_vocabulary(["-"], len(texts))  # 0 texts: the same error as the native producer
    tf = import_tensorflow()
    layer = _layer(tf, standardize, ngrams, max_tokens, sequence_length)
    layer.adapt(tf.constant(list(texts), dtype=tf.string))
    vocabulary = tuple(str(t) for t in layer.get_vocabulary()[FIRST_TOKEN_ID:])  # [0] "", [1] "[UNK]"
    require_vocabulary(vocabulary, len(texts))
    return TextSpec(standardize, ngrams, max_tokens, sequence_length, vocabulary, len(texts), "keras")


def encode_keras(spec: TextSpec, texts: Sequence[str]) -> np.ndarray:
    """``spec.encode`` computed by a ``TextVectorization`` holding the spec's vocabulary: int64 ``[N, L]``."""
    tf = import_tensorflow()
    layer = _layer(tf, spec.standardize, spec.ngrams, None, spec.sequence_length, vocabulary=list(spec.vocabulary))
    texts = list(texts)
    parts = [
        np.asarray(layer(tf.constant(texts[i : i + BATCH], dtype=tf.string)).numpy(), dtype=np.int64)
        for i in range(0, len(texts), BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, spec.sequence_length), np.int64)
