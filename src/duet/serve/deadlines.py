"""Read deadlines at the connection: a slow client cannot hold a socket open.

uvicorn has no timeout for reading a request (uvicorn issue 157): a client that
sends half its headers, or stops in the middle of a body, keeps its connection
(and a file descriptor) for ever. :func:`guarded_h11` returns uvicorn's own h11
protocol with two deadlines added (``duet serve --header-timeout`` and
``--body-timeout``, 30 s by default like TF Serving's REST server):

- **header deadline**: armed when a connection opens and whenever it waits for
  the next request; the request head (request line and headers) must be complete
  before it expires. Expiry with part of a head received: ``408`` JSON, then
  close; with nothing received (an idle keep-alive connection): close.
- **body-progress deadline**: armed when the head is complete and the request
  has a body, re-armed by every piece of body that arrives, cancelled at its
  end. Time the server itself is not reading (flow control paused because the
  app has not consumed the body yet, or a pending ``Expect: 100-continue``)
  does not count. Expiry: ``408`` JSON when no response has started, then close;
  the app sees a disconnect and its request is counted with code 408.

Both count ``duet_read_timeouts_total{phase="headers"|"body"}``. uvicorn's
plain-text ``400 Invalid HTTP request`` becomes the JSON error as well.

The drain deadline (``--drain-seconds``): when it passes, uvicorn cancels the
requests still running, and would answer them with a plain-text ``500``.
:class:`ShutdownGuard` answers them instead with the JSON error, ``503`` and
``Retry-After`` (the client may retry on another replica).

Cost: two ``call_later`` handles per request; batch-1 p50 over loopback was
unchanged within noise (docs/serving.md, "Limits and deadlines").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from duet.serve.errors import error_response

log = logging.getLogger("duet.serve")

TIMED_OUT = "duet.read_timeout"  # set in the ASGI scope of a request whose body deadline expired


def json_response_bytes(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response with the JSON error body, closing the connection."""
    body = json.dumps({"error": message, "code": code}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    return head + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the two read deadlines; :func:`guarded_h11`
    makes a subclass with their values (uvicorn instantiates the class itself)."""

    header_timeout: float = 30.0
    body_timeout: float = 30.0
    on_timeout: Callable[[str], None] | None = None  # called with the phase, once per connection cut
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._update_deadlines(progress=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header()
        self._cancel_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_deadlines(progress=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_deadlines(progress=False)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(
            json_response_bytes(400, "Bad Request", f"invalid HTTP request ({msg.rstrip('.')})", "bad_http")
        )
        self.transport.close()

    # -------------------------------------------------------- deadlines

    def _update_deadlines(self, *, progress: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:  # waiting for (the rest of) a request head
            self._cancel_body()
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._header_expired)
            return
        self._cancel_header()
        if state is h11.SEND_BODY:
            if progress or self._body_timer is None:
                self._cancel_body()
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_expired)
        else:
            self._cancel_body()

    def _cancel_header(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _ = self.conn.trailing_data
        if partial:  # a request began and did not finish its head in time
            self.transport.write(
                json_response_bytes(
                    408,
                    "Request Timeout",
                    f"the request headers took longer than {self.header_timeout:g} s (--header-timeout)",
                    "request_timeout",
                )
            )
            log.warning(
                "closed a connection from %s: request headers incomplete after %gs",
                _peer(self.client),
                self.header_timeout,
            )
            if self.on_timeout is not None:
                self.on_timeout("headers")
        self.transport.close()

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # We are the slow side (the app has not read the body yet): not the client's fault.
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_expired)
            return
        log.warning(
            "closed a connection from %s: no request body received for %gs", _peer(self.client), self.body_timeout
        )
        if self.on_timeout is not None:
            self.on_timeout("body")
        if cycle is not None and not cycle.response_complete:
            cycle.scope[TIMED_OUT] = True  # type: ignore[literal-required]
            if not cycle.response_started:
                self.transport.write(
                    json_response_bytes(
                        408,
                        "Request Timeout",
                        f"no request body received for {self.body_timeout:g} s (--body-timeout)",
                        "request_timeout",
                    )
                )
            cycle.disconnected = True  # the app's receive() now says http.disconnect; its send() is dropped
            cycle.message_event.set()
        self.transport.close()


def guarded_h11(
    header_timeout: float, body_timeout: float, on_timeout: Callable[[str], None] | None = None
) -> type[H11Protocol]:
    """uvicorn's ``H11Protocol`` with a header deadline and a body-progress deadline
    (seconds); ``on_timeout(phase)`` is called once per connection cut."""
    hook = staticmethod(on_timeout) if on_timeout is not None else None
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout, "on_timeout": hook},
    )


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


class ShutdownGuard:
    """ASGI middleware: a request cancelled by the server's shutdown (the drain
    deadline passed) gets ``503`` JSON with ``Retry-After`` if its answer has not
    started; uvicorn cancels request tasks for no other reason."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started:
                raise
            log.warning("%s %s cut by shutdown (--drain-seconds passed): answered 503", scope["method"], scope["path"])
            response = error_response(
                503,
                "the server is shutting down and its drain deadline passed; retry (on another replica)",
                "draining",
                {"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)
