"""Later stages of a tracked run, logged into the same MLflow run (found from RUN/tracking.json).

``log_evaluation``: report.json, report.md, confusion_matrix.png and the
numeric metrics (``eval_<split>_<name>``; ``eval_<format>_<split>_<name>``
for an exported format). ``log_export``: model.onnx with MLflow's ONNX flavour
(a signature and an input example taken from the graph: uint8 NCHW pixels
in; logits, probabilities and the drift features out) and MODEL_CARD.md; the logged model's URI
is written to tracking.json for the registry mirror. A run without
tracking.json is left alone; a failure warns once and the command goes on.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duet.tracking.mlflow_sink import numeric, open_client
from duet.tracking.store import Warner, find_run_dir, read_tracking, tracked_store, write_tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _tracked(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The tracked run folder ``path`` belongs to and its tracking.json, or None."""
    run_dir = find_run_dir(path)
    doc = read_tracking(run_dir) if run_dir is not None else None
    return (run_dir, doc) if run_dir is not None and doc is not None else None


def _client(doc: dict[str, Any]) -> MlflowClient:
    return open_client(tracked_store(doc).uri)


def log_evaluation(files: dict[str, Path], metrics: dict[str, Any], split: str) -> None:
    """After ``duet evaluate`` (of a run, its export or an exported file): the report files and
    metrics into the run's MLflow run, found from the report's folder (RUN/eval/...)."""
    found = _tracked(Path(files["json"]).parent)
    if found is not None:
        Warner("MLflow tracking of the evaluation").guard(lambda: _log_evaluation(*found, files, metrics, split))


def _log_evaluation(
    run_dir: Path, doc: dict[str, Any], files: dict[str, Path], metrics: dict[str, Any], split: str
) -> None:
    import time

    from mlflow.entities import Metric

    client, run_id = _client(doc), str(doc["run_id"])
    report_dir = Path(files["json"]).resolve().parent
    rel = report_dir.relative_to(run_dir.resolve())
    prefix = "_".join(["eval", *rel.parts[1:], split]) + "_"  # eval/onnx -> eval_onnx_test_
    now = int(time.time() * 1000)
    values = [Metric(prefix + k, v, now, 0) for k, v in numeric(metrics).items()]
    client.log_batch(run_id, metrics=values)
    for path in files.values():
        if Path(path).is_file():
            client.log_artifact(run_id, str(path), rel.as_posix())


def log_export(run_dir: Path, export_dir: Path) -> None:
    """After ``duet export``: the ONNX model (with signature and input example) and the model card."""
    found = _tracked(run_dir)
    if found is not None:
        Warner("MLflow tracking of the export").guard(lambda: _log_export(*found, Path(export_dir)))


def _log_export(run_dir: Path, doc: dict[str, Any], export_dir: Path) -> None:
    import mlflow
    import onnx

    model = onnx.load(str(export_dir / "model.onnx"))
    signature, example = _signature(model)
    client, run_id = _client(doc), str(doc["run_id"])  # also the fluent API's store
    onnx_log = logging.getLogger("mlflow.onnx")
    level = onnx_log.level  # its check of the input example warns that this host lacks CUDA: noise here
    onnx_log.setLevel(logging.ERROR)
    with mlflow.start_run(run_id=run_id), contextlib.ExitStack() as restore:
        restore.callback(onnx_log.setLevel, level)
        info = mlflow.onnx.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            save_as_external_data=False,
            pip_requirements=_requirements(model),
        )
    card = export_dir / "MODEL_CARD.md"
    if card.is_file():
        client.log_artifact(run_id, str(card))
    client.log_artifact(run_id, str(export_dir / "model.json"), "export")
    write_tracking(run_dir, {**_without_schema(doc), "model_uri": info.model_uri, "model_id": info.model_id})


def _custom_ops(model: Any) -> bool:
    """Whether the graph uses operators outside ONNX and ONNX-ML (a text tokenizer's)."""
    return any(o.domain not in ("", "ai.onnx", "ai.onnx.ml") for o in model.opset_import)


def _requirements(model: Any) -> list[str]:
    """What runs the logged graph: onnx and onnxruntime, plus onnxruntime-extensions for a graph with
    its operators (a text tokenizer). Given, not inferred: MLflow's inference loads the model in a
    session of its own, which cannot run those operators (it warned on every text export)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["onnx", "onnxruntime"]
    if _custom_ops(model):
        names.append("onnxruntime-extensions")
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _signature(model: Any) -> tuple[Any, Any]:
    """The ONNX graph's own inputs and outputs (model.json's, plus the drift ``features``) as an
    MLflow tensor signature, and an input example: a mid-grey uint8 image for an image graph;
    for a table's graph (one input per column) one row of missing values (NaN, ""); none for a
    graph with custom operators (text)."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    from onnx.helper import tensor_dtype_to_np_dtype

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)), shape, value.name)

    inputs: list[Any] = [spec(v) for v in model.graph.input]
    outputs: list[Any] = [spec(v) for v in model.graph.output]
    if _custom_ops(model):
        # custom operators (a text graph's tokenizer: onnxruntime-extensions): MLflow's own
        # ONNX Runtime session cannot run them, so no example for it to check
        example: Any = None
    elif len(inputs) > 1:  # a tabular graph: a dict, one [1, 1] array per column
        missing = {name: (np.nan if np.dtype(t.type).kind == "f" else "") for name, t in ((i.name, i) for i in inputs)}
        example = {i.name: np.full([1, 1], missing[i.name], dtype=i.type) for i in inputs}
    else:
        example = np.full([1, *inputs[0].shape[1:]], 128, dtype=inputs[0].type)
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs)), example


def _without_schema(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "schema"}
