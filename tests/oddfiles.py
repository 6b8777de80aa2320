"""Writers for good, odd and broken image files, shared by the data tests.

Every ``write_*`` function writes one real file and returns its path. Nothing is
mocked: the bytes are what a camera, an editor or a broken download would leave.
:func:`write_salted_folder` builds a small two-class data folder salted with every
odd case, and returns the status that ``duet.data.scan`` must give each file.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def varied_image(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """A small RGB image whose colour, pattern and size depend on ``seed``, so
    that no two seeds give the same bytes."""
    rng = np.random.default_rng(seed)
    w, h = size or (int(rng.integers(20, 48)), int(rng.integers(20, 48)))
    base = rng.integers(0, 256, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = ((xx // int(rng.integers(2, 6)) + yy // int(rng.integers(2, 6))) % 2)[:, :, None]
    noise = rng.integers(-20, 21, size=(h, w, 3))
    arr = np.clip(base + stripes * 60 - 30 + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def write_good_png(path: Path, seed: int) -> Path:
    return _write(path, encode(varied_image(seed), "PNG"))


def write_good_jpeg(path: Path, seed: int) -> Path:
    return _write(path, encode(varied_image(seed), "JPEG", quality=90))


def big_jpeg_bytes(width: int = 2000, height: int = 1500) -> bytes:
    """A smooth gradient photo-sized JPEG (small file, large pixel count)."""
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=2)
    return encode(Image.fromarray(arr.astype(np.uint8), "RGB"), "JPEG", quality=80)


def truncated_jpeg_bytes() -> bytes:
    full = encode(varied_image(1000, (64, 64)), "JPEG", quality=95)
    return full[: len(full) // 2]


def write_truncated_jpeg(path: Path) -> Path:
    return _write(path, truncated_jpeg_bytes())


def write_zero_byte(path: Path) -> Path:
    return _write(path, b"")


def write_text_as_image(path: Path) -> Path:
    return _write(path, b"this is not a picture, just text saved with an image extension\n")


def write_readme(path: Path) -> Path:
    return _write(path, b"# Data\nOne folder per class.\n")


def cmyk_jpeg_bytes(size: tuple[int, int] = (16, 12)) -> bytes:
    """A red CMYK JPEG (C=0, M=255, Y=255, K=0), as print workflows write them."""
    return encode(Image.new("CMYK", size, (0, 255, 255, 0)), "JPEG", quality=95)


def write_cmyk_jpeg(path: Path) -> Path:
    return _write(path, cmyk_jpeg_bytes())


def sixteen_bit_png_bytes() -> bytes:
    """A 16-bit greyscale PNG, 3 columns: 0, 32768, 65535 (x 2 rows)."""
    arr = np.array([[0, 32768, 65535], [0, 32768, 65535]], dtype=np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def write_16bit_png(path: Path) -> Path:
    return _write(path, sixteen_bit_png_bytes())


def rgba_png_bytes() -> bytes:
    """Left column fully transparent (black underneath), right column opaque blue."""
    arr = np.zeros((4, 2, 4), dtype=np.uint8)
    arr[:, 0] = (0, 0, 0, 0)
    arr[:, 1] = (0, 0, 255, 255)
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def write_rgba_png(path: Path) -> Path:
    return _write(path, rgba_png_bytes())


def exif_rotated_jpeg_bytes(width: int = 40, height: int = 24) -> bytes:
    """A ``width`` x ``height`` JPEG stored with EXIF Orientation=6 (display
    rotated 90 degrees clockwise) and a red 8x8 mark in its stored top-left
    corner, which appears at the top-right once upright."""
    arr = np.full((height, width, 3), 200, dtype=np.uint8)
    arr[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(arr, "RGB"), "JPEG", quality=95, exif=exif.tobytes())


def write_exif_rotated_jpeg(path: Path) -> Path:
    return _write(path, exif_rotated_jpeg_bytes())


def write_1x1_png(path: Path) -> Path:
    return _write(path, encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def huge_header_png_bytes(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB pixels, followed by a
    tiny IDAT: a decompression bomb's shape, a few dozen bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def write_huge_header_png(path: Path) -> Path:
    return _write(path, huge_header_png_bytes())


def palette_transparent_png_bytes() -> bytes:
    """A palette PNG: index 0 transparent (left half), index 1 opaque green."""
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    img.paste(1, (2, 0, 4, 2))
    return encode(img, "PNG", transparency=0)


def write_palette_transparent_png(path: Path) -> Path:
    return _write(path, palette_transparent_png_bytes())


def write_salted_folder(root: Path) -> dict[str, str]:
    """Write classes ``a`` and ``b``, 12 good varied PNG/JPEG images each, plus one
    of every odd and broken file. Returns {path relative to root: expected scan
    status} for every file written ("ok" or "skipped")."""
    expected: dict[str, str] = {}
    for c, label in enumerate(("a", "b")):
        for i in range(12):
            seed = 100 * (c + 1) + i
            if i % 2:
                rel = f"{label}/good_{i:02d}.jpg"
                write_good_jpeg(root / rel, seed)
            else:
                rel = f"{label}/good_{i:02d}.png"
                write_good_png(root / rel, seed)
            expected[rel] = "ok"
    odd = {
        "a/truncated.jpg": (write_truncated_jpeg, "skipped"),
        "a/empty.jpg": (write_zero_byte, "skipped"),
        "a/cmyk.jpg": (write_cmyk_jpeg, "ok"),
        "a/rgba.png": (write_rgba_png, "ok"),
        "a/exif_rotated.jpg": (write_exif_rotated_jpeg, "ok"),
        "a/palette_transparent.png": (write_palette_transparent_png, "ok"),
        "b/text.jpg": (write_text_as_image, "skipped"),
        "b/sixteen_bit.png": (write_16bit_png, "ok"),
        "b/one_pixel.png": (write_1x1_png, "ok"),
        "b/huge_header.png": (write_huge_header_png, "skipped"),
        "b/README.txt": (write_readme, "skipped"),
    }
    for rel, (writer, status) in odd.items():
        writer(root / rel)
        expected[rel] = status
    return expected
