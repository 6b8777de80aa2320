"""`duet serve` under hostile or careless clients: API key, bind rules, tampered
artifacts, every kind of bad request (4xx JSON, never a 5xx), a bounded fuzz and soak,
and a graceful drain on SIGTERM. A real server on 127.0.0.1 with small limits."""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import signal
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import run_cli
from oddfiles import huge_header_png_bytes, truncated_jpeg_bytes
from serve_support import Server, metric_value, running_server, val_files

KEY = "k3y-for-tests-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = ["--max-body-bytes", "300000", "--max-pixels", "1000000", "--max-images", "4"]


@pytest.fixture(scope="module")
def export(small_export: Path) -> Path:
    return small_export


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, export: Path) -> Iterator[Server]:
    key_file = tmp_path_factory.mktemp("secrets") / "key"
    key_file.write_text(KEY + "\n")
    with running_server(
        export, tmp_path_factory.mktemp("logs"), *LIMITS, env={"DUET_API_KEY_FILE": str(key_file)}
    ) as s:
        yield s


@pytest.fixture(scope="module")
def image(export: Path) -> bytes:
    return val_files(export.parent)[0][0].read_bytes()


def _is_json_error(r: httpx.Response) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"] != ""


def _rss_bytes(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ----------------------------------------------------------------- access


@pytest.mark.e2e
def test_api_key_is_required_except_on_health_routes(server: Server, image: bytes) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/healthz", "/readyz"):
        assert httpx.get(server.url + path).status_code == 200, path
    files = {"file": ("a.png", image, "image/png")}
    none = httpx.post(f"{server.url}/v1/predict", files=files)
    assert none.status_code == 401 and _is_json_error(none) and none.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{server.url}/v1/predict", files=files, headers={"Authorization": f"Bearer {KEY[:-1]}x"})
    assert wrong.status_code == 401 and "invalid" in wrong.json()["error"]
    assert httpx.post(f"{server.url}/v1/predict", files=files, headers=AUTH).status_code == 200
    assert httpx.post(f"{server.url}/v1/predict", files=files, headers={"X-API-Key": KEY}).status_code == 200
    for path in ("/metrics", "/docs", "/openapi.json", "/v2/models/digits"):
        assert httpx.get(server.url + path).status_code == 401, path
        assert httpx.get(server.url + path, headers=AUTH).status_code == 200, path


@pytest.mark.e2e
def test_tritonclient_sends_the_key_as_a_header(server: Server, image: bytes) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    inp = triton.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer("digits", [inp])
    # a copy: tritonclient adds its own headers to the dict it is given
    assert client.infer("digits", [inp], headers=dict(AUTH)).as_numpy("probabilities").shape == (1, 3)


@pytest.mark.e2e
def test_binding_beyond_loopback_needs_a_key_or_insecure(export: Path, tmp_path: Path) -> None:
    refused = run_cli("serve", str(export), "--host", "0.0.0.0", "--check")
    assert refused.returncode == 2 and "--insecure" in refused.stderr and "Traceback" not in refused.stderr
    assert run_cli("serve", str(export), "--host", "0.0.0.0", "--check", "--insecure").returncode == 0
    ok = run_cli("serve", str(export), "--host", "0.0.0.0", "--check", env={"DUET_API_KEY": KEY})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verified"] is True
    short = run_cli("serve", str(export), "--check", env={"DUET_API_KEY": "short"})
    assert short.returncode == 2 and "16 characters" in short.stderr
    (tmp_path / "k").write_text(KEY)
    both = run_cli("serve", str(export), "--check", env={"DUET_API_KEY": KEY, "DUET_API_KEY_FILE": str(tmp_path / "k")})
    assert both.returncode == 2 and "keep one" in both.stderr


@pytest.mark.e2e
def test_tampered_or_missing_artifacts_are_refused(export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(export, copy)
    onnx = bytearray((copy / "model.onnx").read_bytes())
    onnx[len(onnx) // 2] ^= 0x01  # one bit in the middle of the weights
    (copy / "model.onnx").write_bytes(bytes(onnx))
    proc = run_cli("serve", str(copy), "--check")
    assert proc.returncode == 4 and "sha256" in proc.stderr and "model.onnx" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

    shutil.copyfile(export / "model.onnx", copy / "model.onnx")
    (copy / "model.safetensors").unlink()
    proc = run_cli("serve", str(copy), "--check")
    assert proc.returncode == 4 and "missing" in proc.stderr, proc.stderr


def test_listening_socket_is_tcp_so_asyncio_turns_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP; without it
    every request paid ~40 ms of Nagle + delayed ACK (measured: 44 ms -> 0.7 ms per GET)."""
    import socket

    from duet.serve.app import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.type == socket.SOCK_STREAM
    finally:
        sock.close()


# ----------------------------------------------------------------- bad requests


def _png(size: tuple[int, int] = (30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


def _binary_infer(header: dict, tail: bytes, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    n = len(head) if header_length is None else header_length
    return head + tail, {"Inference-Header-Content-Length": str(n), "Content-Type": "application/octet-stream"}


def bad_requests(image: bytes) -> list[tuple[str, str, dict]]:
    """(method, path, httpx kwargs) of requests that must each get a 4xx JSON error."""
    b64 = base64.b64encode(image).decode()
    infer = "/v2/models/digits/infer"
    tfs = "/v1/models/digits:predict"
    big = b"\x00" * 300_001
    px = {"name": "pixels", "shape": [1, 3, 24, 24], "datatype": "UINT8"}
    return [
        # /v1/predict
        ("POST", "/v1/predict", {"content": b"not an image", "headers": {"Content-Type": "image/png"}}),
        ("POST", "/v1/predict", {"content": truncated_jpeg_bytes(), "headers": {"Content-Type": "image/jpeg"}}),
        ("POST", "/v1/predict", {"content": huge_header_png_bytes(), "headers": {"Content-Type": "image/png"}}),
        ("POST", "/v1/predict", {"content": _png((1200, 1000)), "headers": {"Content-Type": "image/png"}}),
        ("POST", "/v1/predict", {"content": big, "headers": {"Content-Type": "image/png"}}),
        ("POST", "/v1/predict", {"content": iter([b"\x00" * 100_000] * 4), "headers": {"Content-Type": "image/png"}}),
        ("POST", "/v1/predict", {"content": b"", "headers": {"Content-Type": "image/png"}}),
        ("POST", "/v1/predict", {"json": {"image": b64}}),
        ("POST", "/v1/predict", {"files": [("file", (f"{i}.png", image, "image/png")) for i in range(5)]}),
        ("POST", "/v1/predict", {"files": [("file", ("a.png", b"", "image/png"))]}),
        ("POST", "/v1/predict", {"data": {"field": "value"}, "files": {}}),
        (
            "POST",
            "/v1/predict",
            {"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        ),
        ("POST", "/v1/predict?top_k=0", {"content": image, "headers": {"Content-Type": "image/png"}}),
        ("POST", "/v1/predict?top_k=abc", {"content": image, "headers": {"Content-Type": "image/png"}}),
        ("GET", "/v1/predict", {}),
        ("GET", "/no/such/route", {}),
        # KServe V2
        ("POST", infer, {"content": b"{not json"}),
        ("POST", infer, {"content": b"[" * 100_000 + b"]" * 100_000}),
        ("POST", infer, {"json": [1, 2, 3]}),
        ("POST", infer, {"json": {"inputs": []}}),
        ("POST", infer, {"json": {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64]}]}}),
        ("POST", infer, {"json": {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64]}]}}),
        ("POST", infer, {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8", "data": [1]}]}}),
        ("POST", infer, {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["***"]}]}}),
        (
            "POST",
            infer,
            {
                "json": {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [base64.b64encode(b"GIF89a-nope").decode()],
                        }
                    ]
                }
            },
        ),
        (
            "POST",
            infer,
            {"json": {"inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": [b64] * 5}]}},
        ),
        ("POST", infer, {"json": {"inputs": [{"name": "image", "shape": [-1], "datatype": "BYTES", "data": [b64]}]}}),
        ("POST", infer, {"json": {"inputs": [{"name": "image", "shape": "1", "datatype": "BYTES", "data": [b64]}]}}),
        ("POST", infer, {"json": {"inputs": [{**px, "datatype": "FP32", "data": [0.0] * 1728}]}}),
        ("POST", infer, {"json": {"inputs": [{**px, "shape": [1, 3, 32, 32], "data": [0] * 3072}]}}),
        ("POST", infer, {"json": {"inputs": [{**px, "data": [300] * 1728}]}}),
        ("POST", infer, {"json": {"inputs": [{**px, "data": [0] * 1727}]}}),
        ("POST", infer, {"json": {"inputs": [{**px, "data": [True] * 1728}]}}),
        ("POST", infer, {"json": {"inputs": [{**px, "data": [0] * 1728}], "outputs": [{"name": "nope"}]}}),
        (
            "POST",
            infer,
            {
                "json": {
                    "inputs": [{**px, "data": [0] * 1728}],
                    "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}],
                }
            },
        ),
        (
            "POST",
            infer,
            {"json": {"inputs": [{**px, "data": [0] * 1728}], "parameters": {"binary_data_output": "yes"}}},
        ),
        (
            "POST",
            infer,
            dict(
                zip(
                    ("content", "headers"),
                    _binary_infer({"inputs": [{**px, "parameters": {"binary_data_size": 1728}}]}, b"\x00" * 100),
                )
            ),
        ),
        (
            "POST",
            infer,
            dict(
                zip(
                    ("content", "headers"),
                    _binary_infer({"inputs": [{**px, "parameters": {"binary_data_size": 1728}}]}, b"\x00" * 1800),
                )
            ),
        ),
        (
            "POST",
            infer,
            dict(
                zip(
                    ("content", "headers"),
                    _binary_infer({"inputs": [{**px, "parameters": {"binary_data_size": 100}}]}, b"\x00" * 100),
                )
            ),
        ),
        (
            "POST",
            infer,
            dict(
                zip(
                    ("content", "headers"),
                    _binary_infer(
                        {"inputs": [{**px, "parameters": {"binary_data_size": 1728}}]},
                        b"\x00" * 1728,
                        header_length=10**9,
                    ),
                )
            ),
        ),
        (
            "POST",
            infer,
            dict(
                zip(
                    ("content", "headers"),
                    _binary_infer(
                        {"inputs": [{**px, "parameters": {"binary_data_size": 1728}}]}, b"\x00" * 1728, header_length=-5
                    ),
                )
            ),
        ),
        (
            "POST",
            infer,
            dict(
                zip(
                    ("content", "headers"),
                    _binary_infer(
                        {
                            "inputs": [
                                {
                                    "name": "image",
                                    "shape": [1],
                                    "datatype": "BYTES",
                                    "parameters": {"binary_data_size": 8},
                                }
                            ]
                        },
                        struct.pack("<I", 4_000_000) + b"abcd",
                    ),
                )
            ),
        ),
        ("POST", "/v2/models/other/infer", {"json": {"inputs": [{**px, "data": [0] * 1728}]}}),
        ("POST", "/v2/models/digits/versions/7/infer", {"json": {"inputs": [{**px, "data": [0] * 1728}]}}),
        ("GET", "/v2/models/other", {}),
        ("GET", "/v2/models/digits/ready?version=x", {}),
        # TF Serving
        ("POST", tfs, {"content": b"nope"}),
        ("POST", tfs, {"json": {}}),
        ("POST", tfs, {"json": {"instances": [{"b64": b64}], "inputs": [{"b64": b64}]}}),
        ("POST", tfs, {"json": {"instances": {"b64": b64}}}),
        ("POST", tfs, {"json": {"instances": []}}),
        ("POST", tfs, {"json": {"instances": ["just a string"]}}),
        ("POST", tfs, {"json": {"instances": [{"b64": "!!!"}]}}),
        ("POST", tfs, {"json": {"instances": [{"b64": b64, "extra": 1}]}}),
        ("POST", tfs, {"json": {"instances": [{"image_bytes": "not-an-object"}]}}),
        ("POST", tfs, {"json": {"instances": [{"colour": "red"}]}}),
        ("POST", tfs, {"json": {"instances": [[[[0.5] * 24] * 24] * 3]}}),
        ("POST", tfs, {"json": {"instances": [[[[0] * 24] * 24] * 2]}}),
        ("POST", tfs, {"json": {"instances": [[[[0] * 24] * 23 + [[0] * 5]] * 3]}}),
        ("POST", tfs, {"json": {"instances": [[[[999] * 24] * 24] * 3]}}),
        ("POST", tfs, {"json": {"instances": [{"b64": b64}, [[[0] * 24] * 24] * 3]}}),
        ("POST", tfs, {"json": {"instances": [{"b64": b64}] * 5}}),
        ("POST", tfs, {"json": {"inputs": {"a": [1], "b": [2]}}}),
        ("POST", tfs, {"json": {"instances": [{"b64": b64}], "signature_name": "classify"}}),
        ("POST", "/v1/models/other:predict", {"json": {"instances": [{"b64": b64}]}}),
        ("POST", "/v1/models/digits:classify", {"json": {"instances": [{"b64": b64}]}}),
        ("GET", "/v1/models/digits/versions/9", {}),
        ("GET", "/v1/models/other/metadata", {}),
    ]


@pytest.mark.e2e
def test_every_bad_request_gets_a_4xx_json_error_and_the_server_keeps_serving(server: Server, image: bytes) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        for method, path, kwargs in bad_requests(image):
            kwargs = dict(kwargs)
            headers = {**AUTH, **kwargs.pop("headers", {})}
            r = client.request(method, path, headers=headers, **kwargs)
            assert 400 <= r.status_code < 500 and _is_json_error(r), (method, path, r.status_code, r.text[:300])
        specific = {
            "too many pixels": client.post(
                "/v1/predict", content=huge_header_png_bytes(), headers={"Content-Type": "image/png"}
            ),
            "body too large": client.post(
                "/v1/predict", content=b"\x00" * 300_001, headers={"Content-Type": "image/png"}
            ),
            "truncated": client.post(
                "/v1/predict", content=truncated_jpeg_bytes(), headers={"Content-Type": "image/jpeg"}
            ),
        }
        assert (
            specific["too many pixels"].status_code == 413 and "pixels" in specific["too many pixels"].json()["error"]
        )
        assert specific["body too large"].status_code == 413
        assert "truncated" in specific["truncated"].json()["error"]
        ok = client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"})
        assert ok.status_code == 200, ok.text
        metrics = client.get("/metrics").text
    assert sum(metric_value(metrics, "duet_requests_total", code=str(c)) for c in range(500, 600)) == 0


def _mutations(rng: random.Random, image: bytes) -> Iterator[tuple[str, dict]]:
    """Random damage to valid requests of all three protocols."""
    b64 = base64.b64encode(image).decode()
    kserve = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}]}).encode()
    tfs = json.dumps({"instances": [{"b64": b64}]}).encode()
    bodies = [("/v1/predict", image), ("/v2/models/digits/infer", kserve), ("/v1/models/digits:predict", tfs)]
    junk = [None, 0, -1, 1e308, "", "x" * 50, [], {}, [[[]]], True, {"b64": "AAAA"}]
    for _ in range(160):
        path, body = rng.choice(bodies)
        kind = rng.randrange(4)
        if kind == 0:  # truncate
            data = body[: rng.randrange(len(body))]
        elif kind == 1:  # flip bytes
            arr = bytearray(body)
            for _ in range(rng.randrange(1, 20)):
                arr[rng.randrange(len(arr))] = rng.randrange(256)
            data = bytes(arr)
        elif kind == 2 and path != "/v1/predict":  # replace one JSON field with junk
            doc = json.loads(body)
            target = doc["inputs"][0] if "inputs" in doc else doc
            key = rng.choice(sorted(target))
            target[key] = rng.choice(junk)
            data = json.dumps(doc).encode()
        else:  # random bytes
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        headers = {"Content-Type": "image/png"} if path == "/v1/predict" else {}
        if path.endswith("/infer") and rng.random() < 0.3:
            headers["Inference-Header-Content-Length"] = str(rng.randrange(-5, len(data) + 5))
        yield path, {"content": data, "headers": headers}


@pytest.mark.e2e
def test_bounded_fuzz_finds_no_5xx(server: Server, image: bytes) -> None:
    rng = random.Random(6)
    statuses = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path, kwargs in _mutations(rng, image):
            r = client.post(path, content=kwargs["content"], headers={**AUTH, **kwargs["headers"]})
            statuses.append(r.status_code)
            assert r.status_code < 500, (path, r.status_code, r.text[:300])
            if r.status_code >= 400:
                assert _is_json_error(r), (path, r.text[:300])
        assert (
            client.post("/v1/predict", content=image, headers={**AUTH, "Content-Type": "image/png"}).status_code == 200
        )
    assert sum(400 <= s < 500 for s in statuses) > 100  # the damage was mostly refused, not ignored


@pytest.mark.e2e
def test_soak_has_no_memory_growth(server: Server, image: bytes) -> None:
    b64 = base64.b64encode(image).decode()
    kserve = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64, b64]}]}

    def burst(n: int, client: httpx.Client) -> None:
        for i in range(n):
            if i % 3 == 0:
                r = client.post("/v1/predict", files=[("file", ("a.png", image, "image/png"))] * 2)
            elif i % 3 == 1:
                r = client.post("/v2/models/digits/infer", json=kserve)
            else:
                r = client.post("/v1/models/digits:predict", json={"instances": [{"b64": b64}] * 2})
            assert r.status_code == 200, r.text
            if i % 10 == 0:  # bad requests too: their error paths must not leak either
                assert (
                    client.post("/v1/predict", content=b"junk", headers={"Content-Type": "image/png"}).status_code
                    == 400
                )

    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        burst(90, client)  # warm-up: allocator pools, thread stacks, caches
        before = _rss_bytes(server)
        burst(300, client)  # (measured: flat within 0.3 MiB over 1,200 requests)
        after = _rss_bytes(server)
    assert after - before < 8 * 2**20, f"RSS grew by {(after - before) / 2**20:.1f} MiB over 300 requests"


# ----------------------------------------------------------------- shutdown


@pytest.mark.e2e
def test_sigterm_drains_in_flight_requests(export: Path, tmp_path: Path, image: bytes) -> None:
    """A request still uploading when SIGTERM arrives gets its answer; then the server
    exits cleanly and takes no new connections."""
    with running_server(export, tmp_path, "--drain-seconds", "20") as server:
        result: dict[str, httpx.Response] = {}
        terminated = threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield image[:100]
            terminated.wait(20)  # the rest of the body arrives after SIGTERM
            time.sleep(0.5)
            yield image[100:]

        def call() -> None:
            result["r"] = httpx.post(
                f"{server.url}/v1/predict", content=slow_body(), headers={"Content-Type": "image/png"}, timeout=30
            )

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the request is inside the server
            text = httpx.get(f"{server.url}/metrics").text
            if metric_value(text, "duet_requests_in_flight") >= 2:  # it and this /metrics call
                break
            time.sleep(0.02)
        else:
            pytest.fail("the slow request never reached the server")
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no new connections while draining
            httpx.get(f"{server.url}/v2/health/live", timeout=2)
        terminated.set()
        t.join(30)
        assert result["r"].status_code == 200, result["r"].text
        assert result["r"].json()["predictions"][0]["label"] in ("0", "1", "7")
        # uvicorn re-raises SIGTERM after its clean shutdown: the conventional "terminated" status
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = server.log_text()
        assert "draining" in log and "Application shutdown complete" in log
