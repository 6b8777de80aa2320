"""Serving an exported text model: raw strings into its ONNX Runtime session, behind the batcher.

model.json ``"modality": "text"`` marks the model folder (``duet export`` of a
run trained on texts). Its ``model.onnx`` takes one string input (model.json
``inputs``: ``[{"name", "datatype": "BYTES", "shape": [-1]}]`` or ``[-1, 1]``)
and does all the tokenising inside (standardise, split, vocabulary lookup), so
what the server feeds it is the text the client sent: no tokenizer of its own,
no skew. When the graph uses onnxruntime-extensions' custom operators
(model.json ``"runtime": {"custom_ops": "onnxruntime_extensions"}``) their
library is registered in the session (``pip install 'duet[text]'``).

Documents travel through the same :class:`~duet.serve.batcher.DynamicBatcher`
as images and rows do (a 1-D object array of str), so concurrent requests share
one runtime call. ``--max-images`` bounds the documents of one request and
``--max-queue-images`` those waiting; characters are bounded per document and
per request (:mod:`duet.serve.text_rows`). The graph's pooled ``features``
output feeds the drift monitor's embedding test (:mod:`duet.serve.text_monitor`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from duet.artifacts.model_package import FEATURES_NAME, OUTPUT_NAMES, ArtifactError, ModelPackage
from duet.errors import ModelError
from duet.serve.outputs import Outputs
from duet.serve.row_service import RowService, check_onnx_fp32
from duet.serve.runtimes import Runtime, ort_session
from duet.serve.settings import ServeConfig
from duet.serve.text_monitor import TextMonitor
from duet.serve.text_rows import TextLimits

log = logging.getLogger("duet.serve")

MODALITY = "text"


def is_text(package: ModelPackage) -> bool:
    return package.manifest.get("modality") == MODALITY


def text_input(package: ModelPackage) -> tuple[str, int]:
    """``(input name, rank)`` of the model's one BYTES input (ArtifactError when model.json lacks it)."""
    inputs = package.manifest.get("inputs")
    ok = isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], dict)
    entry: dict[str, Any] = inputs[0] if ok and inputs is not None else {}
    shape = entry.get("shape")
    if not ok or entry.get("datatype") != "BYTES" or shape not in ([-1], [-1, 1]):
        raise ArtifactError(
            f"'{package.root / 'model.json'}' has no single BYTES input of shape [-1] or [-1, 1] "
            f"(inputs: {inputs!r:.200}); re-export the run"
        )
    return str(entry["name"]), len(shape)


def text_limits(package: ModelPackage, max_documents: int) -> TextLimits:
    try:
        return TextLimits.from_manifest(package.manifest, max_documents)
    except ValueError as e:
        raise ArtifactError(f"'{package.root / 'model.json'}': {e}; re-export the run") from None


def custom_ops(package: ModelPackage) -> str | None:
    runtime = package.manifest.get("runtime") or {}
    name = runtime.get("custom_ops") if isinstance(runtime, dict) else None
    return None if name is None else str(name)


def as_documents(texts: Sequence[str]) -> np.ndarray:
    """Documents as the 1-D object array the batcher slices and the runtime feeds."""
    out = np.empty(len(texts), dtype=object)
    out[:] = list(texts)
    return out


class TextRuntime:
    """``model.onnx`` of a text model on ONNX Runtime (CPU): an object array of str in, Outputs out."""

    name = "onnxruntime"
    device = "cpu"
    platform = "onnxruntime_onnx"
    variant = "fp32"

    def __init__(self, package: ModelPackage, threads: int = 0, spinning: bool = False) -> None:
        self.input, self.rank = text_input(package)
        path = package.onnx_path
        self.session = ort_session(path, threads, spinning, custom_ops=custom_ops(package))
        graph = [i.name for i in self.session.get_inputs()]
        if graph != [self.input]:
            raise ModelError(
                f"'{path}' takes inputs {graph[:10]}, model.json lists ['{self.input}']; re-export the run"
            )
        self.has_features = FEATURES_NAME in {o.name for o in self.session.get_outputs()}
        self._outputs = [*OUTPUT_NAMES, FEATURES_NAME] if self.has_features else list(OUTPUT_NAMES)

    def __call__(self, pixels: np.ndarray) -> Outputs:
        """``pixels`` (the Runtime protocol's name): the documents of :func:`as_documents`."""
        texts = np.asarray(pixels, dtype=object)
        got = self.session.run(self._outputs, {self.input: texts.reshape((-1,) if self.rank == 1 else (-1, 1))})
        return Outputs(got[0], got[1], features=got[2] if self.has_features else None)


def load_text_runtime(package: ModelPackage, config: ServeConfig) -> TextRuntime:
    """The runtime of a text model; other --runtime / --model-variant choices are a ConfigError."""
    check_onnx_fp32(config, MODALITY)
    return TextRuntime(package, config.threads, config.ort_spinning)


class TextService(RowService):
    """The ModelService of a text model: what the text protocols call.

    It keeps ModelService's checks, batcher, metrics, versions and hot swap, and
    replaces what is about images. Hot swap takes text models with the same labels.
    """

    modality = MODALITY
    noun = "document"

    @property
    def text_drift(self) -> TextMonitor | None:
        return self.monitor if isinstance(self.monitor, TextMonitor) else None

    def _adopt(self, package: ModelPackage) -> None:
        self.input, _ = text_input(package)
        self.text_limits = text_limits(package, self.config.limits.max_images)

    def _blank(self, package: ModelPackage) -> Any:
        return as_documents(["a"])

    def _monitor(self, package: ModelPackage) -> TextMonitor | None:
        """Drift monitoring of ``package`` (None with --no-drift or without a text profile)."""
        if not self.config.drift:
            return None
        return TextMonitor.for_package(
            package, self.metrics.registry, window=self.config.drift_window, interval=self.config.drift_interval
        )

    def _load_runtime(self, package: ModelPackage) -> Runtime:
        return load_text_runtime(package, self.config)

    async def predict(self, texts: list[str], route: str) -> Outputs:
        """The model's outputs for ``texts`` (strings: :func:`duet.serve.text_rows.strings` checked them)."""
        self.check_count(len(texts))
        self.text_limits.check(texts)
        out = await self.run_batched(as_documents(texts), route)
        if self.text_drift is not None:
            self.text_drift.observe(texts, out.probabilities, out.features)
        return out
