"""The three protocols for a text model (model.json ``"modality": "text"``).

Documents are raw strings; the model's graph tokenises them. A value that is
not a string is a 400 naming its index; too many documents, a document over
``max_chars`` or a request over ``max_request_chars`` is a 413 (one line,
:mod:`duet.serve.text_rows`).

- **simple**: ``POST /v1/predict`` with a JSON body: ``"a text"``, ``["a", "b"]``,
  ``{"text": "..."}`` or ``{"texts": [...]}`` (or ``Content-Type: text/plain``:
  the body is one document). Answer: ``{"model", "version", "predictions":
  [{"document", "label", "probability", "top": [{"label", "index",
  "probability"}, ...], "probabilities": {label: p}}]}``, one per document in
  request order (``?top_k=`` as for images and rows).
- **KServe V2**: the metadata lists the model's one ``BYTES`` input (its name
  and shape from model.json); ``infer`` takes it with shape ``[N]`` or
  ``[N, 1]``, as JSON ``data`` (strings) or binary tensor data (4-byte
  little-endian length + UTF-8 bytes per element). Outputs and extensions as
  for images (``logits``, ``probabilities``, ``classification``).
- **TF Serving**: ``:predict`` with ``"instances"`` (strings, ``{"text": ...}``
  objects or one-element lists) or ``"inputs"`` (a list of strings, or
  ``{"<input name>" | "text": [...]}``); ``:classify`` with ``"examples"``
  (``{"text": ...}`` objects). Metadata lists one ``DT_STRING`` input.
- ``GET /v1/monitor``: the drift verdict on recent documents (404 ``drift_off``
  without a reference profile).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from duet.serve.errors import ApiError
from duet.serve.protocols import kserve_v2, simple, tfserving
from duet.serve.protocols.tabular import json_body
from duet.serve.text_rows import bad_request, documents, instance_text, json_type, strings
from duet.serve.text_service import TextService


def routers(service: TextService) -> list[APIRouter]:
    return [simple_router(service), kserve_router(service), tfserving_router(service)]


# ---------------------------------------------------------------- simple


def simple_router(service: TextService) -> APIRouter:
    r = APIRouter(tags=["simple"])
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"example": {"texts": ["a text"]}}}}}

    @r.post(
        "/v1/predict",
        summary="Classify texts (JSON: a string, a list of them, {'text': ...} or {'texts': [...]})",
        openapi_extra=body_doc,
    )
    async def predict(
        request: Request,
        top_k: int = Query(service.config.top_k, ge=1, le=10_000, description="Labels per document, best first."),
    ) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "text/plain":
            texts = strings([_utf8(await request.body(), "the body")])
        elif content_type in ("", "application/json"):
            texts = strings(_counted(service, documents(await json_body(request))))
        else:
            raise ApiError(
                415,
                f"Content-Type '{content_type}' is not accepted here: send JSON texts with "
                "Content-Type: application/json, or one document as text/plain",
                "unsupported_media_type",
            )
        out = await service.predict(texts, "/v1/predict")
        return simple.row_predictions(service, out, top_k, "document")

    simple.add_monitor_route(r, "Drift of recent documents vs the reference profile", lambda: service.text_drift)
    simple.add_health_routes(r, service)
    return r


def _counted(service: TextService, values: list[Any]) -> list[Any]:
    """``values`` after the count check: 413 for too many before any is read."""
    service.check_count(len(values))
    return values


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"{where} is not UTF-8 text (byte {e.start})", "bad_encoding") from None


# ---------------------------------------------------------------- KServe V2


def kserve_metadata(service: TextService) -> dict[str, Any]:
    entry = service.package.manifest["inputs"][0]
    return {
        "name": service.name,
        "versions": [service.version],
        "platform": service.runtime.platform,
        "inputs": [{"name": service.input, "datatype": "BYTES", "shape": list(entry["shape"])}],
        "outputs": [{"name": o["name"], "datatype": o["datatype"], "shape": o["shape"]} for o in service.outputs],
        "parameters": {"labels": service.labels, "modality": "text", "limits": _limits(service)},
    }


def _limits(service: TextService) -> dict[str, int]:
    return {
        "max_chars": service.text_limits.max_chars,
        "max_request_chars": service.text_limits.max_request_chars,
        "max_documents": service.limits.max_images,
    }


def kserve_router(service: TextService) -> APIRouter:
    r = APIRouter(tags=["kserve-v2"])
    kserve_v2.add_server_routes(r, service)

    kserve_v2.add_model_routes(
        r,
        service,
        lambda: kserve_metadata(service),
        "Inference: one BYTES input of texts",
        lambda inputs, raws: tensor_texts(service, inputs, raws),
        service.predict,
    )
    return r


def tensor_texts(service: TextService, inputs: list[dict[str, Any]], raws: list[bytes | None]) -> list[str]:
    """The documents of the one BYTES input of an infer request (400 for anything else)."""
    if len(inputs) != 1:
        raise bad_request(f"this model takes one input '{service.input}', got {len(inputs)}", "unknown_input")
    t, raw = inputs[0], raws[0]
    name = t.get("name")
    if name != service.input:
        raise bad_request(
            f"unknown input {name!r}; this model takes one BYTES input '{service.input}'", "unknown_input"
        )
    if t.get("datatype") != "BYTES":
        raise bad_request(
            f"input {name!r}: datatype must be BYTES (UTF-8 texts), got {t.get('datatype')!r}", "bad_datatype"
        )
    shape = kserve_v2._shape(t)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise bad_request(f"input {name!r} must have shape [N] or [N, 1], got {shape}", "bad_shape")
    service.check_count(shape[0])
    values: list[str]
    if raw is not None:
        values = strings([_utf8(b, f"document {i}") for i, b in enumerate(kserve_v2.deserialize_bytes(raw))])
    elif "data" in t:
        values = strings(kserve_v2._flatten(t["data"]))
    else:
        raise bad_request(f"input {name!r} has neither 'data' nor parameters.binary_data_size", "bad_data")
    if len(values) != shape[0]:
        raise bad_request(f"input {name!r} has shape {shape} but holds {len(values)} elements", "bad_shape")
    return values


# ---------------------------------------------------------------- TF Serving


def tf_metadata(service: TextService) -> dict[str, Any]:
    """``GetModelMetadataResponse``: one DT_STRING input (as tfserving.metadata for images)."""
    shape = list(service.package.manifest["inputs"][0]["shape"])
    inputs = {service.input: tfserving._tensor_info(service.input, "DT_STRING", shape)}
    return tfserving.model_metadata(service, inputs, inputs)


def _columnar(service: TextService, inputs: Any) -> list[Any]:
    """``"inputs"``: a list of texts, or an object with one entry named by the input (or "text")."""
    if isinstance(inputs, dict):
        names = sorted({service.input, "text"})
        keys = [k for k in inputs if k in names]
        if len(inputs) != 1 or not keys:
            shown = " or ".join(repr(n) for n in names)
            raise bad_request(
                f"'inputs' as an object must have one key, {shown}; got {sorted(inputs)[:5]}", "bad_instance"
            )
        inputs = inputs[keys[0]]
    if not isinstance(inputs, list):
        raise bad_request(f"'inputs' must be a list of texts, got a {json_type(inputs)}", "bad_instance")
    return [instance_text(v, i) for i, v in enumerate(inputs)]


def tfserving_router(service: TextService) -> APIRouter:
    r = APIRouter(tags=["tensorflow-serving"])
    check = tfserving.checker(service)
    tfserving._status_routes(r, service, check, tf_metadata)  # type: ignore[arg-type]

    @r.post("/v1/models/{name}:predict", summary="Predict (instances: texts or {'text': ...}; inputs: texts)")
    @r.post("/v1/models/{name}/versions/{version}:predict", summary="Predict (one version)")
    async def predict(name: str, request: Request, version: str | None = None) -> Any:
        check(name, version)
        body = await tfserving._json_object(request)
        rows = tfserving.predict_form(body)
        if rows:
            if not isinstance(body["instances"], list):
                raise bad_request("'instances' must be a list of texts", "bad_instance")
            values = [instance_text(v, i) for i, v in enumerate(_counted(service, body["instances"]))]
        else:
            values = _counted(service, _columnar(service, body["inputs"]))
        out = await service.predict(strings(values), "/v1/models/{name}:predict")
        return tfserving.predict_response(service, out, rows)

    @r.post("/v1/models/{name}:classify", summary="Classify (examples: {'text': ...} objects)")
    @r.post("/v1/models/{name}/versions/{version}:classify", summary="Classify (one version)")
    async def classify(name: str, request: Request, version: str | None = None) -> Any:
        check(name, version)
        texts = _examples(service, await tfserving._json_object(request))
        out = await service.predict(texts, "/v1/models/{name}:classify")
        return tfserving.classify_response(service, out)

    tfserving.add_other_verb_route(r, "a text classifier")
    return r


def _examples(service: TextService, body: dict[str, Any]) -> list[str]:
    """The documents of a ClassificationRequest: each example's ``text`` (the context may give it)."""
    examples, context = tfserving.classify_body(body, '{"text": ...}', "shared by all examples")
    service.check_count(len(examples))
    texts = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise bad_request(f'document {i}: an example must be an object {{"text": ...}}', "bad_instance")
        features = {**context, **example}
        if "text" not in features:
            raise bad_request(f'document {i}: the example has no "text" feature', "bad_instance")
        texts.append(instance_text(features["text"], i))
    return strings(texts)
