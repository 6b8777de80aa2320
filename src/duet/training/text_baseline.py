"""The baseline a practitioner would try first on text: scikit-learn's
``TfidfVectorizer`` + ``LogisticRegression``, trained on the same split.

The pipeline is scikit-learn's default text classifier setup, with two choices
stated: word unigrams and bigrams (``ngram_range=(1, 2)``, ``sublinear_tf``),
the form that makes TF-IDF + LR the strong linear baseline of the text
classification literature, and ``max_iter=1000`` so the solver converges. The
baseline tokenises its own way (scikit-learn's token pattern), not with the
run's spec: it is the tool a practitioner would reach for, not a copy of the
model's input. The record (run.json ``baseline``) holds each split's accuracy,
the fit time and the documents per second it trains and predicts at, beside
the model's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PARAMS: dict[str, Any] = {"ngram_range": [1, 2], "sublinear_tf": True, "min_df": 1, "C": 1.0, "max_iter": 1000}


def fit_text_baseline(
    texts: Mapping[str, Sequence[str]], targets: Mapping[str, np.ndarray], *, seed: int
) -> dict[str, Any]:
    """Train TF-IDF + LR on ``texts["train"]`` and score it on every other non-empty split.

    ``targets``: each split's class indices. Returns run.json's ``baseline`` record:
    ``model``, ``params``, ``<split>_accuracy``, ``fit_seconds``, ``train_docs_per_s``,
    ``predict_docs_per_s`` (the last split scored)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    vectorizer = TfidfVectorizer(
        ngram_range=tuple(PARAMS["ngram_range"]), sublinear_tf=PARAMS["sublinear_tf"], min_df=PARAMS["min_df"]
    )
    pipeline = make_pipeline(
        vectorizer, LogisticRegression(C=PARAMS["C"], max_iter=PARAMS["max_iter"], random_state=seed)
    )
    train, y = list(texts["train"]), np.asarray(targets["train"])
    record: dict[str, Any] = {"model": "sklearn TfidfVectorizer + LogisticRegression", "params": dict(PARAMS)}
    if len(np.unique(y)) < 2:
        record["skipped"] = "the training split holds one class; LogisticRegression needs two"
        return record
    t0 = time.perf_counter()
    pipeline.fit(train, y)
    seconds = time.perf_counter() - t0
    record |= {"fit_seconds": round(seconds, 3), "train_docs_per_s": round(len(train) / max(seconds, 1e-9), 1)}
    for split in ("val", "test"):
        docs = list(texts.get(split, ()))
        if docs:
            t0 = time.perf_counter()
            predicted = pipeline.predict(docs)
            record["predict_docs_per_s"] = round(len(docs) / max(time.perf_counter() - t0, 1e-9), 1)
            record[f"{split}_accuracy"] = float(np.mean(predicted == np.asarray(targets[split])))
    return record
