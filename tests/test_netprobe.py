"""duet.system.netprobe: one bounded HEAD request per URL, begun early and read later
(so `duet train --weights imagenet` offline fails in the time its imports take)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from duet.system import netprobe


@pytest.fixture()
def counting_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            seen.append(self.path)
            self.send_response(404)  # any status is an answer
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/probe-{time.monotonic_ns()}", seen
    finally:
        server.shutdown()


def test_a_probe_begun_early_is_reused_not_repeated(counting_server: tuple[str, list[str]]) -> None:
    url, seen = counting_server
    netprobe.start(url)
    assert netprobe.reachable(url) is True
    assert netprobe.reachable(url) is True
    assert len(seen) == 1  # one request, however often it is asked


def test_a_host_that_never_answers_is_unreachable_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/silent-{time.monotonic_ns()}"
        t = time.monotonic()
        assert netprobe.reachable(url, timeout=0.5) is False
        assert time.monotonic() - t < 2.0


def test_hub_probe_only_when_timm_imagenet_weights_will_be_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:9/hub-{time.monotonic_ns()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for model, weights in [("resnet18", "none"), ("resnet18", "w.safetensors"), ("torchvision:resnet18", "imagenet")]:
        netprobe.start_for_hub_weights(model, weights)
        assert constants.ENDPOINT not in netprobe._probes
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    netprobe.start_for_hub_weights("resnet18", "imagenet")
    assert constants.ENDPOINT not in netprobe._probes
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    netprobe.start_for_hub_weights("resnet18", "imagenet")
    assert constants.ENDPOINT in netprobe._probes
