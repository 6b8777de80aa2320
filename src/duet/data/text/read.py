"""A text corpus -> documents with a label each, and every file skipped or decoded with replacement, and why.

Two layouts (``TextCorpus.layout``):

- **folder**: a folder of class folders of ``.txt`` files, Keras
  ``text_dataset_from_directory``'s layout: ``corpus/neg/0001.txt``; a class
  folder's sub-folders count for that class. Hidden files and folders (a name
  starting with ".") and files not ending in ``.txt`` (any case) are ignored and
  counted (``TextCorpus.ignored``), as are files at the top level.
- **table**: a CSV/TSV/Parquet file with a text column and a target column,
  read by ``duet.data.tabular.read`` (one reader for tables: its encoding rule,
  CSV quoting, line numbers and skipped rows). The text column is read as
  ``text`` kind: stripped, and a missing cell (empty, "NA", ...) skips its row.

What a file can do to a folder corpus, each reported, never silent:

- over ``max_doc_bytes`` (default 1 MB): skipped with its size, before it is
  read (a 10 MB document costs a ``stat``, not 10 MB of memory);
- a NUL byte, or more than ``BINARY_FRACTION`` of its bytes not UTF-8:
  skipped as binary (an image or archive named .txt); a UTF-16 file (its
  byte-order mark) is skipped with that reason;
- some bytes not UTF-8 (a Latin-1 file among UTF-8 ones): decoded with
  U+FFFD replacement characters, kept, and listed in ``replaced`` with how many
  bytes were replaced (``replaced_bytes``);
- unreadable (permissions) or not a regular file (a FIFO): skipped with the reason.
A UTF-8 byte-order mark is dropped; empty files are kept (``duet scan`` reports
them). The corpus is only ever read.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from duet.data.imageio import IMAGE_EXTENSIONS
from duet.data.tabular.read import is_table_file, read_table
from duet.errors import ConfigError, DataError

TEXT_SUFFIX = ".txt"
MAX_DOC_BYTES = 1_000_000
BINARY_FRACTION = 0.3  # more undecodable bytes than this: binary, not text in another encoding
_ESCAPED = re.compile("[\udc80-\udcff]")  # one per undecodable byte under errors="surrogateescape"


@dataclass
class TextCorpus:
    """Documents in reading order (sorted paths, or file order), one label and one origin each."""

    texts: list[str]
    labels: list[str]
    classes: tuple[str, ...]  # sorted labels of the kept documents
    origins: list[str]  # "neg/0001.txt" or "reviews.csv line 17"
    source: Path
    layout: str  # "folder" | "table"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (origin, reason)
    replaced: list[str] = field(default_factory=list)  # origins decoded with U+FFFD replacement
    replaced_bytes: dict[str, int] = field(default_factory=dict)  # origin -> undecodable bytes
    ignored: dict[str, int] = field(default_factory=dict)  # why -> how many files ("hidden", "not .txt", ...)
    empty_classes: list[str] = field(default_factory=list)  # class folders with no kept document


def is_text_folder(path: str | Path) -> bool:
    """A folder of class folders holding ``.txt`` files and no image (``duet scan``/``train`` dispatch on it)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return False
    found = False
    for rel, _ in _class_files(root):
        if _ignore_reason(rel) == "hidden":
            continue
        suffix = Path(rel).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return False
        found = found or suffix == TEXT_SUFFIX
    return found


def read_corpus(
    path: str | Path,
    *,
    text_column: str | None = None,
    target: str | None = None,
    max_doc_bytes: int = MAX_DOC_BYTES,
) -> TextCorpus:
    """Read a text corpus: a folder of class folders, or a table file with ``text_column`` and ``target``.

    Raises:
        DataError: the path does not exist, is neither layout, or no document is left.
        ConfigError: a table without ``text_column``/``target``, or those options given for a folder.
    """
    source = Path(path).expanduser()
    if max_doc_bytes < 1:
        raise ConfigError(f"max_doc_bytes must be at least 1. Received: {max_doc_bytes}")
    if not source.exists():
        raise DataError(f"'{source}' does not exist")
    if source.is_file() and is_table_file(source):
        return _read_table_corpus(source, text_column, target, max_doc_bytes)
    if text_column is not None or target is not None:
        raise ConfigError("--text-column and --target are for a table file; a text folder's classes are its folders")
    if not source.is_dir():
        raise DataError(f"'{source}' is neither a folder of class folders of .txt files nor a table file")
    return _read_folder(source, max_doc_bytes)


# ---------------------------------------------------------------- folder layout


def _class_files(root: Path) -> Iterator[tuple[str, str]]:
    """``(relative path, class)`` of every file under a class folder, sorted, hidden ones included."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=True):
            continue
        for folder, dirs, files in os.walk(entry.path):
            dirs.sort()
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(folder, name), root)
                yield Path(rel).as_posix(), entry.name


def _ignore_reason(rel: str) -> str | None:
    if any(part.startswith(".") for part in rel.split("/")):
        return "hidden"
    if not rel.lower().endswith(TEXT_SUFFIX):
        return "not .txt"
    return None


def _read_folder(root: Path, max_doc_bytes: int) -> TextCorpus:
    corpus = TextCorpus([], [], (), [], root, "folder")
    top_level = [e.name for e in os.scandir(root) if e.is_file()]
    if top_level:
        corpus.ignored["at the top level (not in a class folder)"] = len(top_level)
    class_folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    for rel, label in _class_files(root):
        why = _ignore_reason(rel)
        if why:
            corpus.ignored[why] = corpus.ignored.get(why, 0) + 1
            continue
        text, problem, bad = read_document(root / rel, max_doc_bytes)
        if text is None:
            corpus.skipped.append((rel, problem))
            continue
        if bad:
            corpus.replaced.append(rel)
            corpus.replaced_bytes[rel] = bad
        corpus.texts.append(text)
        corpus.labels.append(label)
        corpus.origins.append(rel)
    corpus.classes = tuple(sorted(set(corpus.labels)))
    corpus.empty_classes = sorted(set(class_folders) - set(corpus.classes))
    if not corpus.texts:
        raise DataError(_nothing_read(root, corpus, class_folders))
    return corpus


def _nothing_read(root: Path, corpus: TextCorpus, class_folders: list[str]) -> str:
    if corpus.skipped:
        origin, reason = corpus.skipped[0]
        return f"no document of {root} could be read: all {len(corpus.skipped)} skipped (first, {origin}: {reason})"
    if not class_folders:
        return f"{root} has no class folder; put each class's .txt files in a folder named after the class"
    ignored = ", ".join(f"{n} {why}" for why, n in corpus.ignored.items()) or "none"
    return f"{root} has no .txt file in its class folders ({', '.join(class_folders[:5])}); files ignored: {ignored}"


def read_document(path: Path, max_doc_bytes: int = MAX_DOC_BYTES) -> tuple[str | None, str, int]:
    """``(text, "", undecodable bytes)`` for a usable file, else ``(None, reason, 0)`` (module docstring)."""
    try:
        info = path.stat()
        size = info.st_size
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file", 0
        if size > max_doc_bytes:
            return None, f"{_size(size)}, over the {_size(max_doc_bytes)} limit for one document", 0
        data = path.read_bytes()
    except OSError as e:
        return None, f"not readable ({e.strerror or e})", 0
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None, "UTF-16 text (byte-order mark), not UTF-8; save it as UTF-8", 0
    if b"\x00" in data:
        return None, "binary (NUL bytes), not text", 0
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), "", 0
    except UnicodeDecodeError:
        pass
    bad = len(_ESCAPED.findall(data.decode("utf-8", "surrogateescape")))
    if bad > BINARY_FRACTION * len(data):
        return None, f"binary ({100 * bad / len(data):.0f}% of its bytes are not UTF-8), not text", 0
    return data.decode("utf-8", "replace"), "", bad


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


# ---------------------------------------------------------------- table layout


def _read_table_corpus(source: Path, text_column: str | None, target: str | None, max_doc_bytes: int) -> TextCorpus:
    if text_column is None or target is None:
        raise ConfigError(
            f"a table file needs --text-column and --target: duet scan {source} --text-column <text> --target <label>"
        )
    if text_column == target:
        raise ConfigError(f"--text-column and --target are both '{target}'; the text and the labels are two columns")
    try:
        data = read_table(source, target, kinds={text_column: "text"})
    except ConfigError as e:
        if "not a column of the table" in str(e):
            raise DataError(f"no column '{text_column}' in {source}; pass --text-column <column>") from None
        raise
    corpus = TextCorpus([], [], (), [], source, "table")
    corpus.skipped = [(f"{source.name} {data.unit} {s.line}", s.reason) for s in data.skipped]
    for text, label, line in zip(data.table[text_column], data.table[target], data.lines.tolist()):
        origin = f"{source.name} {data.unit} {line}"
        if text is None:
            corpus.skipped.append((origin, f"no text in the column '{text_column}'"))
        elif (size := len(text.encode("utf-8", "replace"))) > max_doc_bytes:
            corpus.skipped.append((origin, f"{_size(size)}, over the {_size(max_doc_bytes)} limit for one document"))
        else:
            corpus.texts.append(text)
            corpus.labels.append(str(label))
            corpus.origins.append(origin)
    corpus.skipped.sort(key=lambda s: int(s[0].rsplit(" ", 1)[1]))
    corpus.classes = tuple(sorted(set(corpus.labels)))
    if not corpus.texts:
        first = f" (first, {corpus.skipped[0][0]}: {corpus.skipped[0][1]})" if corpus.skipped else ""
        raise DataError(f"no document of {source} could be read{first}")
    return corpus
