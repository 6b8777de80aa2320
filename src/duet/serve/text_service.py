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

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from duet.artifacts.model_package import FEATURES_NAME, OUTPUT_NAMES, ArtifactError, ModelPackage, read_package
from duet.errors import ConfigError, ModelError
from duet.serve.batcher import DynamicBatcher
from duet.serve.errors import ApiError
from duet.serve.metrics import ServeMetrics
from duet.serve.outputs import Outputs
from duet.serve.runtimes import Runtime, ort_session
from duet.serve.service import ModelService, _Tagged
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
    if config.runtime not in ("auto", "onnxruntime"):
        raise ConfigError(
            f"a text model is served by ONNX Runtime only; --runtime {config.runtime} is not available "
            "(use --runtime auto or onnxruntime)"
        )
    if config.model_variant not in (None, "fp32"):
        raise ConfigError(
            f"a text model has an fp32 graph only; --model-variant {config.model_variant} is not available"
        )
    return TextRuntime(package, config.threads, config.ort_spinning)


class TextService(ModelService):
    """The ModelService of a text model: what the text protocols call.

    It keeps ModelService's checks, batcher, metrics, versions and hot swap, and
    replaces what is about images. ``ModelService.__init__`` is not called: it
    reads the image preprocessing spec.
    """

    def __init__(
        self, package: ModelPackage, runtime: Runtime, config: ServeConfig, metrics: ServeMetrics, watcher: Any = None
    ) -> None:
        self.package = package
        self.runtime = runtime
        self.config = config
        self.limits = config.limits
        self.metrics = metrics
        self.labels = package.labels
        self.name = config.model_name or package.name
        self.version = config.model_version
        self.input, _ = text_input(package)
        self.text_limits = text_limits(package, config.limits.max_images)
        self.outputs = list(package.manifest["outputs"])
        self.batcher = DynamicBatcher(
            _Tagged(runtime, self.version),
            max_batch_size=config.max_batch_size,
            max_delay_s=config.max_delay_ms / 1000,
            max_queue_images=config.limits.max_queue_images,
            observe=metrics.observe_batch,
        )
        self._decode_pool = None
        self.ready = False
        self.drift = None  # the image drift watch: never for texts
        self.text_drift = self._monitor(package)
        self.watcher = watcher
        self._follow_task: asyncio.Task[None] | None = None
        self.set_model_info()

    async def start(self) -> None:
        # One call before "ready": the first run of a session allocates and is slow.
        await asyncio.to_thread(self.runtime, as_documents(["a"]))
        await self.batcher.start()
        if self.text_drift is not None:
            await self.text_drift.start()
        self.ready = True
        self.metrics.model_loaded.set(1)
        if self.watcher is not None:
            self._follow_task = asyncio.get_running_loop().create_task(self._follow(), name="duet-follow")

    async def close(self) -> None:
        self.ready = False
        self.metrics.model_loaded.set(0)
        if self._follow_task is not None:
            self._follow_task.cancel()
            try:
                await self._follow_task
            except asyncio.CancelledError:
                pass
        await self.batcher.close()
        if self.text_drift is not None:
            await self.text_drift.close()

    def _monitor(self, package: ModelPackage) -> TextMonitor | None:
        """Drift monitoring of ``package`` (None with --no-drift or without a text profile)."""
        if not self.config.drift:
            return None
        return TextMonitor.for_package(
            package, self.metrics.registry, window=self.config.drift_window, interval=self.config.drift_interval
        )

    def check_count(self, n: int) -> None:
        if n == 0:
            raise ApiError(400, "the request holds no document", "no_documents")
        if n > self.limits.max_images:
            raise ApiError(
                413,
                f"{n} documents in one request; the limit is {self.limits.max_images} (--max-images)",
                "too_many_documents",
            )

    async def predict(self, texts: list[str], route: str) -> Outputs:
        """The model's outputs for ``texts`` (strings: :func:`duet.serve.text_rows.strings` checked them)."""
        self.check_count(len(texts))
        self.text_limits.check(texts)
        out = await self.run_batched(as_documents(texts), route)
        if self.text_drift is not None:
            self.text_drift.observe(texts, out.probabilities, out.features)
        return out

    # ------------------------------------------------------------ hot swap

    def _load(self, folder: Any) -> tuple[ModelPackage, Runtime]:
        package = read_package(folder, verify=True)
        if not is_text(package):
            raise ModelError("it is not a text model; restart the server to serve it")
        if package.labels != self.labels:
            raise ModelError(
                f"its labels {package.labels} differ from the served model's {self.labels}; "
                "restart the server to serve a model with other labels"
            )
        runtime = load_text_runtime(package, self.config)
        runtime(as_documents(["a"]))  # the first call allocates: not on a request
        return package, runtime

    async def swap(self, version: str, package: ModelPackage, runtime: Runtime) -> None:
        old = self.version
        self.package, self.runtime, self.version = package, runtime, version
        self.batcher.runtime = _Tagged(runtime, version)  # batches already running keep the old one
        self.input, _ = text_input(package)
        self.text_limits = text_limits(package, self.config.limits.max_images)
        self.set_model_info()
        old_drift, self.text_drift = self.text_drift, None
        if old_drift is not None:
            await old_drift.close()
            old_drift.unregister(self.metrics.registry)
        try:
            self.text_drift = self._monitor(package)
            if self.text_drift is not None:
                await self.text_drift.start()
        except Exception as e:  # drift monitoring is optional; serving goes on
            log.error("drift monitoring is off for %s (%s: %s)", version, type(e).__name__, e)
        log.info("now serving %s (was %s; %s on %s)", version, old, runtime.name, runtime.device)
