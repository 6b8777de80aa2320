"""CLI commands of the export and serve stages: ``duet export``, ``duet serve``.

``duet.cli.app`` calls :func:`register`. The serve defaults come from ``ServeConfig``
and ``Limits`` (duet/serve/settings.py, torch-free: read at import); every import of torch, onnx, fastapi or
uvicorn happens inside a command, so ``duet --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from duet.cli.common import out as stdout
from duet.cli.common import print_json, serve_default, stderr_log
from duet.system.progress import console

_EXPORT_DATA = typer.Option(
    None,
    "--data",
    help="Where the run's images are now, if they moved since training (the parity gate reads the validation split).",
)
_EXPORT_TOLERANCE = typer.Option(
    1e-4, "--tolerance", min=0.0, help="Parity gate: max |Δprobability| between ONNX Runtime and PyTorch (fp32)."
)
_EXPORT_FORCE = typer.Option(
    False, "--force", help="Replace an existing export folder (only once the new one has passed)."
)
_EXPORT_QUANTIZE = typer.Option(
    None,
    "--quantize",
    help="int8: also write model.int8.onnx (static QDQ quantization, per-channel weights, calibrated on training images), behind its own accuracy gate.",
)
_EXPORT_INT8_TOLERANCE = typer.Option(
    1.0,
    "--int8-tolerance",
    min=-100.0,
    max=100.0,
    help="int8 gates (model.int8.onnx and model.int8.tflite): most points of validation top-1 accuracy int8 may lose against fp32 (a failed gate fails the export; nothing is written).",
)
_EXPORT_FORMAT = typer.Option(
    "onnx",
    "--format",
    "-f",
    help="Comma-separated formats: onnx (always written), savedmodel (TF Serving layout, pixels + image-bytes signatures), tflite, tflite-fp16, tflite-int8 (LiteRT), or all. Each passes its own gate against PyTorch or the export fails and nothing is written. Needs the tf extra beyond onnx.",
)
_EXPORT_CALIBRATION_IMAGES = typer.Option(
    256, "--calibration-images", min=1, help="int8: training images drawn (seeded) to calibrate activation ranges."
)


def export(
    run: Path = typer.Argument(..., help="A run folder made by `duet train`."),
    out: Path | None = typer.Option(None, "--out", help="Export folder. \\[default: RUN/export]"),
    data: Path | None = _EXPORT_DATA,
    tolerance: float = _EXPORT_TOLERANCE,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per parity batch."),
    opset: int = typer.Option(20, "--opset", min=13, help="ONNX opset."),
    force: bool = _EXPORT_FORCE,
    quantize: str | None = _EXPORT_QUANTIZE,
    int8_tolerance: float = _EXPORT_INT8_TOLERANCE,
    calibration_images: int = _EXPORT_CALIBRATION_IMAGES,
    formats: str = _EXPORT_FORMAT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or log lines."),
) -> None:
    """Export RUN to ONNX (+ SavedModel, TFLite) + safetensors + model.json + model card, behind parity gates.

    The ONNX graph takes uint8 NCHW pixels (the centre crop) and normalises inside, with a dynamic batch. The parity gate runs the whole validation split through ONNX Runtime and PyTorch (fp32): unless top-1 agrees on 100% of images and max |Δprobability| <= --tolerance, the export fails and nothing is written.

    With --quantize int8, model.int8.onnx is added: calibrated on up to --calibration-images training images, then the validation split runs through both graphs; if int8's top-1 accuracy is more than --int8-tolerance points below fp32's, the whole export fails and nothing is written (export again without --quantize for fp32 alone). Serve it with `duet serve RUN --model-variant int8`.

    With --format savedmodel,tflite,tflite-fp16,tflite-int8 (or all), TensorFlow formats are added (docs/serving.md): savedmodel/<name>/1 for TF Serving (with savedmodel/models.config), model.tflite, model.fp16.tflite and model.int8.tflite (full-integer, calibrated on --calibration-images training images). Gates, on the validation split against PyTorch: SavedModel and TFLite fp32 as ONNX (100% top-1, max |Δp| <= 1e-4); the SavedModel's image-bytes signature and TFLite fp16 >= 99.5% top-1 agreement; TFLite int8 loses <= --int8-tolerance accuracy points (1) and is <= 30% of the fp32 size.

    Example: duet export runs/pets-r50 && duet serve runs/pets-r50
    """
    from duet.exporting.exporter import export_run

    res = export_run(
        run,
        out_dir=out,
        data_dir=data,
        tolerance=tolerance,
        batch_size=batch_size,
        opset=opset,
        force=force,
        quantize=quantize,
        int8_tolerance=int8_tolerance,
        calibration_images=calibration_images,
        formats=formats,
        progress=not (quiet or as_json),
        log=stderr_log(quiet or as_json),
    )
    from duet.tracking.stages import log_export

    log_export(run, res.export_dir)  # the ONNX model into the run's MLflow run, when it was tracked
    p = res.parity
    summary = {
        "export": str(res.export_dir),
        "files": dict(res.manifest["files"]),
        "parity": p.to_dict(),
        "variants": res.variants or {},
        "formats": res.manifest.get("formats", {}),
        "onnx": res.manifest["onnx"],
        "data_fingerprint": res.manifest["data"]["fingerprint"],
        "seconds": round(res.seconds, 1),
    }
    if as_json:
        print_json(summary)
        return
    _print_export(res)


def _print_export(res: Any) -> None:
    """The one-screen summary of `duet export`: files, the parity gate, each variant's gate, the graph."""
    p = res.parity
    t = Table(title="duet export", show_header=False, box=None)
    t.add_row("folder", str(res.export_dir))
    formats = {k: v for k, v in res.manifest.get("formats", {}).items() if k != "onnx"}
    grouped = {f for entry in formats.values() for f in entry["files"]}
    for name, entry in res.manifest["files"].items():
        if name not in grouped:
            t.add_row(name, f"{entry['bytes'] / 1e6:.1f} MB  sha256 {entry['sha256'][:16]}...")
    unit = {"tabular": "rows", "text": "texts"}.get(res.manifest.get("modality", ""), "images")
    t.add_row(
        "parity",
        f"{p.images} {p.split} {unit}: top-1 agreement {100 * p.top1_agreement:.2f}%, "
        f"max |Δprob| {p.max_abs_prob_diff:.2e} (gate {p.tolerance:g}) [bold green]passed[/]",
    )
    for name, variant in (res.variants or {}).items():
        g = variant["gate"]
        t.add_row(
            name,
            f"{g['images']} {g['split']} images: top-1 accuracy {100 * g['int8_accuracy']:.2f}% vs fp32 "
            f"{100 * g['fp32_accuracy']:.2f}% (allowed -{g['tolerance_points']:g} points), agreement "
            f"{100 * g['top1_agreement']:.2f}%; calibrated on {variant['calibration']['images']} training "
            "images [bold green]passed[/]",
        )
    for name, entry in formats.items():
        for key, label in (("gate", name), ("bytes_gate", f"{name} (bytes)")):
            if key in entry:
                g = entry[key]
                t.add_row(
                    label,
                    f"{entry.get('path') or entry['files'][0]}: {g['size_bytes'] / 1e6:.1f} MB; top-1 agreement "
                    f"{100 * g['top1_agreement']:.2f}%, max |Δp| {g['max_abs_prob_diff']:.1e}, accuracy "
                    f"{100 * g['accuracy']:.2f}% (PyTorch {100 * g['reference_accuracy']:.2f}%) [bold green]passed[/]",
                )
    t.add_row("graph", _graph_line(res.manifest))
    t.add_row("next", f"duet serve {res.export_dir}")
    stdout.print(t)


def _graph_line(manifest: dict[str, Any]) -> str:
    """What the exported graph takes and gives, in one line."""
    opset = manifest["onnx"]["opset"]
    if manifest.get("modality") == "tabular":
        kinds = [i["datatype"] for i in manifest["inputs"]]
        return (
            f"opset {opset}, {len(kinds)} column inputs ({kinds.count('FP64')} FP64 with NaN for missing, "
            f"{kinds.count('BYTES')} strings with '' for missing; preprocessing inside) -> logits, probabilities"
        )
    if manifest.get("modality") == "text":
        ops = (manifest.get("runtime") or {}).get("custom_ops")
        extra = f"; custom ops: {ops}" if ops else ""
        return f"opset {opset}, raw UTF-8 strings (tokenizer inside{extra}) -> logits, probabilities, features"
    size = manifest["preprocess"]["image_size"]
    features = manifest["onnx"].get("features")
    extra = f", features [N,{features['width']}] (for drift monitoring)" if features else ""
    return f"opset {opset}, uint8 [N,3,{size},{size}] -> logits, probabilities{extra}"


_SERVE_MODEL = typer.Argument(
    None, help="A run folder (its export/ is served) or an export folder with model.json (or give --registry)."
)
_SERVE_REGISTRY = typer.Option(
    None,
    "--registry",
    help="Serve this registry's champion and hot-swap to each newly promoted one (instead of MODEL; the version is the registry's, e.g. v2).",
)
_SERVE_POLL_INTERVAL = typer.Option(
    serve_default("poll_interval"),
    "--poll-interval",
    help="With --registry: seconds between checks of the champion pointer.",
)
_SERVE_HOST = typer.Option(
    serve_default("host"), help="Address to bind. Anything but loopback needs an API key or --insecure."
)
_SERVE_MODEL_NAME = typer.Option(
    None, "--model-name", help="Name in the URLs (/v2/models/NAME). \\[default: the run's name]"
)
_SERVE_MODEL_VERSION = typer.Option(
    serve_default("model_version"), "--model-version", help="Version reported and accepted in URLs."
)
_SERVE_RUNTIME = typer.Option(
    serve_default("runtime"),
    help="auto (PyTorch on CUDA when available, else ONNX Runtime) | onnxruntime | torch | tflite (LiteRT: model.int8.tflite by default, for small CPU deployments) | savedmodel (TensorFlow). tflite and savedmodel need `duet export --format ...` and the tf extra.",
)
_SERVE_MODEL_VARIANT = typer.Option(
    serve_default("model_variant"),
    "--model-variant",
    help="fp32 | int8 | fp16. ONNX Runtime: model.onnx | model.int8.onnx (`duet export --quantize int8`). tflite: model.tflite | model.int8.tflite | model.fp16.tflite. \\[default: fp32; tflite: int8, else the smallest TFLite file exported]",
)
_SERVE_MAX_BATCH_SIZE = typer.Option(
    serve_default("max_batch_size"), "--max-batch-size", help="Dynamic batcher: images per runtime call."
)
_SERVE_MAX_DELAY_MS = typer.Option(
    serve_default("max_delay_ms"), "--max-delay-ms", help="Dynamic batcher: longest wait for a fuller batch."
)
_SERVE_ORT_SPINNING = typer.Option(
    serve_default("ort_spinning"),
    "--ort-spinning/--no-ort-spinning",
    help="Let ONNX Runtime threads busy-wait between operators: off by default, so they leave the CPU to decoding (+3-5 % images/s at 32 clients on 2 cores, batch-1 latency unchanged).",
)
_SERVE_DECODE_WORKERS = typer.Option(
    None, "--decode-workers", help="Threads decoding images. \\[default: one per core]"
)
_SERVE_MAX_BODY_BYTES = typer.Option(
    serve_default("limits.max_body_bytes"), "--max-body-bytes", help="Largest request body."
)
_SERVE_MAX_PIXELS = typer.Option(
    serve_default("limits.max_pixels"),
    "--max-pixels",
    help="Largest image (width x height), checked before decoding.",
)
_SERVE_MAX_REQUEST_PIXELS = typer.Option(
    serve_default("limits.max_request_pixels"),
    "--max-request-pixels",
    help="Most pixels one request may have decoded, all its images together (JPEGs count at the reduced scale they are decoded at).",
)
_SERVE_MAX_IMAGES = typer.Option(
    serve_default("limits.max_images"), "--max-images", help="Most images (a table model: rows) in one request."
)
_SERVE_MAX_QUEUE_IMAGES = typer.Option(
    serve_default("limits.max_queue_images"),
    "--max-queue-images",
    help="Most images (rows) waiting for inference; beyond, 503.",
)
_SERVE_HEADER_TIMEOUT = typer.Option(
    serve_default("limits.header_timeout"),
    "--header-timeout",
    help="Seconds a client may take to send a request's headers; then 408 and the connection is closed.",
)
_SERVE_BODY_TIMEOUT = typer.Option(
    serve_default("limits.body_timeout"),
    "--body-timeout",
    help="Longest pause (seconds) while a client sends a request body; then 408 and the connection is closed.",
)
_SERVE_DRAIN_SECONDS = typer.Option(
    serve_default("drain_seconds"),
    "--drain-seconds",
    help="On SIGTERM, how long in-flight requests may take to finish (then 503 with Retry-After).",
)
_SERVE_DRIFT = typer.Option(
    serve_default("drift"),
    "--drift/--no-drift",
    help="Monitor input drift (GET /v1/monitor, duet_drift_* metrics) when the model folder has a reference profile.",
)
_SERVE_DRIFT_WINDOW = typer.Option(
    serve_default("drift_window"), "--drift-window", help="Recent images compared with the reference profile."
)
_SERVE_DRIFT_INTERVAL = typer.Option(
    serve_default("drift_interval"), "--drift-interval", help="Seconds between drift verdicts."
)
_SERVE_INSECURE = typer.Option(
    serve_default("insecure"), "--insecure", help="Allow a non-loopback --host without an API key."
)
_SERVE_ACCESS_LOG = typer.Option(
    serve_default("access_log"), "--access-log", help="Log every request (uvicorn access log)."
)
_SERVE_CHECK = typer.Option(
    False, "--check", help="Verify the artifacts and load the model, print a summary and exit (no server)."
)


def serve(
    model: Path | None = _SERVE_MODEL,
    registry: Path | None = _SERVE_REGISTRY,
    poll_interval: float = _SERVE_POLL_INTERVAL,
    host: str = _SERVE_HOST,
    port: int = typer.Option(serve_default("port"), help="TCP port."),
    model_name: str | None = _SERVE_MODEL_NAME,
    model_version: str = _SERVE_MODEL_VERSION,
    runtime: str = _SERVE_RUNTIME,
    device: str = typer.Option(serve_default("device"), help="For --runtime torch: auto | cpu | cuda."),
    model_variant: str = _SERVE_MODEL_VARIANT,
    max_batch_size: int = _SERVE_MAX_BATCH_SIZE,
    max_delay_ms: float = _SERVE_MAX_DELAY_MS,
    threads: int = typer.Option(serve_default("threads"), help="ONNX Runtime intra-op threads (0 = one per core)."),
    ort_spinning: bool = _SERVE_ORT_SPINNING,
    decode_workers: int | None = _SERVE_DECODE_WORKERS,
    top_k: int = typer.Option(serve_default("top_k"), "--top-k", help="Default labels per image on /v1/predict."),
    max_body_bytes: int = _SERVE_MAX_BODY_BYTES,
    max_pixels: int = _SERVE_MAX_PIXELS,
    max_request_pixels: int = _SERVE_MAX_REQUEST_PIXELS,
    max_images: int = _SERVE_MAX_IMAGES,
    max_queue_images: int = _SERVE_MAX_QUEUE_IMAGES,
    header_timeout: float = _SERVE_HEADER_TIMEOUT,
    body_timeout: float = _SERVE_BODY_TIMEOUT,
    drain_seconds: float = _SERVE_DRAIN_SECONDS,
    drift: bool = _SERVE_DRIFT,
    drift_window: int = _SERVE_DRIFT_WINDOW,
    drift_interval: float = _SERVE_DRIFT_INTERVAL,
    insecure: bool = _SERVE_INSECURE,
    access_log: bool = _SERVE_ACCESS_LOG,
    check: bool = _SERVE_CHECK,
) -> None:
    """Serve a model over HTTP (FastAPI + uvicorn, one dynamic batcher for all routes).

    Routes: POST /v1/predict (multipart or raw image), KServe V2 / Open Inference Protocol (/v2/...), TF Serving REST (/v1/models/NAME:predict), GET /metrics, docs at /docs. Runtime: ONNX Runtime on CPU, PyTorch on CUDA when available; --runtime tflite (LiteRT, the int8 TFLite file) or savedmodel (TensorFlow) serve the TensorFlow exports. Artifacts are checked against their sha256 in model.json before loading.

    API key: set DUET_API_KEY (or DUET_API_KEY_FILE=path); clients send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'. Health routes (/v2/health/*, /healthz, /readyz) stay open. SIGTERM drains in-flight requests; those still running after --drain-seconds get 503 with Retry-After.

    Limits: a client slower than --header-timeout to send its headers, or pausing longer than --body-timeout in its body, gets 408 and is disconnected; a request over --max-body-bytes, --max-images, --max-pixels (one image) or --max-request-pixels (all its images) gets 413. Images of concurrent requests are decoded in turn, so a small request does not wait behind a large one.

    Hot swap: with --registry DIR the server serves the registry's champion, checks the pointer every --poll-interval seconds and, after `duet registry promote` or `rollback`, loads the new champion (sha256-verified) in the background and switches between batches without failing a request. Responses name the version that answered (header X-Duet-Model-Version).

    Example: duet serve runs/pets-r50 --port 8080
    """
    flags = dict(locals())
    from duet.errors import ConfigError
    from duet.serve.app import serve as run_server

    folder = model if model is not None else registry
    if folder is None or (model is not None and registry is not None):
        raise ConfigError(
            "give a model folder (RUN or EXPORT_DIR) or --registry DIR, not both"
            if model is not None
            else "missing MODEL: give a run or export folder, or --registry DIR to serve its champion"
        )

    config = _serve_config(flags, folder)
    config.check()
    if check:
        _print_check(config)
        return
    auth = (
        "API key required"
        if config.api_key
        else "no API key (loopback only)"
        if not insecure
        else "NO API KEY (--insecure)"
    )

    def ready(what: str, bound_port: int) -> None:
        url = f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}"
        console.print(
            f"serving {what} at {url}  ({auth}; docs at /docs, metrics at /metrics)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    run_server(config, on_ready=ready)


def _serve_config(flags: dict[str, Any], folder: Path) -> Any:
    """``ServeConfig`` (and its ``Limits``) from the command's flags, which carry the fields' names;
    the API key comes from the environment, never from a flag."""
    import dataclasses

    from duet.serve.settings import Limits, ServeConfig, api_key_from_env

    def given(cls: Any) -> dict[str, Any]:
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in flags.items() if k in names and v is not None}

    fields = given(ServeConfig) | {"limits": Limits(**given(Limits))}
    return ServeConfig(**(fields | {"model_dir": folder, "api_key": api_key_from_env(os.environ)}))


def _print_check(config: Any) -> None:
    """`duet serve --check`: verify and load what would be served, print it as JSON."""
    from duet.serve.app import follow_registry, load
    from duet.serve.drift_watch import profile_dir

    config, _ = follow_registry(config)
    package, rt = load(config)
    print_json(
        {
            "model": config.model_name or package.name,
            "version": config.model_version,
            "folder": str(package.root),
            "verified": True,
            "runtime": rt.name,
            "device": rt.device,
            "variant": getattr(rt, "variant", "fp32"),
            "labels": package.labels,
            "drift_profile": profile_dir(package) is not None,
            "files": package.manifest["files"],
        }
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("serve")(serve)
