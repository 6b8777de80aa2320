"""Shared by the export and serve tests: the builders of one small trained run and
its export per test session (the ``small_run`` and ``small_export`` fixtures of
conftest.py call them), and a real `duet serve` process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers import require_e2e, run_cli, write_digit_folder

FAST = ["--image-size", "24", "--batch-size", "16", "--workers", "0", "--quiet"]


def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained run (3 digit classes, 24 px), made once per session and
    shared by every module that asks (read-only: copy it before changing it)."""
    root = tmp_path_factory.getbasetemp() / "shared-serve-run"
    run = root / "runs" / "digits"
    if not (run / "checkpoints" / "best.safetensors").is_file():
        data = write_digit_folder(root / "data", classes=(0, 1, 7), per_class=30)
        proc = run_cli(
            "train",
            str(data),
            "--epochs",
            "1",
            "--out",
            str(root / "runs"),
            "--name",
            "digits",
            "--device",
            "cpu",
            *FAST,
        )
        assert proc.returncode == 0, proc.stderr
    return run


def shared_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared run exported to RUN/export (once per session)."""
    run = shared_run(tmp_path_factory)
    if not (run / "export" / "model.json").is_file():
        proc = run_cli("export", str(run), "--json")
        assert proc.returncode == 0, proc.stderr
        (run.parent / "export-stdout.json").write_text(proc.stdout)
    return run / "export"


def shared_tf_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared run exported with every format (``--format all``), once per
    session; returns the copy's run folder (its export/ holds the formats)."""
    import shutil

    src = shared_run(tmp_path_factory)
    run = tmp_path_factory.getbasetemp() / "shared-tf-export" / "digits"
    if not (run / "export" / "model.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("export"))
        proc = run_cli("export", str(run), "--format", "all", "--json", timeout=600)
        assert proc.returncode == 0, proc.stderr
        (run.parent / "export-stdout.json").write_text(proc.stdout)
    return run


def val_files(run: Path) -> list[tuple[Path, str]]:
    """(absolute path, label) of every validation image of a run, in manifest order."""
    import csv

    info = json.loads((run / "run.json").read_text())
    data = Path(info["data_dir"])
    with (run / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok" and r["split"] == "val"]
    return [(data / r["path"], r["label"]) for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(
    model: Path | None, log_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> Iterator[Server]:
    """`python -m duet serve MODEL --port P ARGS` until the block ends (then SIGTERM).
    With ``model=None`` the ARGS say what to serve (e.g. ``--registry DIR``). e2e tests only."""
    require_e2e("starts a server")
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_API_KEY")}
    full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    with log.open("wb") as out:
        target = [] if model is None else [str(model)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "duet", "serve", *target, "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = Server(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"duet serve exited with {proc.returncode}:\n{server.log_text()}")
            try:
                if httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"duet serve was not ready after {timeout}s:\n{server.log_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def metric_value(text: str, metric_name: str, /, **labels: str) -> float:
    """Sum of the samples of ``metric_name`` whose labels include ``labels`` in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(metric_name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != metric_name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total
