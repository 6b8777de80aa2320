"""The bundled demo dataset: UCI handwritten digits as a folder of PNGs.

scikit-learn ships the 1,797 real 8x8 digit scans (values 0..16, classes 0-9)
inside its package, so the demo needs no download. ``write_digits`` turns them
into the folder layout every duet stage reads::

    out_dir/
      0/0000.png  0/0010.png ...
      1/0001.png  ...
      ...
      9/...

Each file is named by the sample's index in scikit-learn's order and is an RGB
PNG of dark ink on white paper, upscaled bilinearly to ``size`` x ``size``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from duet.errors import ConfigError, DataError
from duet.system.atomic import write_bytes_atomic
from duet.system.progress import track

MIN_SIZE = 8
MAX_SIZE = 1024
MAX_VALUE = 16.0  # the digits' pixel values run from 0 (blank) to 16 (full ink)


def write_digits(out_dir: Path, *, size: int = 32, progress: bool = True) -> dict[str, Any]:
    """Write the digits as ``out_dir/<digit>/<index:04d>.png``; safe to call again.

    Args:
        out_dir: destination folder, created if missing. Other files in it are
            left alone; nothing is ever deleted.
        size: width and height of each PNG in pixels (8..1024), default 32.
        progress: show a progress bar on stderr.

    A file that already holds the same bytes is skipped, so a second call
    writes nothing; one with different bytes (e.g. from another ``size``) is
    replaced atomically. The PNG bytes are deterministic.

    Returns:
        ``{"dir", "num_images", "num_classes", "written", "size"}``, where
        ``written`` counts files created or replaced by this call.
    """
    _check_args(Path(out_dir), size)
    out_dir = Path(out_dir)
    digits = load_digits()
    images: np.ndarray = digits.images
    targets: np.ndarray = digits.target
    written = 0
    samples = track(enumerate(zip(images, targets)), total=len(targets), description="digits", enabled=progress)
    for index, (image, target) in samples:
        path = out_dir / str(int(target)) / f"{index:04d}.png"
        if _write_if_changed(path, digit_png(image, size)):
            written += 1
    return {
        "dir": str(out_dir),
        "num_images": int(len(targets)),
        "num_classes": int(len(np.unique(targets))),
        "written": written,
        "size": size,
    }


def _check_args(out_dir: Path, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"`size` must be an integer from {MIN_SIZE} to {MAX_SIZE}. Received: size={size!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder; choose another output folder for the digits.")


def digit_png(image: np.ndarray, size: int) -> bytes:
    """One 8x8 digit (values 0..16) as RGB PNG bytes: dark ink on white, ``size`` x ``size``."""
    paper = np.rint(255.0 - image.astype(np.float64) * (255.0 / MAX_VALUE))
    grey = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))  # 2-D uint8 -> mode "L"
    rgb = grey.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", optimize=False, compress_level=6)  # no metadata: same bytes every run
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly it; True if written."""
    if path.is_file() and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True
