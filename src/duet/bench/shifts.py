"""Image shifts for measuring the monitor: the same images, changed the way a
new camera, a new pipeline or a new source might change them.

Every shift is a function ``(PIL image, numpy Generator) -> PIL image`` of the
same size and mode RGB, registered in ``SHIFTS`` by name:

- ``brightness``: every pixel value x 0.6.
- ``contrast``: contrast x 0.5 (``PIL.ImageEnhance.Contrast``: halfway to the
  image's mean grey).
- ``jpeg``: re-encoded as JPEG at quality 10.
- ``scale``: shrunk to 60 % (bilinear) and centred on the image's own
  background colour (the median of its border pixels).
- ``translate``: moved 15 % of the width right and 15 % of the height down,
  the uncovered band filled with the background colour.
- ``noise``: Gaussian noise, sigma 5 grey levels, per pixel, the same on the
  three channels (a grey image stays grey; noise drawn per channel would also
  colour it, a change the saturation statistic sees).

``photo_crops`` makes an unrelated domain: random square crops of the two
photos scikit-learn ships (``load_sample_images``: a temple in China and a
flower), so nothing is downloaded.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

BRIGHTNESS = 0.6
CONTRAST = 0.5
JPEG_QUALITY = 10
SCALE = 0.6
TRANSLATE = 0.15
NOISE_SIGMA = 5.0

Shift = Callable[[Image.Image, np.random.Generator], Image.Image]


def background(img: Image.Image) -> tuple[int, int, int]:
    """The median colour of the image's border pixels (its paper, for a scan)."""
    a = np.asarray(img.convert("RGB"))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))  # type: ignore[return-value]


def brightness(img: Image.Image, _rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float64) * BRIGHTNESS
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def contrast(img: Image.Image, _rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(img.convert("RGB")).enhance(CONTRAST)


def jpeg(img: Image.Image, _rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def scale(img: Image.Image, _rng: np.random.Generator) -> Image.Image:
    rgb = img.convert("RGB")
    w, h = rgb.size
    small = rgb.resize((max(1, round(w * SCALE)), max(1, round(h * SCALE))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (w, h), background(rgb))
    canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    return canvas


def translate(img: Image.Image, _rng: np.random.Generator) -> Image.Image:
    rgb = img.convert("RGB")
    w, h = rgb.size
    dx, dy = round(w * TRANSLATE), round(h * TRANSLATE)
    canvas = Image.new("RGB", (w, h), background(rgb))
    canvas.paste(rgb, (dx, dy))  # what moves past the right and bottom edges is cut off
    return canvas


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    a = a + rng.normal(0.0, NOISE_SIGMA, (*a.shape[:2], 1))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


SHIFTS: dict[str, Shift] = {
    "brightness": brightness,
    "contrast": contrast,
    "jpeg": jpeg,
    "scale": scale,
    "translate": translate,
    "noise": noise,
}


def write_shifted(paths: Sequence[Path], root: Path, out_dir: Path, shift: str, *, seed: int = 0) -> list[Path]:
    """``shift`` applied to every file in ``paths`` (all under ``root``), written as
    PNG under ``out_dir`` at the same relative path (class folders kept)."""
    if shift not in SHIFTS:
        raise ValueError(f"`shift` must be one of {', '.join(SHIFTS)}. Received: shift={shift!r}")
    rng = np.random.default_rng(seed)
    written = []
    for p in paths:
        with Image.open(p) as img:
            changed = SHIFTS[shift](img, rng)
        dest = (out_dir / Path(p).relative_to(root)).with_suffix(".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        changed.save(dest)
        written.append(dest)
    return written


def photo_crops(count: int, size: int, *, seed: int = 0) -> list[Image.Image]:
    """``count`` RGB squares of ``size`` px: random crops (side 10-60 % of the
    photo's height, anywhere in it) of scikit-learn's two sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(int(0.1 * photo.height), int(0.6 * photo.height) + 1))
        x, y = int(rng.integers(photo.width - side + 1)), int(rng.integers(photo.height - side + 1))
        crops.append(photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR))
    return crops


def write_photos(out_dir: Path, count: int, size: int, *, seed: int = 0) -> list[Path]:
    """``photo_crops`` written as ``out_dir/photo_<i>.png`` (no class folder: they have no label)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, crop in enumerate(photo_crops(count, size, seed=seed)):
        dest = out_dir / f"photo_{i:05d}.png"
        crop.save(dest)
        written.append(dest)
    return written
