"""The preprocessing spec: one object used by training, evaluation, export and serving.

Pixels flow as: decode (``duet.data.imageio.decode``) -> RGB uint8 -> resize the
shorter side to ``load_size`` and centre-crop a ``load_size`` square (on the CPU,
uint8) -> on the device: a random resized crop (training) or the centre
``image_size`` crop (evaluation and serving) -> float, normalised with
``mean``/``std``.

Evaluation is therefore the classic "resize to image_size / crop_pct, centre crop
image_size" (timm's and torchvision's eval transform), and training crops are taken
from the same ``load_size`` square, so the two never disagree about scale.

This module does not import torch: a server running the ONNX runtime uses it
(and ``duet.data.resample``, the NumPy twin of torch's uint8 resize) without
loading PyTorch. Where torch is already loaded (training, evaluation), the
same resize runs on torch's faster kernel; both give identical pixels.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from duet.data.resample import MODES, resize_crop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input. Saved with every run and model."""

    image_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in MODES:
            raise ValueError(f"interpolation must be one of {MODES}, got {self.interpolation!r}")

    @property
    def load_size(self) -> int:
        """Side of the uint8 square kept on the CPU (and in caches)."""
        return int(round(self.image_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["load_size"] = self.load_size
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        return cls(
            image_size=int(d["image_size"]),
            crop_pct=float(d["crop_pct"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bilinear")),
        )


# torch.from_numpy warns (once) about read-only arrays such as decoded images;
# to_load_square only reads its input, so that warning says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def to_load_square(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HxWx3 uint8 -> load_size x load_size x 3 uint8: shorter side resized to
    ``load_size`` (antialiased when shrinking), then the centre square, as a
    C-contiguous array (the one copy every caller needs).

    The resize is torch's uint8 antialiased kernel (the one behind
    torchvision.transforms.v2 on tensors): within one level of Pillow's
    resize, and about 3.5x faster, which is most of the cost of building the
    decode cache. Every stage (training backends, evaluation, export parity,
    serving, drift) calls this one function, so they never disagree. Without
    torch in the process (an ONNX server), ``duet.data.resample.resize_crop``
    computes the same integers in NumPy (about 10x slower on a 640x480
    image, 5 ms here; JPEGs are decoded at a reduced scale first)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
    s = spec.load_size
    h, w = rgb.shape[:2]
    scale = s / min(h, w)
    nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
    top, left = (nh - s) // 2, (nw - s) // 2
    if (nh, nw) == (h, w):
        return np.ascontiguousarray(rgb[top : top + s, left : left + s])
    torch = sys.modules.get("torch")  # never imported here: used only when already loaded
    if torch is None or not hasattr(torch, "from_numpy"):
        return resize_crop(rgb, (nh, nw), (top, left, s, s), spec.interpolation)
    return _torch_resize_crop(torch, rgb, (nh, nw), (top, left, s), spec.interpolation)


def _torch_resize_crop(
    torch: Any, rgb: np.ndarray, size: tuple[int, int], box: tuple[int, int, int], mode: str
) -> np.ndarray:
    """``resize_crop`` on torch's kernel (a channels_last view of the pixels,
    its fast path; decoded arrays are read-only views of Pillow's bytes and
    torch only reads them here)."""
    top, left, s = box
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    interpolate = torch.nn.functional.interpolate
    if mode == "nearest":
        y = interpolate(x, size=size, mode="nearest")
    else:
        y = interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    return np.ascontiguousarray(y[0, :, top : top + s, left : left + s].permute(1, 2, 0).numpy())


def centre_offset(spec: PreprocessSpec) -> int:
    """Offset of the ``image_size`` centre crop inside the load square."""
    return (spec.load_size - spec.image_size) // 2
