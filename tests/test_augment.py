"""Device-side batched augmentation: per-image crops, deterministic eval path."""

from __future__ import annotations

import numpy as np
import torch

from duet.data import augment
from duet.preprocess import PreprocessSpec, to_load_square


def _batch(n: int, spec: PreprocessSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, spec.load_size, spec.load_size), generator=g, dtype=torch.uint8)


def test_eval_batch_is_centre_crop_then_normalise() -> None:
    spec = PreprocessSpec(image_size=16, crop_pct=0.8)
    x = _batch(2, spec)
    out = augment.eval_batch(x, spec)
    o = (spec.load_size - 16) // 2
    manual = x[:, :, o : o + 16, o : o + 16].float() / 255
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, (manual - mean) / std, atol=1e-5)


def test_train_batch_draws_a_different_crop_for_every_image() -> None:
    spec = PreprocessSpec(image_size=16, crop_pct=0.8)
    one = _batch(1, spec)
    x = one.repeat(8, 1, 1, 1)  # eight copies of the same image
    out = augment.train_batch(x, spec, scale=(0.2, 1.0), ratio=(0.75, 1.33), hflip=True,
                              generator=torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    distinct = {tuple(out[i].flatten()[:50].tolist()) for i in range(8)}
    assert len(distinct) == 8


def test_train_batch_is_repeatable_for_a_seed() -> None:
    spec = PreprocessSpec(image_size=16, crop_pct=0.8)
    x = _batch(4, spec)
    kw = dict(scale=(0.3, 1.0), ratio=(0.75, 1.33), hflip=True)
    a = augment.train_batch(x, spec, generator=torch.Generator().manual_seed(5), **kw)
    b = augment.train_batch(x, spec, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)


def test_full_scale_crop_without_flip_keeps_the_image() -> None:
    """scale=(1,1), ratio=(1,1), no flip: the crop is the whole load square, resized."""
    spec = PreprocessSpec(image_size=20, crop_pct=1.0)
    x = _batch(2, spec)
    out = augment.train_batch(x, spec, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False,
                              generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, augment.eval_batch(x, spec), atol=1e-4)


def test_load_square_keeps_aspect_and_centre() -> None:
    spec = PreprocessSpec(image_size=28, crop_pct=0.875)  # load 32
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 38:42] = 255  # a white bar in the centre
    sq = to_load_square(wide, spec)
    assert sq.shape == (32, 32, 3) and sq.dtype == np.uint8
    assert sq[:, 15:17].mean() > 200 and sq[:, :8].mean() < 10
    tiny = to_load_square(np.full((1, 1, 3), 7, np.uint8), spec)
    assert tiny.shape == (32, 32, 3) and (tiny == 7).all()
