"""Real text corpora that ship with the installed packages (no download): the demo's and the benchmark's.

Every corpus is documentation: the docstrings of functions and classes, read
from the source files with ``ast`` (nothing is imported), and the class is the
module or library they document ("which module documents this?"). Two are named:

- ``stdlib``: the standard library's ``STDLIB_MODULES`` (9 modules, about 690
  docstrings on Python 3.11), the corpus of ``duet demo --text``; every class
  has over 40 documents, so a test split can be held out. ``FOREIGN_MODULES``
  are other stdlib modules, documentation the model never saw (the demo's
  shifted texts).
- ``libs``: docstrings longer than 40 characters of seven installed libraries
  (``LIBRARIES``), at most 400 per library, drawn with a fixed seed.

The docstrings depend on the Python and library versions installed, so the
corpora are stable on one machine, not across them. ``write_text_folder``
writes a corpus in the Keras layout (a folder of class folders of .txt files),
as a user's corpus would be.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from duet.errors import ConfigError, DataError
from duet.system.atomic import write_text_atomic

# class -> the stdlib source file (relative to the stdlib folder) whose docstrings it holds
STDLIB_MODULES: dict[str, str] = {
    "email": "email/message.py",
    "inspect": "inspect.py",
    "logging": "logging/__init__.py",
    "pathlib": "pathlib.py",
    "subprocess": "subprocess.py",
    "tarfile": "tarfile.py",
    "typing": "typing.py",
    "unittest": "unittest/case.py",
    "zipfile": "zipfile.py",
}
FOREIGN_MODULES: dict[str, str] = {
    "asyncio": "asyncio/events.py",
    "http": "http/client.py",
    "ssl": "ssl.py",
    "statistics": "statistics.py",
    "fractions": "fractions.py",
}
LIBRARIES: tuple[str, ...] = ("numpy", "sklearn", "torch", "pandas", "pydantic", "rich", "mlflow")
CORPORA: tuple[str, ...] = ("stdlib", "libs")
LIBRARY_MIN_CHARS = 40
LIBRARY_PER_CLASS = 400

_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def docstrings(path: Path, *, min_chars: int = 0) -> list[str]:
    """The raw docstrings of every function and class in a Python file (read with ``ast``; [] when unparsable)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = (n for n in ast.walk(tree) if isinstance(n, _DEFINITIONS))
    return [d for n in nodes if (d := ast.get_docstring(n, clean=False)) and len(d) > min_chars]


def stdlib_root() -> Path:
    """The standard library's folder (where ``json/`` lives)."""
    return Path(json.__file__).resolve().parent.parent


def stdlib_corpus(modules: Mapping[str, str] = STDLIB_MODULES) -> dict[str, list[str]]:
    """class -> the docstrings of that stdlib source file; DataError when one is missing or has none."""
    root, corpus = stdlib_root(), {}
    for label, relative in modules.items():
        path = root / relative
        corpus[label] = docstrings(path)
        if not corpus[label]:
            raise DataError(f"no docstring found in the standard library's {path} (class {label})")
    return corpus


def library_corpus(
    libraries: Sequence[str] = LIBRARIES,
    *,
    per_class: int = LIBRARY_PER_CLASS,
    min_chars: int = LIBRARY_MIN_CHARS,
    seed: int = 0,
) -> dict[str, list[str]]:
    """library -> at most ``per_class`` of its docstrings (over ``min_chars``; test folders left out), seeded.

    DataError when a library is not installed or has no such docstring."""
    corpus = {}
    for name in libraries:
        spec = importlib.util.find_spec(name)  # finds the package without importing it
        if spec is None or spec.origin is None:
            raise DataError(f"the library '{name}' is not installed: the 'libs' corpus needs {', '.join(libraries)}")
        docs = []
        for path in sorted(Path(spec.origin).parent.rglob("*.py")):
            if not {"test", "tests"} & set(path.parts):
                docs += docstrings(path, min_chars=min_chars)
        if not docs:
            raise DataError(f"no docstring over {min_chars} characters in the library '{name}'")
        random.Random(seed).shuffle(docs)
        corpus[name] = docs[:per_class]
    return corpus


def named_corpus(name: str) -> dict[str, list[str]]:
    """The corpus called ``name`` (one of ``CORPORA``); ConfigError for another name."""
    if name == "stdlib":
        return stdlib_corpus()
    if name == "libs":
        return library_corpus()
    raise ConfigError(f"a text corpus is one of {', '.join(CORPORA)}. Received: {name!r}")


def write_text_folder(corpus: Mapping[str, Sequence[str]], root: Path) -> Path:
    """``root/<class>/<nnnn>.txt``, one UTF-8 file per document, each written atomically; returns ``root``.

    Text that cannot be UTF-8 (a lone surrogate in a docstring) is written with U+FFFD in its place."""
    for label, texts in corpus.items():
        for i, text in enumerate(texts):
            clean = text.encode("utf-8", "replace").decode("utf-8")
            write_text_atomic(Path(root) / label / f"{i:04d}.txt", clean)
    return Path(root)
