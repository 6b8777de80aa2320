"""TensorFlow Serving's REST API: model status, metadata, ``:predict`` and ``:classify``.

Routes: ``GET /v1/models/{name}[/versions/{v}]``, ``GET .../metadata``,
``POST /v1/models/{name}[/versions/{v}]:predict``, ``POST ...:classify``;
``POST ...:regress`` is a 400 (a classifier has no regression signature).
Status and metadata are the JSON forms of TF Serving's protobufs
(``GetModelStatusResponse``, ``GetModelMetadataResponse`` with the
``SignatureDefMap`` packed in an ``Any``, ``@type`` included), so
``google.protobuf.json_format.Parse`` reads them into the real messages.
Versions are int64 there: a registry version ``v3`` is reported as ``3``.

The ``serving_default`` signature has two alternative inputs:

- ``image_bytes`` (DT_STRING): encoded image files as ``{"b64": "..."}``
  (padding optional, as TF Serving accepts it);
- ``pixels`` (DT_UINT8 ``[3, S, S]`` per instance): nested lists of 0..255.

Request (row format): ``{"instances": [{"b64": "..."}, ...]}``; an instance may
also be ``{"image_bytes": {"b64": "..."}}`` or ``{"pixels": [[[...]]]}`` or a bare
``[3][S][S]`` list. Columnar: ``{"inputs": [...]}`` with the same elements or
``{"inputs": {"image_bytes": [...]}}``. Answers follow TF Serving: rows give
``{"predictions": [{"probabilities": [...], "label": "...", "label_index": i}, ...]}``,
columnar gives ``{"outputs": {"probabilities": [[...]], "label": [...], "label_index": [...]}}``.

``:classify`` takes TF Serving's ClassificationRequest JSON,
``{"signature_name"?, "context"?: {...}, "examples": [{"image_bytes": {"b64": "..."}}, ...]}``
(the image feature may be named as in ``IMAGE_KEYS``, other features are
ignored, as a model's feature spec ignores them), and answers
``{"results": [[[label, score], ...], ...]}``: per example every label with
its probability, best first (TF Serving's server writes ``results``; its REST
page shows ``result`` in one place and ``results`` in its example).
Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from duet.serve.errors import ApiError
from duet.serve.outputs import Outputs
from duet.serve.protocols.b64 import decode_b64
from duet.serve.service import ModelService

IMAGE_KEYS = ("image_bytes", "image", "images", "bytes")
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "example": {"instances": [{"b64": "<base64 of a JPEG>"}]}}
            }
        },
    }
}


CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "example": {"examples": [{"image_bytes": {"b64": "<base64 of a JPEG>"}}]}}
            }
        },
    }
}


def _bad(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, message, code)


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise _bad(f'{where}: images must be {{"b64": "<base64>"}}', "bad_data")
    try:
        return decode_b64(value["b64"])
    except ValueError:
        raise _bad(f"{where}: 'b64' is not valid base64", "bad_data") from None


def _pixels(value: Any, where: str, size: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise _bad(
            f"{where}: pixels must be a [3][{size}][{size}] nested list of integers 0..255", "bad_shape"
        ) from None
    if arr.shape != (3, size, size):
        raise _bad(f"{where}: pixels must have shape [3, {size}, {size}], got {list(arr.shape)}", "bad_shape")
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
        raise _bad(f"{where}: pixels must be integers 0..255", "bad_data")
    return arr.astype(np.uint8)


def _element(value: Any, i: int, size: int) -> bytes | np.ndarray:
    """One instance: encoded image bytes or a (3, S, S) uint8 array."""
    where = f"instance {i}"
    if isinstance(value, list):
        return _pixels(value, where, size)
    if isinstance(value, dict):
        if "b64" in value:
            return _b64(value, where)
        if len(value) == 1:
            key, inner = next(iter(value.items()))
            if key in IMAGE_KEYS:
                return _b64(inner, f"{where}.{key}")
            if key == "pixels":
                return _pixels(inner, f"{where}.pixels", size)
        raise _bad(
            f'{where}: expected {{"b64": ...}}, {{"image_bytes": {{"b64": ...}}}} or '
            f'{{"pixels": [[[...]]]}}, got keys {sorted(value)[:5]}',
            "bad_instance",
        )
    raise _bad(
        f'{where}: expected {{"b64": ...}} or a [3][S][S] pixel list, got {type(value).__name__}', "bad_instance"
    )


def _columnar(inputs: Any) -> list[Any]:
    if isinstance(inputs, list):
        return inputs
    if isinstance(inputs, dict) and len(inputs) == 1:
        key, value = next(iter(inputs.items()))
        if not isinstance(value, list):
            value = [value]
        if key in IMAGE_KEYS:
            return [{"b64": v["b64"]} if isinstance(v, dict) and "b64" in v else v for v in value]
        if key == "pixels":
            return value
    if isinstance(inputs, dict) and "b64" in inputs:
        return [inputs]
    raise _bad('\'inputs\' must be a list of instances or {"image_bytes": [...]} / {"pixels": [...]}', "bad_instance")


def tf_version(version: str) -> str | None:
    """The int64 TF Serving reports for a duet version (``"3"``, ``"v3"`` -> ``"3"``),
    or ``None`` when the version is not a number (the field is then left out)."""
    digits = version[1:] if version[:1] in ("v", "V") else version
    return str(int(digits)) if digits.isdigit() else None


def status(service: ModelService) -> dict[str, Any]:
    """``GetModelStatusResponse`` as JSON."""
    state = "AVAILABLE" if service.ready else "UNLOADING"
    entry: dict[str, Any] = {"state": state, "status": {"error_code": "OK", "error_message": ""}}
    version = tf_version(service.version)
    if version is not None:
        entry = {"version": version, **entry}
    return {"model_version_status": [entry]}


def _tensor_info(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False},
        "name": name,
    }


SIGNATURE_DEF_MAP = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
CLASSIFY_SIGNATURES = ("serving_default", "", "classify", "tensorflow/serving/classify")


def metadata(service: ModelService) -> dict[str, Any]:
    """``GetModelMetadataResponse`` of an image model: encoded images or pixels in."""
    s = service.spec.image_size
    image_bytes = {"image_bytes": _tensor_info("image_bytes", "DT_STRING", [-1])}
    return model_metadata(
        service, {**image_bytes, "pixels": _tensor_info("pixels", "DT_UINT8", [-1, 3, s, s])}, image_bytes
    )


def model_metadata(
    service: ModelService, predict_inputs: dict[str, Any], classify_inputs: dict[str, Any]
) -> dict[str, Any]:
    """``GetModelMetadataResponse`` as JSON for a classifier with these inputs: the ``signature_def``
    entry is a ``google.protobuf.Any`` holding a ``SignatureDefMap``, hence its ``@type``."""
    c = len(service.labels)
    predict = {
        "inputs": predict_inputs,
        "outputs": {
            "probabilities": _tensor_info("probabilities", "DT_FLOAT", [-1, c]),
            "label": _tensor_info("label", "DT_STRING", [-1]),
            "label_index": _tensor_info("label_index", "DT_INT64", [-1]),
        },
        "method_name": "tensorflow/serving/predict",
    }
    classify = {
        "inputs": classify_inputs,
        "outputs": {
            "classes": _tensor_info("classes", "DT_STRING", [-1, c]),
            "scores": _tensor_info("scores", "DT_FLOAT", [-1, c]),
        },
        "method_name": "tensorflow/serving/classify",
    }
    spec: dict[str, Any] = {"name": service.name, "signature_name": ""}
    version = tf_version(service.version)
    if version is not None:
        spec["version"] = version
    return {
        "model_spec": spec,
        "metadata": {
            "signature_def": {
                "@type": SIGNATURE_DEF_MAP,
                "signature_def": {"serving_default": predict, "classify": classify},
            }
        },
    }


def predict_form(body: dict[str, Any]) -> bool:
    """Check a PredictRequest's form: True for the row format (``instances``), False for ``inputs``."""
    if ("instances" in body) == ("inputs" in body):
        raise _bad("the request must be a JSON object with exactly one of 'instances' or 'inputs'", "bad_json")
    sig = body.get("signature_name", "serving_default")
    if sig not in ("serving_default", ""):
        raise _bad(f"unknown signature_name {sig!r}; this model has 'serving_default'", "unknown_signature")
    return "instances" in body


def predict_response(service: ModelService, out: Outputs, rows: bool) -> JSONResponse:
    """A PredictResponse: ``predictions`` (row format) or ``outputs`` (columnar), as the request was."""
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


def classify_response(service: ModelService, out: Outputs) -> JSONResponse:
    """A ClassificationResponse: every label and its score, best first, per example."""
    results = []
    for probs in out.probabilities:
        order = np.argsort(-probs, kind="stable")
        results.append([[service.labels[i], float(probs[i])] for i in order])
    return JSONResponse({"results": results}, headers=service.version_header(out))


def classify_body(body: dict[str, Any], what: str, context_what: str) -> tuple[list[Any], dict[str, Any]]:
    """The ``examples`` and shared ``context`` of a ClassificationRequest (400 for a bad form)."""
    sig = body.get("signature_name", "serving_default")
    if sig not in CLASSIFY_SIGNATURES:
        raise _bad(
            f"unknown signature_name {sig!r}; :classify takes 'serving_default' or 'classify'", "unknown_signature"
        )
    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not examples:
        raise _bad(f"a classify request needs a non-empty list 'examples' of {what}", "bad_instance")
    if not isinstance(context, dict):
        raise _bad(f"'context' must be an object {context_what}", "bad_instance")
    return examples, context


def add_other_verb_route(r: APIRouter, what: str) -> None:
    """A 400 naming :predict and :classify for any other verb (tabular and text models):
    "POST /v1/models/m:verb" would otherwise match the GET status route and get 405."""

    @r.post("/v1/models/{name}", include_in_schema=False)
    @r.post("/v1/models/{name}/versions/{version}", include_in_schema=False)
    async def other_verb(name: str, version: str | None = None) -> Any:
        verb = (version if version is not None else name).partition(":")[2]
        raise _bad(
            f"unknown method {':' + verb if verb else '(none)'} for {what}; "
            "POST /v1/models/{name} takes :predict or :classify",
            "unknown_method",
        )


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise _bad("the request body is not valid JSON", "bad_json") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", "bad_json")
    return body


def _examples(body: dict[str, Any]) -> list[bytes]:
    """The encoded image of every example of a ClassificationRequest."""
    examples, context = classify_body(body, "objects", "of features shared by all examples")
    images = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise _bad(f"example {i} must be an object of features", "bad_instance")
        if set(example) & set(context):
            raise _bad(f"example {i} repeats context features {sorted(set(example) & set(context))}", "bad_instance")
        features = {**context, **example}
        key = next((k for k in IMAGE_KEYS if k in features), None)
        if key is None:
            raise _bad(
                f"example {i} has no image feature; name it one of {list(IMAGE_KEYS)}, "
                'e.g. {"image_bytes": {"b64": "..."}}',
                "bad_instance",
            )
        value = features[key]
        if isinstance(value, list) and len(value) == 1:  # a feature given as a one-value list
            value = value[0]
        images.append(_b64(value, f"example {i}.{key}"))
    return images


Check = Callable[[str, str | None], None]  # raises the 404 for an unknown model or version


def checker(service: ModelService) -> Check:
    """The 404 check of a model name and version, in TF Serving's words."""

    def check(name: str, version: str | None) -> None:
        if version is not None and version == tf_version(service.version):
            version = service.version  # TF Serving's int64 form of e.g. "v3"
        try:
            service.check_model(name, version)
        except ApiError as e:
            # TF Serving's wording, so clients that match on it keep working.
            raise ApiError(
                404,
                f"Servable not found for request: {'Specific' if version else 'Latest'}"
                f"({name}{', ' + version if version else ''}); {e.message}",
                e.code,
            ) from None

    return check


def router(service: ModelService) -> APIRouter:
    r = APIRouter(tags=["tensorflow-serving"])
    check = checker(service)
    _status_routes(r, service, check)
    _predict_route(r, service, check)
    _classify_routes(r, service, check)
    return r


def _status_routes(
    r: APIRouter,
    service: ModelService,
    check: Check,
    describe: Callable[[ModelService], dict[str, Any]] = metadata,
) -> None:
    """Model status and metadata (``describe``: the image model's signatures by default)."""

    @r.get("/v1/models/{name}", summary="Model status")
    @r.get("/v1/models/{name}/versions/{version}", summary="Model status (one version)")
    async def model_status(name: str, version: str | None = None) -> Any:
        check(name, version)
        return status(service)

    @r.get("/v1/models/{name}/metadata", summary="Model metadata (signature_def)")
    @r.get("/v1/models/{name}/versions/{version}/metadata", summary="Model metadata (one version)")
    async def model_metadata(name: str, version: str | None = None) -> Any:
        check(name, version)
        return describe(service)


def _predict_route(r: APIRouter, service: ModelService, check: Check) -> None:
    @r.post("/v1/models/{name}:predict", summary="Predict", openapi_extra=PREDICT_BODY)
    @r.post("/v1/models/{name}/versions/{version}:predict", summary="Predict (one version)", openapi_extra=PREDICT_BODY)
    async def predict(name: str, request: Request, version: str | None = None) -> Any:
        check(name, version)
        body = await _json_object(request)
        rows = predict_form(body)
        elements = body["instances"] if rows else _columnar(body["inputs"])
        if not isinstance(elements, list):
            raise _bad("'instances' must be a list", "bad_instance")
        service.check_count(len(elements))
        size = service.spec.image_size
        parsed = [_element(v, i, size) for i, v in enumerate(elements)]
        kinds = {isinstance(p, bytes) for p in parsed}
        if len(kinds) > 1:
            raise _bad("mix of encoded images and pixel lists in one request; send one kind", "bad_instance")
        encoded = [p for p in parsed if isinstance(p, bytes)]  # all of them or none (one kind)
        stats = None
        if encoded:
            pixels, stats = await service.decode(encoded)
        else:
            pixels = service.check_pixels(np.stack([p for p in parsed if not isinstance(p, bytes)]))
        out = await service.infer(pixels, "/v1/models/{name}:predict", stats)
        return predict_response(service, out, rows)


def _classify_routes(r: APIRouter, service: ModelService, check: Check) -> None:
    @r.post(
        "/v1/models/{name}:classify", summary="Classify (TF Serving ClassificationRequest)", openapi_extra=CLASSIFY_BODY
    )
    @r.post(
        "/v1/models/{name}/versions/{version}:classify", summary="Classify (one version)", openapi_extra=CLASSIFY_BODY
    )
    async def classify(name: str, request: Request, version: str | None = None) -> Any:
        check(name, version)
        images = _examples(await _json_object(request))
        service.check_count(len(images))
        pixels, stats = await service.decode(images)
        out = await service.infer(pixels, "/v1/models/{name}:classify", stats)
        return classify_response(service, out)

    @r.post("/v1/models/{name}:regress", summary="Regress: not offered (this model is a classifier)")
    @r.post("/v1/models/{name}/versions/{version}:regress", summary="Regress (one version): not offered")
    async def regress(name: str, version: str | None = None) -> Any:
        check(name, version)
        raise _bad(
            f"model '{name}' is an image classifier and has no regression signature; use :classify or :predict",
            "no_regression",
        )

    # Without these, "POST /v1/models/m:verb" would match the GET status route
    # (name = "m:verb") and get 405; an unknown verb is a 400 that names the verbs.
    @r.post("/v1/models/{name}", include_in_schema=False)
    @r.post("/v1/models/{name}/versions/{version}", include_in_schema=False)
    async def unknown_verb(name: str, version: str | None = None) -> Any:
        target = version if version is not None else name
        verb = target.partition(":")[2]
        raise _bad(
            f"unknown method {':' + verb if verb else '(none)'}; POST /v1/models/{{name}} takes "
            ":predict, :classify or :regress",
            "unknown_method",
        )
