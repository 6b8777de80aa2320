"""Thread pools whose threads run torch kernels single-threaded.

duet parallelises some CPU work over items (images) with Python threads:
torch and Pillow release the GIL inside their kernels. If each of those threads
also used torch's intra-op (OpenMP) pool, the threads would fight over the same
cores; on 2 cores that made CPU augmentation about 30 % slower. So each worker
sets torch to one thread for itself.

``torch.set_num_threads`` is per thread under OpenMP, but it also stores the
process-wide default that new threads copy on their first torch call; the
caller's value is put back once every worker has started, so the main thread
(and the model it runs) keeps all its threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch


def _single_threaded() -> None:
    torch.get_num_threads()  # torch's lazy per-thread init first, or it would undo the next line later
    torch.set_num_threads(1)


def torch_worker_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool of ``workers`` started threads, each running torch single-threaded."""
    workers = max(1, workers)
    restore = torch.get_num_threads()
    started = threading.Barrier(workers + 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=_single_threaded)
    for _ in range(workers):  # each waits for the others, so `workers` distinct threads start now
        pool.submit(started.wait)
    started.wait()
    torch.set_num_threads(restore)
    return pool
