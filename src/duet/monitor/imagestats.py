"""Cheap per-image statistics, computed on the decoded RGB array.

They catch the changes a new camera or a new pipeline brings before the model
does: a different resolution or aspect ratio, darker or washed-out pictures,
greyscale instead of colour. The same function runs when the reference profile
is written and, in the server, on every decoded request image, so the two
always agree::

    rgb = duet.data.imageio.decode(data, max_pixels=..., min_size=spec.load_size)
    stats = image_stats(rgb)          # float32 (6,), in STAT_NAMES order

``width`` and ``height`` are those of the decoded array: JPEGs far larger than
the model input are decoded at a reduced scale (``min_size``), exactly as
training and serving decode them, so pass the same ``min_size`` everywhere.

numpy only: the server imports this without torch.
"""

from __future__ import annotations

import numpy as np

STAT_NAMES: tuple[str, ...] = ("width", "height", "aspect_ratio", "brightness", "contrast", "saturation")
"""Column order of :func:`image_stats` (brightness, contrast, saturation in [0, 1])."""

STAT_DESCRIPTIONS: dict[str, str] = {
    "width": "width in pixels",
    "height": "height in pixels",
    "aspect_ratio": "width / height",
    "brightness": "mean luma (ITU-R BT.601), 0 black .. 1 white",
    "contrast": "RMS contrast: standard deviation of luma",
    "saturation": "mean HSV saturation, 0 for greyscale",
}

# Statistics are computed on at most ~MAX_SIDE x MAX_SIDE pixels (a strided
# view, no copy of the full image): a 12-megapixel photo costs what a
# 128 x 128 thumbnail does, and the means move by well under 1%.
MAX_SIDE = 128
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_stats(rgb: np.ndarray) -> np.ndarray:
    """``STAT_NAMES`` of one HxWx3 uint8 RGB image, as float32 ``(6,)``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}")
    h, w = rgb.shape[:2]
    step = max(1, -(-max(h, w) // MAX_SIDE))
    px = rgb[::step, ::step]
    # Per channel plane, max/min on uint8: reductions over a last axis of 3 and a
    # (N, 3) @ (3,) product are NumPy's slow cases (1.1 ms -> 0.13 ms for a
    # 500x375 photo, the same float32 results); the server does this per image.
    r, g, b = (px[..., c] for c in range(3))
    luma = (r * np.float32(_LUMA[0]) + g * np.float32(_LUMA[1]) + b * np.float32(_LUMA[2])) * np.float32(1 / 255)
    hi = np.maximum(np.maximum(r, g), b).astype(np.float32)
    lo = np.minimum(np.minimum(r, g), b).astype(np.float32)
    saturation = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return np.array(
        [w, h, w / h, float(luma.mean()), float(luma.std()), float(saturation.mean())],
        dtype=np.float32,
    )
