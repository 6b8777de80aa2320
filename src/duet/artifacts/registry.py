"""Model registry: numbered versions of trained runs and one champion pointer.

A registry is a folder (``registry/`` by default)::

    registry/
      versions/v1.json     one record per version, written once, never changed
      versions/v2.json     {"version", "created", "run", "weights_sha256", "model", "labels",
                            "preprocess", "metrics", "model_json", "export_dir", "parent", "note",
                            "gate" (the comparison that admitted a retrained version),
                            "training" ({"finished", "epochs_done", "epochs", "stopped_early", "forced"})}
      champion.json        the pointer: {"version", "seq", "since", "reason",
                            "history": [the last 50 champions before it, oldest first]}
      events.jsonl         append-only log: register, promote, rollback, retrain and watch decisions
                           (the full sequence of champions: every switch is a promote or rollback line)

Only finished runs are registered: a run whose run.json records fewer epochs
done than its config.yaml asks for (and no early stop) was stopped before the
end (``kill -9``, a crash, Ctrl-C) and is refused with a :class:`RunError`
unless ``force=True`` (``duet registry promote --force``), which the version
record and the events then say.

``champion.json`` is replaced atomically (write a temp file beside it, fsync,
``os.replace``), so a reader sees the old champion or the new one, never a
mixture; ``seq`` grows by one at every switch. Writers hold an exclusive lock
(``registry/.lock``, ``fcntl.flock``) so that two promotions cannot interleave.
Every switch is logged *before* the pointer moves (see ``Registry._switch``),
so a reader that sees pointer ``seq`` n always finds its event in events.jsonl.
A writer that was killed leaves at most a temp file (removed by the next writer,
under the lock) and a switch event for a pointer that never moved (the next
writer appends a ``switch_interrupted`` event naming it).

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
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from duet.errors import DuetError, RunError
from duet.system.atomic import write_json_atomic

DEFAULT_REGISTRY = Path("registry")
HISTORY_KEPT = 50  # champions kept in champion.json's history; events.jsonl keeps them all
_VERSION_RE = re.compile(r"^v(\d+)$")
_SWITCH_EVENTS = ("promote", "rollback", "switch_interrupted")


log = logging.getLogger("duet.artifacts.registry")


class RegistryError(DuetError):
    """A registry operation that cannot be done as asked (unknown version, nothing to roll back...)."""

    exit_code = 7


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

    @property
    def unfinished(self) -> str:
        """ "" for a run that finished training (and for records older than this
        field), else how far it got, e.g. "2 of 30 epochs done"."""
        training = self.record.get("training") or {}
        return "" if training.get("finished", True) else _progress(training)


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
            raise RegistryError(
                f"version record '{path}' is damaged ({type(e).__name__}); restore it from backup"
            ) from e

    def get(self, ref: str | Path) -> Version:
        """A version by id ("v3", "3") or by its run folder."""
        text = str(ref)
        m = _VERSION_RE.match(text) or re.match(r"^(\d+)$", text)
        if m:
            path = self.versions_dir / f"v{int(m.group(1))}.json"
            if not path.is_file():
                known = ", ".join(v.version for v in self.versions()) or "none yet"
                raise RegistryError(
                    f"registry '{self.root}' has no version '{text}' (known: {known}); see `duet registry list`"
                )
            return self._read_version(path)
        run = Path(ref).resolve()
        for v in self.versions():
            if v.run == run:
                return v
        raise RegistryError(
            f"run '{ref}' is not registered in '{self.root}'; `duet registry promote {ref}` registers and promotes it"
        )

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
            raise RegistryError(
                f"'{self.pointer}' is damaged ({type(e).__name__}); "
                "re-promote a version with `duet registry promote VERSION`"
            ) from e
        return Champion(
            doc["version"], int(doc["seq"]), doc["since"], doc.get("reason", ""), tuple(doc.get("history", []))
        )

    def champion(self) -> Version | None:
        """The champion's version record, or None before the first promotion."""
        pointer = self.champion_pointer()
        return None if pointer is None else self.get(pointer.version)

    def events(self) -> list[dict[str, Any]]:
        """Every event, oldest first. Lock-free: a line a writer is appending at this
        moment (no newline yet) is not read, and a line that does not parse (cut off
        by a crash, before later appends) is skipped with a warning, so one damaged
        line never makes the registry unreadable."""
        if not self.events_file.is_file():
            return []
        text = self.events_file.read_text(encoding="utf-8", errors="replace")
        complete = text[: text.rfind("\n") + 1]
        found = []
        for number, line in enumerate(complete.splitlines(), 1):
            if not line.strip():
                continue
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is damaged and was skipped: %.80s", self.events_file, number, line)
        return found

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The writers' lock; whoever takes it first tidies what a killed writer left."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            try:
                import fcntl
            except ImportError:  # Windows: no flock; single-writer use only
                self._recover()
                yield
                return
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._recover()
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _recover(self) -> None:
        """Undo the traces of a writer killed mid-write (called under the lock, so
        no live writer owns them): its temp files, and a switch it logged but
        never made (the event's ``seq`` is above the pointer's)."""
        for folder, pattern in ((self.root, ".champion.json.*.tmp"), (self.versions_dir, ".v*.json.*.tmp")):
            for tmp in folder.glob(pattern) if folder.is_dir() else ():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        last = self._last_switch_event()
        if last is None or last["event"] == "switch_interrupted":
            return
        pointer = self.champion_pointer()
        if int(last.get("seq", 0)) > (pointer.seq if pointer else 0):
            self.log(
                "switch_interrupted",
                version=last.get("version"),
                seq=last.get("seq"),
                champion=pointer.version if pointer else None,
                note=f"the {last['event']} logged with seq {last.get('seq')} never reached champion.json "
                "(the writer stopped in between); the champion did not change",
                durable=True,
            )

    def _last_switch_event(self, block: int = 1 << 16) -> dict[str, Any] | None:
        """The newest promote / rollback / switch_interrupted line, read from the end of the log."""
        try:
            f = open(self.events_file, "rb")  # noqa: SIM115 (closed by the `with f` below; open alone may fail)
        except FileNotFoundError:
            return None
        with f:
            end = f.seek(0, os.SEEK_END)
            tail = b""
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                tail = f.read(end - start) + tail
                lines = tail.split(b"\n")
                complete, tail = (lines, b"") if start == 0 else (lines[1:], lines[0])
                for line in reversed(complete):
                    if b'"event"' in line:
                        with contextlib.suppress(json.JSONDecodeError):
                            row = json.loads(line)
                            if row.get("event") in _SWITCH_EVENTS:
                                return row
                end = start
        return None

    def log(self, event: str, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        """Append one event line (a single write of one line, so lines never interleave);
        ``durable``: fsync it before returning (the line survives a crash or power loss)."""
        self.root.mkdir(parents=True, exist_ok=True)
        row = {"time": _now(), "event": event, **fields}
        line = (json.dumps(row, default=str) + "\n").encode("utf-8")
        created = not self.events_file.exists()
        fd = os.open(self.events_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable and created:
            _fsync_dir(self.root)
        return row

    def register(
        self,
        run_dir: str | Path,
        *,
        parent: str | None = None,
        note: str = "",
        gate: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Version:
        """Add a finished run as a new version (or return its version if the same
        run with the same weights is already registered). ``gate``: the
        champion/challenger comparison that admitted it, kept in the record.

        Raises:
            RunError: the run did not finish training (unless ``force``; the
                record's ``training.forced`` then says it was forced).
        """
        from duet.artifacts.run_dir import (
            load_run,  # no torch: runs imports only the preprocess spec
        )

        run = load_run(run_dir)
        root = run.paths.root.resolve()
        training = check_finished(root, run.best, force=force)
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
                "training": training,
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
            forced: dict[str, Any] = {"forced": f"unfinished run: {_progress(training)}"} if training["forced"] else {}
            self.log("register", version=f"v{number}", run=str(root), parent=parent, note=note, **forced)
        return self.get(f"v{number}")

    def promote(self, ref: str | Path, *, reason: str = "", force: bool = False) -> Champion:
        """Make a version (or a run folder, registered first) the champion.

        Raises:
            RunError: the run (or the version's run, when it was registered)
                did not finish training, unless ``force``.
        """
        version = self._resolve_or_register(ref, force=force)
        if version.unfinished and not force:
            raise RunError(
                f"{version.version} ({version.run}) was registered before its training finished "
                f"({version.unfinished}); promote the finished run instead, or pass --force to "
                "promote it anyway"
            )
        with self._locked():
            current = self.champion_pointer()
            if current is not None and current.version == version.version:
                return current
            history = (*current.history, current.version) if current else ()
            forced = {"forced": f"unfinished run: {version.unfinished}"} if version.unfinished else {}
            return self._switch(
                "promote", version.version, current, history, reason or "promoted", reason=reason, **forced
            )

    def rollback(self, *, to: str | None = None, reason: str = "") -> Champion:
        """Return to the previous champion (or to an earlier champion ``to``)."""
        with self._locked():
            current = self.champion_pointer()
            if current is None:
                raise RegistryError(f"registry '{self.root}' has no champion yet; promote one first")
            if not current.history:
                raise RegistryError(
                    f"nothing to roll back to: {current.version} is the first champion of "
                    f"'{self.root}'; promote another version instead"
                )
            history = list(current.history)
            if to is None:
                target = history.pop()
            else:
                target = self.get(to).version
                if target not in history:
                    raise RegistryError(
                        f"{target} is not among the champions before {current.version} "
                        f"(the last {HISTORY_KEPT} are kept: {', '.join(history)}); "
                        f"use `duet registry promote {target}`"
                    )
                while history and history[-1] != target:
                    history.pop()
                history.pop()
            return self._switch(
                "rollback",
                target,
                current,
                tuple(history),
                reason or f"rolled back from {current.version}",
                reason=reason,
            )

    def _resolve_or_register(self, ref: str | Path, *, force: bool) -> Version:
        text = str(ref)
        if _VERSION_RE.match(text) or re.match(r"^\d+$", text):
            return self.get(text)
        # register() returns the existing version when these weights are registered
        # already, and a new one when the run changed since (e.g. it was resumed).
        return self.register(ref, force=force)

    def _switch(
        self, event: str, version: str, current: Champion | None, history: tuple[str, ...], why: str, **fields: Any
    ) -> Champion:
        """Log the switch, then move the pointer (call under the lock).

        The order is what makes the log trustworthy: (1) the event line, carrying
        the new ``seq``, is appended and fsynced; (2) only then is champion.json
        replaced (temp file, fsync, rename, fsync of the folder). A reader that
        sees pointer ``seq`` n therefore finds the event with ``seq`` n already
        in events.jsonl, even after a power loss. A crash between (1) and (2)
        leaves an event for a switch that did not happen; the next writer notes
        it (``switch_interrupted``, see ``_recover``) and reuses that ``seq``,
        so the event of seq n is the last line with that seq.
        """
        seq = (current.seq if current else 0) + 1
        kept = history[-HISTORY_KEPT:]
        row = self.log(
            event, durable=True, version=version, previous=current.version if current else None, seq=seq, **fields
        )
        doc = {"version": version, "seq": seq, "since": row["time"], "reason": why, "history": list(kept)}
        write_json_atomic(self.pointer, doc)
        _fsync_dir(self.root)
        return Champion(version, seq, doc["since"], why, kept)


def check_finished(root: Path, best: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """How far a run's training got, as the version record keeps it.

    A run finished when run.json's ``best.epochs_done`` reached config.yaml's
    ``epochs`` (``duet train --resume --epochs`` updates both) or it stopped
    early on patience; the loop writes both after each epoch. Anything else was
    stopped part-way (killed, crashed, interrupted) and raises :class:`RunError`
    unless ``force``."""
    from duet.artifacts.run_dir import RunPaths, read_config

    epochs = read_config(RunPaths(root)).get("epochs")
    done = int(best.get("epochs_done") or 0)
    stopped_early = bool(best.get("stopped_early"))
    finished = stopped_early or (isinstance(epochs, int) and done >= epochs)
    training = {
        "finished": finished,
        "epochs_done": done,
        "epochs": epochs,
        "stopped_early": stopped_early,
        "forced": bool(force and not finished),
    }
    if not finished and not force:
        raise RunError(
            f"run '{root}' did not finish training ({_progress(training)}; it was stopped part-way); "
            f"finish it with `duet train --resume {root}`, or use it anyway with "
            f"`duet registry promote {root} --force`"
        )
    return training


def _progress(training: dict[str, Any]) -> str:
    return f"{training.get('epochs_done', 0)} of {training.get('epochs', '?')} epochs done"


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
    metrics: dict[str, Any] = {
        "accuracy": best.get("val_accuracy"),
        "best_epoch": best.get("epoch"),
        "source": "validation (best epoch; it chose the epoch, so optimistic)",
    }
    if best.get("test_accuracy") is not None:
        metrics.update({"accuracy": best["test_accuracy"], "source": "test split (measured once after training)"})
    report = root / "eval" / "report.json"
    if report.is_file():
        try:
            doc = json.loads(report.read_text(encoding="utf-8"))
            m = doc["metrics"]
            split = doc.get("context", {}).get("split", "?")
            metrics.update(
                {
                    "accuracy": m["accuracy"],
                    "macro_f1": m["macro"]["f1"],
                    "source": f"eval/report.json (split: {split})",
                }
            )
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
