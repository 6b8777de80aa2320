"""Atomically written files get the mode a plain open() gives under the process umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_digit_folder

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

TINY = ["--epochs", "1", "--image-size", "16", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--quiet"]


def _duet(args: list[str], umask: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "duet", *args], env=env, umask=umask, capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_checkpoint_and_registry_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """A serving account that follows --registry, or a teammate, can read them under umask 022."""
    data = write_digit_folder(tmp_path / "d", classes=(1, 7), per_class=8, size=16)
    run = tmp_path / "runs" / "r"
    trained = _duet(["train", str(data), "--out", str(tmp_path / "runs"), "--name", "r", *TINY], umask)
    assert trained.returncode == 0, trained.stderr
    promoted = _duet(["registry", "promote", str(run), "--registry", str(tmp_path / "reg")], umask)
    assert promoted.returncode == 0, promoted.stderr
    files = [
        run / "run.json",
        run / "config.yaml",
        run / "data_report.json",
        run / "checkpoints" / "last.pt",
        run / "checkpoints" / "best.safetensors",
        tmp_path / "reg" / "champion.json",
        tmp_path / "reg" / "versions" / "v1.json",
    ]
    expected = 0o666 & ~umask
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {k: oct(expected) for k in modes}
    assert not list(run.rglob(".*.tmp"))  # no temp file left behind


def test_umask_is_read_without_being_changed() -> None:
    code = (
        "import os; os.umask(0o027); from duet.system.atomic import current_umask; "
        "print(oct(current_umask()), oct(os.umask(0o027)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0o27", "0o27"]
