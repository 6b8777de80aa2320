"""API-key check as ASGI middleware.

The key is accepted as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
and compared with :func:`hmac.compare_digest` on SHA-256 digests, so the time
taken depends neither on where the keys differ nor on their lengths. Health
routes stay open (load balancers and orchestrators probe them without
secrets), and so do the web page's own files (``duet.serve.page.PAGE_PATHS``:
the page holds no model data and asks for the key itself); everything else,
/metrics, /docs and every route the page fetches included, needs the key.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from duet.serve.errors import error_response
from duet.serve.page import PAGE_PATHS

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/healthz", "/readyz"}) | PAGE_PATHS


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = _digest(api_key.encode("utf-8"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        # compare_digest of two equal-length digests: constant time.
        if key is None or not hmac.compare_digest(_digest(key), self._expected):
            message = (
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                if key is None
                else "invalid API key"
            )
            response = error_response(401, message, "unauthorized", {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
