"""The CLI's help states each default once, in the config models: TrainConfig for
train, lr-find and scan; ServeConfig and Limits for serve and bench serve."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from duet.cli import bench, data, monitor, serve, train
from duet.cli.common import drift_settings_default, serve_default, show_default, train_config_default
from duet.serve.settings import Limits, ServeConfig
from duet.training.config import TrainConfig


def _app(*modules: object) -> typer.Typer:
    app = typer.Typer(rich_markup_mode="rich")
    for module in modules:
        module.register(app)  # type: ignore[attr-defined]
    return app


def _help(app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def _defaults_shown(text: str) -> dict[str, str]:
    """``--flag -> shown default`` from a rendered help page (one option per line at 400 columns)."""
    shown = {}
    for line in text.splitlines():
        flag = re.search(r"(--[a-z0-9-]+)", line)
        default = re.search(r"\[default: ([^\]]*)\]", line)
        if flag and default:
            shown[flag.group(1)] = default.group(1)
    return shown


def test_train_help_shows_train_config_defaults() -> None:
    shown = _defaults_shown(_help(_app(train, data), "train"))
    fields = {"--epochs": "epochs", "--batch-size": "batch_size", "--lr": "lr", "--image-size": "image_size"}
    fields |= {"--model": "model", "--weights": "weights", "--val-split": "val_split", "--seed": "seed"}
    fields |= {"--hflip": "augment.hflip", "--ema": "ema", "--patience": "patience", "--out": "out"}
    for flag, field in fields.items():
        assert shown[flag] == show_default(train_config_default(field)), flag
    assert shown["--lr"] == "0.001" and shown["--hflip"] == "on" and shown["--epochs"] == "10"
    assert not any("{train:" in v for v in shown.values())


def test_a_changed_train_default_changes_the_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TrainConfig.model_fields["epochs"], "default", 37)
    assert _defaults_shown(_help(_app(train, data), "train"))["--epochs"] == "37"
    monkeypatch.setattr(TrainConfig.model_fields["val_split"], "default", 0.25)
    assert _defaults_shown(_help(_app(train, data), "scan"))["--val-split"] == "0.25"


def test_drift_help_shows_drift_settings_defaults_and_omitted_options_keep_them() -> None:
    from duet.cli.monitor import _drift_settings
    from duet.monitor.signals import DriftSettings

    shown = _defaults_shown(_help(_app(monitor), "drift"))
    flags = {"--alpha": "alpha", "--permutations": "permutations", "--min-images": "min_images"}
    flags["--embedding-test"] = "embedding_test"
    for flag, field in flags.items():
        assert shown[flag] == show_default(drift_settings_default(field)), flag
    assert shown["--alpha"] == "0.04" and shown["--min-images"] == "30"
    assert _drift_settings(None, None, None, None) == DriftSettings()
    assert _drift_settings(0.01, "ks", None, 50) == DriftSettings(alpha=0.01, embedding_test="ks", min_images=50)


def test_serve_defaults_are_the_serve_config_defaults() -> None:
    """Every `duet serve` option named after a ServeConfig or Limits field defaults to that field's default."""
    command = typer.main.get_command(_app(serve, bench))
    assert isinstance(command, typer.core.TyperGroup)
    options = {p.name: p.default for p in command.commands["serve"].params}
    checked = 0
    for cls, prefix in ((ServeConfig, ""), (Limits, "limits.")):
        for f in dataclasses.fields(cls):
            if f.name in options and f.default is not dataclasses.MISSING:
                assert options[f.name] == f.default == serve_default(prefix + f.name), f.name
                checked += 1
    assert checked >= 20
    bench_serve = {p.name: p.default for p in command.commands["bench"].commands["serve"].params}  # type: ignore[attr-defined]
    assert bench_serve["max_batch_size"] == ServeConfig.max_batch_size


@pytest.mark.e2e  # a fresh interpreter
def test_duet_help_imports_neither_torch_nor_the_config_models() -> None:
    code = (
        "import sys; import duet.cli.app; print(sorted(m for m in ('torch', 'pydantic', 'numpy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
