"""ModelService: what every protocol calls. One model, one batcher, one decode pool.

Routes parse their own wire format, then call :meth:`ModelService.decode`
(encoded images) or :meth:`ModelService.check_pixels` (uint8 tensors) and
:meth:`ModelService.infer`. Every refusal is an :class:`ApiError` (4xx), except
overload and shutdown (503, retry elsewhere or later).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from duet.data.imageio import DecodeError
from duet.export.package import ModelPackage, signature
from duet.serve.batcher import Draining, DynamicBatcher, Overloaded
from duet.serve.config import ServeConfig
from duet.serve.drift import DriftWatch, profile_dir
from duet.serve.errors import ApiError
from duet.serve.images import prepare
from duet.serve.metrics import ServeMetrics
from duet.serve.runtimes import Outputs, Runtime


class ModelService:
    def __init__(self, package: ModelPackage, runtime: Runtime, config: ServeConfig, metrics: ServeMetrics) -> None:
        self.package = package
        self.runtime = runtime
        self.config = config
        self.limits = config.limits
        self.metrics = metrics
        self.spec = package.spec
        self.labels = package.labels
        self.name = config.model_name or package.name
        self.version = config.model_version
        self.inputs, self.outputs = signature(self.spec, package.num_classes)
        self.batcher = DynamicBatcher(
            runtime, max_batch_size=config.max_batch_size, max_delay_s=config.max_delay_ms / 1000,
            max_queue_images=config.limits.max_queue_images, observe=metrics.observe_batch,
        )
        self._decode_pool: ThreadPoolExecutor | None = None
        self.ready = False
        profile = profile_dir(package) if config.drift else None
        self.drift = (DriftWatch(profile, metrics.registry, window=config.drift_window,
                                 interval=config.drift_interval) if profile is not None else None)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._decode_pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="duet-decode")
        # One call before "ready": the first run of a session allocates and is slow.
        blank = np.zeros((1, 3, self.spec.image_size, self.spec.image_size), np.uint8)
        await asyncio.get_running_loop().run_in_executor(self._decode_pool, self.runtime, blank)
        await self.batcher.start()
        if self.drift is not None:
            await self.drift.start()
        self.ready = True
        self.metrics.model_loaded.set(1)

    async def close(self) -> None:
        """Drain: refuse new work, finish queued work."""
        self.ready = False
        self.metrics.model_loaded.set(0)
        await self.batcher.close()
        if self.drift is not None:
            await self.drift.close()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=True)

    # ------------------------------------------------------------ checks

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.name:
            raise ApiError(404, f"unknown model '{name}'; this server serves '{self.name}'", "model_not_found")
        if version is not None and version != self.version:
            raise ApiError(404, f"model '{name}' has no version '{version}'; available: {self.version}",
                           "model_not_found")

    def check_count(self, n: int) -> None:
        if n == 0:
            raise ApiError(400, "the request holds no image", "no_images")
        if n > self.limits.max_images:
            raise ApiError(413, f"{n} images in one request; the limit is {self.limits.max_images} (--max-images)",
                           "too_many_images")

    def check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """A uint8 ``(N, 3, S, S)`` tensor as the model takes it."""
        s = self.spec.image_size
        if pixels.dtype != np.uint8:
            raise ApiError(400, f"pixels must be UINT8, got {pixels.dtype}", "bad_datatype")
        if pixels.ndim != 4 or pixels.shape[1:] != (3, s, s):
            raise ApiError(400, f"pixels must have shape [N, 3, {s}, {s}] (NCHW, RGB), got {list(pixels.shape)}",
                           "bad_shape")
        self.check_count(len(pixels))
        return np.ascontiguousarray(pixels)

    # ------------------------------------------------------------ work

    async def decode(self, images: list[bytes], names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Encoded images -> uint8 ``(N, 3, S, S)`` (the evaluation path, in the decode
        pool), and their image statistics ``(N, 6)`` when drift is monitored."""
        self.check_count(len(images))
        assert self._decode_pool is not None, "ModelService.start() was not awaited"
        loop = asyncio.get_running_loop()
        stats = self.drift is not None

        def job(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
            return prepare(data, self.spec, self.limits.max_pixels, with_stats=stats)

        with self.batcher.incoming(len(images)):  # the batcher may wait for these
            results = await asyncio.gather(*(loop.run_in_executor(self._decode_pool, job, data) for data in images),
                                           return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, DecodeError):
                which = f"image {i}" + (f" ('{names[i]}')" if names and names[i] else "")
                if r.reason.startswith("too many pixels"):
                    raise ApiError(413, f"{which}: {r.reason} (--max-pixels)", "too_many_pixels")
                raise ApiError(400, f"{which} cannot be decoded: {r.reason}", "bad_image")
            if isinstance(r, BaseException):
                raise r
        pixels = np.stack([r[0] for r in results])  # type: ignore[index]
        return pixels, (np.stack([r[1] for r in results]) if stats else None)  # type: ignore[index]

    async def infer(self, pixels: np.ndarray, route: str, image_stats: np.ndarray | None = None) -> Outputs:
        self.metrics.request_images.labels(route).inc(len(pixels))
        self.metrics.queue_images.set(self.batcher.queued_images + len(pixels))
        try:
            out = await self.batcher.infer(pixels)
        except Overloaded:
            raise ApiError(503, "the server is overloaded (queue full); retry shortly", "overloaded",
                           {"Retry-After": "1"}) from None
        except Draining:
            raise ApiError(503, "the server is shutting down; retry on another replica", "draining",
                           {"Retry-After": "1"}) from None
        finally:
            self.metrics.queue_images.set(self.batcher.queued_images)
        self.metrics.observe_predictions(out.probabilities)
        if self.drift is not None:
            self.drift.observe(out.probabilities, image_stats)
        return out

    def top_k(self, probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
        k = min(k, len(self.labels))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [{"label": self.labels[i], "index": int(i), "probability": float(probabilities[i])} for i in order]
