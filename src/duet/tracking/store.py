"""Where a run is tracked: the MLflow store, the experiment, and RUN/tracking.json.

The store is ``MLFLOW_TRACKING_URI`` when set, else a SQLite file beside the
runs (``<out>/mlflow.db``, artifacts in ``<out>/mlartifacts``), so tracking
works offline and ``mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db``
shows it. ``RUN/tracking.json`` lets later commands (evaluate, export, the
registry mirror) find the same MLflow run again: the run id, the experiment,
and the store only when it is that default local file — a user's URI can hold
credentials and is never written (later commands read it from the
environment again).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duet.system.atomic import write_json_atomic

TRACKING_FILE = "tracking.json"
DEFAULT_EXPERIMENT = "duet"
SCHEMA = "duet.tracking/1"


@dataclass(frozen=True)
class Store:
    """An MLflow store: its URI, and the artifact folder duet picks for the default one."""

    uri: str
    local: bool  # the default SQLite file beside the runs (safe to write down)
    artifact_location: str | None = None


def default_store(out: Path) -> Store:
    """``sqlite:///<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts``."""
    root = Path(out).resolve()
    return Store(f"sqlite:///{root / 'mlflow.db'}", True, (root / "mlartifacts").as_uri())


def store_for(out: Path) -> Store:
    """The store a new run is tracked in: ``MLFLOW_TRACKING_URI``, else the default beside ``out``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return Store(uri, False) if uri else default_store(out)


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


def tracking_file(run_dir: Path) -> Path:
    return Path(run_dir) / TRACKING_FILE


def read_tracking(run_dir: Path) -> dict[str, Any] | None:
    """RUN/tracking.json, or None when the run was not tracked with MLflow."""
    path = tracking_file(run_dir)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("run_id") else None


def write_tracking(run_dir: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(tracking_file(run_dir), {"schema": SCHEMA, **doc})


def record(store: Store, run_id: str, experiment_id: str) -> dict[str, Any]:
    """What tracking.json holds about a new MLflow run (the URI only for the default store)."""
    doc: dict[str, Any] = {"backend": "mlflow", "run_id": run_id, "experiment_id": experiment_id}
    doc["experiment"] = experiment_name()
    if store.local:
        doc["tracking_uri"] = store.uri
    return doc


def tracked_store(doc: dict[str, Any]) -> Store:
    """The store a tracked run lives in: the one written down (the default), else
    ``MLFLOW_TRACKING_URI``; raises when that is not set now (the user's URI is never written)."""
    if doc.get("tracking_uri"):
        return Store(str(doc["tracking_uri"]), True)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise RuntimeError("the run was tracked in the store MLFLOW_TRACKING_URI named, and it is not set now")
    return Store(uri, False)


def find_run_dir(path: Path) -> Path | None:
    """The tracked run folder ``path`` is in: a run folder, its export folder or a file in it."""
    p = Path(path).resolve()
    for candidate in [p, *list(p.parents)[:3]]:
        if tracking_file(candidate).is_file():
            return candidate
    return None


class Warner:
    """One line on stderr, once: a tracking failure is reported, never raised."""

    def __init__(self, what: str, extra: str = "mlflow") -> None:
        self.what, self.extra, self.warned = what, extra, False  # extra: the pip extra that installs it

    def guard(self, call: Callable[[], None]) -> None:
        """Run ``call`` unless a failure already turned tracking off; a failure warns and turns it off."""
        if self.warned:
            return
        try:
            call()
        except Exception as e:  # tracking never stops the command it serves
            self(e)

    def __call__(self, error: BaseException) -> None:
        if self.warned:
            return
        self.warned = True
        first = redact((str(error).strip().splitlines() or [type(error).__name__])[0][:300])
        hint = f" (pip install 'duet[{self.extra}]')" if isinstance(error, ImportError) else ""
        print(
            f"warning: {self.what} failed, continuing without it: {type(error).__name__}: {first}{hint}",
            file=sys.stderr,
        )


def redact(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://***@host``: no credentials in a message."""
    return re.sub(r"([A-Za-z][\w+.-]*://)[^/@\s]+@", r"\1***@", text)
