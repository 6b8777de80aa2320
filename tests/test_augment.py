"""Device-side batched augmentation: per-image crops, deterministic eval path."""

from __future__ import annotations

import numpy as np
import torch

from duet.data import augment
from duet.data.preprocess import PreprocessSpec, to_load_square


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
    out = augment.train_batch(
        x, spec, scale=(0.2, 1.0), ratio=(0.75, 1.33), hflip=True, generator=torch.Generator().manual_seed(1)
    )
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
    out = augment.train_batch(
        x, spec, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, generator=torch.Generator().manual_seed(0)
    )
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


def _smooth_batch(n: int, side: int) -> torch.Tensor:
    """Smooth images (gradients), so bilinear kernels with and without
    antialiasing agree closely when they sample the same box."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    imgs = []
    for i in range(n):
        r = xx * 200 // side + 9 * i
        g = yy * 255 // side
        b = (xx + yy) * 100 // side + 7 * i
        imgs.append(torch.stack([r, g, b]).to(torch.uint8))
    return torch.stack(imgs).contiguous(memory_format=torch.channels_last)


def test_cpu_kernel_and_grid_sample_crop_the_same_boxes() -> None:
    """Large images take the per-image uint8 kernel on the CPU, accelerators
    take grid_sample; both must show the same box (same draws, same mirror)."""
    spec = PreprocessSpec(image_size=112, crop_pct=0.875)  # load 128, per-image path
    assert spec.image_size >= augment.PER_IMAGE_MIN_SIZE
    x = _smooth_batch(6, spec.load_size)
    kw = dict(scale=(0.5, 1.0), ratio=(0.8, 1.25), hflip=True)  # mostly upsampling: no aliasing to differ by
    cpu = augment.train_batch(x, spec, generator=torch.Generator().manual_seed(3), **kw)
    boxes, flip = augment.random_resized_crop_boxes(
        6, spec.load_size, kw["scale"], kw["ratio"], True, torch.Generator().manual_seed(3)
    )
    grid = augment._normalise_fast(augment._crop_resize_grid(x, boxes, flip, spec.image_size), spec)
    assert cpu.shape == grid.shape == (6, 3, 112, 112) and cpu.dtype == torch.float32
    assert flip.any() and not flip.all()  # both branches exercised by this seed
    level = 1 / (255 * min(spec.std))  # one uint8 level, normalised
    assert (cpu - grid).abs().mean() < 1.0 * level
    assert (cpu - grid).abs().amax() < 6 * level


def test_per_image_kernel_draws_a_different_crop_for_every_image() -> None:
    spec = PreprocessSpec(image_size=112, crop_pct=0.875)
    x = _batch(1, spec).repeat(8, 1, 1, 1)
    out = augment.train_batch(
        x, spec, scale=(0.2, 1.0), ratio=(0.75, 1.33), hflip=True, generator=torch.Generator().manual_seed(1)
    )
    assert out.shape == (8, 3, 112, 112)
    assert len({tuple(out[i].flatten()[:200].tolist()) for i in range(8)}) == 8


def test_boxes_fit_the_square_and_follow_the_scale() -> None:
    boxes, flip = augment.random_resized_crop_boxes(
        2000, 256, (0.08, 1.0), (3 / 4, 4 / 3), False, torch.Generator().manual_seed(0)
    )
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 256).all() and (left + w <= 256).all()
    assert (h >= 1).all() and (w >= 1).all() and not flip.any()
    area = (h * w).double() / 256**2
    assert area.min() >= 0.08 * 0.9 and area.max() <= 1.0
    assert abs(area.mean().item() - 0.54) < 0.05  # uniform in [0.08, 1], less the clamping at the edges


def test_augment_threads_leave_the_callers_thread_count_alone() -> None:
    before = torch.get_num_threads()
    spec = PreprocessSpec(image_size=112, crop_pct=0.875)
    augment.train_batch(
        _batch(4, spec),
        spec,
        scale=(0.5, 1.0),
        ratio=(0.8, 1.25),
        hflip=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.get_num_threads() == before
    pool, _ = augment._pool()
    assert pool.submit(torch.get_num_threads).result() == 1


def test_load_square_resize_is_within_one_level_of_pillow() -> None:
    """The resize is torch's uint8 antialiased kernel; users comparing with a
    Pillow pipeline (torchvision's default) see at most one level of difference."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(small).resize((444, 336), Image.BICUBIC))  # smooth, photo-like
    spec = PreprocessSpec(image_size=224)  # load 256: 444x336 -> 338x256, centre square
    ours = to_load_square(photo, spec).astype(int)
    pil = np.asarray(Image.fromarray(photo).resize((338, 256), Image.BILINEAR)).astype(int)[:, 41:297]
    assert ours.shape == pil.shape == (256, 256, 3)
    assert np.abs(ours - pil).max() <= 1
