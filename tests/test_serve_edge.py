"""`duet serve` at the network edge: read deadlines against slow clients
(slowloris), clients that hang up mid-upload (499), the drain deadline (503 JSON),
the per-request pixel budget and fair decoding, and /docs without a CDN.
A real server on 127.0.0.1 and raw sockets where httpx would be too polite."""

from __future__ import annotations

import io
import re
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import run_cli
from serve_support import Server, metric_value, running_server, val_files

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

DEADLINE = 1.0  # --header-timeout and --body-timeout of the guarded server
SLACK = 2.0  # scheduling on a loaded 2-core machine


@pytest.fixture(scope="module")
def export(small_export: Path) -> Path:
    return small_export


@pytest.fixture(scope="module")
def image(export: Path) -> bytes:
    return val_files(export.parent)[0][0].read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, export: Path) -> Iterator[Server]:
    """Short read deadlines; a pixel budget the tests can reach with small images."""
    with running_server(
        export,
        tmp_path_factory.mktemp("edge-logs"),
        "--header-timeout",
        str(DEADLINE),
        "--body-timeout",
        str(DEADLINE),
        "--max-images",
        "64",
        "--max-request-pixels",
        "150000000",
    ) as s:
        yield s


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE + SLACK + 5)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (raises socket.timeout
    if it never does)."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _status_and_body(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _post_head(path: str, length: int, content_type: str = "image/png") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def _open_fds(server: Server) -> int:
    return len(list(Path(f"/proc/{server.process.pid}/fd").iterdir()))


def _five_xx(metrics: str) -> float:
    return sum(metric_value(metrics, "duet_requests_total", code=str(c)) for c in range(500, 600))


# ----------------------------------------------------------------- item 1: read deadlines


def test_slow_clients_are_cut_at_the_read_deadlines_while_a_normal_client_is_served(
    server: Server, image: bytes
) -> None:
    fds_before = _open_fds(server)
    idle = [_connect(server) for _ in range(5)]  # connect, send nothing
    half_headers = [_connect(server) for _ in range(20)]  # slowloris
    for sock in half_headers:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    half_body = _connect(server)  # a stalled upload
    half_body.sendall(_post_head("/v1/predict", len(image)) + image[: len(image) // 2])
    sent = time.monotonic()

    served: list[int] = []

    def normal_client() -> None:  # keeps being served while the slow ones hang
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while time.monotonic() - sent < DEADLINE + 0.5:
                served.append(
                    client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"}).status_code
                )

    t = threading.Thread(target=normal_client)
    t.start()
    replies = [_read_until_closed(sock) for sock in [*half_headers, half_body, *idle]]
    closed_after = time.monotonic() - sent
    t.join(30)
    for sock in [*half_headers, half_body, *idle]:
        sock.close()

    assert closed_after < DEADLINE + SLACK, f"slow connections closed only after {closed_after:.1f}s"
    assert served and set(served) == {200}, served
    for raw in replies[:21]:  # a request had begun: a 408 JSON error before the close
        status, headers, body = _status_and_body(raw)
        assert status == 408 and headers["content-type"] == "application/json", raw[:300]
        assert b"request_timeout" in body
    assert b"--header-timeout" in replies[0] and b"--body-timeout" in replies[20]
    assert all(raw == b"" for raw in replies[21:])  # nothing was asked: closed without a word
    deadline = time.monotonic() + 5
    while _open_fds(server) > fds_before + 2 and time.monotonic() < deadline:  # the server's sockets are gone
        time.sleep(0.05)
    assert _open_fds(server) <= fds_before + 2, (fds_before, _open_fds(server))
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_value(metrics, "duet_read_timeouts_total", phase="headers") >= 20
    assert metric_value(metrics, "duet_read_timeouts_total", phase="body") >= 1
    assert metric_value(metrics, "duet_requests_total", route="/v1/predict", code="408") >= 1
    assert _five_xx(metrics) == 0


def test_a_slow_but_steady_upload_is_not_cut(server: Server, image: bytes) -> None:
    """The body deadline is on progress, not on the whole body: a client sending a
    piece every half deadline takes 3 deadlines in all and is answered."""
    with _connect(server) as sock:
        sock.sendall(_post_head("/v1/predict", len(image)))
        pieces = [image[i : i + len(image) // 6 + 1] for i in range(0, len(image), len(image) // 6 + 1)]
        for piece in pieces:
            time.sleep(DEADLINE / 2)
            sock.sendall(piece)
        status, _, body = _status_and_body(_read_until_closed(sock))
    assert status == 200, body[:300]


def test_deadlines_and_budget_are_checked_at_start(export: Path) -> None:
    for flag, value in (("--header-timeout", "0"), ("--body-timeout", "-1"), ("--max-request-pixels", "0")):
        proc = run_cli("serve", str(export), "--check", flag, value)
        assert proc.returncode == 2 and flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_malformed_http_gets_the_json_error(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        status, headers, body = _status_and_body(_read_until_closed(sock))
    assert status == 400 and headers["content-type"] == "application/json" and b'"error"' in body


# ----------------------------------------------------------------- item 3: client hang-ups


def test_a_client_hanging_up_mid_upload_is_a_499_in_one_log_line(server: Server, image: bytes) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    log_before = server.log_text()
    for _ in range(3):
        with _connect(server) as sock:
            sock.sendall(_post_head("/v1/predict", len(image)) + image[: len(image) // 2])
            time.sleep(0.2)  # the request is inside the app, reading its body
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{server.url}/metrics").text
        if (
            metric_value(metrics, "duet_requests_total", code="499")
            - metric_value(before, "duet_requests_total", code="499")
            >= 3
        ):
            break
        time.sleep(0.1)
    counted = metric_value(metrics, "duet_requests_total", route="/v1/predict", code="499")
    assert counted - metric_value(before, "duet_requests_total", route="/v1/predict", code="499") == 3, metrics
    assert _five_xx(metrics) == 0
    new_log = server.log_text()[len(log_before) :]
    assert new_log.count("hung up") == 3 and "Traceback" not in new_log, new_log[-3000:]
    assert len(new_log.splitlines()) <= 6, new_log


# ----------------------------------------------------------------- item 2: pixel budget, fair decoding


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 160, 30)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_a_request_over_the_pixel_budget_is_a_413_naming_it(server: Server) -> None:
    big = _png(5000)  # 25 MP each, under --max-pixels (40 MP)
    files = [("file", (f"{i}.png", big, "image/png")) for i in range(7)]  # 175 MP > 150 MP
    r = httpx.post(f"{server.url}/v1/predict", files=files, timeout=30)
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["code"] == "too_many_request_pixels" and "--max-request-pixels" in body["error"]
    assert "150,000,000" in body["error"]


def _rss_mib(server: Server) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_large_images_leave_no_memory_behind(server: Server) -> None:
    """Two 25-MP images (75 MB each decoded): the decode heap goes back to the OS
    (measured: +13 MiB with it, +335 MiB that stayed without it)."""
    big = _png(5000)
    files = [("file", (f"{i}.png", big, "image/png")) for i in range(2)]
    before = _rss_mib(server)
    for _ in range(2):
        ok = httpx.post(f"{server.url}/v1/predict", files=files, timeout=60)
        assert ok.status_code == 200, ok.text
    grown = _rss_mib(server) - before
    assert grown < 100, f"RSS grew by {grown:.0f} MiB after two requests of two 25-MP images"


def test_a_small_request_does_not_wait_behind_a_large_ones_images(server: Server, image: bytes) -> None:
    def small() -> float:
        start = time.perf_counter()
        r = httpx.post(f"{server.url}/v1/predict", content=image, headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        return time.perf_counter() - start

    big_png = _png(1000)  # 1 MP: ~10 ms to decode and more to shrink; 64 of them take seconds here
    files = [("file", (f"{i}.png", big_png, "image/png")) for i in range(64)]
    small()
    idle = statistics.median(small() for _ in range(7))
    done: dict[str, float] = {}
    big_reply: list[httpx.Response] = []

    def big() -> None:  # an assert in a thread cannot fail the test: the reply is checked below
        big_reply.append(httpx.post(f"{server.url}/v1/predict", files=files, timeout=120))
        done["big"] = time.perf_counter()

    t = threading.Thread(target=big)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the big request is decoding
        if metric_value(httpx.get(f"{server.url}/metrics").text, "duet_requests_in_flight") >= 2:
            break
        time.sleep(0.01)
    time.sleep(0.05)
    busy = small()
    small_done = time.perf_counter()
    t.join(120)
    assert "big" in done and big_reply[0].status_code == 200, [r.text for r in big_reply]
    assert small_done < done["big"], "the big request finished first: the test measured nothing"
    assert busy < 10 * idle, f"small request took {1000 * busy:.0f} ms beside the big one, {1000 * idle:.0f} ms idle"


# ----------------------------------------------------------------- item 7: /docs offline


def test_docs_page_loads_only_local_assets(server: Server) -> None:
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""", page.text)
    urls = [a or b for a, b in urls]
    assert urls and not [u for u in urls if re.match(r"(https?:)?//", u)], urls
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
    for url in urls:
        assert httpx.get(server.url + url).status_code == 200, url
    assert "/openapi.json" in urls


# ----------------------------------------------------------------- item 4: drain deadline


def test_requests_cut_by_the_drain_deadline_get_503_json_with_retry_after(
    export: Path, tmp_path: Path, image: bytes
) -> None:
    with running_server(export, tmp_path, "--drain-seconds", "1") as server:
        sock = _connect(server)
        sock.sendall(_post_head("/v1/predict", len(image)) + image[:100])  # the rest never comes
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the request is inside the server
            if metric_value(httpx.get(f"{server.url}/metrics").text, "duet_requests_in_flight") >= 2:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the slow request never reached the server")
        server.process.send_signal(signal.SIGTERM)
        status, headers, body = _status_and_body(_read_until_closed(sock))
        sock.close()
        assert status == 503 and headers["content-type"] == "application/json", body[:300]
        assert headers["retry-after"] == "1" and b'"draining"' in body
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = server.log_text()
        assert "cut by shutdown" in log and "Traceback" not in log, log[-3000:]
