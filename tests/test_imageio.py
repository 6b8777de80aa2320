"""Specification of duet.data.imageio.decode: bytes -> HxWx3 uint8 RGB, or a reason."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oddfiles
from duet.data.imageio import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, DecodeError, decode


def _assert_rgb(arr: np.ndarray, height: int, width: int) -> None:
    assert arr.shape == (height, width, 3)
    assert arr.dtype == np.uint8
    assert arr.flags.c_contiguous


def _decode_error(data: bytes, **kwargs: object) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, **kwargs)  # type: ignore[arg-type]
    reason = info.value.reason
    assert reason and "\n" not in reason
    return info.value


def _mode_file(mode: str, fmt: str) -> Callable[[], bytes]:
    def build() -> bytes:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "RGB")
        return oddfiles.encode(img.convert(mode), fmt)

    return build


def _int32_tiff() -> bytes:
    arr = np.array([[0, 32768, 65535], [1, 2, 3]], dtype=np.int32)
    return oddfiles.encode(Image.fromarray(arr), "TIFF")


def _float_tiff() -> bytes:
    arr = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 1.0]], dtype=np.float32)
    return oddfiles.encode(Image.fromarray(arr), "TIFF")


def _big_endian_16bit_tiff() -> bytes:
    arr = np.array([[0, 32768, 65535], [0, 32768, 65535]], dtype=">u2")
    return oddfiles.encode(Image.fromarray(arr), "TIFF")


MODE_FILES: dict[str, Callable[[], bytes]] = {
    "1 png": _mode_file("1", "PNG"),
    "1 bmp": _mode_file("1", "BMP"),
    "L jpeg": _mode_file("L", "JPEG"),
    "P png": _mode_file("P", "PNG"),
    "P gif": _mode_file("P", "GIF"),
    "P png transparent": oddfiles.palette_transparent_png_bytes,
    "LA png": _mode_file("LA", "PNG"),
    "RGB webp": _mode_file("RGB", "WEBP"),
    "RGBA png": oddfiles.rgba_png_bytes,
    "RGBA tiff": _mode_file("RGBA", "TIFF"),
    "CMYK jpeg": oddfiles.cmyk_jpeg_bytes,
    "CMYK tiff": _mode_file("CMYK", "TIFF"),
    "YCbCr tiff": _mode_file("YCbCr", "TIFF"),
    "I;16 png": oddfiles.sixteen_bit_png_bytes,
    "I;16B tiff": _big_endian_16bit_tiff,
    "I tiff": _int32_tiff,
    "F tiff": _float_tiff,
}


@pytest.mark.parametrize("name", sorted(MODE_FILES))
def test_every_mode_decodes_to_hxwx3_uint8_rgb(name: str) -> None:
    data = MODE_FILES[name]()
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
    _assert_rgb(decode(data), h, w)


def test_alpha_is_composited_on_white() -> None:
    arr = decode(oddfiles.rgba_png_bytes())
    assert arr[0, 0].tolist() == [255, 255, 255]  # fully transparent black
    assert arr[0, 1].tolist() == [0, 0, 255]  # opaque blue


def test_palette_transparency_is_composited_on_white() -> None:
    arr = decode(oddfiles.palette_transparent_png_bytes())
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 3].tolist() == [0, 255, 0]


@pytest.mark.parametrize("build", [oddfiles.sixteen_bit_png_bytes, _big_endian_16bit_tiff])
def test_16bit_values_are_scaled_not_clipped(build: Callable[[], bytes]) -> None:
    arr = decode(build())
    assert arr[0, :, 0].tolist() == [0, 128, 255]  # 0, 32768, 65535


def test_float_image_in_unit_range_is_scaled_to_255() -> None:
    assert decode(_float_tiff())[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_6_swaps_width_and_height_and_rotates() -> None:
    arr = decode(oddfiles.exif_rotated_jpeg_bytes(width=40, height=24))
    _assert_rgb(arr, 40, 24)
    # The mark stored at the top-left is displayed at the top-right.
    top_right, top_left = arr[2, -3].astype(int), arr[2, 2].astype(int)
    assert top_right[0] > 200 and top_right[1] < 60
    assert abs(top_left - 200).max() < 30


def test_cmyk_jpeg_converts_to_rgb() -> None:
    arr = decode(oddfiles.cmyk_jpeg_bytes())
    r, g, b = arr[5, 5].astype(int)
    assert r > 230 and g < 25 and b < 25


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = oddfiles.encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(data)[0, 0].tolist() == [255, 0, 0]


def test_one_pixel_image_is_valid(tmp_path: Path) -> None:
    path = oddfiles.write_1x1_png(tmp_path / "one.png")
    assert decode(path).tolist() == [[[10, 200, 30]]]


def test_truncated_jpeg_raises_with_reason() -> None:
    assert "truncated" in _decode_error(oddfiles.truncated_jpeg_bytes()).reason


def test_truncated_png_raises() -> None:
    full = oddfiles.encode(oddfiles.varied_image(3, (64, 64)), "PNG")
    _decode_error(full[: len(full) // 2])


def test_zero_bytes_raise_empty_file() -> None:
    assert "empty" in _decode_error(b"").reason


def test_text_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = oddfiles.write_text_as_image(tmp_path / "text.jpg")
    with pytest.raises(DecodeError, match="not an image"):
        decode(path)


def test_random_bytes_are_not_an_image() -> None:
    _decode_error(np.random.default_rng(0).bytes(4096))


def test_header_claiming_50000x50000_is_rejected_fast() -> None:
    start = time.perf_counter()
    reason = _decode_error(oddfiles.huge_header_png_bytes(50_000, 50_000)).reason
    assert time.perf_counter() - start < 1.0
    assert "pixels" in reason


def test_header_just_over_the_limit_is_rejected_by_our_own_check() -> None:
    # 10000 x 10000 = 1e8: above our limit, below PIL's own error threshold.
    with pytest.warns(Image.DecompressionBombWarning):
        reason = _decode_error(oddfiles.huge_header_png_bytes(10_000, 10_000)).reason
    assert reason == f"too many pixels: 10000x10000 = 100000000 > limit {DEFAULT_MAX_PIXELS}"


def test_max_pixels_is_respected() -> None:
    data = oddfiles.encode(Image.new("RGB", (100, 50)), "PNG")
    assert "too many pixels" in _decode_error(data, max_pixels=4999).reason
    _assert_rgb(decode(data, max_pixels=5000), 50, 100)


def test_min_size_draft_keeps_shorter_side_and_decodes_smaller() -> None:
    data = oddfiles.big_jpeg_bytes(2000, 1500)
    full = decode(data)
    small = decode(data, min_size=200)
    assert full.shape == (1500, 2000, 3)
    assert 200 <= min(small.shape[:2]) < 1500
    _assert_rgb(small, small.shape[0], small.shape[1])


def test_min_size_draft_applies_to_multi_picture_jpeg() -> None:
    photo = Image.open(io.BytesIO(oddfiles.big_jpeg_bytes(2000, 1500)))
    data = oddfiles.encode(photo, "MPO", save_all=True, append_images=[photo.rotate(90)])
    assert decode(data).shape == (1500, 2000, 3)
    assert decode(data, min_size=200).shape == (375, 500, 3)


@pytest.mark.parametrize("min_size", [1, 24, 25, 39, 40])
def test_min_size_holds_after_exif_rotation(min_size: int) -> None:
    arr = decode(oddfiles.exif_rotated_jpeg_bytes(width=400, height=240), min_size=min_size)
    assert min(arr.shape[:2]) >= min_size


def test_min_size_does_not_change_png() -> None:
    data = oddfiles.encode(oddfiles.varied_image(5, (300, 200)), "PNG")
    assert np.array_equal(decode(data, min_size=16), decode(data))


def test_decoding_a_path_and_its_bytes_give_identical_arrays(tmp_path: Path) -> None:
    path = oddfiles.write_exif_rotated_jpeg(tmp_path / "x.jpg")
    assert np.array_equal(decode(path), decode(path.read_bytes()))
    assert np.array_equal(decode(str(path)), decode(path.read_bytes()))


def test_unreadable_path_raises_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="cannot read"):
        decode(tmp_path / "missing.png")


def test_image_extensions_are_lower_case_with_dot() -> None:
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
