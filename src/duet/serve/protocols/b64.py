"""Base64 text in JSON bodies, as TF Serving and KServe clients send it.

TF Serving decodes ``{"b64": ...}`` with or without the trailing ``=``
padding (many encoders, e.g. JavaScript's URL-safe helpers or ``base64 -w0 |
tr -d =``, drop it), so duet does too. Anything else that is not the standard
alphabet is refused: a typo must not silently become different bytes.
"""

from __future__ import annotations

import base64
import binascii


def decode_b64(text: str) -> bytes:
    """Standard-alphabet base64, padded or not; raises ``ValueError`` if invalid."""
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("base64 text cannot have a length of 4n+1")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None
