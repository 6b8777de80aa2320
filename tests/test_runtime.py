"""The `duet` command's process tuning and the library's triton guard (duet/system/process.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from duet.system import process as runtime


def test_sleeping_openmp_is_the_default_and_an_explicit_setting_wins() -> None:
    env: dict[str, str] = {"DUET_NO_MALLOPT": "1"}
    runtime.tune_process(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE", "DUET_NO_MALLOPT": "1"}
    runtime.tune_process(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.e2e
def test_the_cli_tunes_before_torch_is_imported() -> None:
    """libgomp reads OMP_WAIT_POLICY when torch loads: record its value at the
    moment anything imports torch, in a fresh interpreter running the CLI module."""
    code = """
import os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Spy())
import duet.cli.app
import torch
print(seen["torch"])
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"


_NOTEBOOK = """
import warnings
warnings.simplefilter("default")
import tensorflow
{duet_import}
import torch
from duet.training.models import build
from duet.training.step import cross_entropy, train_step
model = build("resnet18", 2)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
losses = [train_step(model, opt, x, y, loss_fn=cross_entropy(0.0)).loss for _ in range(3)]
print("steps", len(losses), all(l == l for l in losses))
"""


def _notebook(duet_import: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", _NOTEBOOK.format(duet_import=duet_import)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    "duet_import",
    [
        "import duet.training.loop",  # training
        "from duet.data.tfdata import import_tensorflow; import_tensorflow()",  # the tf backend: guarded, not "too late"
    ],
)
def test_tensorflow_imported_first_then_duet_trains_without_crashing(duet_import: str) -> None:
    """The notebook order: import tensorflow; import duet...; AdamW steps. Without the
    guard triton's LLVM binds to TensorFlow's and the process dies with SIGSEGV."""
    if (
        importlib.util.find_spec("tensorflow") is None
    ):  # never import it here: the test process would then crash later tests
        pytest.skip("tensorflow is not installed")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed: nothing can crash")
    proc = _notebook(duet_import)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "steps 3 True" in proc.stdout
    assert proc.stderr.count("torch.compile gets no triton kernels") == 1  # said once
    assert "can crash the process" not in proc.stderr


def test_the_guard_stays_out_of_the_way_when_torch_comes_first() -> None:
    modules: dict[str, object] = {"tensorflow": object(), "triton": object()}
    assert runtime.guard_triton(modules) is False and modules["triton"] is not None
    modules = {}
    assert runtime.guard_triton(modules) is False and "triton" not in modules
