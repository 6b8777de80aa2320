"""Data: scan, split, decode, cache and load images for training and serving.

``tf_dataset`` and ``from_tf_dataset`` (``duet.data.tf_api``) are re-exported
lazily: TensorFlow is imported only when one of them is first used, so
``import duet.data`` never imports it.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"tf_dataset": "duet.data.tf_api", "from_tf_dataset": "duet.data.tf_api"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duet.data' has no attribute {name!r}")
