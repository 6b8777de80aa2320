"""The drift reference of a tabular run: ``RUN/profile/tabular.json``.

What "like the validation rows" means, per feature column and for the model's
outputs, as plain JSON (schema ``"duet.tabular_profile/1"``)::

    {"schema", "created", "run", "model", "target", "labels",
     "reference": {"split": "val", "rows": n, "of": rows in the split},
     "settings": {...},               the thresholds the verdict uses (TabularDriftSettings)
     "columns": [                     one per feature column, in schema order
       {"name", "kind": "numeric", "rows", "missing",
        "sample": [sorted present values], "std"},          at most max_reference values
       {"name", "kind": "categorical" | "boolean", "rows", "missing",
        "counts": {value: count}, "other": n, "unseen": n,  top_k values, the rest, values
        "known": [values] | null}                            outside "known"
     ],
     "outputs": {"confidences": [top-1 probability per reference row],
                 "class_counts": [predicted-class count per label]}}

The reference rows are the run's held-out split (``val``; ``test``, else
``train`` with a warning when there is none), at most ``max_reference`` of them
(a seeded subsample): the model never trained on them, so their confidences are
what production rows from the same distribution get. Booleans are held as the
two categories ``"false"``/``"true"``. ``known`` is the model's vocabulary of
the column (the spec's tokens, when there are at most ``MAX_KNOWN``): a value
outside it is one the model maps to out-of-vocabulary, and is counted as
UNSEEN. Without a vocabulary, ``known`` is the reference's own values when
there are at most ``top_k`` of them (else null: new values cannot be told
from rare ones, and the UNSEEN test does not run).

``build_profile`` is pure (a table and probabilities in, a profile out);
``write_tabular_profile(run_dir)`` runs the run's model on its reference rows
(torch, imported there); ``TabularProfile.load`` reads the file with numpy only
(the server does).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duet.errors import ConfigError, RunError
from duet.monitor.profile_file import load_profile, save_profile

SCHEMA = "duet.tabular_profile/1"
PROFILE_FILE = "tabular.json"
PROFILE_DIR = "profile"
DEFAULT_MAX_REFERENCE = 2000
DEFAULT_TOP_K = 50
MAX_KNOWN = 5000
OTHER = "(other)"  # bins of a categorical column beyond its top_k values
UNSEEN = "(unseen)"  # values the model's vocabulary does not hold
BOOLEAN_VALUES = ("false", "true")


class TabularProfileError(RunError):
    """A tabular profile that is missing, damaged or of another schema."""


@dataclass(frozen=True)
class TabularDriftSettings:
    """How the tabular verdict decides (saved in the profile; docs/tabular.md has the measured rates).

    alpha: bound on the false-alarm rate of the whole verdict when nothing
        changed: every test (per column: distribution and missing rate; the
        model's confidence and predicted classes) is corrected by Holm's method.
    min_rows: no test runs on a window of fewer rows ("not enough data").
    min_present: a column's distribution test needs this many present values on each side.
    min_expected: chi-square bins whose expected count is below this are pooled (Cochran's rule).
    """

    alpha: float = 0.04
    min_rows: int = 30
    min_present: int = 5
    min_expected: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"`alpha` must be in (0, 1), e.g. 0.04. Received: alpha={self.alpha!r}")
        if self.min_rows < 2:
            raise ConfigError(f"`min_rows` must be at least 2. Received: min_rows={self.min_rows!r}")
        if self.min_present < 2:
            raise ConfigError(f"`min_present` must be at least 2. Received: min_present={self.min_present!r}")
        if self.min_expected <= 0:
            raise ConfigError(f"`min_expected` must be positive. Received: min_expected={self.min_expected!r}")


@dataclass(frozen=True)
class NumericReference:
    """A numeric column: its sorted present values (a bounded sample) and missing count."""

    name: str
    rows: int
    missing: int
    sample: np.ndarray  # float64, sorted
    std: float
    kind: str = "numeric"


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical (or boolean) column: value counts of its top values, the rest, and missing count."""

    name: str
    kind: str  # "categorical" or "boolean"
    rows: int
    missing: int
    counts: dict[str, int]
    other: int = 0
    unseen: int = 0
    known: frozenset[str] | None = None

    def bins(self) -> list[str]:
        """The bins a window is counted in: the top values, then OTHER and UNSEEN."""
        return [*self.counts, OTHER, UNSEEN]

    def reference_counts(self) -> np.ndarray:
        return np.array([*self.counts.values(), self.other, self.unseen], dtype=np.float64)

    def count(self, values: Sequence[str]) -> np.ndarray:
        """Counts of present ``values`` over :meth:`bins`."""
        index = {v: i for i, v in enumerate(self.counts)}
        other, unseen = len(index), len(index) + 1
        codes = [index.get(v, unseen if self.known is not None and v not in self.known else other) for v in values]
        return np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(index) + 2).astype(np.float64)


ColumnReference = NumericReference | CategoricalReference


@dataclass(frozen=True)
class TabularProfile:
    """The reference of every feature column and of the model's outputs (module docstring)."""

    labels: list[str]
    columns: list[ColumnReference]
    confidences: np.ndarray  # float64, one per reference row
    class_counts: np.ndarray  # float64, one per label
    rows: int
    settings: TabularDriftSettings = field(default_factory=TabularDriftSettings)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            **self.meta,
            "labels": list(self.labels),
            "settings": asdict(self.settings),
            "columns": [_column_dict(c) for c in self.columns],
            "outputs": {
                "confidences": self.confidences.tolist(),
                "class_counts": [int(n) for n in self.class_counts],
            },
        }

    def save(self, path: Path) -> Path:
        """Write the profile atomically (one JSON file, compact: samples make it long)."""
        return save_profile(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> TabularProfile:
        """Read ``tabular.json``; TabularProfileError (one line, what to do) when it cannot be."""
        return load_profile(path, SCHEMA, TabularProfileError, "tabular", cls.from_dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TabularProfile:
        outputs = doc["outputs"]
        keys = ("schema", "labels", "settings", "columns", "outputs")
        return cls(
            labels=[str(x) for x in doc["labels"]],
            columns=[_column_from_dict(c) for c in doc["columns"]],
            confidences=np.asarray(outputs["confidences"], dtype=np.float64),
            class_counts=np.asarray(outputs["class_counts"], dtype=np.float64),
            rows=int(doc["reference"]["rows"]),
            settings=TabularDriftSettings(**doc.get("settings", {})),
            meta={k: v for k, v in doc.items() if k not in keys},
        )


def _column_dict(c: ColumnReference) -> dict[str, Any]:
    base = {"name": c.name, "kind": c.kind, "rows": c.rows, "missing": c.missing}
    if isinstance(c, NumericReference):
        return {**base, "std": c.std, "sample": c.sample.tolist()}
    known = None if c.known is None else sorted(c.known)
    return {**base, "counts": dict(c.counts), "other": c.other, "unseen": c.unseen, "known": known}


def _column_from_dict(d: Mapping[str, Any]) -> ColumnReference:
    name, kind, rows, missing = str(d["name"]), str(d["kind"]), int(d["rows"]), int(d["missing"])
    if kind == "numeric":
        sample = np.sort(np.asarray(d["sample"], dtype=np.float64))
        return NumericReference(name, rows, missing, sample, float(d["std"]))
    if kind not in ("categorical", "boolean"):
        raise ValueError(f"column {name!r} has kind {kind!r}")
    known = None if d.get("known") is None else frozenset(str(v) for v in d["known"])
    counts = {str(k): int(v) for k, v in d["counts"].items()}
    return CategoricalReference(name, kind, rows, missing, counts, int(d["other"]), int(d["unseen"]), known)


# --------------------------------------------------------------------------- values of one column


def present_values(kind: str, column: np.ndarray) -> tuple[np.ndarray | list[str], int]:
    """``(present values, missing count)`` of one column as the table holds it (schema.py):
    numbers (float64, nan = missing) for numeric, strings for categorical, and
    "false"/"true" for boolean (0/1, nan = missing)."""
    if kind == "categorical":
        values = [str(v) for v in column if v is not None and v != ""]
        return values, len(column) - len(values)
    x = np.asarray(column, dtype=np.float64)
    present = x[~np.isnan(x)]
    missing = len(x) - len(present)
    if kind == "boolean":
        return [BOOLEAN_VALUES[int(v != 0)] for v in present], missing
    return present, missing


def numeric_reference(name: str, column: np.ndarray) -> NumericReference:
    present, missing = present_values("numeric", column)
    sample = np.sort(np.asarray(present, dtype=np.float64))
    std = float(sample.std()) if sample.size > 1 else 0.0
    return NumericReference(name, len(column), missing, sample, std)


def categorical_reference(
    name: str, kind: str, column: np.ndarray, *, top_k: int, known: Sequence[str] | None
) -> CategoricalReference:
    """The column's top ``top_k`` values by count (ties by value), the rest pooled into
    OTHER, values outside ``known`` (when given) into UNSEEN."""
    values, missing = present_values(kind, column)
    known_set = frozenset(BOOLEAN_VALUES) if kind == "boolean" else None if known is None else frozenset(known)
    counted = Counter(v for v in values if known_set is None or v in known_set)
    if known_set is None and len(counted) <= top_k:
        known_set = frozenset(counted)  # every value is kept: "unseen" means not in the reference
    top = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    counts = dict(top)
    other = sum(counted.values()) - sum(counts.values())
    unseen = len(values) - sum(counted.values())
    return CategoricalReference(name, kind, len(column), missing, counts, other, unseen, known_set)


# --------------------------------------------------------------------------- building


def build_profile(
    table: Mapping[str, np.ndarray],
    columns: Sequence[tuple[str, str]],
    probabilities: np.ndarray,
    labels: Sequence[str],
    *,
    known: Mapping[str, Sequence[str]] | None = None,
    max_reference: int = DEFAULT_MAX_REFERENCE,
    top_k: int = DEFAULT_TOP_K,
    seed: int = 0,
    settings: TabularDriftSettings | None = None,
    meta: Mapping[str, Any] | None = None,
) -> TabularProfile:
    """The profile of reference rows ``table`` and the model's ``probabilities`` on them.

    Args:
        table: the reference rows (``duet.data.tabular.schema``'s layout).
        columns: ``(name, kind)`` of every feature column, kinds numeric | boolean | categorical.
        probabilities: (N, len(labels)) the model's probabilities on those rows.
        known: per categorical column, the model's vocabulary (values beyond it count as UNSEEN).
        max_reference: at most this many rows are kept (seeded subsample).
        top_k: categorical values kept by name per column; the rest are pooled.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = len(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels) or n < 2:
        raise ValueError(f"probabilities must be (N >= 2, {len(labels)}); got {probabilities.shape}")
    rows = np.arange(n)
    if n > max_reference:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_reference, replace=False))
    refs: list[ColumnReference] = []
    for name, kind in columns:
        column = np.asarray(table[name])[rows]
        if kind == "numeric":
            refs.append(numeric_reference(name, column))
        else:
            vocab = None if known is None or name not in known or len(known[name]) > MAX_KNOWN else known[name]
            refs.append(categorical_reference(name, kind, column, top_k=top_k, known=vocab))
    chosen = probabilities[rows]
    classes = chosen.argmax(1)
    return TabularProfile(
        labels=list(labels),
        columns=refs,
        confidences=chosen[np.arange(len(rows)), classes],
        class_counts=np.bincount(classes, minlength=len(labels)).astype(np.float64),
        rows=len(rows),
        settings=settings or TabularDriftSettings(),
        meta={**(meta or {}), "reference": {**dict((meta or {}).get("reference", {})), "rows": len(rows), "of": n}},
    )


# --------------------------------------------------------------------------- the run folder


def profile_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / PROFILE_DIR / PROFILE_FILE


def write_tabular_profile(
    run_dir: str | Path,
    *,
    max_reference: int = DEFAULT_MAX_REFERENCE,
    top_k: int = DEFAULT_TOP_K,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> TabularProfile:
    """Run the run's model on its held-out rows and write ``RUN/profile/tabular.json``."""
    from duet.training.tabular_run import load_split_tables, load_tabular_model, predict_proba

    say = log or (lambda _m: None)
    root = Path(run_dir)
    run = json.loads((root / "run.json").read_text(encoding="utf-8"))
    tables = load_split_tables(root)
    split = next((s for s in ("val", "test", "train") if _rows(tables.get(s)) >= 2), None)  # build_profile needs 2
    if split is None:
        raise TabularProfileError(f"run '{root}' has no rows to build a drift profile from")
    if split == "train":
        say("warning: the run has no held-out rows; the drift reference uses training rows (expect more alarms)")
    model, spec, schema, labels = load_tabular_model(root)
    table = tables[split]
    probabilities = predict_proba(model, spec, table)
    known = {f.name: list(f.tokens) for f in spec.categorical}
    profile = build_profile(
        table,
        [(c.name, c.kind) for c in schema.features()],
        probabilities,
        labels,
        known=known,
        max_reference=max_reference,
        top_k=top_k,
        seed=seed,
        meta={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": str(root),
            "model": run.get("model"),
            "target": schema.target,
            "reference": {"split": split},
        },
    )
    profile.save(profile_path(root))
    say(f"tabular drift profile: {profile.rows} {split} rows, {len(profile.columns)} columns -> {profile_path(root)}")
    return profile


def ensure_tabular_profile(run_dir: str | Path, *, log: Callable[[str], None] = print) -> TabularProfile:
    """The run's tabular profile: loaded when it exists, else written first (once)."""
    path = profile_path(run_dir)
    if path.is_file():
        return TabularProfile.load(path)
    log(f"{run_dir} has no tabular drift profile yet; writing it (once) to {path}")
    return write_tabular_profile(run_dir, log=log)


def _rows(table: Mapping[str, np.ndarray] | None) -> int:
    return len(next(iter(table.values()))) if table else 0
