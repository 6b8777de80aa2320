"""`duet serve --registry`: a running server follows the registry's champion. After
`duet registry promote` it answers with the new version, after `rollback` with the old
one again, and no request fails during either swap; a champion whose artifacts fail
their sha256 is refused while the old model keeps serving."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import run_cli
from serve_support import FAST, Server, metric_value, running_server, val_files

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

POLL = "0.25"


@pytest.fixture(scope="module")
def runs(small_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two exported runs on the same data: the shared one, and one more with another seed."""
    first = small_export.parent
    info = json.loads((first / "run.json").read_text())
    base = tmp_path_factory.mktemp("hotswap-runs")
    proc = run_cli(
        "train",
        info["data_dir"],
        "--epochs",
        "1",
        "--seed",
        "1",
        "--out",
        str(base),
        "--name",
        "digits2",
        "--device",
        "cpu",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    second = base / "digits2"
    proc = run_cli("export", str(second), "--json")
    assert proc.returncode == 0, proc.stderr
    return first, second


def registry_server(registry: Path, log_dir: Path, *args: str, timeout: float = 90):
    """`python -m duet serve --registry REGISTRY --port P ARGS` until the block ends (then SIGTERM)."""
    return running_server(None, log_dir, "--registry", str(registry), "--poll-interval", POLL, *args, timeout=timeout)


class Stream:
    """Threads sending predict requests (raw image on /v1/predict, and KServe V2 JSON) until
    stopped or ``cap`` requests; records (start, end, version) or the failure of each."""

    def __init__(self, url: str, image: bytes, name: str, threads: int = 4, cap: int = 400) -> None:
        self.url, self.image, self.name, self.cap = url, image, name, cap
        self.results: list[tuple[float, float, str]] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def _one(self, client: httpx.Client, i: int) -> str:
        if i % 2 == 0:
            r = client.post(f"{self.url}/v1/predict", content=self.image, headers={"Content-Type": "image/png"})
            assert r.status_code == 200, (r.status_code, r.text)
            body = r.json()
            assert body["model_version"] == body["version"] == r.headers["X-Duet-Model-Version"], (body, r.headers)
            return body["model_version"]
        import base64

        req = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(self.image).decode()],
                    "parameters": {"content_type": "base64"},
                }
            ]
        }
        r = client.post(f"{self.url}/v2/models/{self.name}/infer", json=req)
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["model_version"] == r.headers["X-Duet-Model-Version"]
        return r.json()["model_version"]

    def _loop(self, i: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                with self._lock:
                    if len(self.results) + len(self.failures) >= self.cap:
                        return
                start = time.monotonic()
                try:
                    version = self._one(client, i)
                except Exception as e:
                    with self._lock:
                        self.failures.append(f"{type(e).__name__}: {e}")
                else:
                    with self._lock:
                        self.results.append((start, time.monotonic(), version))
                time.sleep(0.01)

    def __enter__(self) -> Stream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def first_end(self, version: str) -> float | None:
        with self._lock:
            ends = [end for _, end, v in self.results if v == version]
        return min(ends) if ends else None

    def wait_for(self, version: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.first_end(version)
            if seen is not None:
                return seen
            if self.failures:
                break
            time.sleep(0.05)
        pytest.fail(f"no answer from {version} within {timeout}s; failures: {self.failures[:3]}")


def _swap_under_load(server: Server, image: bytes, name: str, old: str, new: str, command: list[str]) -> Stream:
    with Stream(server.url, image, name) as stream:
        stream.wait_for(old, 10)
        t0 = time.monotonic()
        proc = run_cli(*command)
        assert proc.returncode == 0, proc.stderr
        switched = stream.wait_for(new, 10)
        assert switched - t0 < 10
        time.sleep(0.5)  # keep sending after the swap
    assert stream.failures == [], stream.failures[:5]
    # Every request that started after the first answer from the new version got the new version.
    late = [v for start, _, v in stream.results if start > switched]
    assert late and set(late) == {new}, sorted(set(late))
    early = [v for _, end, v in stream.results if end < t0]
    assert early and set(early) == {old}
    assert len(stream.results) <= stream.cap
    print(
        f"\n{old}->{new}: {len(stream.results)} requests, first {new} answer {switched - t0:.2f}s after the command started"
    )
    return stream


def test_promote_and_rollback_swap_the_served_model_without_failing_a_request(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = runs
    reg = tmp_path / "registry"
    assert run_cli("registry", "promote", str(first), "--registry", str(reg)).returncode == 0
    v2 = run_cli("registry", "promote", str(second), "--registry", str(reg), "--json")
    assert v2.returncode == 0, v2.stderr
    back = run_cli("registry", "rollback", "--registry", str(reg))  # v1 champion again, v2 registered
    assert back.returncode == 0, back.stderr
    image = val_files(first)[0][0].read_bytes()

    with registry_server(reg, tmp_path, "--max-batch-size", "4") as server:
        metrics = httpx.get(f"{server.url}/metrics").text
        assert metric_value(metrics, "duet_model_info", version="v1") == 1

        stream = _swap_under_load(
            server, image, "digits", "v1", "v2", ["registry", "promote", "v2", "--registry", str(reg)]
        )
        assert len(stream.results) >= 20
        metrics = httpx.get(f"{server.url}/metrics").text
        assert metric_value(metrics, "duet_model_info", version="v2") == 1
        assert metric_value(metrics, "duet_model_info", version="v1") == 0
        assert metric_value(metrics, "duet_model_load_failures_total") == 0
        # The KServe V2 metadata and TF Serving status name the served version too.
        assert httpx.get(f"{server.url}/v2/models/digits").json()["versions"] == ["v2"]
        tf = httpx.post(
            f"{server.url}/v1/models/digits:predict",
            json={"instances": [{"b64": __import__("base64").b64encode(image).decode()}]},
        )
        assert tf.status_code == 200 and tf.headers["X-Duet-Model-Version"] == "v2"

        _swap_under_load(server, image, "digits", "v2", "v1", ["registry", "rollback", "--registry", str(reg)])
        assert "now serving v2" in server.log_text() and "now serving v1" in server.log_text()


def test_a_champion_that_fails_verification_is_refused_and_the_old_model_keeps_serving(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = runs
    broken = tmp_path / "broken" / "digits3"
    shutil.copytree(second, broken)
    reg = tmp_path / "registry"
    assert run_cli("registry", "promote", str(first), "--registry", str(reg)).returncode == 0
    image = val_files(first)[0][0].read_bytes()
    with registry_server(reg, tmp_path) as server:
        onnx = broken / "export" / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:-16] + b"\0" * 16)  # tampered after export
        assert run_cli("registry", "promote", str(broken), "--registry", str(reg)).returncode == 0
        deadline = time.monotonic() + 10
        while metric_value(httpx.get(f"{server.url}/metrics").text, "duet_model_load_failures_total") < 1:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        r = httpx.post(f"{server.url}/v1/predict", content=image, headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.headers["X-Duet-Model-Version"] == "v1"
        assert "cannot load champion v2" in server.log_text() and "still serving v1" in server.log_text()


def test_serve_takes_a_model_folder_or_a_registry_not_both(tmp_path: Path) -> None:
    both = run_cli("serve", str(tmp_path), "--registry", str(tmp_path))
    assert both.returncode != 0 and "Traceback" not in both.stderr
    assert "not both" in both.stderr.strip().splitlines()[-1]
    neither = run_cli("serve")
    assert neither.returncode != 0 and "--registry" in neither.stderr.strip().splitlines()[-1]
    (tmp_path / "empty-registry").mkdir()
    empty = run_cli("serve", "--registry", str(tmp_path / "empty-registry"))
    assert empty.returncode != 0 and "no champion" in empty.stderr.strip().splitlines()[-1]
