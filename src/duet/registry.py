"""Model registry: numbered versions of trained runs and one champion pointer.

A registry is a folder (``registry/`` by default)::

    registry/
      versions/v1.json     one record per version, written once, never changed
      versions/v2.json     {"version", "created", "run", "weights_sha256", "model", "labels",
                            "preprocess", "metrics", "model_json", "export_dir", "parent", "note",
                            "gate" (the comparison that admitted a retrained version)}
      champion.json        the pointer: {"version", "seq", "since", "reason", "history": [older champions]}
      events.jsonl         append-only log: register, promote, rollback, retrain and watch decisions

``champion.json`` is replaced atomically (write a temp file beside it, fsync,
``os.replace``), so a reader sees the old champion or the new one, never a
mixture; ``seq`` grows by one at every switch. Writers hold an exclusive lock
(``registry/.lock``, ``fcntl.flock``) so that two promotions cannot interleave.

A server follows the champion with :class:`ChampionWatcher`::

    watcher = ChampionWatcher(Registry("registry"))
    ...
    new = watcher.poll()      # cheap (one stat) unless the pointer changed
    if new is not None:
        load new.export_dir (new.model_json) or new.run, swap, reset the drift window
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from duet.atomic import write_json_atomic
from duet.errors import DuetError

DEFAULT_REGISTRY = Path("registry")
_VERSION_RE = re.compile(r"^v(\d+)$")


class RegistryError(DuetError):
    """A registry operation that cannot be done as asked (unknown version, nothing to roll back...)."""

    exit_code = 6


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Version:
    """One registered model: a run folder and what was known of it when registered."""

    version: str
    run: Path
    created: str
    record: dict[str, Any] = field(repr=False)

    @property
    def number(self) -> int:
        return int(self.version[1:])

    @property
    def export_dir(self) -> Path | None:
        """The exported model folder (model.onnx + model.json) when the run was exported."""
        d = self.record.get("export_dir")
        return Path(d) if d else None

    @property
    def model_json(self) -> dict[str, Any] | None:
        return self.record.get("model_json")

    @property
    def accuracy(self) -> float | None:
        return self.record.get("metrics", {}).get("accuracy")


@dataclass(frozen=True)
class Champion:
    """The pointer: which version serves, since when and why, and the champions before it."""

    version: str
    seq: int
    since: str
    reason: str
    history: tuple[str, ...]


class Registry:
    """A registry folder. Reads never lock; writes lock ``registry/.lock``."""

    def __init__(self, root: str | Path = DEFAULT_REGISTRY) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------ paths

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def pointer(self) -> Path:
        return self.root / "champion.json"

    @property
    def events_file(self) -> Path:
        return self.root / "events.jsonl"

    # ------------------------------------------------------------ reading

    def versions(self) -> list[Version]:
        """Every version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for p in self.versions_dir.glob("v*.json"):
            if _VERSION_RE.match(p.stem):
                found.append(self._read_version(p))
        return sorted(found, key=lambda v: v.number)

    def _read_version(self, path: Path) -> Version:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            return Version(rec["version"], Path(rec["run"]), rec["created"], rec)
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise RegistryError(f"version record '{path}' is damaged ({type(e).__name__}); restore it from backup") from e

    def get(self, ref: str | Path) -> Version:
        """A version by id ("v3", "3") or by its run folder."""
        text = str(ref)
        m = _VERSION_RE.match(text) or re.match(r"^(\d+)$", text)
        if m:
            path = self.versions_dir / f"v{int(m.group(1))}.json"
            if not path.is_file():
                known = ", ".join(v.version for v in self.versions()) or "none yet"
                raise RegistryError(f"registry '{self.root}' has no version '{text}' (known: {known}); "
                                    "see `duet registry list`")
            return self._read_version(path)
        run = Path(ref).resolve()
        for v in self.versions():
            if v.run == run:
                return v
        raise RegistryError(f"run '{ref}' is not registered in '{self.root}'; `duet registry promote {ref}` "
                            "registers and promotes it")

    def find_run(self, run_dir: str | Path) -> Version | None:
        run = Path(run_dir).resolve()
        return next((v for v in self.versions() if v.run == run), None)

    def champion_pointer(self) -> Champion | None:
        """The pointer, or None before the first promotion."""
        try:
            doc = json.loads(self.pointer.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"'{self.pointer}' is damaged ({type(e).__name__}); "
                                "re-promote a version with `duet registry promote VERSION`") from e
        return Champion(doc["version"], int(doc["seq"]), doc["since"], doc.get("reason", ""),
                        tuple(doc.get("history", [])))

    def champion(self) -> Version | None:
        """The champion's version record, or None before the first promotion."""
        pointer = self.champion_pointer()
        return None if pointer is None else self.get(pointer.version)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.is_file():
            return []
        return [json.loads(line) for line in self.events_file.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            try:
                import fcntl
            except ImportError:  # Windows: no flock; single-writer use only
                yield
                return
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event line (a single write of one line, so lines never interleave)."""
        self.root.mkdir(parents=True, exist_ok=True)
        row = {"time": _now(), "event": event, **fields}
        line = (json.dumps(row, default=str) + "\n").encode("utf-8")
        fd = os.open(self.events_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return row

    def register(self, run_dir: str | Path, *, parent: str | None = None, note: str = "",
                 gate: dict[str, Any] | None = None) -> Version:
        """Add a finished run as a new version (or return its version if the same
        run with the same weights is already registered). ``gate``: the
        champion/challenger comparison that admitted it, kept in the record."""
        from duet.runs import load_run  # no torch: runs imports only the preprocess spec

        run = load_run(run_dir)
        root = run.paths.root.resolve()
        weights_sha = _sha256(run.paths.best)
        with self._locked():
            for v in self.versions():
                if v.run == root and v.record.get("weights_sha256") == weights_sha:
                    return v
            number = max((v.number for v in self.versions()), default=0) + 1
            record = {
                "version": f"v{number}",
                "created": _now(),
                "run": str(root),
                "run_name": root.name,
                "weights_sha256": weights_sha,
                "model": run.model,
                "labels": run.labels,
                "preprocess": run.preprocess.to_dict(),
                "metrics": _run_metrics(root, run.best),
                "export_dir": None,
                "model_json": None,
                "parent": parent,
                "note": note,
                "gate": gate,
            }
            export = root / "export" / "model.json"
            if export.is_file():
                try:
                    record["model_json"] = json.loads(export.read_text(encoding="utf-8"))
                    record["export_dir"] = str(export.parent)
                except (OSError, json.JSONDecodeError):
                    pass  # an unreadable export is ignored; the run itself is the version
            write_json_atomic(self.versions_dir / f"v{number}.json", record)
            self.log("register", version=f"v{number}", run=str(root), parent=parent, note=note)
        return self.get(f"v{number}")

    def promote(self, ref: str | Path, *, reason: str = "") -> Champion:
        """Make a version (or a run folder, registered first) the champion."""
        version = self._resolve_or_register(ref)
        with self._locked():
            current = self.champion_pointer()
            if current is not None and current.version == version.version:
                return current
            history = (*current.history, current.version) if current else ()
            pointer = self._write_pointer(version.version, current, history, reason or "promoted")
            self.log("promote", version=version.version, previous=current.version if current else None,
                     reason=reason, seq=pointer.seq)
        return pointer

    def rollback(self, *, to: str | None = None, reason: str = "") -> Champion:
        """Return to the previous champion (or to an earlier champion ``to``)."""
        with self._locked():
            current = self.champion_pointer()
            if current is None:
                raise RegistryError(f"registry '{self.root}' has no champion yet; promote one first")
            if not current.history:
                raise RegistryError(f"nothing to roll back to: {current.version} is the first champion of "
                                    f"'{self.root}'; promote another version instead")
            history = list(current.history)
            if to is None:
                target = history.pop()
            else:
                target = self.get(to).version
                if target not in history:
                    raise RegistryError(f"{target} was never a champion before {current.version} "
                                        f"(earlier champions: {', '.join(history)}); use `duet registry promote {target}`")
                while history and history[-1] != target:
                    history.pop()
                history.pop()
            pointer = self._write_pointer(target, current, tuple(history), reason or f"rolled back from {current.version}")
            self.log("rollback", version=target, previous=current.version, reason=reason, seq=pointer.seq)
        return pointer

    def _resolve_or_register(self, ref: str | Path) -> Version:
        text = str(ref)
        if _VERSION_RE.match(text) or re.match(r"^\d+$", text):
            return self.get(text)
        existing = self.find_run(ref)
        return existing if existing is not None else self.register(ref)

    def _write_pointer(self, version: str, current: Champion | None, history: tuple[str, ...], reason: str) -> Champion:
        seq = (current.seq if current else 0) + 1
        doc = {"version": version, "seq": seq, "since": _now(), "reason": reason, "history": list(history)}
        write_json_atomic(self.pointer, doc)
        _fsync_dir(self.root)
        return Champion(version, seq, doc["since"], reason, history)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _run_metrics(root: Path, best: dict[str, Any]) -> dict[str, Any]:
    """The run's headline accuracy and the split it comes from: the evaluation
    report's when there is one, else the test split's (measured once after
    training), else validation's at the best epoch (which it chose: optimistic)."""
    metrics: dict[str, Any] = {"accuracy": best.get("val_accuracy"), "best_epoch": best.get("epoch"),
                               "source": "validation (best epoch; it chose the epoch, so optimistic)"}
    if best.get("test_accuracy") is not None:
        metrics.update({"accuracy": best["test_accuracy"], "source": "test split (measured once after training)"})
    report = root / "eval" / "report.json"
    if report.is_file():
        try:
            doc = json.loads(report.read_text(encoding="utf-8"))
            m = doc["metrics"]
            split = doc.get("context", {}).get("split", "?")
            metrics.update({"accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"],
                            "source": f"eval/report.json (split: {split})"})
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass
    return metrics


class ChampionWatcher:
    """Notices champion switches: ``poll()`` returns the new champion once per switch, else None.

    Cheap enough to call every second: it stats the pointer and reads it only
    when its inode, size or mtime changed (``os.replace`` always gives a new
    inode), then compares ``seq``.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._stat: tuple[int, int, int] | None = None
        self.seq: int | None = None
        self.version: str | None = None

    def poll(self) -> Version | None:
        try:
            st = os.stat(self.registry.pointer)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == self._stat:
            return None
        self._stat = key
        pointer = self.registry.champion_pointer()
        if pointer is None or pointer.seq == self.seq:
            return None
        self.seq, self.version = pointer.seq, pointer.version
        return self.registry.get(pointer.version)
