"""Specifications for duet.data.digits: the bundled demo dataset as PNG folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duet.data.digits import write_digits
from duet.errors import ConfigError

SIZE = 16  # smaller than the default 32 to keep the tests quick


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digits")
    (out / "README.txt").write_text("mine")
    return out, write_digits(out, size=SIZE, progress=False)


def test_writes_every_sample_into_ten_class_folders(digits_dir: tuple[Path, dict]) -> None:
    out, summary = digits_dir
    assert summary == {"dir": str(out), "num_images": 1797, "num_classes": 10, "written": 1797, "size": SIZE}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    assert len(list(out.glob("*/*.png"))) == 1797
    assert (out / "0" / "0000.png").is_file()  # sample 0 is a zero


def test_png_is_rgb_dark_ink_on_white(digits_dir: tuple[Path, dict]) -> None:
    out, _ = digits_dir
    with Image.open(out / "0" / "0000.png") as image:
        assert image.mode == "RGB"
        assert image.size == (SIZE, SIZE)
        pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # blank corner is paper
    assert pixels.min() < 64  # and there is ink


def test_second_call_writes_nothing_and_changes_no_bytes(digits_dir: tuple[Path, dict]) -> None:
    out, _ = digits_dir
    before = digest(out)
    assert write_digits(out, size=SIZE, progress=False)["written"] == 0
    assert digest(out) == before


def test_unrelated_files_survive(digits_dir: tuple[Path, dict]) -> None:
    out, _ = digits_dir
    (out / "3" / "notes.txt").write_text("keep me")
    write_digits(out, size=SIZE, progress=False)
    assert (out / "README.txt").read_text() == "mine"
    assert (out / "3" / "notes.txt").read_text() == "keep me"


def test_bad_size_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`size` must be"):
        write_digits(tmp_path, size=4, progress=False)
