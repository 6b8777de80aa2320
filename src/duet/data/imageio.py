"""Bytes -> pixels: the one place where an encoded image becomes an RGB uint8 array.

Training, evaluation, prediction and serving all call :func:`decode`, so they
agree on every detail that silently changes pixels: EXIF orientation, palette
and alpha handling (alpha is composited on white), CMYK, 16-bit and float
images, and which files are refused.

Refusals are :class:`DecodeError` with a one-line ``reason`` (``"truncated
image"``, ``"empty file (0 bytes)"``, ``"too many pixels: ..."``) that scan
writes into the manifest and serving returns to the client.

Two guards do not depend on PIL's process-wide settings, which this module never
changes: the pixel-count limit is checked from the header before any pixel is
decoded, and truncated files are errors because every image is loaded fully
(if some other code sets ``ImageFile.LOAD_TRUNCATED_IMAGES``, PIL will pad
truncated files instead; duet never sets it).
"""

from __future__ import annotations

import io
import os
import re
import struct

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Same number as PIL's default bomb limit, but enforced here as an error."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Only the decoders behind IMAGE_EXTENSIONS are tried: PIL can open many more
# formats (EPS even runs Ghostscript), which untrusted bytes must never reach.
_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# What PIL raises for a file it cannot parse or decode.
_PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
)
# What reading a header alone may raise (decoded_size answers None for all of them).
_HEADER_ERRORS: tuple[type[BaseException], ...] = (
    Image.UnidentifiedImageError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    MemoryError,
    *_PIL_ERRORS,
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})  # alpha is composited on white


class DecodeError(Exception):
    """An input that is not a decodable image; ``reason`` is one short line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(
    source: bytes | str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int | None = None,
) -> np.ndarray:
    """Decode an image file (path) or its bytes to a C-contiguous HxWx3 uint8 RGB array.

    Args:
        source: the encoded bytes, or a path to read them from (read only).
        max_pixels: refuse images whose header claims more than this many pixels,
            before decoding them.
        min_size: a hint that the caller will shrink the image so that its shorter
            side is ``min_size``. JPEGs are then decoded at a reduced scale (1/2,
            1/4 or 1/8) that keeps the shorter side >= ``min_size``, which is much
            faster for large photos. Other formats ignore it.

    Returns the first frame of animated images, after EXIF orientation (so the
    shape is that of the image as displayed).

    Raises:
        DecodeError: empty, unreadable, unknown, truncated or corrupt input, or
            more than ``max_pixels`` pixels.
    """
    if min_size is not None and min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    data = _read(source)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
            _check_pixels(img.size, max_pixels)
            if min_size is not None and img.format in ("JPEG", "MPO"):  # MPO: phone JPEGs
                _draft(img, min_size)
            img.load()
            # Draft (above) must come before the transpose: it only works on
            # the not-yet-loaded JPEG. In place: no copy when nothing rotates.
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img)
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (cannot identify format)") from None
    except Image.DecompressionBombError as e:
        # PIL's own guard, hit at open time when a header claims more than twice
        # its limit; say it the same way as ours.
        raise DecodeError(_bomb_reason(str(e), max_pixels)) from None
    except Image.DecompressionBombWarning as e:  # only raised when warnings are errors
        raise DecodeError(_bomb_reason(str(e), max_pixels)) from None
    except MemoryError:
        raise DecodeError("not enough memory to decode image") from None
    except _PIL_ERRORS as e:
        raise DecodeError(_pil_reason(e)) from None


def decoded_size(data: bytes, *, min_size: int | None = None) -> tuple[int, int] | None:
    """``(width, height)`` at which :func:`decode` would decode ``data`` (a JPEG at
    its reduced scale for ``min_size``), read from the header alone; None when
    the header cannot be read (:func:`decode` then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
            if min_size is not None and img.format in ("JPEG", "MPO"):
                _draft(img, min_size)
            return img.size
    except _HEADER_ERRORS:
        return None


def _read(source: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror or e}") from None


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise DecodeError(f"too many pixels: {w}x{h} = {w * h} > limit {max_pixels}")


def _bomb_reason(message: str, max_pixels: int) -> str:
    m = re.search(r"\((\d+) pixels\)", message)
    claimed = m.group(1) if m else "?"
    return f"too many pixels: {claimed} > limit {max_pixels}"


def _pil_reason(e: BaseException) -> str:
    message = " ".join(str(e).split())  # one line
    if "truncated" in message.lower() or isinstance(e, EOFError):
        return "truncated image"
    return f"corrupt image: {message or type(e).__name__}"


def _draft(img: Image.Image, min_size: int) -> None:
    """Ask the JPEG decoder for a 1/2, 1/4 or 1/8 scale that keeps both sides
    >= ``min_size``.

    PIL picks the largest scale s in (8, 4, 2, 1) with s <= min(W // w, H // h)
    and yields ceil(W / s) x ceil(H / s); asking for a ``min_size`` square
    therefore keeps both sides, and so the shorter one after EXIF rotation,
    at least ``min_size``.
    """
    img.draft("RGB", (min_size, min_size))


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> C-contiguous HxWx3 uint8 RGB."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _high_depth_to_uint8(np.asarray(img), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    with_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    target = "RGBA" if with_alpha else "RGB"
    if mode != target:
        try:
            img = img.convert(target)
        except ValueError:
            raise DecodeError(f"unsupported colour mode '{mode}'") from None
    if with_alpha:
        return _composite_on_white(img)
    return np.array(img, dtype=np.uint8, order="C")


def _composite_on_white(rgba: Image.Image) -> np.ndarray:
    arr = np.asarray(rgba, dtype=np.uint16)
    rgb, alpha = arr[:, :, :3], arr[:, :, 3:4]
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


def _high_depth_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer and float greyscale to 0..255 (never clip).

    - ``I;16*``: 16-bit samples, keep the high byte (65535 -> 255, 32768 -> 128).
    - ``I``: 32-bit integers, which is how 16-bit data often arrives; treated as
      16-bit when every value fits in 0..65535, else the value range is stretched.
    - ``F``: floats in 0..1 or 0..255 are taken as such, else stretched.
    """
    if mode.startswith("I;16"):
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    if mode == "I":
        ilo, ihi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if ilo >= 0 and ihi <= 65535:
            return (arr.astype(np.int64) >> 8).astype(np.uint8)
        return _stretch(arr.astype(np.float64))
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return np.round(values * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.round(values).astype(np.uint8)
    return _stretch(values)


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
