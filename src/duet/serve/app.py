"""The FastAPI app and the uvicorn server around one ModelService.

``serve(config)`` is the stage function behind ``duet serve``:

1. read the model folder and check the sha256 of every artifact (refuse a
   tampered one) -- before a port is opened;
2. load the runtime (ONNX Runtime on CPU, or PyTorch on CUDA);
3. build the app: protocols (simple, KServe V2, TF Serving), /metrics, OpenAPI
   docs at /docs (Swagger UI served from the installed ``swagger-ui-bundle``
   package, no CDN); the web page at / (``duet.serve.page``: try the model,
   read its card from GET /v1/card, watch drift; no assets from the internet);
   middleware, outermost first: metrics -> shutdown guard -> API key -> body
   limit -> content encoding (gzip/deflate bodies);
4. run uvicorn with read deadlines (``duet.serve.deadlines``: request head and
   body progress). SIGTERM/SIGINT: stop accepting connections, let in-flight
   requests finish (up to ``drain_seconds``; those still running then get 503
   with Retry-After), then the batcher drains its queue.

Every error a client can cause is a 4xx JSON ``{"error", "code"}``; a bug is a
500 with the same shape (and a traceback in the log), never a dropped connection.
A client that hangs up before its answer is counted with code 499 (nginx's
"client closed request") and logged in one line.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

import duet
from duet.artifacts.model_package import ModelPackage, read_package
from duet.errors import ConfigError
from duet.serve.auth import ApiKeyMiddleware
from duet.serve.deadlines import TIMED_OUT, ShutdownGuard, guarded_h11
from duet.serve.encoding import ContentEncodingMiddleware
from duet.serve.errors import ApiError, error_response
from duet.serve.limits import BodyLimitMiddleware
from duet.serve.metrics import MetricsMiddleware, ServeMetrics
from duet.serve.page import router as page_router
from duet.serve.protocols import kserve_v2, simple, tabular, text, tfserving
from duet.serve.runtimes import Runtime, load_runtime
from duet.serve.service import ModelService
from duet.serve.settings import ServeConfig
from duet.serve.tabular_service import TabularService, is_tabular, load_tabular_runtime
from duet.serve.text_service import TextService, is_text, load_text_runtime

log = logging.getLogger("duet.serve")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}


def create_app(config: ServeConfig, package: ModelPackage, runtime: Runtime, watcher: Any = None) -> FastAPI:
    metrics = ServeMetrics(package.labels)
    table = is_tabular(package)  # a model of table rows (duet.serve.tabular_service), else of images
    kind = TextService if is_text(package) else TabularService if table else ModelService  # texts: text_service
    service = kind(package, runtime, config, metrics, watcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        log.info("serving model '%s' v%s (%s on %s)", service.name, service.version, runtime.name, runtime.device)
        if watcher is not None:
            log.info("following the champion of registry '%s' (every %gs)", config.registry, config.poll_interval)
        try:
            yield
        finally:
            log.info("draining: finishing queued requests")
            await service.close()

    app = FastAPI(
        title=f"duet: {service.name}",
        version=duet.__version__,
        description=_description(package, "text" if is_text(package) else "tabular" if table else "image"),
        lifespan=lifespan,
        docs_url=None,  # served below from local assets (the default page loads Swagger UI from a CDN)
        redoc_url=None,
    )
    app.state.service = service
    app.state.metrics = metrics
    if isinstance(service, TabularService):
        for r in tabular.routers(service):
            app.include_router(r)
    elif isinstance(service, TextService):
        for r in text.routers(service):
            app.include_router(r)
    else:  # the web page is for images: it uploads a picture
        app.include_router(simple.router(service))
        app.include_router(kserve_v2.router(service))
        app.include_router(tfserving.router(service))
        app.include_router(page_router(service))

    @app.get("/metrics", summary="Prometheus metrics", tags=["monitoring"])
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    _install_docs(app)
    _install_error_handlers(app)
    # add_middleware prepends: the last added is the outermost.
    app.add_middleware(ContentEncodingMiddleware, max_body_bytes=config.limits.max_body_bytes)  # gzip/deflate bodies
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.limits.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(ShutdownGuard)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def _description(package: ModelPackage, modality: str) -> str:
    labels = f"{', '.join(package.labels[:20])}{', ...' if package.num_classes > 20 else ''}"
    if modality == "text":
        return (
            f"Text classifier **{package.architecture}** ({package.num_classes} labels: {labels}), "
            "the tokenizer inside the graph. Protocols: `POST /v1/predict` (JSON texts), the Open Inference "
            "Protocol (KServe V2, `/v2/...`, one BYTES input) and TensorFlow Serving REST "
            '(`/v1/models/{name}:predict`, instances of texts). Errors are JSON `{"error", "code"}`.'
        )
    if modality == "tabular":
        return (
            f"Classifier of table rows **{package.architecture}** ({package.num_classes} labels: {labels}). "
            "Protocols: `POST /v1/predict` (JSON rows keyed by column), the Open Inference Protocol "
            "(KServe V2, `/v2/...`, one input per feature column) and TensorFlow Serving REST "
            '(`/v1/models/{name}:predict`, instances of row objects). Errors are JSON `{"error", "code"}`.'
        )
    return (
        f"Image classifier **{package.architecture}** ({package.num_classes} labels: {labels}). "
        "Protocols: `POST /v1/predict` (multipart or raw image), the Open Inference Protocol "
        "(KServe V2, `/v2/...`, binary tensor data and classification extensions) and TensorFlow "
        'Serving REST (`/v1/models/{name}:predict`). Errors are JSON `{"error", "code"}`.'
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the routes"
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, message, code, dict(exc.headers or {}))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody reads this answer; its status is what /metrics counts.
        if request.scope.get(TIMED_OUT):
            return Response(status_code=408)
        client = request.client
        log.info(
            "client %s hung up during %s %s (counted as 499)",
            f"{client.host}:{client.port}" if client else "?",
            request.method,
            request.url.path,
        )
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(400, f"invalid {where}: {first.get('msg', 'bad value')}", "invalid_parameter")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (logged on the server)", "internal")


def _install_docs(app: FastAPI) -> None:
    """GET /docs: Swagger UI from the ``swagger-ui-bundle`` package's files, under
    /docs/assets (works offline). Without that package, /docs says so in a 404."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None

    if swagger_ui_path is None:

        @app.get("/docs", include_in_schema=False)
        async def docs_off() -> Response:
            return error_response(
                404,
                "the docs page is off: it needs the swagger-ui-bundle package "
                "(pip install swagger-ui-bundle); the OpenAPI schema is at /openapi.json",
                "docs_unavailable",
            )

        return

    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
        )


def follow_registry(config: ServeConfig) -> tuple[ServeConfig, Any]:
    """With ``config.registry``: the config for its current champion (folder and version),
    and the ChampionWatcher that will notice the next switch. Else ``(config, None)``."""
    if config.registry is None:
        return config, None
    from duet.artifacts.registry import ChampionWatcher, Registry

    registry = Registry(config.registry)
    if not registry.root.is_dir():
        raise ConfigError(
            f"registry '{registry.root}' does not exist; create it with "
            f"`duet registry promote RUN --registry {registry.root}`"
        )
    watcher = ChampionWatcher(registry)
    champion = watcher.poll()
    if champion is None:
        raise ConfigError(
            f"registry '{registry.root}' has no champion yet; promote one with "
            f"`duet registry promote RUN --registry {registry.root}`"
        )
    folder = champion.export_dir or champion.run
    return replace(config, model_dir=folder, model_version=champion.version), watcher


def load(config: ServeConfig) -> tuple[ModelPackage, Runtime]:
    """Read and verify the model folder, then load the runtime (raises DuetError)."""
    package = read_package(config.model_dir, verify=True)
    if is_tabular(package):
        return package, load_tabular_runtime(package, config)
    if is_text(package):
        return package, load_text_runtime(package, config)
    runtime = load_runtime(
        package,
        config.runtime,
        device=config.device,
        threads=config.threads,
        spinning=config.ort_spinning,
        variant=config.model_variant,
    )
    return package, runtime


def serve(config: ServeConfig, *, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Run the server until SIGTERM/SIGINT (see the module doc)."""
    import uvicorn

    config.check()
    if not log.handlers:  # our lines in uvicorn's format, on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    config, watcher = follow_registry(config)
    package, runtime = load(config)
    app = create_app(config, package, runtime, watcher)
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="info",
        access_log=config.access_log,
        # uvicorn annotates int but hands it to asyncio.wait_for, which takes float seconds (--drain-seconds 0.5)
        timeout_graceful_shutdown=config.drain_seconds,  # type: ignore[arg-type]
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        http=guarded_h11(
            config.limits.header_timeout,
            config.limits.body_timeout,
            on_timeout=lambda phase: app.state.metrics.read_timeouts.labels(phase).inc(),
        ),
    )
    service: ModelService = app.state.service

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Readiness goes to 503 at once; uvicorn then stops accepting and drains.
            service.ready = False
            super().handle_exit(sig, frame)

    server = _Server(uv)
    sock = _listen(config.host, config.port)
    if on_ready is not None:
        variant = getattr(runtime, "variant", "fp32")  # the file served: model.int8.onnx, model.int8.tflite...
        what = f"{package.name}: {runtime.name} on {runtime.device}{f', {variant}' if variant != 'fp32' else ''}"
        on_ready(what, sock.getsockname()[1])
    server.run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is a one-line error (and --port 0 works)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto
    # is IPPROTO_TCP, and without it Nagle + delayed ACKs add ~40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host, "
            "or stop the process that uses it"
        ) from None
    sock.set_inheritable(True)
    return sock


def summary(config: ServeConfig, package: ModelPackage, runtime: Runtime) -> dict[str, Any]:
    return {
        "model": config.model_name or package.name,
        "version": config.model_version,
        "runtime": runtime.name,
        "device": runtime.device,
        "url": f"http://{config.host}:{config.port}",
    }
