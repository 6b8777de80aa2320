"""duet.monitor.image_stats: each statistic is what STAT_DESCRIPTIONS says, on
images whose answer is known by construction (the server computes these per
request, the reference profile per training image: one function for both)."""

from __future__ import annotations

import numpy as np
import pytest

from duet.monitor.imagestats import MAX_SIDE, STAT_NAMES, image_stats


def stats(rgb: np.ndarray) -> dict[str, float]:
    return dict(zip(STAT_NAMES, image_stats(rgb).tolist()))


def test_size_and_aspect_are_those_of_the_array() -> None:
    s = stats(np.zeros((30, 60, 3), np.uint8))
    assert (s["width"], s["height"], s["aspect_ratio"]) == (60, 30, 2.0)


@pytest.mark.parametrize(("colour", "luma"), [((255, 0, 0), 0.299), ((0, 255, 0), 0.587), ((0, 0, 255), 0.114)])
def test_pure_colours_have_bt601_luma_full_saturation_and_no_contrast(
    colour: tuple[int, int, int], luma: float
) -> None:
    s = stats(np.broadcast_to(np.array(colour, np.uint8), (20, 20, 3)).copy())
    assert s["brightness"] == pytest.approx(luma, abs=1e-6)
    assert s["saturation"] == pytest.approx(1.0) and s["contrast"] == pytest.approx(0.0, abs=1e-6)


def test_grey_has_no_saturation_and_black_white_halves_have_contrast_one_half() -> None:
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 10:] = 255
    s = stats(img)
    assert s["saturation"] == 0.0  # black pixels (max 0) count as unsaturated, not NaN
    assert s["brightness"] == pytest.approx(0.5, abs=1e-6) and s["contrast"] == pytest.approx(0.5, abs=1e-6)


def test_large_images_are_sampled_on_a_grid_of_at_most_max_side() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3 * MAX_SIDE, 4 * MAX_SIDE, 3), dtype=np.uint8)
    s, grid = stats(img), stats(np.ascontiguousarray(img[::4, ::4]))
    assert (s["width"], s["height"]) == (4 * MAX_SIDE, 3 * MAX_SIDE)
    assert all(s[k] == grid[k] for k in ("brightness", "contrast", "saturation"))


def test_anything_but_hxwx3_uint8_is_refused() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        image_stats(np.zeros((4, 4, 3), np.float32))
