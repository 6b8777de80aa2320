"""ModelService: what every protocol calls. One model, one batcher, one decode pool.

Routes parse their own wire format, then call :meth:`ModelService.decode`
(encoded images) or :meth:`ModelService.check_pixels` (uint8 tensors) and
:meth:`ModelService.infer`. Every refusal is an :class:`ApiError` (4xx), except
overload and shutdown (503, retry elsewhere or later).

Decoding: the headers of all of a request's images are read first, and a
request whose images would decode to more than ``--max-request-pixels`` in all
is refused (413) before any is decoded. The images are then decoded in a
:class:`duet.serve.fairpool.FairPool`, which takes the requests' images in turn,
so a small request never waits behind a large one's remaining images; each
image is shrunk to the model's size right after it is decoded.

Hot swap (``duet serve --registry``): a background task polls the registry's
champion pointer; on a switch it reads and verifies the new export and loads
its runtime in a worker thread (off the request path), then, on the event loop,
replaces the batcher's runtime reference in one assignment. A batch already
dispatched finishes on the old model; every later batch runs on the new one.
Each answer carries the version that computed it (``Outputs.version``). A load
that fails leaves the old model serving (``duet_model_load_failures_total``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from duet.artifacts.model_package import ModelPackage, read_package, signature
from duet.data.imageio import DecodeError, decoded_size
from duet.errors import ModelError
from duet.serve.batcher import Draining, DynamicBatcher, Overloaded
from duet.serve.drift_watch import DriftWatch, profile_dir
from duet.serve.errors import ApiError
from duet.serve.fairpool import FairPool
from duet.serve.images import prepare
from duet.serve.metrics import ServeMetrics
from duet.serve.runtimes import Outputs, Runtime, load_runtime
from duet.serve.settings import ServeConfig

log = logging.getLogger("duet.serve")

VERSION_HEADER = "X-Duet-Model-Version"  # on every predict response: the version that answered


class _Tagged:
    """A runtime whose outputs say which model version computed them."""

    def __init__(self, runtime: Runtime, version: str) -> None:
        self.runtime = runtime
        self.version = version

    def __call__(self, pixels: np.ndarray) -> Outputs:
        out = self.runtime(pixels)
        out.version = self.version
        return out


class Monitor(Protocol):
    """A model's drift monitoring as the service drives it (image, table or text)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def unregister(self, registry: CollectorRegistry) -> None: ...


class ModelService:
    """The service of an image model; the tabular and text services subclass it
    (:mod:`duet.serve.row_service`) and replace the hooks about images: ``_adopt``,
    ``_blank``, ``_warm_up``, ``_monitor``, ``_check_swappable``, ``_load_runtime``."""

    def __init__(
        self, package: ModelPackage, runtime: Runtime, config: ServeConfig, metrics: ServeMetrics, watcher: Any = None
    ) -> None:
        self.package = package
        self.runtime = runtime
        self.config = config
        self.limits = config.limits
        self.metrics = metrics
        self.labels = package.labels
        self.name = config.model_name or package.name
        self.version = config.model_version
        self._adopt(package)
        self.batcher = DynamicBatcher(
            _Tagged(runtime, self.version),
            max_batch_size=config.max_batch_size,
            max_delay_s=config.max_delay_ms / 1000,
            max_queue_images=config.limits.max_queue_images,
            observe=metrics.observe_batch,
        )
        self._decode_pool: FairPool | None = None
        self.ready = False
        self.monitor: Monitor | None = self._monitor(package)
        self.watcher = watcher  # duet.artifacts.registry.ChampionWatcher when following a registry
        self._follow_task: asyncio.Task[None] | None = None
        self.set_model_info()

    def set_model_info(self) -> None:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(
            self.name,
            self.version,
            self.package.architecture,
            self.runtime.name,
            self.runtime.device,
            self.package.onnx_sha256,
        ).set(1)

    @property
    def drift(self) -> DriftWatch | None:
        """The image drift watch (None with --no-drift, without a profile, and for a table or text)."""
        return self.monitor if isinstance(self.monitor, DriftWatch) else None

    # ------------------------------------------------------------ per-modality hooks

    def _adopt(self, package: ModelPackage) -> None:
        """Take what the request checks read from ``package`` (at start and on each swap)."""
        self.spec = package.spec
        self.inputs, self.outputs = signature(self.spec, package.num_classes)

    def _blank(self, package: ModelPackage) -> Any:
        """One input the runtime of ``package`` takes, for its first (slow, allocating) call."""
        s = package.spec.image_size
        return np.zeros((1, 3, s, s), np.uint8)

    async def _warm_up(self) -> None:
        """One call before "ready": the first run of a session allocates and is slow."""
        self._decode_pool = FairPool(self.config.decode_workers, thread_name_prefix="duet-decode")
        await self._decode_pool.run(self.runtime, self._blank(self.package))

    def _monitor(self, package: ModelPackage) -> Monitor | None:
        """Drift monitoring of ``package`` (None with --no-drift or without a reference profile)."""
        profile = profile_dir(package) if self.config.drift else None
        if profile is None:
            return None
        return DriftWatch(
            profile, self.metrics.registry, window=self.config.drift_window, interval=self.config.drift_interval
        )

    def _check_swappable(self, package: ModelPackage) -> None:
        """ModelError when ``package`` cannot replace the served model without a restart."""
        if package.labels != self.labels:
            raise ModelError(
                f"its labels {package.labels} differ from the served model's {self.labels}; "
                "restart the server to serve a model with other labels"
            )
        if package.spec.image_size != self.spec.image_size:
            raise ModelError(
                f"its image size {package.spec.image_size} differs from the served model's "
                f"{self.spec.image_size}; restart the server to serve it"
            )

    def _load_runtime(self, package: ModelPackage) -> Runtime:
        c = self.config
        return load_runtime(
            package, c.runtime, device=c.device, threads=c.threads, spinning=c.ort_spinning, variant=c.model_variant
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._warm_up()
        await self.batcher.start()
        if self.monitor is not None:
            await self.monitor.start()
        self.ready = True
        self.metrics.model_loaded.set(1)
        if self.watcher is not None:
            self._follow_task = asyncio.get_running_loop().create_task(self._follow(), name="duet-follow")

    async def close(self) -> None:
        """Drain: refuse new work, finish queued work."""
        self.ready = False
        self.metrics.model_loaded.set(0)
        if self._follow_task is not None:
            self._follow_task.cancel()
            try:
                await self._follow_task
            except asyncio.CancelledError:
                pass
        await self.batcher.close()
        if self.monitor is not None:
            await self.monitor.close()
        if self._decode_pool is not None:
            self._decode_pool.shutdown()

    # ------------------------------------------------------------ hot swap

    async def _follow(self) -> None:
        """Poll the champion pointer; load and swap to each new champion."""
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                new = await asyncio.to_thread(self.watcher.poll)
            except Exception as e:  # an unreadable pointer: keep serving, try again next time
                log.error(
                    "cannot read the registry's champion (%s: %s); still serving %s", type(e).__name__, e, self.version
                )
                continue
            if new is None or new.version == self.version:
                continue
            log.info("champion is now %s: loading %s", new.version, new.export_dir or new.run)
            try:
                package, runtime = await asyncio.to_thread(self._load, new.export_dir or new.run)
            except Exception as e:
                self.metrics.load_failures.inc()
                log.error(
                    "cannot load champion %s (%s: %s); still serving %s", new.version, type(e).__name__, e, self.version
                )
                continue
            await self.swap(new.version, package, runtime)

    def _load(self, folder: Any) -> tuple[ModelPackage, Runtime]:
        """Read, verify (sha256) and load a model folder, and run it once (in a worker thread)."""
        package = read_package(folder, verify=True)
        self._check_swappable(package)
        runtime = self._load_runtime(package)
        runtime(self._blank(package))  # the first call allocates: not on a request
        return package, runtime

    async def swap(self, version: str, package: ModelPackage, runtime: Runtime) -> None:
        """Serve ``runtime`` from the next batch on (runs on the event loop: one assignment, no lock)."""
        old = self.version
        self.package, self.runtime, self.version = package, runtime, version
        self.batcher.runtime = _Tagged(runtime, version)  # batches already running keep the old one
        self._adopt(package)
        self.set_model_info()
        old_monitor, self.monitor = self.monitor, None
        if old_monitor is not None:
            await old_monitor.close()
            old_monitor.unregister(self.metrics.registry)
        try:
            monitor = self._monitor(package)
            if monitor is not None:
                await monitor.start()
            self.monitor = monitor
        except Exception as e:  # drift monitoring is optional; serving goes on
            log.error("drift monitoring is off for %s (%s: %s)", version, type(e).__name__, e)
        log.info("now serving %s (was %s; %s on %s)", version, old, runtime.name, runtime.device)

    # ------------------------------------------------------------ checks

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.name:
            raise ApiError(404, f"unknown model '{name}'; this server serves '{self.name}'", "model_not_found")
        if version is not None and version != self.version:
            raise ApiError(
                404, f"model '{name}' has no version '{version}'; available: {self.version}", "model_not_found"
            )

    def check_count(self, n: int) -> None:
        if n == 0:
            raise ApiError(400, "the request holds no image", "no_images")
        if n > self.limits.max_images:
            raise ApiError(
                413,
                f"{n} images in one request; the limit is {self.limits.max_images} (--max-images)",
                "too_many_images",
            )

    def check_request_pixels(self, images: list[bytes]) -> None:
        """Refuse (413) a request whose images would decode to more pixels in all than
        ``--max-request-pixels``, from their headers, before decoding any."""
        total = 0
        for data in images:
            size = decoded_size(data, min_size=self.spec.load_size)
            if size is not None:  # an unreadable header is decode's to report
                total += size[0] * size[1]
        if total > self.limits.max_request_pixels:
            raise ApiError(
                413,
                f"the {len(images)} images of this request would decode to {total:,} pixels in all; "
                f"the limit is {self.limits.max_request_pixels:,} per request (--max-request-pixels): "
                "send fewer or smaller images per request",
                "too_many_request_pixels",
            )

    def check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """A uint8 ``(N, 3, S, S)`` tensor as the model takes it."""
        s = self.spec.image_size
        if pixels.dtype != np.uint8:
            raise ApiError(400, f"pixels must be UINT8, got {pixels.dtype}", "bad_datatype")
        if pixels.ndim != 4 or pixels.shape[1:] != (3, s, s):
            raise ApiError(
                400, f"pixels must have shape [N, 3, {s}, {s}] (NCHW, RGB), got {list(pixels.shape)}", "bad_shape"
            )
        self.check_count(len(pixels))
        return np.ascontiguousarray(pixels)

    # ------------------------------------------------------------ work

    async def decode(self, images: list[bytes], names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Encoded images -> uint8 ``(N, 3, S, S)`` (the evaluation path, in the decode
        pool), and their image statistics ``(N, 6)`` when drift is monitored."""
        self.check_count(len(images))
        self.check_request_pixels(images)
        assert self._decode_pool is not None, "ModelService.start() was not awaited"
        stats = self.drift is not None
        spec, max_pixels = self.spec, self.limits.max_pixels

        def job(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
            return prepare(data, spec, max_pixels, with_stats=stats)

        with self.batcher.incoming(len(images)):  # the batcher may wait for these
            results = await self._decode_pool.map(job, images)
        decoded: list[tuple[np.ndarray, np.ndarray | None]] = []
        for i, r in enumerate(results):
            if isinstance(r, DecodeError):
                which = f"image {i}" + (f" ('{names[i]}')" if names and names[i] else "")
                if r.reason.startswith("too many pixels"):
                    raise ApiError(413, f"{which}: {r.reason} (--max-pixels)", "too_many_pixels")
                raise ApiError(400, f"{which} cannot be decoded: {r.reason}", "bad_image")
            if isinstance(r, BaseException):
                raise r
            decoded.append(r)
        pixels = np.stack([r[0] for r in decoded])
        if not stats:
            return pixels, None
        image_stats = [r[1] for r in decoded if r[1] is not None]
        assert len(image_stats) == len(decoded), "prepare(with_stats=True) returned no statistics"
        return pixels, np.stack(image_stats)

    async def infer(self, pixels: np.ndarray, route: str, image_stats: np.ndarray | None = None) -> Outputs:
        out = await self.run_batched(pixels, route)
        if self.drift is not None:
            self.drift.observe(out.probabilities, image_stats, out.features)
        return out

    async def run_batched(self, pixels: np.ndarray, route: str) -> Outputs:
        """The batcher's rows for ``pixels`` (503 when overloaded or draining), counted in the metrics.
        ``pixels`` is any array the runtime takes whose first axis is the rows (a tabular model's records)."""
        self.metrics.request_images.labels(route).inc(len(pixels))
        self.metrics.queue_images.set(self.batcher.queued_images + len(pixels))
        try:
            out = await self.batcher.infer(pixels)
        except Overloaded:
            raise ApiError(
                503, "the server is overloaded (queue full); retry shortly", "overloaded", {"Retry-After": "1"}
            ) from None
        except Draining:
            raise ApiError(
                503, "the server is shutting down; retry on another replica", "draining", {"Retry-After": "1"}
            ) from None
        finally:
            self.metrics.queue_images.set(self.batcher.queued_images)
        self.metrics.observe_predictions(out.probabilities)
        return out

    def outlier_model(self) -> Any:
        """The OutlierModel scoring this model's requests, or None when scores cannot be computed."""
        drift = self.drift
        if drift is None or drift.outliers is None or not getattr(self.runtime, "has_features", False):
            return None
        return drift.outliers

    def outlier_rows(self, out: Outputs, image_stats: np.ndarray | None) -> list[dict[str, Any] | None]:
        """Per image: ``{"score", "p_value", "flagged"}`` (None when no score can be computed, e.g. the
        rows came from a model swapped in meanwhile that has no features output)."""
        model, drift = self.outlier_model(), self.drift
        scores = None if model is None or drift is None else drift.outlier_scores(out.features, image_stats)
        if scores is None:
            return [None] * len(out)
        p, flags = model.p_values(scores), model.flags(scores)
        return [{"score": float(s), "p_value": float(q), "flagged": bool(f)} for s, q, f in zip(scores, p, flags)]

    def version_of(self, out: Outputs) -> str:
        """The version that computed ``out`` (the served one, unless a swap happened meanwhile)."""
        return out.version or self.version

    def version_header(self, out: Outputs) -> dict[str, str]:
        return {VERSION_HEADER: self.version_of(out)}

    def top_k(self, probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
        k = min(k, len(self.labels))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [{"label": self.labels[i], "index": int(i), "probability": float(probabilities[i])} for i in order]
