"""What the CLI modules share: output (results on stdout, logs on stderr) and
help defaults read from the config models.

Defaults are stated once, in the config models (``TrainConfig`` in
duet/training/config.py, ``ServeConfig`` and ``Limits`` in duet/serve/settings.py).
A help text names a ``TrainConfig`` default with :func:`train_default`; the
placeholder is filled when that command's help is shown (``DefaultsFromConfig``),
so ``duet --help`` does not import pydantic. ``ServeConfig`` is a torch-free
dataclass: :func:`serve_default` reads it at import.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from duet.system.progress import console

out = Console()  # results on stdout; progress bars and logs go to `console` (stderr)


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


# --------------------------------------------------------------------------- defaults

_PLACEHOLDER = re.compile(r"\{(train|drift):([a-z_.]+)\}")


def train_default(field: str) -> str:
    """``\\[default: X]`` for a help text, X being ``TrainConfig``'s default of
    ``field`` (``augment.hflip`` reaches into a nested model). Filled in when the
    help is shown, by commands registered with ``cls=DefaultsFromConfig``."""
    return f"\\[default: {{train:{field}}}]"


def show_default(value: Any) -> str:
    """A default as the help shows it: on/off for flags, 0.001 for floats."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def train_config_default(field: str) -> Any:
    """``TrainConfig``'s default for ``field`` (dotted for nested models), read from the model."""
    from duet.training.config import TrainConfig

    model: Any = TrainConfig
    *parents, leaf = field.split(".")
    for name in parents:
        model = model.model_fields[name].annotation
    info = model.model_fields[leaf]
    return info.get_default(call_default_factory=True)


def drift_default(field: str) -> str:
    """``\\[default: X]`` for a help text, X being ``DriftSettings``' default of ``field``
    (duet/monitor/signals.py), filled in when the help is shown like :func:`train_default`."""
    return f"\\[default: {{drift:{field}}}]"


def drift_settings_default(field: str) -> Any:
    """``DriftSettings``' default for ``field``, read from the dataclass (imports numpy, not torch)."""
    from duet.monitor.signals import DriftSettings

    for f in dataclasses.fields(DriftSettings):
        if f.name == field:
            return f.default
    raise KeyError(f"DriftSettings has no field {field!r}")


def fill_defaults(text: str) -> str:
    """``text`` with each :func:`train_default` / :func:`drift_default` placeholder replaced by the model's default."""
    readers = {"train": train_config_default, "drift": drift_settings_default}
    return _PLACEHOLDER.sub(lambda m: show_default(readers[m.group(1)](m.group(2))), text)


class DefaultsFromConfig(typer.core.TyperCommand):
    """A command whose help fills :func:`train_default` placeholders from ``TrainConfig``
    (importing it only when the help is shown)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            text = getattr(param, "help", None)
            if text and ("{train:" in text or "{drift:" in text):
                param.help = fill_defaults(text)  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


def serve_default(field: str) -> Any:
    """``ServeConfig``'s default for ``field`` (``limits.NAME`` for ``Limits``), read from the dataclass."""
    from duet.serve.settings import Limits, ServeConfig

    cls: Any = Limits if field.startswith("limits.") else ServeConfig
    name = field.removeprefix("limits.")
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise KeyError(f"{cls.__name__}.{name} has no plain default")
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


# The model a command runs (duet evaluate, duet predict): the runtime follows the file.
MODEL_ARG = typer.Argument(
    ...,
    help="A run folder made by `duet train` (PyTorch), its export folder (ONNX), or an exported file: model.onnx, model.int8.onnx, model*.tflite, savedmodel/<name>/1. The runtime follows the file.",
)
FORMAT_OPTION = typer.Option(
    None,
    "--format",
    help="Run this exported format of the run's (or model folder's) export instead: onnx | onnx-int8 | savedmodel | tflite | tflite-fp16 | tflite-int8.",
)
