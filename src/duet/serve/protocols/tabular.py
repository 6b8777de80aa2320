"""The three protocols for a tabular model (model.json ``"modality": "tabular"``).

Values are keyed by column name (the graph input's name is accepted too) and
read as :mod:`duet.serve.tabular_rows` says; a bad one is a 400 naming its row
and column. The target column and the columns the model does not read (ID-like,
constant, text) are ignored, so a whole row of the training file can be sent.

- **simple**: ``POST /v1/predict`` with a JSON body: one row object
  ``{"col": value, ...}``, a list of them, or ``{"rows": [...]}``. Answer:
  ``{"model", "version", "predictions": [{"row", "label", "probability",
  "top": [{"label", "index", "probability"}, ...], "probabilities": {label: p}}]}``,
  one prediction per row in request order (``?top_k=`` as for images).
- **KServe V2**: the metadata lists one input per feature column (``FP64`` for
  numeric and boolean columns, ``BYTES`` for categorical ones, shape ``[-1, 1]``,
  ``parameters.column`` and ``.kind``); ``infer`` takes one input per column,
  shape ``[N]`` or ``[N, 1]``: BYTES (strings; ``""`` is missing) for
  categorical columns, FP64/FP32/FP16/INT*/UINT* for numeric ones (binary FP
  NaN is missing; JSON ``null`` is missing), BOOL or numbers for booleans; JSON
  data or binary tensor data. Outputs and extensions as for images
  (``logits``, ``probabilities``, ``classification``).
- **TF Serving**: ``:predict`` with ``"instances"`` (row objects; a value may be
  a one-element list, the ``[1]`` of the per-column shape) or ``"inputs"``
  (columnar ``{"col": [values]}``); ``:classify`` with ``"examples"`` (row
  objects, ``"context"`` shared by all). Metadata lists one ``DT_DOUBLE`` or
  ``DT_STRING`` ``[-1, 1]`` input per column. Answers as for images.
- ``GET /v1/monitor``: the per-column drift report of recent requests, when the
  model folder has a reference profile (404 ``drift_off`` otherwise).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request

from duet.data.tabular.schema import Table
from duet.serve.errors import ApiError
from duet.serve.protocols import kserve_v2, simple, tfserving
from duet.serve.tabular_rows import FeatureInput, bad_request
from duet.serve.tabular_service import TabularService

# KServe V2 datatypes a numeric or boolean column may arrive in, and their little-endian binary layout.
BINARY_DTYPES = {
    "FP64": "<f8",
    "FP32": "<f4",
    "FP16": "<f2",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "BOOL": "?",
}
TF_DTYPES = {"FP64": "DT_DOUBLE", "BYTES": "DT_STRING"}


def routers(service: TabularService) -> list[APIRouter]:
    return [simple_router(service), kserve_router(service), tfserving_router(service)]


# ---------------------------------------------------------------- simple


def simple_router(service: TabularService) -> APIRouter:
    r = APIRouter(tags=["simple"])

    @r.post(
        "/v1/predict",
        summary="Classify table rows (JSON: a row object, a list of them, or {'rows': [...]})",
        openapi_extra=_predict_body(service),
    )
    async def predict(
        request: Request,
        top_k: int = Query(service.config.top_k, ge=1, le=10_000, description="Labels per row, best first."),
    ) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("", "application/json"):
            raise ApiError(
                415,
                f"Content-Type '{content_type}' is not accepted here: send JSON rows "
                "with Content-Type: application/json (curl: -H 'Content-Type: application/json')",
                "unsupported_media_type",
            )
        rows = _rows(await json_body(request))
        service.check_count(len(rows))
        out = await service.predict(service.layout.rows_to_table(rows), "/v1/predict")
        return simple.row_predictions(service, out, top_k, "row")

    simple.add_monitor_route(
        r, "Input drift per column: recent requests vs the reference profile", lambda: service.table_drift
    )
    simple.add_health_routes(r, service)
    return r


def _predict_body(service: TabularService) -> dict[str, Any]:
    example = {i.column: (1.0 if i.datatype == "FP64" else "a") for i in service.layout.inputs[:8]}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "example": {"rows": [example]}}}},
        }
    }


async def json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):
        raise bad_request("the request body is not valid JSON", "bad_json") from None


def _rows(body: Any) -> list[Any]:
    """The rows of a /v1/predict body: a list, ``{"rows": [...]}``, or one row object."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        if set(body) == {"rows"} and isinstance(body["rows"], list):
            return body["rows"]
        return [body]
    raise bad_request('the body must be a row object, a list of row objects, or {"rows": [...]}', "bad_json")


# ---------------------------------------------------------------- KServe V2


def kserve_metadata(service: TabularService) -> dict[str, Any]:
    return {
        "name": service.name,
        "versions": [service.version],
        "platform": service.runtime.platform,
        "inputs": [
            {
                "name": i.name,
                "datatype": i.datatype,
                "shape": [-1, 1],
                "parameters": {"column": i.column, "kind": i.kind},
            }
            for i in service.layout.inputs
        ],
        "outputs": [{"name": o["name"], "datatype": o["datatype"], "shape": o["shape"]} for o in service.outputs],
        "parameters": {"labels": service.labels, "modality": "tabular", "target": service.layout.target},
    }


def kserve_router(service: TabularService) -> APIRouter:
    r = APIRouter(tags=["kserve-v2"])
    kserve_v2.add_server_routes(r, service)

    kserve_v2.add_model_routes(
        r,
        service,
        lambda: kserve_metadata(service),
        "Inference: one input per feature column",
        lambda inputs, raws: _tensors_to_table(service, inputs, raws),
        service.predict,
    )
    return r


def _tensors_to_table(service: TabularService, inputs: list[dict[str, Any]], raws: list[bytes | None]) -> Table:
    layout = service.layout
    keys = layout.lookup()
    columns: dict[str, tuple[FeatureInput, list[Any]]] = {}
    n: int | None = None
    for t, raw in zip(inputs, raws):
        name = t.get("name")
        if not isinstance(name, str):
            raise bad_request(f"every input needs a 'name' (a column), got {name!r}", "unknown_input")
        feature = layout.resolve(name, keys, f"input {name!r}")
        if feature is None:
            continue  # the target or a column the model does not read
        if feature.column in columns:
            raise bad_request(f"column {feature.column!r} is given by two inputs", "bad_request")
        shape = kserve_v2._shape(t)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad_request(f"input {name!r} must have shape [N] or [N, 1], got {shape}", "bad_shape")
        if n is None:
            n = shape[0]
            service.check_count(n)
        elif shape[0] != n:
            raise bad_request(f"input {name!r} has {shape[0]} rows, the inputs before it {n}", "bad_shape")
        values = tensor_values(t, raw, name)
        if len(values) != shape[0]:
            raise bad_request(f"input {name!r} has shape {shape} but holds {len(values)} elements", "bad_shape")
        columns[feature.column] = (feature, values)
    if n is None:
        raise bad_request("the request has no input of a feature column", "missing_column")
    table = layout.empty(n)
    for column in layout.columns:
        if column not in columns:
            raise bad_request(
                f"column {column!r}: no input carries it (send one input per feature column)", "missing_column"
            )
        feature, values = columns[column]
        target = table[column]
        for r, value in enumerate(values):
            target[r] = layout.parse(feature, value, f"row {r}")
    return table


def tensor_values(t: dict[str, Any], raw: bytes | None, name: str) -> list[Any]:
    """The elements of one input as Python values (str, int, float, bool or None for missing)."""
    datatype = t.get("datatype")
    if datatype != "BYTES" and datatype not in BINARY_DTYPES:
        raise bad_request(
            f"input {name!r}: datatype {datatype!r} is not one of BYTES, {', '.join(BINARY_DTYPES)}", "bad_datatype"
        )
    if raw is not None:
        return _binary_values(raw, str(datatype), name)
    if "data" not in t:
        raise bad_request(f"input {name!r} has neither 'data' nor parameters.binary_data_size", "bad_data")
    values = kserve_v2._flatten(t["data"])
    for r, v in enumerate(values):
        if v is not None and not _fits(v, str(datatype)):
            raise bad_request(f"row {r}, input {name!r}: {v!r} is not a {datatype} value", "bad_value")
    return values


def _fits(value: Any, datatype: str) -> bool:
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype == "BOOL":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if datatype[0] in "IU" else isinstance(value, (int, float))


def _binary_values(raw: bytes, datatype: str, name: str) -> list[Any]:
    if datatype == "BYTES":
        items = kserve_v2.deserialize_bytes(raw)
        try:
            return [b.decode("utf-8") for b in items]
        except UnicodeDecodeError:
            raise bad_request(f"input {name!r}: BYTES elements must be UTF-8 text", "bad_binary") from None
    dtype = np.dtype(BINARY_DTYPES[datatype])
    if len(raw) % dtype.itemsize:
        raise bad_request(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values", "bad_binary")
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    if datatype.startswith("FP"):  # NaN is how binary float data says missing
        return [None if math.isnan(v) else v for v in values]
    return values


# ---------------------------------------------------------------- TF Serving


def tf_metadata(service: TabularService) -> dict[str, Any]:
    """``GetModelMetadataResponse``: one input per feature column (as tfserving.metadata for images)."""
    inputs = {i.name: tfserving._tensor_info(i.name, TF_DTYPES[i.datatype], [-1, 1]) for i in service.layout.inputs}
    return tfserving.model_metadata(service, inputs, inputs)


def _unwrap(value: Any) -> Any:
    """A TF Serving value of shape [1] (``[v]``) is the value itself."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _unwrap_row(row: Any) -> Any:
    return {k: _unwrap(v) for k, v in row.items()} if isinstance(row, dict) else row


def tfserving_router(service: TabularService) -> APIRouter:
    r = APIRouter(tags=["tensorflow-serving"])
    check = tfserving.checker(service)
    tfserving._status_routes(r, service, check, tf_metadata)  # type: ignore[arg-type]
    layout = service.layout

    @r.post("/v1/models/{name}:predict", summary="Predict (instances: row objects; inputs: {column: [values]})")
    @r.post("/v1/models/{name}/versions/{version}:predict", summary="Predict (one version)")
    async def predict(name: str, request: Request, version: str | None = None) -> Any:
        check(name, version)
        body = await tfserving._json_object(request)
        rows = tfserving.predict_form(body)
        if rows:
            if not isinstance(body["instances"], list):
                raise bad_request("'instances' must be a list of row objects", "bad_instance")
            service.check_count(len(body["instances"]))
            table = layout.rows_to_table([_unwrap_row(x) for x in body["instances"]])
        else:
            if not isinstance(body["inputs"], dict):
                raise bad_request("'inputs' must be an object {column: [values]}", "bad_instance")
            lengths = [len(v) for v in body["inputs"].values() if isinstance(v, list)]
            if lengths:  # else columns_to_table names the column that is not a list
                service.check_count(max(lengths))
            table = layout.columns_to_table(
                {k: [_unwrap(x) for x in v] if isinstance(v, list) else v for k, v in body["inputs"].items()}
            )
        out = await service.predict(table, "/v1/models/{name}:predict")
        return tfserving.predict_response(service, out, rows)

    @r.post("/v1/models/{name}:classify", summary="Classify (examples: row objects, context shared)")
    @r.post("/v1/models/{name}/versions/{version}:classify", summary="Classify (one version)")
    async def classify(name: str, request: Request, version: str | None = None) -> Any:
        check(name, version)
        examples = _examples(await tfserving._json_object(request))
        service.check_count(len(examples))
        out = await service.predict(layout.rows_to_table(examples), "/v1/models/{name}:classify")
        return tfserving.classify_response(service, out)

    tfserving.add_other_verb_route(r, "a classifier of table rows")
    return r


def _examples(body: dict[str, Any]) -> list[Any]:
    """The rows of a ClassificationRequest: each example merged with the shared context."""
    examples, context = tfserving.classify_body(body, "row objects", "of columns shared by all examples")
    rows = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise bad_request(f"row {i}: an example must be an object of column -> value", "bad_instance")
        shared = set(example) & set(context)
        if shared:
            raise bad_request(f"row {i}: repeats context columns {sorted(shared)[:5]}", "bad_instance")
        rows.append(_unwrap_row({**context, **example}))
    return rows
