"""Compressed request bodies (``Content-Encoding``) as ASGI middleware.

tritonclient's ``request_compression_algorithm="gzip"|"deflate"`` (and any
HTTP client) may send a compressed body with ``Content-Encoding``. This
middleware decompresses it as it arrives, so every route reads plain bytes:

- ``gzip`` (or ``x-gzip``) and ``deflate`` (zlib-wrapped, as RFC 9110 says;
  a raw deflate stream is accepted too) are decoded; ``identity`` is a no-op;
- any other coding (``br``, ``zstd``, two codings stacked...) is refused with
  415 ``unsupported_encoding`` naming the ones accepted, before the body is parsed;
- the decompressed size is held to the same ``max_body_bytes`` as a plain
  body: output is produced at most one limit's worth at a time, and past the
  limit the request gets 413 ``body_too_large`` (a small "zip bomb" never
  expands in memory beyond the limit);
- a corrupt or truncated stream is 400 ``bad_encoding``.

It sits inside ``BodyLimitMiddleware`` (which limits the bytes on the wire).
"""

from __future__ import annotations

import zlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from duet.serve.errors import ApiError, error_response
from duet.serve.limits import DISCARD_FACTOR, discard_body

# Content-Encoding token -> zlib wbits
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPTED = "gzip, deflate or identity"


def _codings(scope: Scope) -> list[str]:
    """The request's content codings, in the order they were applied, without ``identity``."""
    values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"content-encoding"]
    return [c.strip().lower() for v in values for c in v.split(",") if c.strip().lower() not in ("", "identity")]


class _Decoder:
    """One body's decompression, bounded to ``limit`` output bytes."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding, self.limit, self.produced = coding, limit, 0
        self.raw_fallback = coding == "deflate"  # some clients send deflate without the zlib wrapper
        self.z = zlib.decompressobj(_WBITS[coding])

    def feed(self, data: bytes, last: bool) -> bytes:
        try:
            out = self._decompress(data)
            if last:
                out += self.z.flush()
        except zlib.error:
            raise ApiError(
                400,
                f"the request body is not valid {self.coding} data (Content-Encoding: {self.coding})",
                "bad_encoding",
            ) from None
        self.produced += len(out)
        if self.produced > self.limit:
            raise ApiError(
                413,
                f"request body decompresses to more than the limit of {self.limit} bytes (--max-body-bytes)",
                "body_too_large",
                {"Connection": "close"},
            )
        if last and not self.z.eof:
            raise ApiError(400, f"the {self.coding} request body is truncated", "bad_encoding")
        return out

    def _decompress(self, data: bytes) -> bytes:
        room = self.limit - self.produced + 1  # one byte more than allowed tells "too large"
        try:
            out = self.z.decompress(data, room)
        except zlib.error:
            if not (self.raw_fallback and self.produced == 0):
                raise
            self.raw_fallback = False
            self.z = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self.z.decompress(data, room)
        self.raw_fallback = False
        return out


class ContentEncodingMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        codings = _codings(scope)
        if not codings:
            await self.app(scope, receive, send)
            return
        if len(codings) > 1 or codings[0] not in _WBITS:
            error = ApiError(
                415,
                f"Content-Encoding '{', '.join(codings)}' is not supported; send the body with {ACCEPTED}",
                "unsupported_encoding",
            )
            try:
                await discard_body(receive, self.limit)
            except ApiError as e:  # the body limit outside us spoke first
                error = e
            await error_response(error.status, error.message, error.code, error.headers)(scope, receive, send)
            return
        decoder = _Decoder(codings[0], self.limit)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]

        async def decoded_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request":
                return message
            more = message.get("more_body", False)
            try:
                body = decoder.feed(message.get("body", b""), last=not more)
            except ApiError:
                if more:
                    await discard_body(receive, (DISCARD_FACTOR - 1) * self.limit)
                raise
            return {"type": "http.request", "body": body, "more_body": more}

        await self.app({**scope, "headers": headers}, decoded_receive, send)
