"""What the tabular and text services share: a model fed rows of one request (table
rows, documents) on ONNX Runtime, with no image decoding and no image drift.

:class:`RowService` keeps ModelService's batcher, metrics, versions, start/close
and hot swap, and replaces what is about images: its warm-up runs in a worker
thread (no decode pool), a request's count is of rows or documents, and a model
swapped in must be of the same modality.
"""

from __future__ import annotations

import asyncio
from typing import Any

from duet.artifacts.model_package import ModelPackage
from duet.errors import ConfigError, ModelError
from duet.serve.errors import ApiError
from duet.serve.metrics import ServeMetrics
from duet.serve.runtimes import Runtime
from duet.serve.service import ModelService
from duet.serve.settings import ServeConfig


def check_onnx_fp32(config: ServeConfig, modality: str) -> None:
    """ConfigError unless --runtime and --model-variant allow the fp32 ONNX Runtime graph."""
    if config.runtime not in ("auto", "onnxruntime"):
        raise ConfigError(
            f"a {modality} model is served by ONNX Runtime only; --runtime {config.runtime} is not available "
            "(use --runtime auto or onnxruntime)"
        )
    if config.model_variant not in (None, "fp32"):
        raise ConfigError(
            f"a {modality} model has an fp32 graph only; --model-variant {config.model_variant} is not available"
        )


class RowService(ModelService):
    """The ModelService of a model whose requests hold rows (``noun``) of one ``modality``."""

    modality = ""
    noun = ""  # "row", "document": in the count errors ("no_rows", "too_many_documents")

    def __init__(
        self, package: ModelPackage, runtime: Runtime, config: ServeConfig, metrics: ServeMetrics, watcher: Any = None
    ) -> None:
        super().__init__(package, runtime, config, metrics, watcher)
        self.outputs = list(package.manifest["outputs"])

    def _adopt(self, package: ModelPackage) -> None:
        """Nothing about images (subclasses take their inputs here)."""

    async def _warm_up(self) -> None:
        """One call before "ready": the first run of a session allocates and is slow."""
        await asyncio.to_thread(self.runtime, self._blank(self.package))

    def _check_swappable(self, package: ModelPackage) -> None:
        if package.manifest.get("modality") != self.modality:
            raise ModelError(f"it is not a {self.modality} model; restart the server to serve it")
        if package.labels != self.labels:
            raise ModelError(
                f"its labels {package.labels} differ from the served model's {self.labels}; "
                "restart the server to serve a model with other labels"
            )

    def check_count(self, n: int) -> None:
        plural = self.noun + "s"
        if n == 0:
            raise ApiError(400, f"the request holds no {self.noun}", f"no_{plural}")
        if n > self.limits.max_images:
            raise ApiError(
                413,
                f"{n} {plural} in one request; the limit is {self.limits.max_images} (--max-images)",
                f"too_many_{plural}",
            )
