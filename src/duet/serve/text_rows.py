"""The documents of a text request, and the limits on them: a list of str, or one 400/413 line.

A text model (model.json ``"modality": "text"``) takes raw strings; the
tokenizer is inside its graph, so the server only checks what arrives:

- every document must be a JSON string (anything else is a 400 naming its index:
  ``document 3: expected a string, got a JSON number``); an empty string is a
  document (the model answers it as it answered empty texts in training); a
  string holding NUL or a lone UTF-16 surrogate (``"\\ud800"`` in JSON) is a 400
  too: it is not UTF-8 text, and the graph's string operators cannot read it;
- at most ``max_chars`` characters per document and ``max_request_chars`` in
  all the documents of one request (413, one line: which document, how long,
  the limit); the number of documents is bounded by ``--max-images`` (413).

``max_chars`` comes from model.json ``"limits": {"max_chars": ...}`` (the
exporter's choice), ``max_request_chars`` from ``"limits"`` as well, else
``max_chars`` times ``--max-images`` capped at :data:`DEFAULT_MAX_REQUEST_CHARS`.
The body size limit (``--max-body-bytes``) applies before any of this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from duet.serve.errors import ApiError

DEFAULT_MAX_CHARS = 100_000
# NUL (the graph's string ops stop at it) and lone surrogates (JSON "\\ud800" parses to one; no UTF-8 holds it)
UNREADABLE = re.compile("[\x00\ud800-\udfff]")
DEFAULT_MAX_REQUEST_CHARS = 2_000_000


def bad_request(message: str, code: str = "bad_document") -> ApiError:
    return ApiError(400, message, code)


def json_type(value: Any) -> str:
    if value is None:
        return "JSON null"
    if isinstance(value, bool):
        return "JSON boolean"
    if isinstance(value, (int, float)):
        return "JSON number"
    if isinstance(value, dict):
        return "JSON object"
    if isinstance(value, (list, tuple)):
        return "JSON list"
    return type(value).__name__


@dataclass(frozen=True)
class TextLimits:
    """Characters per document and per request (module docstring)."""

    max_chars: int = DEFAULT_MAX_CHARS
    max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], max_documents: int) -> TextLimits:
        """From model.json ``"limits"`` (ValueError when a limit there is not a positive integer)."""
        given = manifest.get("limits") or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"'limits' must be an object, got {given!r}")
        max_chars = _positive(given.get("max_chars", DEFAULT_MAX_CHARS), "max_chars")
        default_total = min(max_chars * max_documents, DEFAULT_MAX_REQUEST_CHARS)
        total = _positive(given.get("max_request_chars", max(default_total, max_chars)), "max_request_chars")
        return cls(max_chars, total)

    def check(self, texts: Sequence[str]) -> None:
        """413 for the first document over ``max_chars``, or for a request over ``max_request_chars``."""
        total = 0
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                raise ApiError(
                    413,
                    f"document {i} has {len(text):,} characters; the limit is {self.max_chars:,} per document "
                    "(model.json limits.max_chars): split or shorten it",
                    "text_too_long",
                )
            total += len(text)
        if total > self.max_request_chars:
            raise ApiError(
                413,
                f"the {len(texts)} documents of this request hold {total:,} characters; the limit is "
                f"{self.max_request_chars:,} per request: send fewer documents per request",
                "request_text_too_long",
            )


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"limits.{name} must be a positive integer, got {value!r}")
    return value


def strings(values: Sequence[Any], what: str = "document") -> list[str]:
    """``values`` as a list of str; 400 naming the index of the first that is not a string,
    or that holds a character the graph cannot read (:data:`UNREADABLE`)."""
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise bad_request(f"{what} {i}: expected a string, got a {json_type(value)}")
        bad = UNREADABLE.search(value)
        if bad is not None:
            raise bad_request(
                f"{what} {i}: character {bad.start()} is U+{ord(bad.group()):04X}, which a text model cannot read "
                "(NUL, or half of a UTF-16 surrogate pair: not UTF-8 text)",
                "bad_character",
            )
    return list(values)


def documents(body: Any) -> list[Any]:
    """The documents of a /v1/predict body: ``"text"``, ``["a", "b"]``, ``{"text": "..."}`` or ``{"texts": [...]}``."""
    if isinstance(body, str):
        return [body]
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        if set(body) == {"text"}:
            return [body["text"]]
        if set(body) == {"texts"}:
            if not isinstance(body["texts"], list):
                raise bad_request(f"'texts' must be a list of strings, got a {json_type(body['texts'])}", "bad_json")
            return body["texts"]
    raise bad_request(
        'the body must be a string, a list of strings, {"text": "..."} or {"texts": ["...", ...]}', "bad_json"
    )


def instance_text(value: Any, i: int) -> Any:
    """One TF Serving instance: a string, ``{"text": "..."}``, or the ``[1]``-shaped ``["..."]``."""
    if isinstance(value, dict):
        if set(value) != {"text"}:
            raise bad_request(
                f'document {i}: an instance object must be {{"text": "..."}}, got keys {sorted(value)[:5]}'
            )
        value = value["text"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value
