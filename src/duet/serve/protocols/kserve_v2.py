"""The Open Inference Protocol (KServe V2, as Triton speaks it) over HTTP/REST.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{v}]``, ``.../ready``, ``POST .../infer``.

The model takes exactly one of two inputs (both listed in its metadata):

- ``image``: BYTES ``[N]`` (or ``[N, 1]``), each element an encoded image file
  (JPEG, PNG, ...), decoded by the server exactly as in training evaluation.
  In the JSON form each element is base64 text (or ``{"b64": ...}``), padding optional;
- ``pixels``: UINT8 ``[N, 3, S, S]``, the centre crops as the graph takes them.

Outputs: ``logits`` and ``probabilities`` (FP32 ``[N, C]``). Extensions:

- binary tensor data: a request body may be a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by raw tensor bytes (input
  ``parameters.binary_data_size``); outputs come back raw when asked
  (``outputs[].parameters.binary_data`` or request ``parameters.binary_data_output``,
  which tritonclient sets by default). BYTES tensors are serialised as 4-byte
  little-endian lengths + bytes, numbers as little-endian row-major arrays;
- classification: ``outputs[].parameters.classification = k`` turns an output
  into BYTES ``[N, k]`` of ``"score:index:label"`` strings, best first.

A body compressed by the client (tritonclient's ``request_compression_algorithm``)
arrives here already decompressed (``duet.serve.encoding``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

import duet
from duet.serve.errors import ApiError
from duet.serve.protocols.b64 import decode_b64
from duet.serve.runtimes import Outputs
from duet.serve.service import ModelService

HEADER_LENGTH = "inference-header-content-length"
IMAGE_INPUT = "image"
PIXELS_INPUT = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")

INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "example": {
                        "inputs": [
                            {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64 of a JPEG>"]}
                        ],
                        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
                    },
                }
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "JSON header + binary tensor data (Inference-Header-Content-Length)",
                }
            },
        },
    }
}


def _bad(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, message, code)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(JSON header, binary tail) of an inference request."""
    if header_length is None:
        head, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise _bad(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise _bad(f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes")
        head, tail = body[:n], body[n:]
    try:
        request = json.loads(head)
    except (ValueError, RecursionError):
        raise _bad("the inference request is not valid JSON", "bad_json") from None
    if not isinstance(request, dict):
        raise _bad("the inference request must be a JSON object with an 'inputs' list", "bad_json")
    return request, tail


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _bad(
            f"input '{tensor.get('name')}': 'shape' must be a list of non-negative integers, got {shape!r}", "bad_shape"
        )
    return shape


def _binary_slices(inputs: list[dict[str, Any]], tail: bytes) -> list[bytes | None]:
    """The raw bytes of each input that declares ``binary_data_size``, in order."""
    out: list[bytes | None] = []
    offset = 0
    for t in inputs:
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"input '{t.get('name')}': 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is None:
            out.append(None)
            continue
        if not _is_int(size) or size < 0 or offset + size > len(tail):
            raise _bad(
                f"input '{t.get('name')}': binary_data_size {size!r} does not fit the "
                f"{len(tail) - offset} binary bytes left in the body"
            )
        out.append(tail[offset : offset + size])
        offset += size
    if offset != len(tail):
        raise _bad(f"{len(tail) - offset} bytes of binary data follow the inputs but no input claims them")
    return out


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """4-byte little-endian length + bytes, repeated (the BYTES binary format)."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _bad("BYTES binary data ends inside a length prefix", "bad_binary")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise _bad("a BYTES element is longer than the binary data left", "bad_binary")
        items.append(raw[offset : offset + n])
        offset += n
    return items


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            flat.append(x)
        else:
            stack.pop()
    return flat


def _images_from_input(t: dict[str, Any], raw: bytes | None, service: ModelService) -> list[bytes]:
    shape = _shape(t)
    if t.get("datatype") != "BYTES":
        raise _bad(
            f"input '{IMAGE_INPUT}' must have datatype BYTES (encoded image files), got {t.get('datatype')!r}",
            "bad_datatype",
        )
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise _bad(f"input '{IMAGE_INPUT}' must have shape [N] or [N, 1], got {shape}", "bad_shape")
    n = shape[0]
    service.check_count(n)
    if raw is not None:
        images = deserialize_bytes(raw)
    else:
        if "data" not in t:
            raise _bad(f"input '{IMAGE_INPUT}' has neither 'data' nor parameters.binary_data_size")
        images = [_b64_element(x, i) for i, x in enumerate(_flatten(t["data"]))]
    if len(images) != n:
        raise _bad(f"input '{IMAGE_INPUT}' has shape {shape} but holds {len(images)} elements", "bad_shape")
    return images


def _b64_element(x: Any, i: int) -> bytes:
    if isinstance(x, dict) and set(x) == {"b64"}:
        x = x["b64"]
    if not isinstance(x, str):
        raise _bad(
            f"element {i} of input '{IMAGE_INPUT}' must be base64 text of an image file (or use binary data)",
            "bad_data",
        )
    try:
        return decode_b64(x)
    except ValueError:
        raise _bad(f"element {i} of input '{IMAGE_INPUT}' is not valid base64", "bad_data") from None


def _pixels_from_input(t: dict[str, Any], raw: bytes | None, service: ModelService) -> np.ndarray:
    shape = _shape(t)
    s = service.spec.image_size
    if t.get("datatype") != "UINT8":
        raise _bad(f"input '{PIXELS_INPUT}' must have datatype UINT8, got {t.get('datatype')!r}", "bad_datatype")
    if len(shape) != 4 or shape[1:] != [3, s, s]:
        raise _bad(f"input '{PIXELS_INPUT}' must have shape [N, 3, {s}, {s}], got {shape}", "bad_shape")
    service.check_count(shape[0])
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count:
            raise _bad(f"input '{PIXELS_INPUT}' of shape {shape} needs {count} bytes, got {len(raw)}", "bad_binary")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    if "data" not in t:
        raise _bad(f"input '{PIXELS_INPUT}' has neither 'data' nor parameters.binary_data_size")
    flat = _flatten(t["data"])
    if len(flat) != count:
        raise _bad(f"input '{PIXELS_INPUT}' of shape {shape} needs {count} values, got {len(flat)}", "bad_shape")
    if not all(_is_int(v) and 0 <= v <= 255 for v in flat):
        raise _bad(f"input '{PIXELS_INPUT}' values must be integers 0..255", "bad_data")
    return np.asarray(flat, dtype=np.uint8).reshape(shape)


def _requested_outputs(request: dict[str, Any]) -> list[tuple[str, bool, int]]:
    """(name, binary, classification k) for each output to return."""
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("'parameters' must be an object")
    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise _bad("parameters.binary_data_output must be true or false")
    asked = request.get("outputs")
    if asked is None:
        return [(name, default_binary, 0) for name in OUTPUT_NAMES]
    if not isinstance(asked, list) or not asked:
        raise _bad("'outputs' must be a non-empty list of {\"name\": ...} objects")
    selected = []
    for o in asked:
        if not isinstance(o, dict) or o.get("name") not in OUTPUT_NAMES:
            name = o.get("name") if isinstance(o, dict) else o
            raise _bad(f"unknown output {name!r}; this model has outputs {list(OUTPUT_NAMES)}", "unknown_output")
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise _bad(f"output '{o['name']}': 'parameters' must be an object")
        binary = p.get("binary_data", default_binary)
        k = p.get("classification", 0)
        if not isinstance(binary, bool):
            raise _bad(f"output '{o['name']}': binary_data must be true or false")
        if not _is_int(k) or k < 0:
            raise _bad(f"output '{o['name']}': classification must be a non-negative integer")
        selected.append((o["name"], binary, k))
    return selected


def _classification(values: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[j]:f}:{j}:{labels[j]}" for j in idx] for row, idx in zip(values, order)], dtype=object)


def infer_response(service: ModelService, request: dict[str, Any], out: Outputs) -> Response:
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary, k in _requested_outputs(request):
        values = out.logits if name == "logits" else out.probabilities
        if k:
            strings = _classification(values, k, service.labels)
            entry: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": list(strings.shape)}
            if binary:
                raw = serialize_bytes([s.encode("utf-8") for s in strings.ravel()])
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = [str(s) for s in strings.ravel()]
        else:
            entry = {"name": name, "datatype": "FP32", "shape": list(values.shape)}
            if binary:
                raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = values.ravel().tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": service.name, "model_version": service.version_of(out), "outputs": outputs}
    if isinstance(request.get("id"), str):
        body["id"] = request["id"]
    if not chunks:
        return JSONResponse(body, headers=service.version_header(out))
    header = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header)), **service.version_header(out)},
    )


def model_metadata(service: ModelService) -> dict[str, Any]:
    s = service.spec.image_size
    return {
        "name": service.name,
        "versions": [service.version],
        "platform": service.runtime.platform,
        "inputs": [
            {
                "name": IMAGE_INPUT,
                "datatype": "BYTES",
                "shape": [-1],
                "parameters": {"description": "encoded image files; send this or 'pixels'"},
            },
            {
                "name": PIXELS_INPUT,
                "datatype": "UINT8",
                "shape": [-1, 3, s, s],
                "parameters": {"description": "RGB centre crops, NCHW; send this or 'image'"},
            },
        ],
        "outputs": [{"name": o["name"], "datatype": o["datatype"], "shape": o["shape"]} for o in service.outputs],
        "parameters": {"labels": service.labels},
    }


def router(service: ModelService) -> APIRouter:
    r = APIRouter(tags=["kserve-v2"])
    add_server_routes(r, service)

    @r.get("/v2/models/{name}", summary="Model metadata")
    @r.get("/v2/models/{name}/versions/{version}", summary="Model metadata (one version)")
    async def metadata(name: str, version: str | None = None) -> Any:
        service.check_model(name, version)
        return model_metadata(service)

    @r.post("/v2/models/{name}/infer", summary="Inference", openapi_extra=INFER_BODY)
    @r.post("/v2/models/{name}/versions/{version}/infer", summary="Inference (one version)", openapi_extra=INFER_BODY)
    async def infer(name: str, request: Request, version: str | None = None) -> Any:
        service.check_model(name, version)
        req, inputs, raws = await read_infer_request(request)
        if len(inputs) != 1:
            raise _bad(f"send exactly one input ('{IMAGE_INPUT}' or '{PIXELS_INPUT}'), got {len(inputs)}")
        t, raw = inputs[0], raws[0]
        stats = None
        if t.get("name") == IMAGE_INPUT:
            pixels, stats = await service.decode(_images_from_input(t, raw, service))
        elif t.get("name") == PIXELS_INPUT:
            pixels = service.check_pixels(_pixels_from_input(t, raw, service))
        else:
            raise _bad(
                f"unknown input {t.get('name')!r}; this model takes '{IMAGE_INPUT}' (BYTES, encoded images) "
                f"or '{PIXELS_INPUT}' (UINT8 [N, 3, S, S])",
                "unknown_input",
            )
        _requested_outputs(req)  # refuse a bad outputs list before spending inference on it
        out = await service.infer(pixels, "/v2/models/{name}/infer", stats)
        return infer_response(service, req, out)

    return r


async def read_infer_request(request: Request) -> tuple[dict[str, Any], list[dict[str, Any]], list[bytes | None]]:
    """(the JSON request, its inputs, each input's binary data or None) of an infer call."""
    body = await request.body()
    req, tail = split_body(body, request.headers.get(HEADER_LENGTH))
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise _bad("'inputs' must be a non-empty list of tensor objects")
    return req, inputs, _binary_slices(inputs, tail)


def add_server_routes(r: APIRouter, service: ModelService) -> None:
    """Server metadata, health and model readiness (every modality)."""

    @r.get("/v2", summary="Server metadata")
    async def server_metadata() -> Any:
        return {"name": "duet", "version": duet.__version__, "extensions": ["binary_tensor_data", "classification"]}

    @r.get("/v2/health/live", summary="Server liveness (always open)", tags=["health"])
    async def live() -> Any:
        return {"live": True}

    @r.get(
        "/v2/health/ready",
        summary="Server readiness (always open): 503 until loaded and while draining",
        tags=["health"],
    )
    async def ready() -> Any:
        return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)

    @r.get("/v2/models/{name}/ready", summary="Model readiness")
    @r.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
    async def model_ready(name: str, version: str | None = None) -> Any:
        service.check_model(name, version)
        return JSONResponse({"name": service.name, "ready": service.ready}, status_code=200 if service.ready else 503)


def add_model_routes(
    r: APIRouter,
    service: ModelService,
    describe: Callable[[], dict[str, Any]],
    summary: str,
    parse: Callable[[list[dict[str, Any]], list[bytes | None]], Any],
    predict: Callable[[Any, str], Awaitable[Outputs]],
) -> None:
    """Metadata and infer of a tabular or text model: ``describe`` the model, ``parse`` an
    infer request's tensors into what ``predict`` takes (the image routes decode pixels instead)."""

    @r.get("/v2/models/{name}", summary="Model metadata")
    @r.get("/v2/models/{name}/versions/{version}", summary="Model metadata (one version)")
    async def metadata(name: str, version: str | None = None) -> Any:
        service.check_model(name, version)
        return describe()

    @r.post("/v2/models/{name}/infer", summary=summary)
    @r.post("/v2/models/{name}/versions/{version}/infer", summary="Inference (one version)")
    async def infer(name: str, request: Request, version: str | None = None) -> Any:
        service.check_model(name, version)
        req, inputs, raws = await read_infer_request(request)
        parsed = parse(inputs, raws)
        _requested_outputs(req)  # refuse a bad outputs list before spending inference on it
        out = await predict(parsed, "/v2/models/{name}/infer")
        return infer_response(service, req, out)
