"""Serving settings, validated once at the edge (the CLI builds one ServeConfig).

Nothing below this module reads the environment: the API key is resolved here
(:func:`api_key_from_env`) and passed down.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from duet.errors import ConfigError
from duet.system.device import cpu_count

RUNTIMES = ("auto", "onnxruntime", "torch", "tflite", "savedmodel")
# ONNX: model.onnx, model.int8.onnx (duet.artifacts.model_package.VARIANTS); TFLite: model{,.fp16,.int8}.tflite
MODEL_VARIANTS = ("fp32", "int8", "fp16")
DEVICES = ("auto", "cpu", "cuda")
API_KEY_ENV = "DUET_API_KEY"
API_KEY_FILE_ENV = "DUET_API_KEY_FILE"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; beyond them it gets a 4xx."""

    max_body_bytes: int = 16 * 1024 * 1024  # whole request body
    max_pixels: int = 40_000_000  # per decoded image (header checked before decoding)
    max_request_pixels: int = 200_000_000  # all images of one request, as they will be decoded
    max_images: int = 64  # images (or pixel tensors) per request
    max_queue_images: int = 1024  # images waiting for the batcher; beyond -> 503
    header_timeout: float = 30.0  # seconds to receive a request's head (TF Serving's REST default)
    body_timeout: float = 30.0  # longest pause between two pieces of a request body

    def check(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_request_pixels", "max_images", "max_queue_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`--{name.replace('_', '-')}` must be >= 1. Received: {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(
                    f"`--{name.replace('_', '-')}` must be in (0, 3600] seconds. Received: {getattr(self, name)}"
                )


@dataclass(frozen=True)
class ServeConfig:
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None  # default: the model's name in model.json
    model_version: str = "1"
    runtime: str = "auto"  # auto: PyTorch on CUDA when available, else ONNX Runtime
    device: str = "auto"  # torch runtime only
    # None: the runtime's default (tflite: int8 when exported, duet.serve.runtimes.tflite_variant; others: fp32).
    # int8: model.int8.onnx (duet export --quantize int8) on ONNX Runtime, model.int8.tflite on tflite.
    model_variant: str | None = None
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    threads: int = 0  # ONNX Runtime intra-op threads (0 = one per core)
    ort_spinning: bool = (
        False  # ONNX Runtime intra-op threads busy-wait between operators (docs/serving.md#performance)
    )
    decode_workers: int = field(default_factory=cpu_count)
    top_k: int = 5
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = field(default=None, repr=False)
    insecure: bool = False
    drain_seconds: float = 30.0
    drift: bool = True  # monitor input drift when the model folder has a profile
    drift_window: int = 500  # recent images compared with the reference
    drift_interval: float = 60.0  # seconds between drift verdicts
    access_log: bool = False
    registry: Path | None = None  # follow this registry's champion (hot swap) instead of model_dir
    poll_interval: float = 2.0  # seconds between champion checks (with registry)

    def check(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"`--runtime` must be one of {', '.join(RUNTIMES)}. Received: --runtime={self.runtime}")
        if self.model_variant is not None and self.model_variant not in MODEL_VARIANTS:
            raise ConfigError(
                f"`--model-variant` must be one of {', '.join(MODEL_VARIANTS)}. "
                f"Received: --model-variant={self.model_variant}"
            )
        if self.model_variant == "fp16" and self.runtime != "tflite":
            raise ConfigError(
                "--model-variant fp16 is a TFLite file (model.fp16.tflite); serve it with --runtime tflite"
            )
        if self.device not in DEVICES:
            raise ConfigError(f"`--device` must be one of {', '.join(DEVICES)}. Received: --device={self.device}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"`--port` must be in 0..65535. Received: {self.port}")
        if self.max_batch_size < 1:
            raise ConfigError(f"`--max-batch-size` must be >= 1. Received: {self.max_batch_size}")
        if not 0 <= self.max_delay_ms <= 10_000:
            raise ConfigError(f"`--max-delay-ms` must be in 0..10000. Received: {self.max_delay_ms}")
        if self.threads < 0 or self.decode_workers < 1 or self.top_k < 1 or self.drain_seconds < 0:
            raise ConfigError(
                "`--threads` >= 0, `--decode-workers` >= 1, `--top-k` >= 1 and `--drain-seconds` >= 0 are required"
            )
        if self.drift_window < 2 or self.drift_interval <= 0:
            raise ConfigError(
                f"`--drift-window` must be >= 2 and `--drift-interval` > 0. Received: "
                f"{self.drift_window}, {self.drift_interval}"
            )
        if self.poll_interval <= 0:
            raise ConfigError(f"`--poll-interval` must be > 0. Received: {self.poll_interval}")
        self.limits.check()
        if self.api_key is None and not self.insecure and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve on {self.host} without an API key: anyone who can reach it could use the model. "
                f"Set {API_KEY_ENV} (or {API_KEY_FILE_ENV}), bind to 127.0.0.1, or pass --insecure"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def api_key_from_env(environ: Mapping[str, str]) -> str | None:
    """The API key from ``DUET_API_KEY`` or the file named by ``DUET_API_KEY_FILE``
    (surrounding whitespace stripped); None when neither is set. A variable set
    to the empty string counts as unset, so ``docker run -e DUET_API_KEY_FILE=``
    can clear the serving image's default (a non-loopback bind without a key
    still needs --insecure); an empty key *file* is an error."""
    value = environ.get(API_KEY_ENV) or None
    path = environ.get(API_KEY_FILE_ENV) or None
    if value is not None and path is not None:
        raise ConfigError(f"both {API_KEY_ENV} and {API_KEY_FILE_ENV} are set; keep one")
    if path is not None:
        try:
            value = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read {API_KEY_FILE_ENV}='{path}' ({type(e).__name__}); point it at a readable file"
            ) from None
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ConfigError(f"the API key from {API_KEY_FILE_ENV if path else API_KEY_ENV} is empty; set a non-empty key")
    if len(value) < 16:
        raise ConfigError(
            "the API key is shorter than 16 characters; use a long random key (e.g. `openssl rand -hex 32`)"
        )
    return value
