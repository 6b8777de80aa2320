"""``POST /v1/predict``: the shortest way to a prediction, plus plain health routes.

```
curl -F file=@cat.jpg http://127.0.0.1:8000/v1/predict            # one or more files (multipart)
curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/v1/predict
```

Answer: ``{"model", "version", "predictions": [{"file", "label", "probability",
"top": [{"label", "index", "probability"}, ...]}]}``, one prediction per image
in request order. A request with any bad image is refused as a whole (4xx),
naming the image; more than ``--max-images`` file parts is 413 ``too_many_images``.

``?outliers=true`` adds ``"outlier": {"score", "p_value", "flagged"}`` to each
prediction: how foreign the image is to the model's reference data
(:mod:`duet.monitor.outliers`; flagged when the score exceeds the threshold
about 1 % of clean images exceed). It needs drift monitoring on and a model
exported with its features output; otherwise the request is refused with 409
``outliers_unavailable`` before any work is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from duet.serve.errors import ApiError
from duet.serve.outputs import Outputs
from duet.serve.service import ModelService
from duet.serve.settings import Limits

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                },
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def _form(request: Request, max_images: int, max_part_bytes: int) -> FormData:
    """The multipart form, parsed with one part more than ``max_images`` allowed,
    so that a request one file over the limit reaches ``check_count`` and gets the
    documented 413 ``too_many_images``. Starlette's own part limits answer 400;
    the few requests that pass even that allowance get the 413 here."""
    try:
        return await request.form(max_files=max_images + 1, max_fields=max_images + 1, max_part_size=max_part_bytes)
    except StarletteHTTPException as e:
        if e.status_code == 400 and str(e.detail).startswith("Too many"):
            raise ApiError(
                413,
                f"more than {max_images} parts in one multipart request; the limit is {max_images} "
                "images (--max-images)",
                "too_many_images",
            ) from None
        raise ApiError(400, f"the multipart body cannot be parsed: {e.detail}", "bad_multipart") from None


async def _images(request: Request, limits: Limits) -> tuple[list[bytes], list[str]]:
    """The request's encoded images and their file names ("" for a raw body): every file part
    of a multipart form, or the whole body of an image/* or octet-stream request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    names: list[str]
    if content_type == "multipart/form-data":
        form = await _form(request, limits.max_images, limits.max_body_bytes)
        try:
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            names = [u.filename or "" for u in uploads]
            images = [await u.read() for u in uploads]
        finally:
            await form.close()
        if not images:
            raise ApiError(
                400, "the multipart body holds no file part; send the image as e.g. -F file=@cat.jpg", "no_images"
            )
    elif content_type in ("", "application/octet-stream") or content_type.startswith("image/"):
        images, names = [await request.body()], [""]
        if not images[0]:
            raise ApiError(400, "the request body is empty; send an image file", "no_images")
    else:
        raise ApiError(
            415,
            f"Content-Type '{content_type}' is not accepted here: send multipart/form-data, "
            "image/* or application/octet-stream (JSON goes to /v2/models/{m}/infer or "
            "/v1/models/{m}:predict)",
            "unsupported_media_type",
        )
    return images, names


def router(service: ModelService) -> APIRouter:
    r = APIRouter(tags=["simple"])
    limits = service.limits

    @r.post(
        "/v1/predict",
        summary="Classify uploaded images (multipart files or a raw image body)",
        openapi_extra=PREDICT_BODY,
    )
    async def predict(
        request: Request,
        top_k: int = Query(service.config.top_k, ge=1, le=10_000, description="Labels per image, best first."),
        outliers: bool = Query(False, description="Add each image's outlier score, p-value and flag."),
    ) -> Any:
        if outliers and service.outlier_model() is None:
            raise ApiError(
                409,
                "outlier scores are unavailable: they need drift monitoring (not --no-drift), a "
                "reference profile with an outlier model and a graph with a features output "
                "(re-export the run with this version of duet)",
                "outliers_unavailable",
            )
        images, names = await _images(request, limits)
        pixels, stats = await service.decode(images, names)
        out = await service.infer(pixels, "/v1/predict", stats)
        predictions = []
        for name, probs in zip(names, out.probabilities):
            top = service.top_k(probs, top_k)
            predictions.append(
                {"file": name or None, "label": top[0]["label"], "probability": top[0]["probability"], "top": top}
            )
        if outliers:
            for prediction, row in zip(predictions, service.outlier_rows(out, stats)):
                prediction["outlier"] = row
        version = service.version_of(out)
        return JSONResponse(
            {"model": service.name, "version": version, "model_version": version, "predictions": predictions},
            headers=service.version_header(out),
        )

    add_monitor_route(
        r, "Input drift: the latest verdict on recent requests vs the reference profile", lambda: service.drift
    )

    add_health_routes(r, service)
    return r


def row_predictions(service: ModelService, out: Outputs, top_k: int, key: str) -> JSONResponse:
    """The /v1/predict answer of a tabular or text model: per row (``key``: "row", "document")
    its index, best label and probability, ``top`` labels and every label's probability."""
    predictions = []
    for i, probs in enumerate(out.probabilities):
        top = service.top_k(probs, top_k)
        predictions.append(
            {
                key: i,
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


def add_monitor_route(r: APIRouter, summary: str, watch: Callable[[], Any]) -> None:
    """``GET /v1/monitor``: the latest verdict of ``watch()`` (404 ``drift_off`` while it is None)."""

    @r.get("/v1/monitor", summary=summary, tags=["monitoring"])
    async def monitor() -> Any:
        current = watch()
        if current is None:
            raise ApiError(
                404,
                "drift monitoring is off: the model folder has no reference profile "
                "(train with a validation split, then re-export) or --no-drift was given",
                "drift_off",
            )
        return JSONResponse(await current.latest())


def add_health_routes(r: APIRouter, service: ModelService) -> None:
    """GET /healthz and /readyz (every modality)."""

    @r.get("/healthz", summary="Liveness (always open)", tags=["health"])
    async def healthz() -> Any:
        return {"status": "live"}

    @r.get(
        "/readyz", summary="Readiness (always open): 503 until the model is loaded and while draining", tags=["health"]
    )
    async def readyz() -> Any:
        if not service.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready"}
