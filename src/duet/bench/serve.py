"""``duet bench serve``: latency and throughput of serving, measured, beside two references.

Four things are measured in one run, on the same machine, model and images:

1. **bare**: decode + ``session.run`` in this process, one image at a time, no
   HTTP: the floor for batch-1 latency;
2. **ceiling**: decode + ``session.run`` in this process at each batch size up
   to the batcher's maximum, no HTTP; the best batch size's throughput is the
   most any server can get out of this runtime on this machine, so ``duet
   serve`` at high concurrency is judged as a share of it;
3. **duet**: ``duet serve`` (dynamic batcher) in a subprocess, driven over HTTP
   on 127.0.0.1 by ``c`` concurrent keep-alive clients posting raw image bodies
   to ``/v1/predict``;
4. **naive**: a minimal FastAPI server (this module's ``naive_app``) with the
   same decode and one ONNX Runtime call per request, no batching: what a first
   serving attempt usually looks like.

With ``variants=("fp32", "int8")`` (``--variants fp32,int8``) a second duet
server runs ``--model-variant int8`` (``model.int8.onnx``) beside the first,
measured in the same rounds, and the ceiling is measured for both graphs; the
verdict states int8's throughput as a multiple of fp32's at the highest
concurrency.

The load generator runs on the same CPUs as the servers (2 cores on the
reference machine), so it is kept as cheap as a client can be: one asyncio
loop, one socket per client, the request bytes built once, responses parsed
only as far as the status line and Content-Length. Its cost is the same for
both servers. Images: ``--images DIR``, else synthetic 500x375 JPEGs (a typical
photo size, so decoding costs what it costs in production).
"""

from __future__ import annotations

import asyncio
import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the annotation by name

from duet.artifacts.model_package import ModelPackage, read_package
from duet.data.imageio import IMAGE_EXTENSIONS
from duet.errors import ConfigError, DuetError
from duet.system.device import cpu_count

Log = Callable[[str], None]
CEILING = "ceiling (decode + session.run, best batch)"
CEILING_INT8 = "ceiling int8 (decode + session.run, best batch)"
DUET = "duet serve (batcher)"
INT8 = "duet serve --model-variant int8"


class BenchError(DuetError):
    """A server under test failed to start or answered errors."""

    exit_code = 8


def synthetic_jpegs(n: int = 16, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, 3)
        arr = (
            base + np.stack([xx * 200 // w, yy * 200 // h, (xx + yy) % 64], axis=2) + rng.integers(-25, 26, (h, w, 3))
        ) % 256
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


def ceiling(
    model_dir: Path, images: list[bytes], max_batch_size: int, rounds: int = 3, variant: str = "fp32"
) -> dict[str, Any]:
    """Decode ``b`` images then one ``session.run`` on all ``b``, for ``b`` = 1, 2,
    4, ... up to ``max_batch_size``; the best batch size's throughput (best of
    ``rounds``) is returned: the runtime's ceiling on this machine, no HTTP.
    ``variant`` picks the graph (fp32: model.onnx, int8: model.int8.onnx)."""
    import onnxruntime as ort

    from duet.serve.images import pixels_from_bytes

    package = read_package(model_dir)
    session = ort.InferenceSession(str(package.variant_path(variant)), providers=["CPUExecutionProvider"])
    spec = package.spec
    sizes = sorted({min(2**k, max_batch_size) for k in range(max_batch_size.bit_length() + 1)})

    def one(b: int, offset: int) -> float:
        t = time.perf_counter()
        batch = np.stack([pixels_from_bytes(images[(offset + i) % len(images)], spec, 10**8) for i in range(b)])
        session.run(None, {"pixels": batch})
        return time.perf_counter() - t

    one(max(sizes), 0)  # warm-up: the first run allocates the largest buffers
    per_size: dict[int, float] = {}
    for b in sizes:
        per_size[b] = max(b / one(b, r * b) for r in range(rounds))
    best = max(per_size, key=per_size.__getitem__)
    seconds = best / per_size[best]
    return {
        "requests": best,
        "p50_ms": seconds * 1000,
        "p99_ms": seconds * 1000,
        "mean_ms": seconds * 1000,
        "throughput": per_size[best],
        "batch": best,
        "by_batch": {str(b): v for b, v in per_size.items()},
    }


async def _client(
    host: str,
    port: int,
    request: list[bytes],
    next_index: Callable[[], int | None],
    record: Callable[[int, float, float, int], None],
) -> None:
    """One keep-alive connection: send, read the whole response, repeat."""
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while (i := next_index()) is not None:
            t = time.perf_counter()
            writer.write(request[i % len(request)])
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            status = int(status_line.split()[1]) if status_line else 0
            record(i, t, time.perf_counter(), status)
    finally:
        writer.close()


def load(url: str, images: list[bytes], concurrency: int, requests: int, warmup: int) -> dict[str, float]:
    """``concurrency`` keep-alive clients post ``requests`` images in total to ``url``
    (after ``warmup`` requests at the same concurrency that are not measured)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = [
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in images
    ]
    latencies: list[float] = []
    spans: list[tuple[float, float]] = []
    errors: list[int] = []
    counter = iter(range(warmup + requests))

    def record(i: int, start: float, end: float, status: int) -> None:
        if status != 200:
            errors.append(status)
        elif i >= warmup:
            latencies.append(end - start)
            spans.append((start, end))

    async def run() -> None:
        await asyncio.gather(
            *(_client(host, port, request, lambda: next(counter, None), record) for _ in range(concurrency))
        )

    asyncio.run(asyncio.wait_for(run(), timeout=600))
    if errors:
        raise BenchError(f"{len(errors)} requests failed during the benchmark, e.g. HTTP {errors[0]}")
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return _stats(latencies, wall)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def _start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if _get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)[0] == 200:
                return proc
        except OSError:  # not listening yet
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
    from prometheus_client.parser import text_string_to_metric_families

    text = _get(f"http://127.0.0.1:{port}/metrics")[1]
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
    from duet.system.cpu_caps import cpu_capabilities, summary  # the CPU's name, and what int8/bf16 can run on

    caps = cpu_capabilities()
    return {
        "cpus": cpu_count(),
        "cpu": f"{caps['cpu']} ({summary(caps)})",
        "capabilities": caps,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
    }


NO_DRIFT = "duet serve --no-drift"
BARE = "bare (decode + session.run)"
NAIVE = "naive (1 session.run per request)"
ROW_ORDER = [BARE, CEILING, CEILING_INT8, DUET, INT8, NO_DRIFT, NAIVE]


def run_bench(
    model: Path,
    *,
    images_dir: Path | None,
    levels: list[int],
    requests: int,
    max_batch_size: int,
    max_delay_ms: float,
    naive: bool,
    log: Log,
    repeat: int = 1,
    drift_cost: bool = False,
    variants: tuple[str, ...] = ("fp32",),
) -> dict[str, Any]:
    """Measure (see the module doc). With ``repeat`` > 1 every measurement is
    taken that many times, alternating between the servers, and the repeat with
    the best throughput is kept: on a shared machine the best of several runs
    is the one least disturbed by other work (as ``timeit`` does). With
    ``drift_cost`` a second duet server without drift monitoring is measured
    beside the first, so the verdict can state what monitoring costs. With
    ``"int8"`` in ``variants`` a duet server on model.int8.onnx is measured too."""
    package = read_package(model)
    int8 = _int8_asked(package, variants)
    images, source = _load_images(images_dir)
    result: dict[str, Any] = {
        "model": package.name,
        "architecture": package.architecture,
        "image_size": package.spec.image_size,
        "images": source,
        "machine": machine(),
        "settings": {
            "max_batch_size": max_batch_size,
            "max_delay_ms": max_delay_ms,
            "requests_per_level": requests,
            "repeat": repeat,
            "variants": list(variants),
            "drift_profile": (package.root / "profile" / "profile.json").is_file(),
        },
        "rows": [],
    }
    warmup = max(10, requests // 10)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    best = _Best()
    try:
        batching = ["--max-batch-size", str(max_batch_size), "--max-delay-ms", str(max_delay_ms)]
        _start_servers(servers, package.root, batching, int8=int8, drift_cost=drift_cost, naive=naive)
        for r in range(repeat):
            log(f"round {r + 1}/{repeat}: bare decode + session.run, batch 1")
            best.keep(BARE, 1, bare(model, images, requests))
            log(f"round {r + 1}/{repeat}: ceiling: decode + session.run at batch 1..{max_batch_size}")
            best.keep(CEILING, 1, ceiling(model, images, max_batch_size))
            if int8:
                best.keep(CEILING_INT8, 1, ceiling(model, images, max_batch_size, variant="int8"))
            for c in levels:
                for name, (_proc, port) in servers.items():
                    log(f"round {r + 1}/{repeat}: {name}, {c} concurrent clients")
                    best.keep(name, c, _load_server(name, port, images, c, requests, warmup))
    finally:
        for proc, _ in servers.values():
            _stop(proc)
    result["rows"] = best.ordered()
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result["verdict"] = verdict(result["rows"])
    return result


def _int8_asked(package: ModelPackage, variants: tuple[str, ...]) -> bool:
    """Whether the int8 variant is measured too; refuses a list without fp32 or with other names."""
    if "fp32" not in variants or not set(variants) <= {"fp32", "int8"}:
        raise ConfigError(
            f"`--variants` must list fp32 (the baseline), optionally int8. Received: {','.join(variants)}"
        )
    if "int8" not in variants:
        return False
    package.variant_path("int8")  # a one-line error now, not a server that fails to start
    return True


def _start_servers(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]],
    root: Path,
    batching: list[str],
    *,
    int8: bool,
    drift_cost: bool,
    naive: bool,
) -> None:
    """Start each server under test, one free port each, into ``servers`` (name -> process,
    port) as it starts, so that the caller stops every one that started even when a later
    one fails."""
    commands = {DUET: ["duet", "serve", str(root), *batching]}
    if int8:
        commands[INT8] = ["duet", "serve", str(root), "--model-variant", "int8", *batching]
    if drift_cost:
        commands[NO_DRIFT] = ["duet", "serve", str(root), "--no-drift", *batching]
    if naive:
        commands[NAIVE] = ["duet.bench.serve", "naive", str(root)]
    for name, command in commands.items():
        port = _free_port()
        servers[name] = (_start(command, port), port)


def _load_server(name: str, port: int, images: list[bytes], clients: int, requests: int, warmup: int) -> dict[str, Any]:
    """One load level against one server; a duet server's row adds the mean batch it formed."""
    s0, n0 = _batch_stats(port) if name.startswith("duet") else (0.0, 0.0)
    row = load(f"http://127.0.0.1:{port}/v1/predict", images, clients, requests, warmup)
    if name.startswith("duet"):
        s1, n1 = _batch_stats(port)
        row["mean_batch"] = (s1 - s0) / max(n1 - n0, 1)
    return row


class _Best:
    """The best row (highest throughput) of each server and concurrency over the repeats."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], dict[str, Any]] = {}

    def keep(self, name: str, concurrency: int, row: dict[str, Any]) -> None:
        key = (name, concurrency)
        if key not in self._rows or row["throughput"] > self._rows[key]["throughput"]:
            self._rows[key] = {"server": name, "concurrency": concurrency, **row}

    def ordered(self) -> list[dict[str, Any]]:
        """The rows in ``ROW_ORDER``, then by concurrency."""
        return sorted(self._rows.values(), key=lambda row: (ROW_ORDER.index(row["server"]), row["concurrency"]))


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The serving target of issue #11, from the rows of one run: at the highest
    concurrency, duet's throughput as a share of the runtime's ceiling (goal >= 90 %)
    and its p99 beside the naive server's (goal: no worse)."""
    by = {(row["server"], row["concurrency"]): row for row in rows}
    top = max((c for name, c in by if name.startswith("duet")), default=None)
    if top is None or (CEILING, 1) not in by:
        return {}
    duet_row, ceil = by[(DUET, top)], by[(CEILING, 1)]
    out: dict[str, Any] = {
        "concurrency": top,
        "ceiling_batch": ceil["batch"],
        "share_of_ceiling": duet_row["throughput"] / ceil["throughput"],
    }
    out["share_met"] = out["share_of_ceiling"] >= 0.9
    naive = by.get((NAIVE, top))
    if naive is not None:
        out["p99_vs_naive"] = duet_row["p99_ms"] / naive["p99_ms"]
        out["p99_met"] = duet_row["p99_ms"] <= naive["p99_ms"]
    # Drift monitoring's cost: throughput with it vs without, at each level measured (goal <= 5 % at 8 clients).
    costs = {
        c: 1 - by[(DUET, c)]["throughput"] / by[(NO_DRIFT, c)]["throughput"]
        for name, c in by
        if name == NO_DRIFT and (DUET, c) in by
    }
    if costs:
        out["drift_cost"] = {str(c): cost for c, cost in sorted(costs.items())}
    if (INT8, top) in by:  # int8 vs fp32, both served by duet at the highest concurrency (goal >= 2x on AMX/VNNI)
        out["int8_vs_fp32"] = by[(INT8, top)]["throughput"] / duet_row["throughput"]
        if (CEILING_INT8, 1) in by:
            out["int8_vs_fp32_ceiling"] = by[(CEILING_INT8, 1)]["throughput"] / ceil["throughput"]
    return out


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


if __name__ == "__main__":  # python -m duet.bench.serve naive MODEL --port P
    import uvicorn

    from duet.system.process import tune_process

    tune_process()  # the same process tuning `duet serve` gets from the CLI, so both servers run alike

    if len(sys.argv) != 5 or sys.argv[1] != "naive" or sys.argv[3] != "--port":
        sys.exit("usage: python -m duet.bench.serve naive MODEL --port PORT")
    uvicorn.run(naive_app(Path(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[4]), log_level="warning")
