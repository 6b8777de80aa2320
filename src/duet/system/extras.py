"""Which optional install a missing module belongs to (pyproject.toml's extras).

``pip install duet`` is the core; ``duet[serve]`` adds ONNX Runtime + FastAPI
(no PyTorch), ``duet[train]`` adds PyTorch, timm and the rest of training,
``duet[tf]`` TensorFlow. A command that needs a package its install left out
ends with one line naming the extra, not an ImportError traceback.
"""

from __future__ import annotations

from duet.errors import ConfigError

# top-level module -> (what it is, the extra that installs it)
_OWNERS: dict[str, tuple[str, str]] = {
    **{m: ("PyTorch", "train") for m in ("torch", "torchvision", "timm", "safetensors")},
    **{m: ("the training tools", "train") for m in ("sklearn", "matplotlib", "onnx", "onnxscript")},
    **{
        m: ("the server", "serve")
        for m in (
            "onnxruntime",
            "fastapi",
            "starlette",
            "uvicorn",
            "multipart",
            "python_multipart",
            "prometheus_client",
            "scipy",
            "swagger_ui_bundle",
        )
    },
    "tensorflow": ("TensorFlow", "tf"),
    "ai_edge_litert": ("the LiteRT (TFLite) interpreter", "tf"),
}


class MissingExtra(ConfigError):
    """A command needs a package that this install of duet left out."""


def missing_extra(error: ModuleNotFoundError) -> MissingExtra | None:
    """The one-line error for ``error`` when its module belongs to an extra
    of duet; ``None`` for any other missing module (a bug, not an install choice)."""
    top = (error.name or "").split(".")[0]
    if top not in _OWNERS:
        return None
    what, extra = _OWNERS[top]
    return MissingExtra(
        f"this command needs {what} ('{top}' is not installed; this install of duet left it "
        f"out): pip install 'duet[{extra}]'"
    )
