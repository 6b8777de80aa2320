"""Client errors as one exception type, rendered as JSON by every route.

Every protocol duet speaks reports errors as a JSON object with an ``error``
string (KServe V2 and TF Serving both define exactly that key; tritonclient
raises it as the exception message). duet adds a stable machine-readable
``code``. Any bad request becomes a 4xx; the server keeps serving.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line ``message``, a ``code``."""

    def __init__(
        self, status: int, message: str, code: str = "bad_request", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, message, code)


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "code": code}
    return JSONResponse(body, status_code=status, headers=headers)
