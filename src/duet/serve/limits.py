"""Request-body limit as ASGI middleware.

A declared ``Content-Length`` over the limit is refused without buffering the
body; a chunked body is counted as it arrives and refused as soon as it passes
the limit, so a client cannot make the server hold more than
``max_body_bytes``. Before answering 413 the rest of the body is read and
discarded (up to ``DISCARD_FACTOR`` x the limit and ``DISCARD_SECONDS``):
closing a socket with unread data makes the kernel send a reset, and the
client would see "connection reset" instead of the 413 (nginx calls this a
lingering close). (Pixel-count and images-per-request limits are checked where
images are decoded, in ``duet.serve.service``.)
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duet.serve.errors import ApiError, error_response

DISCARD_FACTOR = 4
DISCARD_SECONDS = 10.0


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body is larger than the limit of {limit} bytes (--max-body-bytes)",
            "body_too_large",
            {"Connection": "close"},
        )


async def discard_body(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body: at most ``budget`` bytes and
    ``DISCARD_SECONDS``; a client sending more than that is cut off."""

    async def drain() -> None:
        left = budget
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(drain(), DISCARD_SECONDS)
    except asyncio.TimeoutError:
        pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "Content-Length is not an integer", "bad_request")(scope, receive, send)
                    return
                if declared > self.limit:
                    err = BodyTooLarge(self.limit)
                    if declared <= DISCARD_FACTOR * self.limit:
                        await discard_body(receive, declared)
                    await error_response(err.status, err.message, err.code, err.headers)(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if message.get("more_body", False):
                        await discard_body(receive, (DISCARD_FACTOR - 1) * self.limit)
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)
