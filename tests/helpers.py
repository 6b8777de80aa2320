"""Shared helpers for end-to-end tests: real subprocesses of the CLI, real files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# The tier of the test now running, set by tests/conftest.py before its fixtures.
# True outside pytest (a script may use these helpers).
CURRENT_TEST = {"name": "", "e2e": True}


def require_e2e(what: str) -> None:
    """Fail a test that ``what`` (runs the CLI, starts a server) without the e2e mark,
    so `pytest -m "not e2e"` stays the fast tier."""
    if not CURRENT_TEST["e2e"]:
        raise AssertionError(
            f"{CURRENT_TEST['name']} {what}: mark it @pytest.mark.e2e (or the module: pytestmark = pytest.mark.e2e)"
        )


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run `python -m duet ARGS` in a fresh process, the way a user does (e2e tests only)."""
    require_e2e("runs the CLI in a subprocess")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "duet", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Assert a user-error exit: ``code``, no traceback, exactly one ``error: `` line holding every needle."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under root, to prove nothing was modified."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_digit_folder(root: Path, classes: tuple[int, ...] = (0, 1, 2), per_class: int = 30, size: int = 24) -> Path:
    """Real handwritten digits from scikit-learn, a few classes, as RGB PNG class folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in classes:
        folder = root / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(digits.target == c)[:per_class]
        for i in idx:
            arr = (255 - digits.images[i] * 255 / 16).round().astype(np.uint8)
            Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR).convert("RGB").save(
                folder / f"{i:04d}.png"
            )
    return root


# The smallest run the Python API tests train: one epoch of a tiny ResNet on 16 px images.
TINY: dict[str, Any] = {
    "model": "test_resnet",
    "image_size": 16,
    "batch_size": 16,
    "epochs": 1,
    "workers": 0,
    "device": "cpu",
    "precision": "fp32",
}
