"""Backend "cache": decode every image once into a memory-mapped uint8 store.

Fine-tuning repeats the same JPEG decode epoch after epoch; this backend does it
once. The store is the spec's uint8 load square of each sample (exactly what
the "torch" backend's workers produce, so both backends give identical pixels),
laid out N x L x L x 3 (each image as decoded, HWC) so a batch is one gather
and arrives channels_last, the layout the CPU crop kernel and the
channels_last model both want; it stays uint8 until the device.

On disk, under ``cache_dir/<fingerprint>/``:

- ``images.u8``  raw uint8, N x L x L x 3 (np.memmap)
- ``meta.json``  fingerprint, shape, per-image CRC32, and the samples that
  failed to decode with their reasons

The fingerprint covers the format version, the load size and interpolation,
and every sample's content hash (sha256 from the scan, else path + size +
mtime), so any change to the files or to the spec gives a new cache. A store is
built in a temporary folder and renamed into place; whenever an existing store
is opened its size and every image's CRC32 are checked, so a truncated or
corrupted cache is rebuilt, never trusted.

Feeding: when the whole store fits in ``device_share`` of the accelerator's
free memory it is uploaded once and batches are gathered on the device;
otherwise a background thread gathers batches from the memmap into pinned
buffers and copies them to the device asynchronously. On CPU the gather is a
numpy fancy-index of the memmap (the OS page cache holds it in RAM).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duet.data.cache_dir import default_cache_dir
from duet.data.contract import Batch, LoaderOptions, PlanSampler, Sample
from duet.data.imageio import DecodeError, decode
from duet.data.preprocess import PreprocessSpec, to_load_square
from duet.system.atomic import write_json_atomic
from duet.system.device import cpu_count
from duet.system.progress import make_progress
from duet.system.threads import torch_worker_pool

FORMAT_VERSION = 2  # 2: HWC images (1 was CHW)


def cache_bytes(n: int, spec: PreprocessSpec) -> int:
    return n * 3 * spec.load_size * spec.load_size


def fingerprint(samples: Sequence[Sample], spec: PreprocessSpec) -> str:
    h = hashlib.sha256(f"duet-cache-v{FORMAT_VERSION}:{spec.load_size}:{spec.interpolation}\n".encode())
    for s in samples:
        if s.sha256:
            h.update(s.sha256.encode())
        else:
            st = s.path.stat()
            h.update(f"{s.path}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


@dataclass
class CacheStore:
    """An opened, verified store."""

    root: Path
    images: np.ndarray  # memmap uint8 (N, L, L, 3), read-only
    failed: dict[int, str]  # sample index -> reason it could not be decoded
    built: bool  # True when this call decoded the files
    build_seconds: float


def _decode_one(sample: Sample, spec: PreprocessSpec, max_pixels: int) -> tuple[np.ndarray | None, str]:
    try:
        rgb = decode(sample.path, max_pixels=max_pixels, min_size=spec.load_size)
    except DecodeError as e:
        return None, e.reason
    return to_load_square(rgb, spec), ""


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).data.cast("B"))


def build(
    samples: Sequence[Sample], spec: PreprocessSpec, root: Path, *, workers: int, max_pixels: int, progress: bool
) -> None:
    """Decode ``samples`` in parallel into a new store at ``root`` (atomically)."""
    L = spec.load_size
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        image_bytes = L * L * 3
        blank = np.zeros((L, L, 3), dtype=np.uint8)
        crcs = [0] * len(samples)
        failed: dict[str, str] = {}

        with open(tmp / "images.u8", "wb") as data:
            data.truncate(cache_bytes(max(len(samples), 1), spec))

            def store(i: int) -> str:
                # pwrite from the worker: no page faults on a fresh mapping, GIL released.
                img, reason = _decode_one(samples[i], spec, max_pixels)
                row = blank if img is None else img
                crcs[i] = _crc(row)
                os.pwrite(data.fileno(), row.data.cast("B"), i * image_bytes)
                return reason

            with torch_worker_pool(workers, "duet-cache-build") as pool, make_progress(progress) as bar:
                task = bar.add_task("decode cache", total=len(samples), info="")
                # Pillow's decode and torch's resize release the GIL, so threads
                # decode in parallel; each writes its own rows of the store.
                for i, reason in enumerate(pool.map(store, range(len(samples)))):
                    if reason:
                        failed[str(i)] = reason
                    bar.advance(task)
        # No fsync: a crash before writeback leaves a store whose CRCs fail on
        # the next open, and that store is rebuilt (never trusted).
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": root.name,
            "shape": [len(samples), L, L, 3],
            "bytes": cache_bytes(max(len(samples), 1), spec),
            "crc32": crcs,
            "failed": failed,
            "paths": [str(s.path) for s in samples],
        }
        write_json_atomic(tmp / "meta.json", meta)
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished the same store first; theirs is as good as ours.
            if not (root / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verify(root: Path, n: int, spec: PreprocessSpec, *, check_images: bool = True) -> CacheStore | None:
    """Open ``root`` if it is complete and intact; None if it must be rebuilt.

    ``check_images=False`` skips the CRC pass over every image: only for a store
    this process has just written (and checksummed while writing), where a read
    back would only read the page cache it just filled."""
    meta_path, data_path = root / "meta.json", root / "images.u8"
    try:
        meta = json.loads(meta_path.read_text())
        L = spec.load_size
        if meta.get("format") != FORMAT_VERSION or meta.get("shape") != [n, L, L, 3]:
            return None
        if data_path.stat().st_size != cache_bytes(max(n, 1), spec) or len(meta["crc32"]) != n:
            return None
        images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=(max(n, 1), L, L, 3))
        crcs = meta["crc32"]
        if check_images and any(_crc(images[i]) != crcs[i] for i in range(n)):
            return None
        return CacheStore(root, images, {int(k): v for k, v in meta["failed"].items()}, False, 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_or_build(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    cache_dir: Path,
    *,
    workers: int,
    max_pixels: int,
    progress: bool = True,
) -> CacheStore:
    """The verified store for these samples and spec, building it if needed."""
    root = Path(cache_dir) / fingerprint(samples, spec)
    store = _verify(root, len(samples), spec) if root.exists() else None
    if store is not None:
        return store
    if root.exists():
        # Incomplete or corrupt (a crash mid-write, a disk error, an edit): never trusted.
        shutil.rmtree(root)
    t0 = time.perf_counter()
    build(samples, spec, root, workers=workers, max_pixels=max_pixels, progress=progress)
    store = _verify(root, len(samples), spec, check_images=False)
    if store is None:
        raise OSError(f"the decode cache at {root} failed verification right after it was built (disk full?)")
    store.built, store.build_seconds = True, time.perf_counter() - t0
    return store


class CacheLoader:
    """Loader over one split, fed from a CacheStore. Same batches as the "torch"
    backend for the same seed: the same plan (``PlanSampler``) and the same pixels.
    Of ``options``, ``cache_dir``, ``progress`` and ``device_share`` are this
    backend's own; ``workers`` decode threads build the store (twice as many,
    at least 2, since decoding threads release the GIL)."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, options: LoaderOptions) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.device = options.device
        self.plan = PlanSampler(len(self.samples), options)
        self.store = open_or_build(
            self.samples,
            spec,
            Path(options.cache_dir) if options.cache_dir else default_cache_dir(os.environ),
            workers=max(2, min(cpu_count(), options.workers * 2)),
            max_pixels=options.max_pixels,
            progress=options.progress,
        )
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.int64)
        failed = torch.zeros(len(self.samples), dtype=torch.bool)
        for i in self.store.failed:
            failed[i] = True
        self.labels[failed] = -1
        self.on_device = self._upload(options.device_share)

    def _upload(self, share: float) -> torch.Tensor | None:
        """Hold the whole store on the accelerator when it fits in ``share`` of free memory."""
        if self.device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(self.device)
        if self.store.images.nbytes > share * free:
            return None
        out = torch.empty(self.store.images.shape, dtype=torch.uint8, device=self.device)
        step = 4096
        for i in range(0, len(self.samples), step):
            out[i : i + step].copy_(torch.from_numpy(np.asarray(self.store.images[i : i + step])), non_blocking=False)
        return out

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.plan.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.plan)

    def _index_batches(self) -> list[torch.Tensor]:
        return [torch.tensor(b, dtype=torch.int64) for b in self.plan]

    def _errors(self, idx: torch.Tensor) -> list[str]:
        return [self.store.failed.get(int(i), "") for i in idx]

    def __iter__(self) -> Iterator[Batch]:
        batches = self._index_batches()
        if self.on_device is not None:
            for idx in batches:
                dev_idx = idx.to(self.device)
                yield Batch(
                    self.on_device.index_select(0, dev_idx).permute(0, 3, 1, 2),
                    self.labels[idx].to(self.device),
                    idx,
                    self._errors(idx),
                )
            return
        yield from self._streamed(batches)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """One copy, memmap -> batch (pinned when it goes on to an accelerator)."""
        out = torch.empty(
            (len(idx), *self.store.images.shape[1:]), dtype=torch.uint8, pin_memory=self.device.type == "cuda"
        )
        np.take(
            self.store.images, idx.numpy(), axis=0, out=out.numpy(), mode="clip"
        )  # "raise" would buffer: a second copy
        return out

    def _streamed(self, batches: list[torch.Tensor]) -> Iterator[Batch]:
        """Gather on a background thread, a few batches ahead of the consumer."""
        q: queue.Queue[tuple[torch.Tensor, torch.Tensor] | BaseException | None] = queue.Queue(maxsize=4)
        stop = threading.Event()

        def produce() -> None:
            try:
                for idx in batches:
                    if stop.is_set():
                        return
                    q.put((idx, self._gather(idx)))
                q.put(None)
            except BaseException as e:  # handed to the consumer, re-raised there
                q.put(e)

        thread = threading.Thread(target=produce, name="duet-cache-prefetch", daemon=True)
        thread.start()
        non_blocking = self.device.type == "cuda"
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                idx, images = item
                yield Batch(
                    images.to(self.device, non_blocking=non_blocking).permute(0, 3, 1, 2),
                    self.labels[idx].to(self.device, non_blocking=non_blocking),
                    idx,
                    self._errors(idx),
                )
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
