"""A CPU server of an ONNX model needs no PyTorch: `duet serve` never loads it, and an
install without it (`pip install duet[serve]`) serves, while the training commands
say in one line which extra to install."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import run_cli
from serve_support import Server, running_server, val_files

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

# Python imports `sitecustomize` at start-up from PYTHONPATH: with this one,
# `import torch` (and timm, torchvision) fails as it does where they are not installed.
NO_TORCH = """
import sys


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "timm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture(scope="module")
def export(small_export: Path) -> Path:
    return small_export


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("no-torch-site")
    (site / "sitecustomize.py").write_text(NO_TORCH)
    return {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _mapped_libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {Path(line.split()[-1]).name for line in f if "/" in line}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


@pytest.fixture(scope="module")
def server(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(export, tmp_path_factory.mktemp("logs"), "--runtime", "onnxruntime") as s:
        yield s


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_the_onnx_server_never_maps_libtorch(server: Server, export: Path) -> None:
    path, _ = val_files(export.parent)[0]
    r = httpx.post(f"{server.url}/v1/predict", files=[("file", (path.name, path.read_bytes(), "image/png"))])
    assert r.status_code == 200, r.text
    httpx.get(f"{server.url}/v1/monitor")
    libraries = _mapped_libraries(server.process.pid)
    assert "libonnxruntime" in " ".join(libraries)  # the check sees the runtime that is used...
    assert not [lib for lib in libraries if "torch" in lib or "cudnn" in lib or "cublas" in lib], libraries
    assert _rss_mb(server.process.pid) < 500  # ...and PyTorch alone would add ~800 MB (docs/serving.md)


def test_serving_works_where_torch_cannot_be_imported(
    export: Path, no_torch_env: dict[str, str], server: Server, tmp_path: Path
) -> None:
    """The same answers from a server that could not import torch if it tried (a
    duet[serve] install), byte-level pixels included: its resize is NumPy's."""
    files = [p for p, _ in val_files(export.parent)[:6]]
    upload = [("file", (p.name, p.read_bytes(), "image/png")) for p in files]
    expected = httpx.post(f"{server.url}/v1/predict", files=upload, params={"top_k": 3}).json()
    with running_server(export, tmp_path, env=no_torch_env) as lean:
        r = httpx.post(f"{lean.url}/v1/predict", files=upload, params={"top_k": 3})
        assert r.status_code == 200, r.text
        for got, want in zip(r.json()["predictions"], expected["predictions"]):
            assert got["label"] == want["label"]
            assert abs(got["probability"] - want["probability"]) <= 1e-5, (got, want)
        assert "torch" not in lean.log_text().lower().replace("--runtime torch", "")


def test_training_commands_without_torch_name_the_extra_in_one_line(
    export: Path, no_torch_env: dict[str, str], tmp_path: Path
) -> None:
    run = export.parent
    for args in (
        ["train", str(tmp_path)],
        ["evaluate", str(run)],
        ["export", str(run), "--out", str(tmp_path / "x")],
        ["serve", str(export), "--runtime", "torch", "--port", "0"],
    ):
        proc = run_cli(*args, env=no_torch_env)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "pip install 'duet[train]'" in errors[0], (args, proc.stderr)
    # and what needs no torch still works
    assert run_cli("--help", env=no_torch_env).returncode == 0
    info = run_cli("scan", str(json.loads((run / "run.json").read_text())["data_dir"]), "--json", env=no_torch_env)
    assert info.returncode == 0, info.stderr
