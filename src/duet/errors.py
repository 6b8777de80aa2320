"""Errors a user can fix, each with a one-line message and an exit code.

The CLI prints ``error: <message>`` and exits with ``exit_code``; it shows the
traceback only with ``--debug``. Anything that is not a ``DuetError`` is a bug:
it keeps its traceback and exits 70.

Exit codes: ``EXIT_CODES`` below is the table, each code one meaning, with the
classes that carry it; README.md shows the same table and
tests/test_exit_codes.py pins both, class by class and with one real `duet`
invocation per code. ``duet.cli.app.main`` is the only place that exits.

``DuetError`` itself is abstract: raise the subclass whose code says what went wrong.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "the drift gate failed (--fail-on-drift: drift found, or too few images to decide)",  # DriftGateFailed
    2: "a bad option, config file or value; a missing extra",  # ConfigError, MissingExtra, click usage errors
    3: "unusable data",  # DataError (also files `duet predict` cannot read)
    4: "a model, weights, export or parity problem",  # ModelError, ArtifactError, ParityError, QuantizeError, FormatGateError
    5: "a run folder that is missing, incomplete or inconsistent",  # RunError, RunFinished, ProfileError
    6: "the training run diverged",  # TrainingDiverged
    7: "a registry operation that cannot be done as asked",  # RegistryError (duet.artifacts.registry)
    8: "a benchmark's server failed to start or answered errors",  # BenchError (duet.bench.serve)
    70: "an unexpected error: a bug in duet (traceback shown)",  # anything that is not a DuetError
    130: "interrupted (SIGINT/SIGTERM)",  # Interrupted, KeyboardInterrupt
}
BUG_EXIT_CODE = 70  # EX_SOFTWARE (sysexits.h)
INTERRUPTED_EXIT_CODE = 130


class DuetError(Exception):
    """Base class: a problem the user can act on. The message says what was
    wrong, what was received and what to do next.

    Abstract: every subclass states an ``exit_code`` from ``EXIT_CODES`` (checked
    when the class is defined), and ``DuetError(...)`` itself cannot be raised."""

    exit_code: ClassVar[int]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        code = getattr(cls, "exit_code", None)
        if code not in EXIT_CODES or code in (0, BUG_EXIT_CODE):
            raise TypeError(f"{cls.__name__}.exit_code must be one of the user-error codes in EXIT_CODES, not {code}")

    def __init__(self, message: str) -> None:
        if type(self) is DuetError:
            raise TypeError("DuetError is abstract: raise the subclass that says what went wrong (ConfigError, ...)")
        super().__init__(message)
        self.message = message


class DriftGateFailed(DuetError):
    """``--fail-on-drift``: the window drifted, or it is too small to decide."""

    exit_code = 1


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


class RunFinished(RunError):
    """``--resume`` of a run that already trained all its epochs (its records are
    brought up to its last checkpoint first); ``run_dir`` names it."""

    def __init__(self, message: str, run_dir: str) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class TrainingDiverged(DuetError):
    """Too many non-finite losses: the run stopped rather than write garbage."""

    exit_code = 6


class Interrupted(DuetError):
    """SIGINT/SIGTERM: a checkpoint was written; the message says how to resume."""

    exit_code = 130
