"""Serving an exported tabular model: its ONNX Runtime session fed column by column, behind the batcher.

model.json ``"modality": "tabular"`` marks the model folder (``duet export`` of a
run trained on a table). Its ``model.onnx`` takes one input per feature column,
``[N, 1]`` float64 for numeric and boolean columns (NaN = missing), ``[N, 1]``
strings for categorical ones ("" = missing), and does all preprocessing inside
(normalisation, missing indicators, vocabulary lookup), so the server only
turns JSON into those columns (:mod:`duet.serve.tabular_rows`) and runs the graph.

Rows travel through the same :class:`~duet.serve.batcher.DynamicBatcher` as
images do: a request's table is packed into one NumPy *structured* array (one
field per input), which the batcher slices and concatenates like a pixel tensor,
so concurrent requests share one runtime call. ``--max-images`` bounds the rows
of one request and ``--max-queue-images`` the rows waiting, as for images.

Only ONNX Runtime on the CPU serves a tabular model (``--runtime auto`` or
``onnxruntime``, fp32): the graphs are small, and PyTorch would add seconds of
start-up for nothing. Hot swap (``--registry``) works as for images, between
models with the same labels and inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from duet.artifacts.model_package import OUTPUT_NAMES, ArtifactError, ModelPackage
from duet.data.tabular.schema import Table
from duet.errors import ModelError
from duet.serve.metrics import ServeMetrics
from duet.serve.outputs import Outputs
from duet.serve.row_service import RowService, check_onnx_fp32
from duet.serve.runtimes import Runtime, ort_session
from duet.serve.settings import ServeConfig
from duet.serve.tabular_monitor import TableMonitor
from duet.serve.tabular_rows import TableLayout

log = logging.getLogger("duet.serve")

MODALITY = "tabular"


def is_tabular(package: ModelPackage) -> bool:
    return package.manifest.get("modality") == MODALITY


def table_layout(package: ModelPackage) -> TableLayout:
    """The model's feature inputs from model.json (ArtifactError when they are malformed)."""
    try:
        return TableLayout.from_manifest(package.manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(
            f"'{package.root / 'model.json'}' has no valid tabular inputs/columns ({type(e).__name__}: {e}); "
            "re-export the run"
        ) from None


def pack(layout: TableLayout, table: Mapping[str, np.ndarray]) -> np.ndarray:
    """The table as one structured array, a field per graph input: float64 (NaN = missing) or str ("" = missing)."""
    n = len(table[layout.inputs[0].column]) if layout.inputs else 0
    records = np.empty(n, dtype=[(i.name, np.float64 if i.datatype == "FP64" else object) for i in layout.inputs])
    for i in layout.inputs:
        column = table[i.column]
        records[i.name] = column if i.datatype == "FP64" else ["" if v is None else v for v in column]
    return records


class TabularRuntime:
    """``model.onnx`` of a tabular model on ONNX Runtime (CPU): structured records in, Outputs out."""

    name = "onnxruntime"
    device = "cpu"
    platform = "onnxruntime_onnx"
    variant = "fp32"
    has_features = False  # no penultimate features output: outlier scores are image-only

    def __init__(self, package: ModelPackage, threads: int = 0, spinning: bool = False) -> None:
        self.layout = table_layout(package)
        path = package.onnx_path
        self.session = ort_session(path, threads, spinning)
        graph = {i.name for i in self.session.get_inputs()}
        listed = {i.name for i in self.layout.inputs}
        if graph != listed:
            raise ModelError(
                f"'{path}' takes inputs {sorted(graph)[:10]}, model.json lists {sorted(listed)[:10]}; re-export the run"
            )

    def __call__(self, pixels: np.ndarray) -> Outputs:
        """``pixels`` (the Runtime protocol's name): the structured records of :func:`pack`."""
        feed = {}
        for i in self.layout.inputs:
            column = pixels[i.name]
            if i.datatype == "FP64":
                feed[i.name] = np.ascontiguousarray(column, dtype=np.float64).reshape(-1, 1)
            else:
                feed[i.name] = np.asarray(column, dtype=object).reshape(-1, 1)
        logits, probabilities = self.session.run(list(OUTPUT_NAMES), feed)
        return Outputs(logits, probabilities)


def load_tabular_runtime(package: ModelPackage, config: ServeConfig) -> TabularRuntime:
    """The runtime of a tabular model; other --runtime / --model-variant choices are a ConfigError."""
    check_onnx_fp32(config, MODALITY)
    return TabularRuntime(package, config.threads, config.ort_spinning)


class TabularService(RowService):
    """The ModelService of a tabular model: what the tabular protocols call.

    It keeps ModelService's checks, batcher, metrics, versions and hot swap, and
    replaces what is about images (the pixel signature, decoding, image drift).
    Hot swap takes models with the same labels and input columns.
    """

    modality = MODALITY
    noun = "row"

    def __init__(
        self, package: ModelPackage, runtime: Runtime, config: ServeConfig, metrics: ServeMetrics, watcher: Any = None
    ) -> None:
        self.layout = table_layout(package)
        super().__init__(package, runtime, config, metrics, watcher)

    @property
    def table_drift(self) -> TableMonitor | None:
        return self.monitor if isinstance(self.monitor, TableMonitor) else None

    def _blank(self, package: ModelPackage) -> Any:
        return pack(self.layout, self.layout.empty(1))

    def _monitor(self, package: ModelPackage) -> TableMonitor | None:
        """Drift monitoring of ``package`` (None with --no-drift or without a tabular profile)."""
        if not self.config.drift:
            return None
        return TableMonitor.for_package(
            package, self.metrics.registry, window=self.config.drift_window, interval=self.config.drift_interval
        )

    def _check_swappable(self, package: ModelPackage) -> None:
        super()._check_swappable(package)
        if table_layout(package).inputs != self.layout.inputs:
            raise ModelError("its input columns differ from the served model's; restart the server to serve it")

    def _load_runtime(self, package: ModelPackage) -> Runtime:
        return load_tabular_runtime(package, self.config)

    async def predict(self, table: Table, route: str) -> Outputs:
        """The model's outputs for the rows of ``table`` (already checked by :mod:`duet.serve.tabular_rows`)."""
        out = await self.run_batched(pack(self.layout, table), route)
        if self.table_drift is not None:
            self.table_drift.observe(table, out.probabilities)
        return out
