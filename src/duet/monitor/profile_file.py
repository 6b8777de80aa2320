"""Reading and writing a table's or text's drift profile file (``tabular_profile``,
``text_profile``): one compact JSON document with a ``schema`` tag, and a one-line
error naming what to do when it is missing, damaged or of another schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from duet.errors import ConfigError
from duet.system.atomic import write_text_atomic

P = TypeVar("P")


def save_profile(doc: dict[str, Any], path: Path) -> Path:
    """Write the profile atomically (one JSON file, compact: samples make it long)."""
    return write_text_atomic(Path(path), json.dumps(doc, ensure_ascii=False) + "\n")


def load_profile(
    path: str | Path,
    schema: str,
    error: Callable[[str], Exception],
    what: str,
    from_dict: Callable[[dict[str, Any]], P],
) -> P:
    """The profile at ``path`` parsed by ``from_dict``; ``error`` (a one-line message) when it cannot be.

    ``what``: the profile's kind in the message ("tabular", "text")."""
    path = Path(path)
    hint = f"write it again with `duet profile {path.parent.parent}`"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"no {what} drift profile at '{path}'; {hint}") from None
    except (OSError, ValueError) as e:
        raise error(f"'{path}' is damaged ({type(e).__name__}); {hint}") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        got = doc.get("schema") if isinstance(doc, dict) else None
        raise error(f"'{path}' has schema {got!r}, expected {schema!r}; {hint}")
    try:
        return from_dict(doc)
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise error(f"'{path}' is damaged ({type(e).__name__}: {e}); {hint}") from None
