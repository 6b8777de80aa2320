"""``duet bench serve``: latency and throughput of serving, measured, beside two references.

Three things are measured in one run, on the same machine, model and images:

1. **bare**: decode + ``session.run`` in this process, one image at a time, no
   HTTP: the floor for batch-1 latency;
2. **duet**: ``duet serve`` (dynamic batcher) in a subprocess, driven over HTTP
   on 127.0.0.1 by ``c`` concurrent keep-alive clients posting raw image bodies
   to ``/v1/predict``;
3. **naive**: a minimal FastAPI server (this module's ``naive_app``) with the
   same decode and one ONNX Runtime call per request, no batching: what a first
   serving attempt usually looks like.

The load generator runs on the same CPUs as the servers (2 cores on the
reference machine), so absolute numbers include its cost, equally for both
servers. Images: ``--images DIR``, else synthetic 500x375 JPEGs (a typical
photo size, so decoding costs what it costs in production).
"""

from __future__ import annotations

import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the annotation by name

from duet.data.imageio import IMAGE_EXTENSIONS
from duet.errors import ConfigError, DuetError
from duet.export.package import read_package

Log = Callable[[str], None]


class BenchError(DuetError):
    """A server under test failed to start or answered errors."""


def synthetic_jpegs(n: int = 16, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, 3)
        arr = (base + np.stack([xx * 200 // w, yy * 200 // h, (xx + yy) % 64], axis=2)
               + rng.integers(-25, 26, (h, w, 3))) % 256
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _load_images(images_dir: Path | None, limit: int = 64) -> tuple[list[bytes], str]:
    if images_dir is None:
        return synthetic_jpegs(), "16 synthetic 500x375 JPEGs"
    files = sorted(p for p in Path(images_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    if not files:
        raise ConfigError(f"no images under '{images_dir}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [p.read_bytes() for p in files], f"{len(files)} files from {images_dir}"


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))],
        "mean_ms": statistics.fmean(ms),
        "throughput": len(ms) / wall,
    }


def bare(model_dir: Path, images: list[bytes], requests: int) -> dict[str, float]:
    """Decode + session.run, batch 1, sequential, in this process."""
    import onnxruntime as ort

    from duet.serve.images import pixels_from_bytes

    package = read_package(model_dir)
    session = ort.InferenceSession(str(package.onnx_path), providers=["CPUExecutionProvider"])
    spec = package.spec
    for i in range(10):
        session.run(None, {"pixels": pixels_from_bytes(images[i % len(images)], spec, 10**8)[None]})
    latencies = []
    t0 = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        session.run(None, {"pixels": pixels_from_bytes(images[i % len(images)], spec, 10**8)[None]})
        latencies.append(time.perf_counter() - t)
    return _stats(latencies, time.perf_counter() - t0)


def load(url: str, images: list[bytes], concurrency: int, requests: int, warmup: int) -> dict[str, float]:
    """``concurrency`` keep-alive clients post ``requests`` images in total to ``url``."""
    import httpx

    latencies: list[float] = []
    spans: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(warmup + requests))

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = c.post(url, content=images[i % len(images)], headers={"Content-Type": "image/jpeg"})
                end = time.perf_counter()
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:100]}")
                    elif i >= warmup:  # the first `warmup` requests (same concurrency) are not measured
                        latencies.append(end - t)
                        spans.append((t, end))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"{len(errors)} requests failed during the benchmark, e.g. {errors[0]}")
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return _stats(latencies, wall)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise BenchError("server did not become ready in 120 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _batch_stats(port: int) -> tuple[float, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "duet_batch_size_images":
            for s in family.samples:
                if s.name.endswith("_sum"):
                    total = s.value
                elif s.name.endswith("_count"):
                    count = s.value
    return total, count


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "cpu": cpu, "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version()}


def run_bench(model: Path, *, images_dir: Path | None, levels: list[int], requests: int, max_batch_size: int,
              max_delay_ms: float, naive: bool, log: Log, repeat: int = 1) -> dict[str, Any]:
    """Measure (see the module doc). With ``repeat`` > 1 every measurement is
    taken that many times, alternating between the servers, and the repeat with
    the best throughput is kept: on a shared machine the best of several runs
    is the one least disturbed by other work (as ``timeit`` does)."""
    package = read_package(model)
    images, source = _load_images(images_dir)
    result: dict[str, Any] = {"model": package.name, "architecture": package.architecture,
                              "image_size": package.spec.image_size, "images": source, "machine": machine(),
                              "settings": {"max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms,
                                           "requests_per_level": requests, "repeat": repeat}, "rows": []}
    warmup = max(10, requests // 10)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    best: dict[tuple[str, int], dict[str, Any]] = {}

    def keep(name: str, c: int, row: dict[str, Any]) -> None:
        if (name, c) not in best or row["throughput"] > best[(name, c)]["throughput"]:
            best[(name, c)] = {"server": name, "concurrency": c, **row}

    try:
        port = _free_port()
        servers["duet serve (batcher)"] = (_start(["duet", "serve", str(package.root), "--max-batch-size",
                                                    str(max_batch_size), "--max-delay-ms", str(max_delay_ms)], port), port)
        if naive:
            port = _free_port()
            servers["naive (1 session.run per request)"] = (_start(["duet.serve.bench", "naive", str(package.root)], port), port)
        for r in range(repeat):
            log(f"round {r + 1}/{repeat}: bare decode + session.run, batch 1")
            keep("bare (decode + session.run)", 1, bare(model, images, requests))
            for c in levels:
                for name, (proc, port) in servers.items():
                    log(f"round {r + 1}/{repeat}: {name}, {c} concurrent clients")
                    s0, n0 = _batch_stats(port) if name.startswith("duet") else (0.0, 0.0)
                    row = load(f"http://127.0.0.1:{port}/v1/predict", images, c, requests, warmup)
                    if name.startswith("duet"):
                        s1, n1 = _batch_stats(port)
                        row["mean_batch"] = (s1 - s0) / max(n1 - n0, 1)
                    keep(name, c, row)
    finally:
        for proc, _ in servers.values():
            _stop(proc)
    order = ["bare (decode + session.run)", "duet serve (batcher)", "naive (1 session.run per request)"]
    result["rows"] = sorted(best.values(), key=lambda row: (order.index(row["server"]), row["concurrency"]))
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return result


def naive_app(model: Path):
    """The reference a batcher is measured against: FastAPI, same decode, one
    session.run per request in Starlette's thread pool, no batching."""
    import onnxruntime as ort
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from duet.serve.images import pixels_from_bytes

    package = read_package(model)
    session = ort.InferenceSession(str(package.onnx_path), providers=["CPUExecutionProvider"])
    spec, labels = package.spec, package.labels
    app = FastAPI()

    def predict_one(data: bytes) -> dict[str, Any]:
        probs = session.run(["probabilities"], {"pixels": pixels_from_bytes(data, spec, 10**8)[None]})[0][0]
        return {"label": labels[int(probs.argmax())], "probability": float(probs.max())}

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        return await run_in_threadpool(predict_one, await request.body())

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        return {"ready": True}

    return app


if __name__ == "__main__":  # python -m duet.serve.bench naive MODEL --port P
    import uvicorn

    from duet.runtime import tune_process

    tune_process()  # the same process tuning `duet serve` gets from the CLI, so both servers run alike

    if len(sys.argv) != 5 or sys.argv[1] != "naive" or sys.argv[3] != "--port":
        sys.exit("usage: python -m duet.serve.bench naive MODEL --port PORT")
    uvicorn.run(naive_app(Path(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[4]), log_level="warning")
