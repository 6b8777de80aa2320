"""The checks of a read text corpus: what ``duet scan`` says about it (the text counterpart of tabular.checks).

``text_report(corpus)`` (JSON-able): per class the document count and the
length distribution in characters and in tokens (quantiles; tokens as the
default vectorisation splits them: ``spec.standardize`` + ``spec.split_tokens``),
empty or whitespace-only documents and documents with no token (only
punctuation); files decoded with replacement characters (how many bytes);
skipped and ignored files with the reasons; duplicates and conflicts; the
warnings and ``errors`` (the reasons the corpus cannot be trained on).
``require_trainable_corpus`` raises the first error in one line.

Documents are compared twice: *exact* duplicates repeat an earlier document's
text and label byte for byte; *normalised* duplicates are equal only after
``standardize`` (default mode: ASCII lowercase, ASCII punctuation removed) and
collapsing every run of (Unicode) whitespace to one space, e.g. "Great movie!"
and "great  movie". A *conflict* is one normalised text under two or more
labels. Documents with no token are left out of both (they are reported as empty).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from duet.data.text.read import TextCorpus, read_corpus
from duet.data.text.spec import split_tokens, standardize
from duet.errors import DataError

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
SHOWN = 20  # duplicates / conflicts / files listed in the report (the counts are always whole)
SMALL_CLASS = 5  # fewer documents than this in a class: a warning (too few to validate on)
DEFAULT_MODE = "lower_and_strip_punctuation"


def counted(n: int, noun: str) -> str:
    """``1 document``, ``2 documents``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def normalised(text: str, mode: str = DEFAULT_MODE) -> str:
    """The text as compared for normalised duplicates: standardised, whitespace runs collapsed to one space."""
    return " ".join(standardize(text, mode).split())


def text_report(corpus: TextCorpus, *, mode: str = DEFAULT_MODE) -> dict[str, Any]:
    """Everything ``duet scan`` says about a corpus (see the module docstring)."""
    num_tokens = [len(split_tokens(standardize(t, mode))) for t in corpus.texts]
    keys = [normalised(t, mode) for t in corpus.texts]
    counts = Counter(corpus.labels)
    per_class = {c: _class_entry(corpus, c, num_tokens) for c in sorted(counts)}
    duplicates = _duplicates(corpus, keys)
    conflicts = _conflicts(corpus, keys)
    report: dict[str, Any] = {
        "source": str(corpus.source),
        "layout": corpus.layout,
        "standardize": mode,
        "num_documents": len(corpus.texts),
        "classes": list(corpus.classes),
        "class_counts": dict(sorted(counts.items())),
        "imbalance_ratio": max(counts.values()) / min(counts.values()) if counts else None,
        "chars": _quantiles([len(t) for t in corpus.texts]),
        "tokens": _quantiles(num_tokens),
        "per_class": per_class,
        "empty": _listed([o for o, t in zip(corpus.origins, corpus.texts) if not t.strip()]),
        "no_tokens": _listed([o for o, n, t in zip(corpus.origins, num_tokens, corpus.texts) if n == 0 and t.strip()]),
        "replaced": _listed([{"origin": o, "bytes": corpus.replaced_bytes.get(o, 0)} for o in corpus.replaced]),
        "skipped": [{"origin": o, "reason": r} for o, r in corpus.skipped],
        "ignored": dict(corpus.ignored),
        "empty_classes": list(corpus.empty_classes),
        "duplicates": duplicates,
        "conflicts": conflicts,
    }
    report["warnings"] = _warnings(report)
    report["errors"] = _errors(corpus, num_tokens)
    return report


def require_trainable_corpus(corpus: TextCorpus, *, mode: str = DEFAULT_MODE) -> None:
    """Raise :class:`DataError` with the first reason the corpus cannot be trained on."""
    errors = _errors(corpus, [len(split_tokens(standardize(t, mode))) for t in corpus.texts])
    if errors:
        raise DataError(errors[0])


def _errors(corpus: TextCorpus, num_tokens: Sequence[int]) -> list[str]:
    source, errors = corpus.source, []
    if not corpus.texts:
        errors.append(f"{source} has no document; a text corpus needs documents in at least two classes")
        return errors
    if len(corpus.classes) < 2:
        errors.append(
            f"{source} has only 1 class ('{corpus.classes[0]}') in its {counted(len(corpus.texts), 'document')}; "
            f"classification needs at least two classes"
        )
    if not any(num_tokens):
        errors.append(f"none of the {len(corpus.texts)} documents of {source} holds a word (all empty or punctuation)")
    return errors


def _quantiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
    out = {f"p{round(100 * p)}": float(v) for p, v in zip(QUANTILES, q)}
    out["mean"] = float(np.mean(values))
    return out


def _class_entry(corpus: TextCorpus, label: str, num_tokens: Sequence[int]) -> dict[str, Any]:
    index = [i for i, lab in enumerate(corpus.labels) if lab == label]
    return {
        "count": len(index),
        "chars": _quantiles([len(corpus.texts[i]) for i in index]),
        "tokens": _quantiles([num_tokens[i] for i in index]),
        "empty": sum(1 for i in index if not corpus.texts[i].strip()),
    }


def _listed(items: list[Any]) -> dict[str, Any]:
    return {"count": len(items), "shown": items[:SHOWN]}


def _duplicates(corpus: TextCorpus, keys: Sequence[str]) -> dict[str, Any]:
    """Documents repeating an earlier one with the same label: exactly, or only once normalised."""
    exact: list[dict[str, str]] = []
    loose: list[dict[str, str]] = []
    first_exact: dict[tuple[str, str], int] = {}
    first_key: dict[tuple[str, str], int] = {}
    for i, (text, label, key) in enumerate(zip(corpus.texts, corpus.labels, keys)):
        if not key:
            continue
        if (text, label) in first_exact:
            exact.append({"origin": corpus.origins[i], "same_as": corpus.origins[first_exact[(text, label)]]})
        elif (key, label) in first_key:
            loose.append({"origin": corpus.origins[i], "same_as": corpus.origins[first_key[(key, label)]]})
        first_exact.setdefault((text, label), i)
        first_key.setdefault((key, label), i)
    return {"exact": _listed(exact), "normalised": _listed(loose)}


def _conflicts(corpus: TextCorpus, keys: Sequence[str]) -> dict[str, Any]:
    """Groups of documents with one normalised text and two or more labels."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key:
            groups.setdefault(key, []).append(i)
    found = []
    for rows in groups.values():
        labels = sorted({corpus.labels[i] for i in rows})
        if len(labels) > 1:
            found.append({"origins": [corpus.origins[i] for i in rows][:SHOWN], "labels": labels})
    return _listed(found)


def _warnings(report: dict[str, Any]) -> list[str]:
    checks = [
        (report["empty"]["count"], "empty or whitespace-only documents"),
        (report["no_tokens"]["count"], "documents with no word (only punctuation)"),
        (report["replaced"]["count"], "files not valid UTF-8, decoded with replacement characters"),
        (len(report["skipped"]), "documents skipped (listed below)"),
        (report["duplicates"]["exact"]["count"], "exact duplicates of an earlier document (same label)"),
        (report["duplicates"]["normalised"]["count"], "normalised duplicates (same text once standardised)"),
        (report["conflicts"]["count"], "texts under two or more labels (conflicts)"),
    ]
    warnings = [f"{what}: {n}" for n, what in checks if n]
    for why, n in report["ignored"].items():
        warnings.append(f"{counted(n, 'file')} ignored: {why}")
    if report["empty_classes"]:
        warnings.append(f"class folders with no usable document: {', '.join(report['empty_classes'])}")
    small = [c for c, n in report["class_counts"].items() if n < SMALL_CLASS]
    if small:
        warnings.append(f"classes with fewer than {SMALL_CLASS} documents: {', '.join(small)}")
    return warnings


SHOWN_SKIPS = 3  # skipped files named in the log line (all of them: `duet scan`)


def read_trainable_corpus(
    path: str | Path, *, text_column: str | None, target: str | None, log: Callable[[str], None]
) -> TextCorpus:
    """``read_corpus`` + ``require_trainable_corpus``, logging the skipped and replaced files in one line each.

    Imports no torch or TensorFlow: `duet train` calls it first, so a bad corpus's one-line error comes first."""
    corpus = read_corpus(path, text_column=text_column, target=target)
    for what, origins in (
        ("skipped", [f"{o}: {r}" for o, r in corpus.skipped]),
        ("decoded with replacement", corpus.replaced),
    ):
        if origins:
            shown = "; ".join(origins[:SHOWN_SKIPS])
            more = f"; +{len(origins) - SHOWN_SKIPS} more" if len(origins) > SHOWN_SKIPS else ""
            log(f"{counted(len(origins), 'document')} of {corpus.source} {what} ({shown}{more}; all: duet scan)")
    require_trainable_corpus(corpus)
    return corpus
