"""The drift reference of a text run: ``RUN/profile/text.json``.

What "like the validation texts" means, as plain JSON (schema ``"duet.text_profile/1"``)::

    {"schema", "created", "run", "model", "labels",
     "reference": {"split": "val", "rows": n, "of": texts in the split},
     "settings": {...},                      TextDriftSettings
     "documents": {"lengths": [...],          words per reference document (unigram tokens)
                   "oov": [...], "tokens": [...]},   per document: tokens the vocabulary lacks, all tokens
     "outputs": {"confidences": [...], "class_counts": [...]},
     "embedding": {"pca_mean": [D], "pca_components": [[D] x k], "sigma2": s,
                   "reference": [[k] x n], "fit_split": "train", "fit_rows": m} | null}

Tokens are those of the run's :class:`~duet.data.text.spec.TextSpec`
(standardised, split, bigrams after the words when ``ngrams`` is 2), counted
over the whole document (not truncated to ``sequence_length``): a token outside
the vocabulary is one the model maps to the OOV id. The embedding reference is
the model's pooled ``features`` on the reference texts, projected on PCA axes
fitted on training texts (as the image profile does), with the Gaussian
kernel's bandwidth by the median heuristic.

``doc_stats`` and ``build_text_profile`` are pure (numpy); ``write_text_profile``
runs the run's model (torch, imported there); ``TextProfile.load`` is numpy
only (the server reads it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.data.text.spec import TextSpec, split_tokens, standardize, tokens
from duet.errors import ConfigError, RunError
from duet.monitor.profile_file import load_profile, save_profile
from duet.monitor.stattests import fit_pca, median_heuristic_sigma2

SCHEMA = "duet.text_profile/1"
PROFILE_FILE = "text.json"
PROFILE_DIR = "profile"
DEFAULT_MAX_REFERENCE = 1000
DEFAULT_COMPONENTS = 32  # as the image profile (and `duet profile --components`)
DEFAULT_MAX_FIT = 2000


class TextProfileError(RunError):
    """A text profile that is missing, damaged or of another schema."""


@dataclass(frozen=True)
class TextDriftSettings:
    """How the text verdict decides (saved in the profile; docs/text.md has the measured rates).

    alpha: bound on the false-alarm rate of the whole verdict when nothing changed:
        the five tests (OOV rate, length, predicted class, confidence, embedding)
        are corrected by Holm's method.
    min_rows: no test runs on a window of fewer documents ("not enough data").
    permutations: of the OOV-rate and MMD permutation tests (their smallest p is 1 / (B + 1)).
    max_reference: reference documents the MMD test uses (a seeded subsample beyond).
    min_expected: chi-square bins of predicted classes under this expected count are pooled.
    """

    alpha: float = 0.04
    min_rows: int = 30
    permutations: int = 500
    max_reference: int = 1000
    min_expected: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"`alpha` must be in (0, 1), e.g. 0.04. Received: alpha={self.alpha!r}")
        if self.min_rows < 2:
            raise ConfigError(f"`min_rows` must be at least 2. Received: min_rows={self.min_rows!r}")
        if self.permutations < 1 or 1 / (self.permutations + 1) >= self.alpha / 5:
            raise ConfigError(
                "`permutations` must be large enough to reach p < alpha/5 "
                f"(at least {int(5 / self.alpha)}). Received: permutations={self.permutations!r}"
            )
        if self.max_reference < 2:
            raise ConfigError(f"`max_reference` must be at least 2. Received: max_reference={self.max_reference!r}")


@dataclass(frozen=True)
class DocStats:
    """Per document: words (``lengths``), tokens outside the vocabulary (``oov``), all tokens (``tokens``)."""

    lengths: np.ndarray  # int64
    oov: np.ndarray  # int64
    tokens: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, rows: np.ndarray) -> DocStats:
        return DocStats(self.lengths[rows], self.oov[rows], self.tokens[rows])

    @staticmethod
    def concat(parts: Sequence[DocStats]) -> DocStats:
        if not parts:
            return DocStats(*(np.zeros(0, np.int64) for _ in range(3)))
        return DocStats(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("lengths", "oov", "tokens")))


def doc_stats(spec: TextSpec, texts: Sequence[str], vocabulary: frozenset[str] | None = None) -> DocStats:
    """The length and OOV counts of each of ``texts`` under ``spec`` (``vocabulary``: its tokens, if already a set)."""
    known = vocabulary if vocabulary is not None else frozenset(spec.vocabulary)
    lengths, oov, total = [], [], []
    for text in texts:
        toks = tokens(spec, text)
        lengths.append(len(split_tokens(standardize(text, spec.standardize))) if spec.ngrams > 1 else len(toks))
        oov.append(sum(1 for t in toks if t not in known))
        total.append(len(toks))
    return DocStats(*(np.asarray(v, dtype=np.int64) for v in (lengths, oov, total)))


@dataclass(frozen=True)
class Embedding:
    """The PCA projection of the model's pooled features, the kernel bandwidth, the projected reference."""

    pca_mean: np.ndarray  # float32 (D,)
    pca_components: np.ndarray  # float32 (k, D)
    sigma2: float
    reference: np.ndarray  # float32 (n, k)
    meta: dict[str, Any] = field(default_factory=dict)

    def project(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.pca_mean.shape[0]:
            raise ValueError(f"features must be (N, {self.pca_mean.shape[0]}); got {features.shape}")
        return (features - self.pca_mean) @ self.pca_components.T

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.meta,
            "pca_mean": self.pca_mean.tolist(),
            "pca_components": self.pca_components.tolist(),
            "sigma2": self.sigma2,
            "reference": self.reference.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Embedding:
        keys = ("pca_mean", "pca_components", "sigma2", "reference")
        return cls(
            np.asarray(d["pca_mean"], dtype=np.float32),
            np.asarray(d["pca_components"], dtype=np.float32),
            float(d["sigma2"]),
            np.asarray(d["reference"], dtype=np.float32),
            {k: v for k, v in d.items() if k not in keys},
        )


@dataclass(frozen=True)
class TextProfile:
    """The reference documents' statistics, the model's outputs on them, and the embedding reference."""

    labels: list[str]
    spec: TextSpec
    docs: DocStats
    confidences: np.ndarray  # float64, one per reference document
    class_counts: np.ndarray  # float64, one per label
    embedding: Embedding | None
    settings: TextDriftSettings = field(default_factory=TextDriftSettings)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.docs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            **self.meta,
            "labels": list(self.labels),
            "settings": asdict(self.settings),
            "text_spec": self.spec.to_dict(),
            "documents": {k: getattr(self.docs, k).tolist() for k in ("lengths", "oov", "tokens")},
            "outputs": {"confidences": self.confidences.tolist(), "class_counts": [int(n) for n in self.class_counts]},
            "embedding": None if self.embedding is None else self.embedding.to_dict(),
        }

    def save(self, path: Path) -> Path:
        """Write the profile atomically (one JSON file, compact: samples make it long)."""
        return save_profile(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> TextProfile:
        """Read ``text.json``; TextProfileError (one line, what to do) when it cannot be."""
        return load_profile(path, SCHEMA, TextProfileError, "text", cls.from_dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TextProfile:
        docs, outputs = doc["documents"], doc["outputs"]
        keys = ("schema", "labels", "settings", "text_spec", "documents", "outputs", "embedding")
        return cls(
            labels=[str(x) for x in doc["labels"]],
            spec=TextSpec.from_dict(doc["text_spec"]),
            docs=DocStats(*(np.asarray(docs[k], dtype=np.int64) for k in ("lengths", "oov", "tokens"))),
            confidences=np.asarray(outputs["confidences"], dtype=np.float64),
            class_counts=np.asarray(outputs["class_counts"], dtype=np.float64),
            embedding=None if doc.get("embedding") is None else Embedding.from_dict(doc["embedding"]),
            settings=TextDriftSettings(**doc.get("settings", {})),
            meta={k: v for k, v in doc.items() if k not in keys},
        )


def fit_embedding(
    fit_features: np.ndarray, reference_features: np.ndarray, *, components: int = DEFAULT_COMPONENTS, seed: int = 0
) -> Embedding:
    """PCA axes and kernel bandwidth fitted on ``fit_features`` (training texts), the reference projected."""
    mean, axes, ratio = fit_pca(fit_features, components)
    projected_fit = (np.asarray(fit_features, np.float32) - mean) @ axes.T
    sigma2 = median_heuristic_sigma2(projected_fit, seed=seed)
    reference = (np.asarray(reference_features, np.float32) - mean) @ axes.T
    meta = {"fit_rows": len(fit_features), "explained_variance": float(ratio.sum())}
    return Embedding(mean, axes, sigma2, reference.astype(np.float32), meta)


def build_text_profile(
    spec: TextSpec,
    texts: Sequence[str],
    probabilities: np.ndarray,
    labels: Sequence[str],
    *,
    embedding: Embedding | None = None,
    settings: TextDriftSettings | None = None,
    meta: Mapping[str, Any] | None = None,
) -> TextProfile:
    """The profile of reference ``texts`` and the model's ``probabilities`` on them (N >= 2)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels) or len(probabilities) < 2:
        raise ValueError(f"probabilities must be (N >= 2, {len(labels)}); got {probabilities.shape}")
    if len(texts) != len(probabilities):
        raise ValueError(f"{len(texts)} texts but {len(probabilities)} rows of probabilities")
    classes = probabilities.argmax(1)
    reference = {**dict((meta or {}).get("reference", {})), "rows": len(texts)}
    return TextProfile(
        labels=list(labels),
        spec=spec,
        docs=doc_stats(spec, texts),
        confidences=probabilities[np.arange(len(classes)), classes],
        class_counts=np.bincount(classes, minlength=len(labels)).astype(np.float64),
        embedding=embedding,
        settings=settings or TextDriftSettings(),
        meta={**(meta or {}), "reference": reference},
    )


# --------------------------------------------------------------------------- the run folder


def profile_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / PROFILE_DIR / PROFILE_FILE


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subsample of at most ``limit`` of ``n`` rows."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def write_text_profile(
    run_dir: str | Path,
    *,
    max_reference: int = DEFAULT_MAX_REFERENCE,
    max_fit: int = DEFAULT_MAX_FIT,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> TextProfile:
    """Run the run's model on its held-out texts (and training texts for the PCA); write ``RUN/profile/text.json``."""
    from duet.monitor.text_model import model_outputs
    from duet.training.text_run import load_split_texts, load_text_model

    say = log or (lambda _m: None)
    root = Path(run_dir)
    run = json.loads((root / "run.json").read_text(encoding="utf-8"))
    splits = load_split_texts(root)
    split = next((s for s in ("val", "test", "train") if len(splits.get(s, ([], []))[0]) >= 2), None)
    if split is None:
        raise TextProfileError(f"run '{root}' has no texts to build a drift profile from")
    if split == "train":
        say("warning: the run has no held-out texts; the drift reference uses training texts (expect more alarms)")
    model, spec, labels = load_text_model(root)
    texts = list(splits[split][0])
    texts = [texts[i] for i in subsample(len(texts), max_reference, seed)]
    probabilities, features = model_outputs(model, spec, texts)
    train = list(splits.get("train", ([], []))[0])
    fit_texts = [train[i] for i in subsample(len(train), max_fit, seed)] if len(train) >= 2 else texts
    _, fit_features = model_outputs(model, spec, fit_texts) if fit_texts is not texts else (None, features)
    embedding = fit_embedding(fit_features, features, components=components, seed=seed)
    embedding.meta["fit_split"] = "train" if fit_texts is not texts else split
    profile = build_text_profile(
        spec,
        texts,
        probabilities,
        labels,
        embedding=embedding,
        meta={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": str(root),
            "model": run.get("model"),
            "reference": {"split": split, "of": len(splits[split][0])},
        },
    )
    profile.save(profile_path(root))
    say(f"text drift profile: {profile.rows} {split} texts -> {profile_path(root)}")
    return profile


def ensure_text_profile(run_dir: str | Path, *, log: Callable[[str], None] = print) -> TextProfile:
    """The run's text profile: loaded when it exists, else written first (once)."""
    path = profile_path(run_dir)
    if path.is_file():
        return TextProfile.load(path)
    log(f"{run_dir} has no text drift profile yet; writing it (once) to {path}")
    return write_text_profile(run_dir, log=log)
