"""Is a download host answering? One bounded HEAD request, startable early.

``duet train --weights imagenet`` on a machine without network would otherwise
spend ~50 s in the hub client's retries before failing. One HEAD request,
bounded at ``PROBE_SECONDS`` including the name lookup, decides instead. The
CLI starts the probe (:func:`start`) before it imports PyTorch and timm (about
4 s), so on an offline machine the answer is ready when the model is built and
the command fails in the time the imports take; :func:`reachable` then reads
that answer instead of asking again. One probe per URL per process.

Standard library only: imported before torch.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

PROBE_SECONDS = 2.0


class _Probe:
    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.deadline = time.monotonic() + timeout
        self.answered = False
        # daemon: a DNS lookup that hangs is left behind, never waited for past the deadline
        self._thread = threading.Thread(target=self._ask, name="duet-weights-probe", daemon=True)
        self._thread.start()

    def _ask(self) -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(self.url, method="HEAD"), timeout=self.timeout).close()
            self.answered = True
        except urllib.error.HTTPError:
            self.answered = True  # a status code is an answer: the host is there
        except (OSError, ValueError):
            pass  # URLError, timeouts, TLS failures, a malformed URL

    def result(self) -> bool:
        self._thread.join(max(0.0, self.deadline - time.monotonic()))
        return self.answered


_probes: dict[str, _Probe] = {}
_lock = threading.Lock()


def start(url: str, timeout: float = PROBE_SECONDS) -> None:
    """Begin probing ``url`` in the background (no-op if already begun)."""
    with _lock:
        if url not in _probes:
            _probes[url] = _Probe(url, timeout)


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether one HEAD request to ``url`` got any HTTP answer within ``timeout``
    seconds of its start, name lookup included (through the proxies the
    environment names, as the downloads would go). Reuses a probe begun by
    :func:`start`."""
    start(url, timeout)
    return _probes[url].result()


def start_for_hub_weights(model: str, weights: str) -> None:
    """What ``duet train`` calls first: probe the Hugging Face Hub when timm
    ImageNet weights will be needed and the hub is not switched off."""
    if weights != "imagenet" or model.startswith("torchvision:"):
        return
    from huggingface_hub import constants  # light: no torch

    if not constants.HF_HUB_OFFLINE:
        start(constants.ENDPOINT)
