"""A run that cannot start leaves nothing behind, fails fast and says why in one line.

Each case is a real subprocess (`duet train`, or a tiny program calling
`duet.training.loop.train` when the test injects a fault); after it, the same
--name is free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import run_cli, write_digit_folder

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

TINY = ["--epochs", "1", "--image-size", "16", "--batch-size", "8", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("start") / "d", classes=(1, 7), per_class=8, size=16)


def _refused(proc: object, code: int, words: str) -> None:
    assert proc.returncode == code, proc.stderr  # type: ignore[attr-defined]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert lines[-1].startswith("error:") and words in lines[-1], proc.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in proc.stderr  # type: ignore[attr-defined]


def test_unknown_model_leaves_no_folder_and_the_name_stays_free(data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = run_cli("train", str(data), "--model", "nosuchmodel", "--out", str(runs), "--name", "x", *TINY)
    _refused(proc, 4, "unknown model 'nosuchmodel'")
    assert not (runs / "x").exists()
    again = run_cli("train", str(data), "--out", str(runs), "--name", "x", "--device", "cpu", *TINY)
    assert again.returncode == 0, again.stderr
    assert (runs / "x" / "checkpoints" / "best.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_leaves_no_folder(data: Path, tmp_path: Path) -> None:
    proc = run_cli("train", str(data), "--device", "cuda", "--out", str(tmp_path / "runs"), "--name", "x", *TINY)
    _refused(proc, 2, "no CUDA device is available")
    assert not (tmp_path / "runs" / "x").exists()


def _offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An empty hub cache, and no proxy: nothing can come from anywhere."""
    env = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), **extra}
    for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env[key] = ""
    return env


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE=1", "hub unreachable"])
def test_imagenet_weights_offline_fail_fast_and_leave_no_folder(data: Path, tmp_path: Path, how: str) -> None:
    """Before: ~51 s of hub retries with the network down, and a half run folder.
    'hub unreachable' points the hub at a host that cannot resolve (HF_ENDPOINT,
    the reserved .invalid domain: what an offline machine sees for huggingface.co),
    so the test never downloads, online or not; the probe is bounded at 2 s."""
    if how == "HF_HUB_OFFLINE=1":
        env = _offline_env(tmp_path, HF_HUB_OFFLINE="1")
    else:
        env = _offline_env(tmp_path, HF_HUB_OFFLINE="", HF_ENDPOINT="https://duet-test.invalid")
    t0 = time.monotonic()
    proc = run_cli(
        "train", str(data), "--weights", "imagenet", "--out", str(tmp_path / "runs"), "--name", "x", *TINY, env=env
    )
    seconds = time.monotonic() - t0
    why = "HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE=1" else "duet-test.invalid is not reachable"
    _refused(proc, 4, why)
    assert "--weights PATH" in proc.stderr
    assert not (tmp_path / "runs" / "x").exists()
    assert seconds < 15, f"took {seconds:.1f} s"  # a loose bound for a loaded machine; the process start is most of it


def test_fixed_size_model_that_cannot_take_the_size_is_refused_up_front(data: Path, tmp_path: Path) -> None:
    """torchvision's ViT asserts its 224 px input size: one line naming it, no folder."""
    proc = run_cli(
        "train",
        str(data),
        "--model",
        "torchvision:vit_b_16",
        "--image-size",
        "32",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "x",
        *TINY[:2],
        "--workers",
        "0",
        "--quiet",
    )
    _refused(proc, 4, "cannot take 32x32 images")
    assert "--image-size 224" in proc.stderr
    assert not (tmp_path / "runs" / "x").exists()


# The fault is injected by the test (duet.training.faults.FaultPlan), not by a user's
# config: a tiny program calls duet.training.loop.train in a fresh process.
_DRIVER = """
import json, sys
from duet.errors import DuetError
from duet.training.config import build_config
from duet.training.faults import FaultPlan
from duet.training.loop import train
settings, faults = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:
    train(build_config(overrides=settings), faults=FaultPlan(**faults), log=lambda line: print(line, file=sys.stderr))
except DuetError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
"""


def test_a_run_that_fails_before_its_first_checkpoint_removes_its_folder(data: Path, tmp_path: Path) -> None:
    """The safety net for failures past the checks: non-finite losses from the first step."""
    runs = tmp_path / "runs"
    settings = dict(data_dir=str(data), out=str(runs), name="x", device="cpu", max_bad_steps=0)
    settings.update(epochs=1, image_size=16, batch_size=8, workers=0)  # TINY
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(settings), json.dumps({"nan": [0, 1, 2]})],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 6, proc.stderr  # TrainingDiverged
    assert "no checkpoint had been written yet" in proc.stderr and f"removed {runs / 'x'}" in proc.stderr
    assert not (runs / "x").exists() and runs.is_dir()  # only the run's own folder went


@pytest.fixture(scope="module")
def vit_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("vit") / "runs"
    proc = run_cli(
        "train",
        str(data),
        "--model",
        "vit_tiny_patch16_224",
        "--image-size",
        "32",
        "--out",
        str(runs),
        "--name",
        "vit",
        "--device",
        "cpu",
        *TINY[:2],
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs / "vit"


def test_fixed_size_timm_model_trains_at_another_size(vit_run: Path) -> None:
    """Before: an AssertionError and a 75-line traceback. timm builds the ViT for
    32 px (2x2 patches of 16); evaluation and prediction rebuild it the same way."""
    info = json.loads((vit_run / "run.json").read_text())
    assert info["model"] == "vit_tiny_patch16_224" and info["preprocess"]["image_size"] == 32
    assert info["best"]["epochs_done"] == 1


def test_predict_takes_a_folder_recursively_images_only_sorted(vit_run: Path, data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    (folder / "b" / "deep").mkdir(parents=True)
    sources = sorted((data / "1").glob("*.png"))
    for dest in (folder / "z.png", folder / "b" / "deep" / "a.png", folder / "a.PNG"):
        dest.write_bytes(sources[0].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.png").write_bytes(sources[0].read_bytes())
    proc = run_cli("predict", str(vit_run), str(folder), "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    files = [json.loads(line)["file"] for line in proc.stdout.splitlines()]
    assert files == [str(folder / "a.PNG"), str(folder / "b" / "deep" / "a.png"), str(folder / "z.png")]


def test_predict_on_a_folder_without_images_says_so(vit_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("x")
    proc = run_cli("predict", str(vit_run), str(tmp_path / "empty"))
    _refused(proc, 3, "holds no images")
