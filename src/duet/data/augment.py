"""Batched augmentation and normalisation on the training device.

Input is always a uint8 NCHW batch of ``load_size`` squares (see
``duet.preprocess``). Training draws a different random resized crop and flip for
every image, applied to the whole batch in one ``grid_sample`` call; evaluation
takes the deterministic centre ``image_size`` crop. Both end with the same
normalisation, so train and eval differ only in where the crop is taken.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from duet.preprocess import PreprocessSpec, centre_offset


def normalise(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (or float 0..255) NCHW -> float32 normalised with spec.mean/std."""
    mean = torch.tensor(spec.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (x.float() - mean) / std


def centre_crop(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """The eval/serving crop: the centre image_size square of a load_size batch."""
    o, s = centre_offset(spec), spec.image_size
    return x[:, :, o : o + s, o : o + s]


def eval_batch(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    return normalise(centre_crop(x, spec), spec)


def random_resized_crop_params(
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-sample affine matrices (n, 2, 3) in normalised coordinates for
    ``F.affine_grid``: crop width/height as fractions of the source side, a
    centre anywhere the crop fits, and an optional mirror."""
    u = torch.rand(n, 5, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)
    cy = (2 * u[:, 3] - 1) * (1 - h)
    flip = torch.where((u[:, 4] < 0.5) & hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def train_batch(
    x: torch.Tensor,
    spec: PreprocessSpec,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
    generator: torch.Generator,
    draws: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """uint8 NCHW load squares -> normalised float crops of image_size, a
    different random crop (and flip) per image. The random draws come from a
    CPU generator so a seed gives the same crops on every device.

    ``draws``/``offset``: draw parameters for a whole global batch of ``draws``
    images and use those from ``offset`` on, so that a rank of a distributed
    run crops its images exactly as a single process would."""
    n = x.shape[0]
    theta = random_resized_crop_params(draws or n, scale, ratio, hflip, generator)[offset : offset + n]
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, [n, 3, spec.image_size, spec.image_size], align_corners=False)
    crops = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return normalise(crops, spec)
