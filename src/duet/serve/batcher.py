"""The dynamic batcher: concurrent requests share one runtime call.

Every route hands its images (already uint8 ``(k, 3, S, S)``) to
:meth:`DynamicBatcher.infer` and awaits its rows of the result. One
collector task takes requests in arrival order into a batch of at most
``max_batch_size`` images, waiting at most ``max_delay`` after the oldest
request arrived, and runs the batch on a single inference thread. While a
batch runs, new requests queue up, so under load batches fill by themselves
and the delay is only paid when the server is nearly idle.

The delay is adaptive: the collector waits for a fuller batch only while
other requests are still being decoded (announced with :meth:`incoming`), so a
lone request on an idle server goes straight to the runtime.

Bounds: a request larger than ``max_batch_size`` is split; more than
``max_queue_images`` waiting images raise :class:`Overloaded` (the route answers
503 with Retry-After); after :meth:`close` new work raises :class:`Draining`,
while everything already queued still runs (graceful drain).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from duet.serve.runtimes import Outputs

Observer = Callable[[int, float, list[float]], None]  # (batch images, inference seconds, queue waits)


class Overloaded(Exception):
    """More images are waiting than the queue allows."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        runtime: Callable[[np.ndarray], Outputs],
        *,
        max_batch_size: int = 32,
        max_delay_s: float = 0.002,
        max_queue_images: int = 1024,
        observe: Observer | None = None,
    ) -> None:
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_images = max_queue_images
        self.observe = observe
        self._pending: deque[_Item] = deque()
        self._pending_images = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._incoming = 0  # images being decoded that will be submitted soon

    @property
    def queued_images(self) -> int:
        return self._pending_images

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="duet-infer")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="duet-batcher")

    async def close(self) -> None:
        """Stop taking work, finish what is queued, stop the inference thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @contextmanager
    def incoming(self, n: int) -> Iterator[None]:
        """Announce ``n`` images that are being prepared (decoded) for :meth:`infer`:
        while any are announced, a partial batch waits for them (up to max_delay)."""
        self._incoming += n
        try:
            yield
        finally:
            self._incoming -= n
            if self._wakeup is not None:
                self._wakeup.set()

    async def infer(self, pixels: np.ndarray) -> Outputs:
        """Rows of the runtime's outputs for ``pixels`` (uint8 ``(k, 3, S, S)``)."""
        if self._closing:
            raise Draining()
        if self._task is None or self._wakeup is None:
            raise RuntimeError("DynamicBatcher.start() was not awaited")
        if self._task.done():  # the collector died: surface it instead of hanging
            self._task.result()
        n = len(pixels)
        if self._pending_images + n > self.max_queue_images:
            raise Overloaded()
        loop = asyncio.get_running_loop()
        items = [
            _Item(pixels[i : i + self.max_batch_size], loop.create_future()) for i in range(0, n, self.max_batch_size)
        ]
        for item in items:
            self._pending.append(item)
            self._pending_images += len(item.pixels)
        self._wakeup.set()
        parts = [await item.future for item in items]
        return Outputs.concat(parts)

    async def _collect(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for a fuller batch, while more images are on their way, until
            # the oldest request is max_delay old.
            deadline = self._pending[0].enqueued + self.max_delay_s
            while self._pending_images < self.max_batch_size and self._incoming > 0 and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    # Waiting on an Event loses nothing when the timeout cancels it.
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft()]
            size = len(batch[0].pixels)
            while self._pending and size + len(self._pending[0].pixels) <= self.max_batch_size:
                item = self._pending.popleft()
                batch.append(item)
                size += len(item.pixels)
            self._pending_images -= size
            await self._run(batch, size)

    async def _run(self, batch: list[_Item], size: int) -> None:
        start = time.perf_counter()
        waits = [start - item.enqueued for item in batch]
        pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([item.pixels for item in batch])
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.runtime, pixels)
        except Exception as e:  # a runtime failure fails this batch's requests, not the server
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        offset = 0
        for item in batch:
            k = len(item.pixels)
            if not item.future.done():  # a cancelled request has gone away
                item.future.set_result(outputs.rows(offset, offset + k))
            offset += k
        if self.observe is not None:
            self.observe(size, seconds, waits)
