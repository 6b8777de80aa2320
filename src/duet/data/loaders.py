"""The one place a data backend is chosen: ``make_loader(backend, samples, spec, options)``.

Every backend yields the same ``Batch``es for the same files, seed and epoch
(the contract and the batch plan: ``duet.data.contract``): the spec's uint8
``load_size`` square of each image (``preprocess.to_load_square`` over
``imageio.decode``), labels and sample indices. Float conversion, augmentation
and normalisation happen afterwards on the device (``augment``), batched, so a
backend changes speed, never pixels beyond its documented tolerance.

Backends:
- "torch": DataLoader worker processes read and decode files (``duet.data.torch_loader``).
- "cache": decode once into a memory-mapped uint8 store (``duet.data.cache``).
- "tf": a tf.data pipeline handing tensors over by DLPack (``duet.data.tfdata``).
"""

from __future__ import annotations

from collections.abc import Sequence

from duet.data.contract import Loader, LoaderOptions, Sample
from duet.data.preprocess import PreprocessSpec
from duet.errors import ConfigError

BACKENDS = ("torch", "cache", "tf")


def make_loader(backend: str, samples: Sequence[Sample], spec: PreprocessSpec, options: LoaderOptions) -> Loader:
    """A loader over ``samples`` from ``backend`` (one of ``BACKENDS``), fed as
    ``options`` say. Backends import lazily, so importing duet never imports
    TensorFlow, and choosing "torch" never imports the cache.

    Raises:
        ConfigError: ``backend`` is not one of ``BACKENDS``.
    """
    if backend == "torch":
        from duet.data.torch_loader import TorchLoader

        return TorchLoader(samples, spec, options)
    if backend == "cache":
        from duet.data.cache import CacheLoader

        return CacheLoader(samples, spec, options)
    if backend == "tf":
        from duet.data.tfdata import TfLoader

        return TfLoader(samples, spec, options)
    raise ConfigError(f"data backend must be one of {', '.join(BACKENDS)}; received {backend!r}")
