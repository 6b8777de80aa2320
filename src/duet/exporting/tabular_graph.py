"""The exported tabular graph: raw columns in, the spec's preprocessing inside, logits and probabilities out.

```
one input per feature column        preprocessing (built here, onnx.helper)       the model (torch.onnx, dynamo)
  numeric/boolean  FP64   [N, 1] --> (x - mean) / std in float64, missing -> 0,
                                     Cast float32, + missing indicators     --> duet/numeric     float32 [N, K+M] --+
  categorical      string [N, 1] --> ONNX-ML LabelEncoder                   --> duet/categorical int64   [N, C]   --+--> logits, probabilities
```

The preprocessing is :func:`duet.data.tabular.spec.transform` op for op: the
numeric columns are concatenated to float64 ``[N, K]``, ``Sub`` the training
means and ``Div`` the stds (the same two IEEE float64 operations numpy does,
so the values are bit-identical), ``Where(IsNaN(x), 0, ...)``, ``Cast`` to
float32; the indicators are ``Cast(IsNaN(x))`` of the columns that had missing
values in training. A categorical column goes through ``LabelEncoder`` with
keys ``["", *tokens]``, values ``[1, 2, ...]``, default 0 (OOV): a client
sends ``""`` for a missing value. The model part is ``torch.onnx.export(...,
dynamo=True)`` of the trained model (its contract: ``model(numeric,
categorical) -> logits``, ``duet.training.tabular_models``) with a softmax;
every name in it is prefixed ``model/`` and it is joined to the preprocessing
with ``onnx.compose.merge_models``, so a column called ``linear`` or ``cat``
cannot clash with an edge torch named.

Why the numeric half is hand-built ONNX rather than traced from torch:
strings cannot enter a torch graph, so the vocabularies must be ONNX-ML nodes
anyway; with the numeric half beside them, all of the preprocessing is one
small graph (about ten nodes) whose two outputs, :data:`NUMERIC_EDGE` and
:data:`CATEGORICAL_EDGE`, a test reads out of the shipped file and compares
bit for bit with ``transform`` (``tests/test_tabular_export.py``), and the
torch half is exactly the function training and the parity gate call.

ONNX input names are the column names when they are identifiers
(``[A-Za-z_][A-Za-z0-9_]*``) other than an output's name, else a sanitised
unique name (:func:`input_names`); model.json's ``inputs`` maps each name to
its column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import duet
from duet.artifacts.model_package import OUTPUT_NAMES
from duet.data.tabular.schema import Column, ColumnSchema
from duet.data.tabular.spec import FIRST_TOKEN_ID, MISSING_ID, OOV_ID, TabularSpec
from duet.errors import ModelError
from duet.exporting.memory_graph import dynamo_proto, merge_and_save
from duet.exporting.onnx_graph import DEFAULT_OPSET, MAX_BATCH, write_metadata

NUMERIC_EDGE = "duet/numeric"  # the preprocessing's float32 [N, K+M] output inside model.onnx
CATEGORICAL_EDGE = "duet/categorical"  # its int64 [N, C] output
MODEL_PREFIX = "model/"  # every name of the torch-exported part
ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 3  # LabelEncoder-2: keys_strings / values_int64s / default_int64
BATCH = "batch"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DATATYPES = {"numeric": "FP64", "boolean": "FP64", "categorical": "BYTES"}


def input_names(columns: Sequence[str]) -> list[str]:
    """The ONNX input name of each column: the column's own name when it is an
    identifier and not an output's name, else the name with every other
    character replaced by ``_`` (``c_`` in front when it does not start with a
    letter or ``_``), made unique with ``_2``, ``_3``..."""
    names: list[str | None] = [c if _IDENTIFIER.fullmatch(c) and c not in OUTPUT_NAMES else None for c in columns]
    taken = set(OUTPUT_NAMES) | {n for n in names if n}
    for i, column in enumerate(columns):
        if names[i] is not None:
            continue
        base = re.sub(r"[^A-Za-z0-9_]", "_", column)
        base = base if _IDENTIFIER.fullmatch(base) else f"c_{base}"
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names[i] = name
    return [str(n) for n in names]


def signature_inputs(schema: ColumnSchema) -> list[dict[str, Any]]:
    """model.json's ``inputs``: one per feature column, in file order (duet.artifacts.model_package)."""
    features = schema.features()
    return [
        {"name": name, "column": c.name, "kind": c.kind, "datatype": _DATATYPES[c.kind], "shape": [-1, 1]}
        for name, c in zip(input_names([c.name for c in features]), features)
    ]


def check_layout(spec: TabularSpec, features: Sequence[Column]) -> None:
    """The spec must describe exactly the schema's feature columns, in file order (the graph relies on it)."""
    numeric = [c.name for c in features if c.kind != "categorical"]
    categorical = [c.name for c in features if c.kind == "categorical"]
    if [f.name for f in spec.numeric] != numeric or spec.categorical_names() != categorical:
        raise ModelError(
            "the run's tabular_spec and columns disagree (spec: "
            f"{[f.name for f in spec.numeric] + spec.categorical_names()}, columns: {numeric + categorical}); "
            "the run.json is damaged: retrain"
        )


class FeaturesToProbabilities(torch.nn.Module):
    """``model(numeric, categorical)`` -> ``(logits, softmax(logits))``, float32 ``(N, C)``.

    Takes only the inputs that have columns (a table with no categorical column
    has no ``categorical`` input); the absent one is an empty ``(N, 0)`` tensor."""

    def __init__(self, model: torch.nn.Module, num_numeric: int, num_categorical: int) -> None:
        super().__init__()
        self.model = model
        self.has_numeric = num_numeric > 0
        self.has_categorical = num_categorical > 0

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rest = list(features)
        numeric = rest.pop(0) if self.has_numeric else None
        categorical = rest.pop(0) if self.has_categorical else None
        n = (numeric if numeric is not None else categorical).shape[0]  # type: ignore[union-attr]
        if numeric is None:
            numeric = torch.zeros((n, 0), dtype=torch.float32)
        if categorical is None:
            categorical = torch.zeros((n, 0), dtype=torch.int64)
        logits = self.model(numeric, categorical).float()
        return logits, torch.softmax(logits, dim=1)


def _model_proto(model: torch.nn.Module, spec: TabularSpec, opset: int) -> Any:
    """The torch half: ``(numeric, categorical) -> (logits, probabilities)`` as an ONNX ModelProto."""
    k, c = len(spec.numeric_names()), len(spec.categorical)
    wrapper = FeaturesToProbabilities(model.float().cpu().eval(), k, c).eval()
    generator = torch.Generator().manual_seed(0)
    example, names = [], []
    if k:
        example.append(torch.randn((2, k), generator=generator))
        names.append("numeric")
    if c:
        high = torch.tensor([f.cardinality for f in spec.categorical])
        example.append((torch.rand((2, c), generator=generator) * high).long())
        names.append("categorical")
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    dynamic_shapes = (tuple({0: batch} for _ in example),)  # forward(*features): one varargs tuple
    return dynamo_proto(wrapper, tuple(example), names, list(OUTPUT_NAMES), dynamic_shapes, opset, "tabular")


def preprocess_proto(spec: TabularSpec, schema: ColumnSchema, *, opset: int, ir_version: int) -> Any:
    """The preprocessing half: the column inputs -> :data:`NUMERIC_EDGE`, :data:`CATEGORICAL_EDGE`."""
    from onnx import TensorProto, helper

    features = schema.features()
    check_layout(spec, features)
    names = dict(zip((c.name for c in features), input_names([c.name for c in features])))
    inputs = [
        helper.make_tensor_value_info(
            names[c.name], TensorProto.STRING if c.kind == "categorical" else TensorProto.DOUBLE, [BATCH, 1]
        )
        for c in features
    ]
    nodes: list[Any] = []
    initializers: list[Any] = []
    outputs = []
    if spec.numeric:
        _numeric_nodes(spec, [names[f.name] for f in spec.numeric], nodes, initializers)
        outputs.append(
            helper.make_tensor_value_info(NUMERIC_EDGE, TensorProto.FLOAT, [BATCH, len(spec.numeric_names())])
        )
    if spec.categorical:
        _categorical_nodes(spec, [names[f.name] for f in spec.categorical], nodes)
        outputs.append(
            helper.make_tensor_value_info(CATEGORICAL_EDGE, TensorProto.INT64, [BATCH, len(spec.categorical)])
        )
    graph = helper.make_graph(nodes, "duet_tabular_preprocess", inputs, outputs, initializers)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ML_DOMAIN, ML_OPSET)],
        ir_version=ir_version,
    )


def _numeric_nodes(spec: TabularSpec, inputs: list[str], nodes: list[Any], initializers: list[Any]) -> None:
    """``Where(IsNaN(x), 0, (x - mean) / std)`` in float64, Cast float32, then the missing indicators."""
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node
    initializers += [
        numpy_helper.from_array(np.array([f.mean for f in spec.numeric], np.float64), "duet/mean"),
        numpy_helper.from_array(np.array([f.std for f in spec.numeric], np.float64), "duet/std"),
        numpy_helper.from_array(np.array(0.0, np.float64), "duet/zero"),
    ]
    nodes += [
        node("Concat", inputs, ["duet/raw"], axis=1, name="duet/concat_numeric"),
        node("IsNaN", ["duet/raw"], ["duet/missing"], name="duet/isnan"),
        node("Sub", ["duet/raw", "duet/mean"], ["duet/centred"], name="duet/sub_mean"),
        node("Div", ["duet/centred", "duet/std"], ["duet/scaled"], name="duet/div_std"),
        node("Where", ["duet/missing", "duet/zero", "duet/scaled"], ["duet/filled"], name="duet/fill_missing"),
        node("Cast", ["duet/filled"], ["duet/values"], to=TensorProto.FLOAT, name="duet/to_float32"),
    ]
    flagged = [i for i, f in enumerate(spec.numeric) if f.has_missing]
    if not flagged:
        nodes.append(node("Identity", ["duet/values"], [NUMERIC_EDGE], name="duet/numeric"))
        return
    initializers.append(numpy_helper.from_array(np.array(flagged, np.int64), "duet/flagged"))
    nodes += [
        node("Gather", ["duet/missing", "duet/flagged"], ["duet/flags"], axis=1, name="duet/gather_flags"),
        node("Cast", ["duet/flags"], ["duet/indicators"], to=TensorProto.FLOAT, name="duet/indicators"),
        node("Concat", ["duet/values", "duet/indicators"], [NUMERIC_EDGE], axis=1, name="duet/numeric"),
    ]


def _categorical_nodes(spec: TabularSpec, inputs: list[str], nodes: list[Any]) -> None:
    """One LabelEncoder per column (keys ``["", *tokens]`` -> ``[MISSING_ID, FIRST_TOKEN_ID, ...]``,
    default ``OOV_ID``), concatenated to ``[N, C]``."""
    from onnx import helper

    ids = []
    for i, (name, f) in enumerate(zip(inputs, spec.categorical)):
        ids.append(f"duet/ids_{i}")
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [name],
                [ids[-1]],
                domain=ML_DOMAIN,
                keys_strings=["", *f.tokens],
                values_int64s=[MISSING_ID, *range(FIRST_TOKEN_ID, f.cardinality)],
                default_int64=OOV_ID,
                name=f"duet/lookup_{i}",
            )
        )
    nodes.append(helper.make_node("Concat", ids, [CATEGORICAL_EDGE], axis=1, name="duet/categorical"))


def export_tabular_onnx(
    model: torch.nn.Module,
    spec: TabularSpec,
    schema: ColumnSchema,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Write the whole graph (see the module doc) to ``path``; returns what model.json records about it."""
    import onnx
    from onnx import compose

    trained = _model_proto(model, spec, opset)
    version = next(o.version for o in trained.opset_import if o.domain in ("", "ai.onnx"))
    pre = preprocess_proto(spec, schema, opset=version, ir_version=trained.ir_version)
    trained = compose.add_prefix(trained, MODEL_PREFIX, rename_outputs=False)
    io_map = [(e.name, MODEL_PREFIX + e.name.removeprefix("duet/")) for e in pre.graph.output]
    merge_and_save(pre, trained, io_map, "tabular", path)
    return {
        "opset": version,
        "ml_opset": ML_OPSET,
        "exporter": f"torch.onnx.export dynamo=True (torch {torch.__version__}) + onnx.compose.merge_models "
        f"(onnx {onnx.__version__})",
        "preprocessing_nodes": len(pre.graph.node),
        "feature_edges": [e.name for e in pre.graph.output],
    }


def metadata_props(labels: list[str], spec: TabularSpec, schema: ColumnSchema, architecture: str) -> dict[str, str]:
    """What ``model.onnx`` carries in its ``metadata_props``, so the file alone is usable."""
    inputs = signature_inputs(schema)
    return {
        "modality": "tabular",
        "labels": json.dumps(labels),
        "columns": json.dumps(schema.to_dict()),
        "tabular_spec": json.dumps(spec.to_dict()),
        "inputs": json.dumps(inputs),
        "input": (
            "one input per feature column, shape [N, 1]: numbers and booleans (0/1) as float64 with NaN for "
            "missing, categories as strings with '' for missing; the graph normalises, adds missing "
            "indicators and looks categories up itself"
        ),
        "architecture": architecture,
        "duet_version": duet.__version__,
    }


def write_tabular_onnx(
    model: torch.nn.Module,
    spec: TabularSpec,
    schema: ColumnSchema,
    labels: list[str],
    architecture: str,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """:func:`export_tabular_onnx` with the labels, columns and spec in the file's metadata."""
    graph = export_tabular_onnx(model, spec, schema, path, opset=opset)
    write_metadata(path, metadata_props(labels, spec, schema, architecture))
    return graph


def graph_feed(inputs: Sequence[dict[str, Any]], table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's feed for ``table`` (``duet.data.tabular.schema``'s layout) by model.json's
    ``inputs``: ``[N, 1]`` float64 for FP64 (nan stays missing), str for BYTES (``None`` -> ``""``)."""
    feed = {}
    for entry in inputs:
        column = table[entry["column"]]
        if entry["datatype"] == "BYTES":
            values = np.array(["" if v is None else str(v) for v in column], dtype=object)
        else:
            values = np.asarray(column, dtype=np.float64)
        feed[str(entry["name"])] = values.reshape(-1, 1)
    return feed
