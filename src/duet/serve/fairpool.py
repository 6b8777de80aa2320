"""Decode threads shared fairly between requests.

A plain ``ThreadPoolExecutor`` is first in, first out: a request of 64 large
images queues 64 jobs, and a 1-image request sent a moment later waits behind
all of them (an outside test measured 19.1 s instead of ~10 ms). :class:`FairPool`
hands the executor at most one job per thread; when a thread frees, it takes the
next image of the next request in turn (round robin), a newly arrived request
first. So a request waits at most for the images already being decoded, never
for another request's queue, and no more than ``workers`` images are being
decoded at any moment, which bounds the decode memory at ``workers`` full-size
images (each job shrinks its image to the model's size before it returns).

Everything but the jobs themselves runs on the event loop thread: no locks.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Job(Generic[T, R]):
    fn: Callable[[T], R]
    arg: T
    future: asyncio.Future[R]


@dataclass(eq=False)  # compared by identity: two requests with equal jobs are still two
class _Request:
    jobs: deque[_Job[Any, Any]] = field(default_factory=deque)


class FairPool:
    def __init__(self, workers: int, thread_name_prefix: str = "duet-decode") -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=thread_name_prefix)
        self._running = 0
        self._rotation: deque[_Request] = deque()

    async def map(self, fn: Callable[[T], R], args: Sequence[T]) -> list[R | BaseException]:
        """``fn(arg)`` for every arg in a worker thread, results in order (an exception
        is returned in place of its result, as ``gather(return_exceptions=True)``)."""
        loop = asyncio.get_running_loop()
        request = _Request(deque(_Job(fn, arg, loop.create_future()) for arg in args))
        futures = [job.future for job in request.jobs]
        if request.jobs:
            self._rotation.appendleft(request)  # a new request's first image goes next
            self._dispatch(loop)
        try:
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            request.jobs.clear()  # cancelled: what has not started never will
            if request in self._rotation:
                self._rotation.remove(request)

    def run(self, fn: Callable[..., R], *args: Any) -> asyncio.Future[R]:
        """One call outside the rotation (e.g. the warm-up run of the model)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._running < self.workers and self._rotation:
            request = self._rotation.popleft()
            job = request.jobs.popleft()
            if request.jobs:
                self._rotation.append(request)  # round robin: back of the line
            if job.future.done():  # its request was cancelled
                continue
            self._running += 1
            done = self._executor.submit(job.fn, job.arg)
            done.add_done_callback(functools.partial(self._back_to_loop, loop, job))

    def _back_to_loop(self, loop: asyncio.AbstractEventLoop, job: _Job[Any, Any], done: Future[Any]) -> None:
        """Where the job finished (a worker thread): hand it to the event loop thread."""
        loop.call_soon_threadsafe(self._finished, loop, job, done)

    def _finished(self, loop: asyncio.AbstractEventLoop, job: _Job[Any, Any], done: Future[Any]) -> None:
        self._running -= 1
        if not job.future.done():
            error = done.exception()
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(done.result())
        self._dispatch(loop)
