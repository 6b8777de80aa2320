"""PyTorch's uint8 image resize, re-done in NumPy, bit for bit.

``F.interpolate(x_uint8, size, mode="bilinear"|"bicubic", antialias=True)``
is a fixed-point separable filter (aten/src/ATen/native/cpu/UpSampleKernel.cpp:
``_compute_indices_min_size_weights_aa`` and
``_compute_index_ranges_int16_weights``; the AVX2 kernels in
UpSampleKernelAVXAntialias.h give the same integers): per axis, PIL's support
and centring, weights normalised in float64, rounded to int16 at the largest
precision that keeps the axis's largest weight under 2**15; the width pass
runs first, its result is rounded and clamped to uint8, then the height pass.
``mode="nearest"`` picks ``floor(i * (in / out))`` in float32.

Every integer here is the one torch computes, so the two give identical
pixels (tests/test_preprocess.py checks it over many sizes against torch).
This lets a server resize without importing torch, and still hand the model
exactly the pixels training and evaluation produced.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MODES = ("bilinear", "bicubic", "nearest")


def _linear(x: np.ndarray) -> np.ndarray:
    """``HelperInterpLinear::aa_filter``: the triangle."""
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _cubic(x: np.ndarray) -> np.ndarray:
    """``HelperInterpCubic::aa_filter`` with a = -0.5 (PIL's), in torch's
    evaluation order (``cubic_convolution1`` / ``cubic_convolution2``)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=256)
def _taps(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One axis: first source index per output ``[out]``, int32 weights
    ``[out, taps]`` (zero past each output's window) and their precision."""
    interp_size, filt = (2, _linear) if mode == "bilinear" else (4, _cubic)
    scale = in_size / out_size
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    taps = int(np.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xsize = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin, 0, taps)
    j = np.arange(taps)[None, :]
    w = filt(((j + xmin[:, None]) - center[:, None] + 0.5) * invscale)
    w = np.where(j < xsize[:, None], w, 0.0)
    total = np.zeros(out_size)
    for k in range(taps):  # torch adds the weights left to right; so do we
        total = total + w[:, k]
    norm = total != 0.0
    w = np.where(norm[:, None], w / np.where(norm, total, 1.0)[:, None], w)
    wt_max = float(w[norm].max(initial=0.0))
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = w * (1 << precision)
    iw = np.where(v < 0, np.trunc(-0.5 + v), np.trunc(0.5 + v)).astype(np.int32)
    xmin.flags.writeable = iw.flags.writeable = False  # cached and shared by the decode threads
    return xmin, iw, precision


def _pass(img: np.ndarray, out_size: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Resample ``img`` (HxWx3 uint8) along its first axis to ``out_size``,
    returning only outputs ``lo:hi`` (the crop that is kept). Gathering whole
    rows keeps every tap a contiguous copy, the fast case for NumPy."""
    in_size = img.shape[0]
    xmin, w, precision = _taps(in_size, out_size, mode)
    xmin, w = xmin[lo:hi], w[lo:hi]
    acc = np.full((hi - lo, *img.shape[1:]), 1 << (precision - 1), dtype=np.int32)
    term = np.empty_like(acc)
    for k in range(w.shape[1]):
        wk = w[:, k]
        if not wk.any():
            continue
        np.multiply(img[np.minimum(xmin + k, in_size - 1)], wk[:, None, None], out=term)
        acc += term
    np.right_shift(acc, precision, out=acc)
    return np.clip(acc, 0, 255).astype(np.uint8)


def _nearest_index(in_size: int, out_size: int, lo: int, hi: int) -> np.ndarray:
    """``nearest_idx`` of UpSampleKernel.cpp (the legacy "nearest" mode)."""
    i = np.arange(lo, hi)
    if out_size == in_size:
        return i
    if out_size == 2 * in_size:
        return i >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def resize_crop(rgb: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int], mode: str) -> np.ndarray:
    """``rgb`` (HxWx3 uint8) resized to ``size`` = (h, w) as torch would, and
    cropped to ``box`` = (top, left, height, width): only the kept pixels are
    computed. Returns a C-contiguous HxWx3 uint8 array."""
    if mode not in MODES:
        raise ValueError(f"interpolation must be one of {MODES}, got {mode!r}")
    (nh, nw), (top, left, ch, cw) = size, box
    h, w = rgb.shape[:2]
    if mode == "nearest":
        rows, cols = _nearest_index(h, nh, top, top + ch), _nearest_index(w, nw, left, left + cw)
        return np.ascontiguousarray(rgb[rows][:, cols])
    out = (
        rgb[:, left : left + cw]
        if nw == w
        else _pass(np.ascontiguousarray(rgb.transpose(1, 0, 2)), nw, left, left + cw, mode).transpose(1, 0, 2)
    )
    out = out[top : top + ch] if nh == h else _pass(out, nh, top, top + ch, mode)
    return np.ascontiguousarray(out)
