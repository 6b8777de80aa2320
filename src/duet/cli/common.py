"""Small output helpers shared by the CLI modules (results on stdout, logs on stderr)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from duet.system.progress import console


def stderr_log(quiet: bool) -> Callable[[str], None]:
    """A log function for stage code: one plain line on stderr, or nothing."""

    def log(msg: str) -> None:
        if not quiet:
            console.print(msg, highlight=False, markup=False, soft_wrap=True)

    return log


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"
