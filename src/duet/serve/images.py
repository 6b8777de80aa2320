"""Encoded image bytes -> the model's uint8 input: exactly the evaluation path.

decode (``duet.data.imageio.decode``, ``min_size=spec.load_size``) ->
``duet.data.preprocess.to_load_square`` -> centre ``image_size`` crop
(``duet.data.preprocess.centre_offset``, as ``duet.data.augment.centre_crop``) ->
uint8 CHW. Normalisation happens inside the model graph. No other resize,
colour conversion or crop exists in the server.

Memory: each image is shrunk right after it is decoded, so only the small
result outlives the call; after an image of more than ``TRIM_PIXELS`` the
decoding thread hands the freed heap back to the OS (glibc ``malloc_trim``),
which otherwise keeps it: measured, four 20-MP PNGs left the server ~450 MB
larger for good without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import numpy as np

from duet.data.imageio import decode
from duet.data.preprocess import PreprocessSpec, centre_offset, to_load_square


def pixels_from_bytes(data: bytes, spec: PreprocessSpec, max_pixels: int) -> np.ndarray:
    """uint8 ``(3, image_size, image_size)``; raises ``DecodeError`` for a bad image."""
    return prepare(data, spec, max_pixels, with_stats=False)[0]


def prepare(
    data: bytes, spec: PreprocessSpec, max_pixels: int, *, with_stats: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model input of one image, and (for drift monitoring) the
    ``duet.monitor.image_stats`` of the decoded image, as the reference profile
    computed them."""
    rgb = decode(data, max_pixels=max_pixels, min_size=spec.load_size)
    large = rgb.shape[0] * rgb.shape[1] > TRIM_PIXELS
    stats = None
    if with_stats:
        from duet.monitor.imagestats import image_stats

        stats = image_stats(rgb)
    square = to_load_square(rgb, spec)
    del rgb
    o, s = centre_offset(spec), spec.image_size
    pixels = np.ascontiguousarray(square[o : o + s, o : o + s].transpose(2, 0, 1))
    del square
    if large and _malloc_trim is not None:
        _malloc_trim(0)
    return pixels, stats


TRIM_PIXELS = 4_000_000


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()
