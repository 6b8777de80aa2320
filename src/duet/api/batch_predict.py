"""Batch inference over many files for `duet predict`: batched, streamed, resumable, shardable.

- **Batched.** Files are decoded in a small thread pool (the server's exact
  decode, resize and centre crop: ``duet.serve.images`` for an exported format,
  the validation path of ``duet.evaluation.inference`` for a run's weights) and
  run ``batch_size`` at a time; the next batch decodes while this one runs.
- **Streamed.** One JSON object per file, as its batch completes: ``{"file",
  "top", "runtime"}`` or ``{"file", "error"}``; nothing is held for the end.
- **Resumable.** With an output file, the complete lines already in it are read
  first and their files skipped; a torn last line (a run killed mid-write) is cut
  off, and new lines are appended, flushed and fsynced per batch, so a run killed
  at any point loses at most the batch in flight. Complete lines are never
  rewritten.
- **Shardable.** ``--shard I/N`` keeps the files whose key hashes to ``I`` modulo
  ``N`` (sha256 of the path relative to the folder given, or of the file argument
  as given), so N jobs cover every file exactly once whatever the order or
  machine, and adding files to the folder never moves an old file to another shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from duet.api.exported import Target, open_format
from duet.errors import ConfigError, DataError
from duet.system.device import cpu_count

Result = dict[str, Any]
BATCH_SIZE = 32
_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Job ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def holds(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with ``0 <= I < N``; ``ConfigError`` otherwise."""
    m = _SHARD.match(text.strip())
    if m is None or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(
            f"`--shard` must be I/N with 0 <= I < N (job I of N, counted from 0), e.g. --shard 0/4. Received: {text}"
        )
    return Shard(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class Item:
    """A file to classify and its shard key (the path relative to the folder it was found in)."""

    path: Path
    key: str


def list_files(paths: Sequence[Path], shard: Shard | None = None) -> list[Item]:
    """Files stay as given; a folder becomes the images under it (recursively,
    by extension, hidden entries skipped, sorted). A folder without any is an error.
    With ``shard``, only that shard's files."""
    from duet.data.imageio import IMAGE_EXTENSIONS

    items: list[Item] = []
    for p in paths:
        if not p.is_dir():
            items.append(Item(p, p.as_posix()))
            continue
        found = sorted(
            f
            for f in p.rglob("*")
            if f.suffix.lower() in IMAGE_EXTENSIONS
            and f.is_file()
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not found:
            raise DataError(
                f"folder '{p}' holds no images (searched it recursively for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); pass image files or a folder of images"
            )
        items += [Item(f, f.relative_to(p).as_posix()) for f in found]
    return items if shard is None else [i for i in items if shard.holds(i.key)]


@dataclass(frozen=True)
class BatchModel:
    """``prepare`` one file into the model's uint8 input (raises ``DecodeError`` / ``OSError``);
    ``forward`` a stack of them into float32 ``(N, C)`` probabilities."""

    labels: list[str]
    runtime: str  # what runs the model, for the output
    prepare: Callable[[Path], np.ndarray]
    forward: Callable[[np.ndarray], np.ndarray]


def batch_model(target: Target, *, device: str = "auto", precision: str | None = None) -> BatchModel:
    """The run's PyTorch weights (format None) or the exported format on its runtime, over
    files decoded, resized and centre-cropped as the server does (``duet.serve.images``)."""
    from duet.data.imageio import DEFAULT_MAX_PIXELS

    if target.format is None:
        return _torch_model(target.folder, device, precision)
    from duet.serve.images import pixels_from_bytes

    opened = open_format(target)
    spec = opened.package.spec

    def prepare(path: Path) -> np.ndarray:
        return pixels_from_bytes(path.read_bytes(), spec, DEFAULT_MAX_PIXELS)

    return BatchModel(opened.package.labels, opened.describe(), prepare, opened.probabilities)


def _torch_model(run_dir: Path, device: str, precision: str | None) -> BatchModel:
    """The run's best weights over load squares decoded as ``duet.evaluation.inference``
    decodes them, centre-cropped and normalised on the device, a batch at a time."""
    import torch

    from duet.artifacts.run_dir import load_run
    from duet.data.imageio import DEFAULT_MAX_PIXELS
    from duet.evaluation.inference import forward_squares, load_model, load_square
    from duet.system.device import resolve_device
    from duet.training.precision import recorded_or

    info = load_run(run_dir)
    dev = resolve_device(device)
    model = load_model(info, dev)
    chosen = recorded_or(precision, info.precision, dev)
    spec = info.preprocess

    def prepare(path: Path) -> np.ndarray:
        return load_square(path, spec, DEFAULT_MAX_PIXELS)

    @torch.no_grad()
    def forward(squares: np.ndarray) -> np.ndarray:
        return forward_squares(model, torch.from_numpy(squares).to(dev), spec, dev, chosen)

    return BatchModel(list(info.labels), f"torch on {dev} ({info.paths.best}; {chosen.reason})", prepare, forward)


# --------------------------------------------------------------------------- resume


def read_done(output: Path) -> dict[str, Result]:
    """The results already in ``output`` by file (none when it does not exist). A torn
    last line (no newline: the writer was killed mid-line) is cut off the file; any
    other line that is not a result is refused, and the file left as it is."""
    if not output.parent.is_dir():
        raise ConfigError(f"--output '{output}': its folder does not exist; create it or pass another path")
    if not output.exists():
        return {}
    if not output.is_file():
        raise ConfigError(f"--output '{output}' is not a file; pass the path of a .jsonl file")
    data = output.read_bytes()
    complete = data.rfind(b"\n") + 1
    done: dict[str, Result] = {}
    for n, line in enumerate(data[:complete].splitlines(), 1):
        result = _parse_result(line)
        if result is None:
            raise ConfigError(
                f"--output '{output}' line {n} is not a `duet predict` result, so the file is not "
                "resumed (it is left as it is); pass a new file, or one `duet predict --output` wrote"
            )
        done[result["file"]] = result
    if complete < len(data):
        os.truncate(output, complete)  # only the torn tail: bytes this writer left half-written
    return done


def _parse_result(line: bytes) -> Result | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(obj, dict) and isinstance(obj.get("file"), str) and ("top" in obj or "error" in obj)
    return obj if ok else None


# --------------------------------------------------------------------------- the loop


@dataclass
class Summary:
    total: int  # files in the selection (this shard)
    skipped: int  # already in the output file
    predicted: int  # new results written by this run, errors included
    failed: int  # files with an error, the skipped ones included


def predict_files(
    model: BatchModel,
    items: Sequence[Item],
    emit: Callable[[list[Result]], None],
    *,
    top: int,
    done: dict[str, Result] | None = None,
    batch_size: int = BATCH_SIZE,
    threads: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Summary:
    """Classify every item not in ``done`` (keyed by ``str(path)``), in order, ``batch_size``
    at a time; ``emit`` gets each batch's results (it writes them), then ``on_batch`` the count."""
    done = done or {}
    todo = [i.path for i in items if str(i.path) not in done]
    failed = sum("error" in done[str(i.path)] for i in items if str(i.path) in done)
    summary = Summary(len(items), len(items) - len(todo), 0, failed)
    workers = threads or min(4, cpu_count())
    with ThreadPoolExecutor(workers, thread_name_prefix="duet-decode") as pool:
        for paths, prepared in _decoded_batches(pool, model.prepare, todo, batch_size):
            results = _run_batch(model, paths, prepared, top)
            emit(results)
            summary.predicted += len(results)
            summary.failed += sum("error" in r for r in results)
            if on_batch is not None:
                on_batch(len(results))
    return summary


def _decoded_batches(
    pool: ThreadPoolExecutor, prepare: Callable[[Path], np.ndarray], paths: list[Path], size: int
) -> Iterator[tuple[list[Path], list[np.ndarray | str]]]:
    """Batches of (paths, input or error reason), the next one decoding while the caller
    runs this one; at most two batches of decoded images are in memory."""

    def submit(start: int) -> list[Future[np.ndarray | str]]:
        return [pool.submit(_prepare_or_reason, prepare, p) for p in paths[start : start + size]]

    pending = submit(0)
    for start in range(0, len(paths), size):
        ready = [f.result() for f in pending]
        pending = submit(start + size)
        yield paths[start : start + size], ready


def _prepare_or_reason(prepare: Callable[[Path], np.ndarray], path: Path) -> np.ndarray | str:
    from duet.data.imageio import DecodeError

    try:
        return prepare(path)
    except DecodeError as e:
        return e.reason
    except OSError as e:
        return e.strerror or str(e)


def _run_batch(model: BatchModel, paths: list[Path], prepared: list[np.ndarray | str], top: int) -> list[Result]:
    from duet.evaluation.inference import top_k

    good = [i for i, x in enumerate(prepared) if not isinstance(x, str)]
    probs = model.forward(np.stack([prepared[i] for i in good])) if good else np.empty((0, len(model.labels)))
    row = {i: n for n, i in enumerate(good)}
    results: list[Result] = []
    for i, (path, x) in enumerate(zip(paths, prepared)):
        if isinstance(x, str):
            results.append({"file": str(path), "error": x})
        else:
            results.append(
                {"file": str(path), "top": top_k(probs[row[i]], model.labels, top), "runtime": model.runtime}
            )
    return results


class JsonlAppender:
    """Appends result lines to a file: one ``write`` per batch, flushed and fsynced,
    so a killed run leaves whole lines and at most one torn last line."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("ab")

    def __call__(self, results: list[Result]) -> None:
        self._f.write("".join(json_line(r) for r in results).encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def json_line(result: Result) -> str:
    return json.dumps(result, separators=(",", ":")) + "\n"


__all__ = [
    "BATCH_SIZE",
    "BatchModel",
    "Item",
    "JsonlAppender",
    "Shard",
    "Summary",
    "batch_model",
    "json_line",
    "list_files",
    "parse_shard",
    "predict_files",
    "read_done",
]
