"""The dynamic batcher on its own: grouping, splitting, bounds, failures and drain."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from duet.serve.batcher import Draining, DynamicBatcher, Overloaded
from duet.serve.runtimes import Outputs


class SlowRuntime:
    """Returns each image's id (its first pixel value) as its logits; records batch sizes."""

    def __init__(self, seconds: float = 0.03, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, pixels: np.ndarray) -> Outputs:
        self.sizes.append(len(pixels))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        ids = pixels[:, 0, 0, 0].astype(np.float32)
        if self.fail_on is not None and self.fail_on in ids:
            raise RuntimeError("runtime failure")
        return Outputs(ids[:, None].repeat(2, 1), np.full((len(ids), 2), 0.5, np.float32))


def images(*ids: int) -> np.ndarray:
    x = np.zeros((len(ids), 3, 2, 2), np.uint8)
    x[:, 0, 0, 0] = ids
    return x


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    runtime = SlowRuntime()

    async def main() -> list[Outputs]:
        b = DynamicBatcher(runtime, max_batch_size=8, max_delay_s=0.005)
        await b.start()
        results = await asyncio.gather(*(b.infer(images(i)) for i in range(1, 41)))
        await b.close()
        return results

    results = run(main())
    assert [int(r.logits[0, 0]) for r in results] == list(range(1, 41))
    assert sum(runtime.sizes) == 40 and max(runtime.sizes) == 8 and len(runtime.sizes) <= 10
    assert runtime.threads == {"duet-infer_0"}  # one inference thread


def test_request_larger_than_the_batch_is_split_and_reassembled_in_order() -> None:
    runtime = SlowRuntime(0.0)

    async def main() -> Outputs:
        b = DynamicBatcher(runtime, max_batch_size=4, max_delay_s=0.0)
        await b.start()
        out = await b.infer(images(*range(10, 21)))
        await b.close()
        return out

    out = run(main())
    assert out.logits[:, 0].tolist() == list(range(10, 21))
    assert max(runtime.sizes) <= 4


def test_full_queue_is_refused_not_buffered() -> None:
    async def main() -> None:
        b = DynamicBatcher(SlowRuntime(0.05), max_batch_size=2, max_delay_s=0.0, max_queue_images=4)
        await b.start()
        first = asyncio.ensure_future(b.infer(images(1, 2, 3, 4)))
        await asyncio.sleep(0)  # queued, not yet taken
        with pytest.raises(Overloaded):
            await b.infer(images(5))
        await first
        await b.close()

    run(main())


def test_a_runtime_failure_fails_its_batch_only() -> None:
    runtime = SlowRuntime(0.0, fail_on=13)

    async def main() -> None:
        b = DynamicBatcher(runtime, max_batch_size=1, max_delay_s=0.0)
        await b.start()
        bad, good = await asyncio.gather(b.infer(images(13)), b.infer(images(14)), return_exceptions=True)
        assert isinstance(bad, RuntimeError) and int(good.logits[0, 0]) == 14
        assert int((await b.infer(images(15))).logits[0, 0]) == 15
        await b.close()

    run(main())


def test_close_finishes_queued_work_then_refuses_new_work() -> None:
    async def main() -> None:
        b = DynamicBatcher(SlowRuntime(0.02), max_batch_size=2, max_delay_s=0.5)
        await b.start()
        pending = [asyncio.ensure_future(b.infer(images(i))) for i in range(1, 6)]
        await asyncio.sleep(0)
        await b.close()  # does not wait for the 0.5 s delay, but does run everything queued
        assert [int(p.result().logits[0, 0]) for p in pending] == [1, 2, 3, 4, 5]
        with pytest.raises(Draining):
            await b.infer(images(9))

    run(main())


def test_the_delay_is_paid_only_while_more_images_are_on_their_way() -> None:
    runtime = SlowRuntime(0.0)

    async def main() -> None:
        b = DynamicBatcher(runtime, max_batch_size=8, max_delay_s=0.5)
        await b.start()
        t = time.perf_counter()
        await b.infer(images(1))  # idle server, nothing announced: no waiting
        assert time.perf_counter() - t < 0.25

        async def late() -> Outputs:
            with b.incoming(1):  # "being decoded"
                await asyncio.sleep(0.05)
                x = images(3)
            return await b.infer(x)

        second = asyncio.ensure_future(late())
        await asyncio.sleep(0.01)
        first = await b.infer(images(2))  # waits for the announced image, then both run together
        assert int(first.logits[0, 0]) == 2 and int((await second).logits[0, 0]) == 3
        assert runtime.sizes == [1, 2]
        await b.close()

    run(main())
