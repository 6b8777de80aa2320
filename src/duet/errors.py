"""Errors a user can fix, each with a one-line message and an exit code.

The CLI prints ``error: <message>`` and exits with ``exit_code``; it shows the
traceback only with ``--debug``. Anything that is not a ``DuetError`` is a bug
and keeps its traceback.
"""

from __future__ import annotations


class DuetError(Exception):
    """Base class: a problem the user can act on. The message says what was
    wrong, what was received and what to do next."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(DuetError):
    """A bad option, config file or value."""

    exit_code = 2


class DataError(DuetError):
    """The data folder cannot be used as given (missing, empty, one class...)."""

    exit_code = 3


class ModelError(DuetError):
    """A model name, weights file or download that does not work."""

    exit_code = 4


class RunError(DuetError):
    """A run directory that is missing, incomplete or inconsistent."""

    exit_code = 5


class TrainingDiverged(DuetError):
    """Too many non-finite losses: the run stopped rather than write garbage."""

    exit_code = 6


class Interrupted(DuetError):
    """SIGINT/SIGTERM: a checkpoint was written; the message says how to resume."""

    exit_code = 130
