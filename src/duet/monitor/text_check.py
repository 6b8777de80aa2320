"""``duet drift RUN --data new_texts/`` (or ``new.csv``) for a text run: are new texts still like the validation texts?

``--data`` is either

- a folder: every ``.txt`` file under it, any layout (class folders are not
  needed: drift needs no labels), read as training reads a document
  (:func:`duet.data.text.read.read_document`: UTF-8, undecodable bytes replaced
  and counted, binary and oversized files left out with the reason); or
- a CSV/TSV/Parquet file with the run's text column (``--text-column`` at
  training; a column named ``text`` for a run trained on a folder), read by the tabular reader as one string column: no label column
  is needed, surrounding spaces are dropped (no token changes), and an empty
  cell or a missing marker (``NA``, ...) is no document (left out and listed).

The run's model predicts the documents (probabilities and pooled features),
:func:`duet.monitor.text_drift.compare_text` compares them with
``RUN/profile/text.json`` (written first when missing), and ``report.json``
goes to ``RUN/drift/<name>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.data.text.read import TEXT_SUFFIX, read_document
from duet.errors import DataError
from duet.monitor.text_drift import TextDriftResult, compare_text
from duet.monitor.text_profile import TextDriftSettings, doc_stats, ensure_text_profile, subsample
from duet.system.atomic import write_json_atomic

DEFAULT_MAX_DOCUMENTS = 1000
DEFAULT_TEXT_COLUMN = "text"  # a table's text column when the run was trained on a folder


@dataclass
class TextDrift:
    result: TextDriftResult
    documents: int  # documents compared
    documents_read: int  # readable documents (before max_documents)
    skipped: list[tuple[str, str]]  # (origin, reason) of documents left out
    files: dict[str, Path]  # {"json": report.json} ({} when no report was written)


def read_new_texts(data: Path, source: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(texts, skipped)`` of a folder of .txt files (any layout) or a table file with the run's text column."""
    if not data.exists():
        raise DataError(f"'{data}' does not exist")
    if data.is_dir():
        texts, skipped = [], []
        for path in sorted(p for p in data.rglob(f"*{TEXT_SUFFIX}") if p.is_file()):
            rel = path.relative_to(data).as_posix()
            if any(part.startswith(".") for part in Path(rel).parts):
                continue
            text, reason, _ = read_document(path)
            if text is None:
                skipped.append((rel, reason))
            else:
                texts.append(text)
        if not texts:
            first = f" (first, {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise DataError(f"no readable .txt document under '{data}'{first}")
        return texts, skipped
    return _table_texts(data, str(source.get("text_column") or DEFAULT_TEXT_COLUMN))


def _table_texts(data: Path, column: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The text column of a table file, read by the tabular reader as one string column (no label needed)."""
    from duet.data.tabular.read import read_feature_rows
    from duet.data.tabular.schema import Column, ColumnSchema

    table, bad = read_feature_rows(data, ColumnSchema((Column(column, "categorical"),), target=""))
    skipped = [(f"{data.name} line {s.line}", s.reason) for s in bad]
    texts = []
    for i, text in enumerate(table[column]):
        if text is None:
            skipped.append((f"{data.name} data row {i + 1}", f"no text in the column '{column}'"))
        else:
            texts.append(str(text))
    if not texts:
        raise DataError(f"no document of {data} could be read (the column '{column}' is empty)")
    return texts, skipped


def text_drift_check(
    run_dir: str | Path,
    data: str | Path,
    *,
    out_dir: Path | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    settings: TextDriftSettings | None = None,
    seed: int = 0,
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> TextDrift:
    """Compare the documents of ``data`` with the text run's reference profile (module docstring)."""
    from duet.artifacts.run_dir import slug
    from duet.monitor.text_model import model_outputs
    from duet.training.text_run import load_text_model, read_run_info

    say = log or (lambda _m: None)
    if max_documents < 2:
        raise DataError(f"`max_documents` must be at least 2. Received: {max_documents}")
    root, data = Path(run_dir), Path(data)
    texts, skipped = read_new_texts(data, read_run_info(root)["source"])
    total = len(texts)
    if total > max_documents:
        texts = [texts[i] for i in subsample(total, max_documents, seed)]
        say(f"comparing a random sample of {max_documents} of the {total} documents (--max-images)")
    if skipped:
        say(f"{len(skipped)} documents could not be read and are left out (listed in report.json)")
    profile = ensure_text_profile(root, log=say)
    model, spec, _ = load_text_model(root)
    probabilities, features = model_outputs(model, spec, texts)
    result = compare_text(profile, doc_stats(spec, texts), probabilities, features, settings)
    files: dict[str, Path] = {}
    if report:
        folder = Path(out_dir) if out_dir is not None else root / "drift" / slug(data.resolve().stem)
        doc = {
            **result.to_dict(),
            "run": str(root),
            "data": str(data.resolve()),
            "documents_compared": len(texts),
            "documents_read": total,
            "skipped": [{"document": o, "reason": r} for o, r in skipped],
            "reference": profile.meta.get("reference", {}),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "predicted_share": np.bincount(probabilities.argmax(1), minlength=len(profile.labels)).tolist(),
        }
        files["json"] = write_json_atomic(folder / "report.json", doc)
    return TextDrift(result, len(texts), total, skipped, files)
