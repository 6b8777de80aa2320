"""A reproducible benchmark folder of photo-sized JPEGs made from real photographs.

scikit-learn ships two real photos (``china.jpg``, ``flower.jpg``, 640x427) so
nothing is downloaded. Each benchmark image is a random crop of one of them,
rescaled to about 500x375 (the size of typical dataset photos), flipped and
colour-shifted, and saved as a JPEG at quality 90 into ``classes`` folders.
The same seed writes the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from duet.system.atomic import write_bytes_atomic
from duet.system.progress import track


def write_sample_photos(
    out_dir: Path, *, count: int = 4000, classes: int = 10, seed: int = 0, progress: bool = True
) -> dict[str, object]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    written = 0
    for i in track(range(count), total=count, description="writing photos", enabled=progress):
        path = out_dir / f"class_{i % classes:02d}" / f"{i:05d}.jpg"
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        cw, ch = int(rng.integers(w // 3, w)), int(rng.integers(h // 3, h))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        tw, th = int(rng.integers(440, 560)), int(rng.integers(330, 420))
        img = photo.crop((x, y, x + cw, y + ch)).resize((tw, th), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        shift = rng.integers(-25, 26, size=3)
        arr = np.clip(np.asarray(img, dtype=np.int16) + shift, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        if not path.exists() or path.read_bytes() != buf.getvalue():
            write_bytes_atomic(path, buf.getvalue())
            written += 1
    return {"dir": str(out_dir), "images": count, "classes": classes, "written": written}
