"""One resize for every stage: ``duet.data.resample`` (NumPy) computes exactly the integers
of torch's uint8 resize, so a server without torch hands the model the pixels that
training and evaluation produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from duet.data.preprocess import PreprocessSpec, to_load_square
from duet.data.resample import resize_crop


def _torch_resize(rgb: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    if mode == "nearest":
        y = F.interpolate(x, size=size, mode="nearest")
    else:
        y = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_numpy_resize_is_torch_resize_bit_for_bit(mode: str) -> None:
    """Down and up, odd and even sizes, aspect changes, smooth and noisy pixels, any crop."""
    rng = np.random.default_rng({"bilinear": 0, "bicubic": 1, "nearest": 2}[mode])
    cases = [
        ((480, 640), (256, 341)),
        ((8, 8), (37, 37)),
        ((1, 1), (5, 9)),
        ((375, 500), (256, 256)),
        ((1200, 31), (2000, 256)),
        ((300, 300), (299, 301)),
    ]
    cases += [(tuple(rng.integers(1, 600, 2)), tuple(rng.integers(1, 400, 2))) for _ in range(40)]
    for (h, w), (nh, nw) in cases:
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ramp = ((np.arange(h)[:, None, None] * 7 + np.arange(w)[None, :, None] * 3) % 256).astype(np.uint8)
        for rgb in (noise, np.broadcast_to(ramp, (h, w, 3))):
            expected = _torch_resize(rgb, (nh, nw), mode)
            top, left = int(rng.integers(0, nh)), int(rng.integers(0, nw))
            ch, cw = int(rng.integers(1, nh - top + 1)), int(rng.integers(1, nw - left + 1))
            got = resize_crop(rgb, (nh, nw), (top, left, ch, cw), mode)
            assert got.dtype == np.uint8 and got.flags.c_contiguous
            assert np.array_equal(got, expected[top : top + ch, left : left + cw]), ((h, w), (nh, nw), mode)


def test_load_square_is_the_same_with_and_without_torch_loaded(tmp_path: Path) -> None:
    """``to_load_square`` in a process where torch cannot even be imported (an ONNX
    server) gives the pixels it gives here, where torch's kernel is used."""
    rng = np.random.default_rng(5)
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8)
        for shape in [(480, 640, 3), (33, 20, 3), (27, 27, 3), (8, 8, 3), (701, 333, 3)]
    ]
    np.savez(tmp_path / "in.npz", *images)
    spec = PreprocessSpec(image_size=24)
    script = f"""
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(name=name)
sys.meta_path.insert(0, NotInstalled())  # import torch now fails
import numpy as np
from duet.data.preprocess import PreprocessSpec, to_load_square
spec = PreprocessSpec.from_dict({json.dumps(spec.to_dict())})
images = np.load(sys.argv[1])
np.savez(sys.argv[2], *[to_load_square(images[f"arr_{{i}}"], spec) for i in range(len(images.files))])
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    without = np.load(tmp_path / "out.npz")
    for i, rgb in enumerate(images):
        assert np.array_equal(without[f"arr_{i}"], to_load_square(rgb, spec)), rgb.shape


def test_an_unknown_interpolation_is_refused_when_the_spec_is_made() -> None:
    with pytest.raises(ValueError, match="interpolation must be one of"):
        PreprocessSpec(interpolation="lanczos")
