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

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from duet.serve.errors import ApiError
from duet.serve.protocols import kserve_v2, simple, tfserving
from duet.serve.protocols.tabular import _json_body
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
            texts = strings(_counted(service, documents(await _json_body(request))))
        else:
            raise ApiError(
                415,
                f"Content-Type '{content_type}' is not accepted here: send JSON texts with "
                "Content-Type: application/json, or one document as text/plain",
                "unsupported_media_type",
            )
        out = await service.predict(texts, "/v1/predict")
        predictions = []
        for i, probs in enumerate(out.probabilities):
            top = service.top_k(probs, top_k)
            predictions.append(
                {
                    "document": i,
                    "label": top[0]["label"],
                    "probability": top[0]["probability"],
                    "top": top,
                    "probabilities": dict(zip(service.labels, probs.tolist())),
                }
            )
        version = service.version_of(out)
        return JSONResponse(
            {"model": service.name, "version": version, "model_version": version, "predictions": predictions},
            headers=service.version_header(out),
        )

    @r.get("/v1/monitor", summary="Drift of recent documents vs the reference profile", tags=["monitoring"])
    async def monitor() -> Any:
        watch = service.text_drift
        if watch is None:
            raise ApiError(
                404,
                "drift monitoring is off: the model folder has no reference profile "
                "(train with a validation split, then re-export) or --no-drift was given",
                "drift_off",
            )
        return JSONResponse(await watch.latest())

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

    @r.get("/v2/models/{name}", summary="Model metadata")
    @r.get("/v2/models/{name}/versions/{version}", summary="Model metadata (one version)")
    async def metadata(name: str, version: str | None = None) -> Any:
        service.check_model(name, version)
        return kserve_metadata(service)

    @r.post("/v2/models/{name}/infer", summary="Inference: one BYTES input of texts")
    @r.post("/v2/models/{name}/versions/{version}/infer", summary="Inference (one version)")
    async def infer(name: str, request: Request, version: str | None = None) -> Any:
        service.check_model(name, version)
        req, inputs, raws = await kserve_v2.read_infer_request(request)
        texts = tensor_texts(service, inputs, raws)
        kserve_v2._requested_outputs(req)  # refuse a bad outputs list before spending inference on it
        out = await service.predict(texts, "/v2/models/{name}/infer")
        return kserve_v2.infer_response(service, req, out)

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
    c, info = len(service.labels), tfserving._tensor_info
    inputs = {service.input: info(service.input, "DT_STRING", list(service.package.manifest["inputs"][0]["shape"]))}
    predict = {
        "inputs": inputs,
        "outputs": {
            "probabilities": info("probabilities", "DT_FLOAT", [-1, c]),
            "label": info("label", "DT_STRING", [-1]),
            "label_index": info("label_index", "DT_INT64", [-1]),
        },
        "method_name": "tensorflow/serving/predict",
    }
    classify = {
        "inputs": inputs,
        "outputs": {"classes": info("classes", "DT_STRING", [-1, c]), "scores": info("scores", "DT_FLOAT", [-1, c])},
        "method_name": "tensorflow/serving/classify",
    }
    spec: dict[str, Any] = {"name": service.name, "signature_name": ""}
    version = tfserving.tf_version(service.version)
    if version is not None:
        spec["version"] = version
    signatures = {"serving_default": predict, "classify": classify}
    return {
        "model_spec": spec,
        "metadata": {"signature_def": {"@type": tfserving.SIGNATURE_DEF_MAP, "signature_def": signatures}},
    }


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
        if ("instances" in body) == ("inputs" in body):
            raise bad_request(
                "the request must be a JSON object with exactly one of 'instances' or 'inputs'", "bad_json"
            )
        sig = body.get("signature_name", "serving_default")
        if sig not in ("serving_default", ""):
            raise bad_request(f"unknown signature_name {sig!r}; this model has 'serving_default'", "unknown_signature")
        rows = "instances" in body
        if rows:
            if not isinstance(body["instances"], list):
                raise bad_request("'instances' must be a list of texts", "bad_instance")
            values = [instance_text(v, i) for i, v in enumerate(_counted(service, body["instances"]))]
        else:
            values = _counted(service, _columnar(service, body["inputs"]))
        out = await service.predict(strings(values), "/v1/models/{name}:predict")
        index = out.probabilities.argmax(1)
        labels = [service.labels[i] for i in index]
        if rows:
            predictions = [
                {"probabilities": p.tolist(), "label": lab, "label_index": int(i)}
                for p, lab, i in zip(out.probabilities, labels, index)
            ]
            return JSONResponse({"predictions": predictions}, headers=service.version_header(out))
        outputs = {"probabilities": out.probabilities.tolist(), "label": labels, "label_index": [int(i) for i in index]}
        return JSONResponse({"outputs": outputs}, headers=service.version_header(out))

    @r.post("/v1/models/{name}:classify", summary="Classify (examples: {'text': ...} objects)")
    @r.post("/v1/models/{name}/versions/{version}:classify", summary="Classify (one version)")
    async def classify(name: str, request: Request, version: str | None = None) -> Any:
        check(name, version)
        texts = _examples(service, await tfserving._json_object(request))
        out = await service.predict(texts, "/v1/models/{name}:classify")
        results = []
        for probs in out.probabilities:
            order = np.argsort(-probs, kind="stable")
            results.append([[service.labels[i], float(probs[i])] for i in order])
        return JSONResponse({"results": results}, headers=service.version_header(out))

    # "POST /v1/models/m:verb" would otherwise match the GET status route and get 405.
    @r.post("/v1/models/{name}", include_in_schema=False)
    @r.post("/v1/models/{name}/versions/{version}", include_in_schema=False)
    async def other_verb(name: str, version: str | None = None) -> Any:
        verb = (version if version is not None else name).partition(":")[2]
        raise bad_request(
            f"unknown method {':' + verb if verb else '(none)'} for a text classifier; "
            "POST /v1/models/{name} takes :predict or :classify",
            "unknown_method",
        )

    return r


def _examples(service: TextService, body: dict[str, Any]) -> list[str]:
    """The documents of a ClassificationRequest: each example's ``text`` (the context may give it)."""
    sig = body.get("signature_name", "serving_default")
    if sig not in tfserving.CLASSIFY_SIGNATURES:
        raise bad_request(
            f"unknown signature_name {sig!r}; :classify takes 'serving_default' or 'classify'", "unknown_signature"
        )
    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not examples:
        raise bad_request("a classify request needs a non-empty list 'examples' of {\"text\": ...}", "bad_instance")
    if not isinstance(context, dict):
        raise bad_request("'context' must be an object shared by all examples", "bad_instance")
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
