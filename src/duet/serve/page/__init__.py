"""The web page ``duet serve`` shows at ``/``, and the model card route it reads.

The page (``index.html``, ``page.js``, ``page.css`` beside this file) lets a person
try the model: pick or drop an image, see the top labels and the latency, read
the model card and watch the live drift verdict. It loads nothing from the
internet (a Content-Security-Policy of ``'self'`` enforces it), and it talks to
the server only through the public routes: ``POST /v1/predict``,
``GET /v1/monitor`` and ``GET /v1/card`` (below).

The page's own files (:data:`PAGE_PATHS`) stay open when the server has an API
key, like the health routes: they hold no model data. Everything the page
fetches needs the key; the page asks for it and keeps it in a JS variable only.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.responses import FileResponse, JSONResponse, Response

from duet.artifacts.model_package import CARD_FILE, ModelPackage
from duet.serve.service import ModelService

HERE = Path(__file__).parent
# URL path -> (file beside this module, media type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page/page.css": ("page.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(ASSETS)
# Only this server's own files and routes; blob: for the preview of the picked image, data: for
# the empty favicon (so the browser asks for no /favicon.ico).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def read_card(package: ModelPackage) -> str | None:
    """MODEL_CARD.md of the served folder, or None when the folder has none or it
    no longer matches the sha256 model.json lists (never show a changed card)."""
    entry = package.manifest["files"].get(CARD_FILE)
    path = package.root / CARD_FILE
    if not isinstance(entry, dict) or not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return None
    return data.decode("utf-8", errors="replace")


def card_info(service: ModelService, package: ModelPackage, card: str | None) -> dict[str, Any]:
    """The ``GET /v1/card`` answer: what the page shows about the served model."""
    config = service.config
    return {
        "model": service.name,
        "version": service.version,
        "architecture": package.architecture,
        "labels": package.labels,
        "num_classes": package.num_classes,
        "image_size": package.spec.image_size,
        "runtime": service.runtime.name,
        "device": service.runtime.device,
        "top_k": config.top_k,
        "drift": {"on": service.drift is not None, "window": config.drift_window, "interval": config.drift_interval},
        "card": card,
    }


def router(service: ModelService) -> APIRouter:
    r = APIRouter()

    def asset_route(path: str, name: str, media_type: str) -> None:
        async def asset() -> Response:
            return FileResponse(HERE / name, media_type=media_type, headers=PAGE_HEADERS)

        r.add_api_route(path, asset, methods=["GET", "HEAD"], include_in_schema=False, name=f"page:{name}")

    for path, (name, media_type) in ASSETS.items():
        asset_route(path, name, media_type)

    @r.get(
        "/v1/card",
        summary="The served model: name, version, labels, input size, drift settings and its MODEL_CARD.md",
        tags=["model"],
    )
    async def card() -> Any:
        package = service.package  # read once: a registry swap may replace it meanwhile
        text = await asyncio.to_thread(read_card, package)
        return JSONResponse(card_info(service, package, text))

    return r
