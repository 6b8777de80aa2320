"""Runtimes: uint8 ``(N, 3, S, S)`` pixels -> float32 logits and probabilities ``(N, C)``.

- ``onnxruntime``: the exported ``model.onnx`` on the CPU (the default without
  a GPU), or its int8 variant ``model.int8.onnx`` with ``variant="int8"``
  (``duet export --quantize int8``). Normalisation is inside the graph; its
  ``features`` output (the penultimate layer, fp32 in both variants) is read
  along with the probabilities for drift monitoring.
- ``torch``: ``model.safetensors`` in its architecture (``duet.training.models.build``)
  on CUDA when available: the same weights the ONNX file was checked against,
  normalised with the same ``augment.normalise``; its forward pass runs in
  ``duet.training.precision``'s auto choice (bf16 autocast on CUDA and on CPUs with
  native bf16, else fp32; the weights stay fp32, as the parity gate checked).

``load_runtime(package, name="auto")`` picks PyTorch when CUDA is present and
ONNX Runtime otherwise, without importing torch on machines with no NVIDIA
driver or no PyTorch installed (it would add seconds and ~800 MB of resident
memory to a CPU server; measured in docs/serving.md, "Idle memory"). Nothing
on the ONNX path imports torch: ``duet.data.preprocess`` resizes with NumPy there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from duet.artifacts.model_package import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES, ModelPackage
from duet.errors import ConfigError, ModelError
from duet.serve.outputs import Outputs


class Runtime(Protocol):
    name: str  # "onnxruntime" | "torch" | "tflite" | "savedmodel"
    device: str  # "cpu" | "cuda:0"
    platform: str  # KServe V2 platform string

    def __call__(self, pixels: np.ndarray) -> Outputs: ...


def ort_session(path: Path, threads: int = 0, spinning: bool = False, custom_ops: str | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` (ModelError when it cannot load).

    ``custom_ops="onnxruntime_extensions"``: the graph uses that package's custom
    operators (a text model's tokenizer may); their library is registered first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if custom_ops is not None:
        options.register_custom_ops_library(_custom_ops_library(custom_ops, path))
    options.intra_op_num_threads = threads  # 0: one per core
    options.inter_op_num_threads = 1
    # Spinning keeps intra-op threads busy-waiting between operators: faster
    # alone, but it takes CPU from the decode threads on a small machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"ONNX Runtime cannot load '{path}': {str(e).splitlines()[0]}") from e


def _custom_ops_library(name: str, path: Path) -> str:
    """The shared library of the custom-operator package ``name`` (ModelError when absent or unknown)."""
    if name != "onnxruntime_extensions":
        raise ModelError(f"'{path}' needs custom operators from {name!r}, which duet does not know; re-export the run")
    library = extensions_library()
    if library is None:
        raise ModelError(f"'{path}' uses onnxruntime-extensions' operators; install them: pip install 'duet[text]'")
    return library


def extensions_library() -> str | None:
    """onnxruntime-extensions' custom-op library, loaded so that it calls its own RE2 (None when not installed).

    TensorFlow makes its RE2 symbols global; a library loaded after it binds to
    them instead of its own, and onnxruntime-extensions' ``StringRegexReplace``
    then silently replaces nothing (measured: TensorFlow 2.21 imported first, a
    text graph's ids differed from the spec's on 34 of 104 edge-case documents).
    Loading the library first with ``RTLD_DEEPBIND`` (Linux/glibc) makes it
    prefer its own symbols; a later ``import onnxruntime_extensions`` reuses that
    handle. When the package was imported before this ran, it is used as loaded."""
    found = importlib.util.find_spec("onnxruntime_extensions")
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations)))
    binary = next((p for p in sorted(folder.glob("_extensions_pydll*")) if p.suffix in (".so", ".pyd", ".dylib")), None)
    already = "onnxruntime_extensions._extensions_pydll" in sys.modules
    if binary is not None and not already and hasattr(os, "RTLD_DEEPBIND"):
        import ctypes

        ctypes.CDLL(str(binary), mode=os.RTLD_NOW | os.RTLD_DEEPBIND)
    from onnxruntime_extensions import get_library_path

    return str(get_library_path())


class OnnxRuntime:
    name = "onnxruntime"
    device = "cpu"
    platform = "onnxruntime_onnx"

    def __init__(self, package: ModelPackage, threads: int = 0, spinning: bool = False, variant: str = "fp32") -> None:
        path = package.variant_path(variant)  # ArtifactError when the folder has no such variant
        self.variant = variant
        self.session = ort_session(path, threads, spinning)
        names = [i.name for i in self.session.get_inputs()]
        if names != [INPUT_NAME]:
            raise ModelError(f"'{path}' takes inputs {names}, model.json says ['{INPUT_NAME}']; re-export the run")
        # Graphs exported before the features output existed still serve; drift then has no embeddings.
        self.has_features = FEATURES_NAME in {o.name for o in self.session.get_outputs()}
        self._outputs = [*OUTPUT_NAMES, FEATURES_NAME] if self.has_features else list(OUTPUT_NAMES)

    def __call__(self, pixels: np.ndarray) -> Outputs:
        got = self.session.run(self._outputs, {INPUT_NAME: pixels})
        return Outputs(got[0], got[1], features=got[2] if self.has_features else None)


class TorchRuntime:
    name = "torch"
    platform = "pytorch_safetensors"

    def __init__(self, package: ModelPackage, device: str, precision: str = "auto") -> None:
        import torch
        from safetensors.torch import load_file

        from duet.data.augment import normalise
        from duet.monitor.embed import FeatureExtractor
        from duet.training.models import build
        from duet.training.precision import autocast, resolve_precision

        self._torch = torch
        self._normalise = normalise
        self._spec = package.spec
        self._device = torch.device(device)
        self.device = str(self._device)
        # bf16 autocast where auto picks it (duet.training.precision); the weights stay fp32.
        self.precision = resolve_precision(precision, self._device)
        self._autocast = lambda: autocast(self.precision, self._device)
        norm = str(package.manifest.get("norm") or "batch")  # "group": a DP-SGD run's GroupNorm model
        model = build(package.architecture, package.num_classes, "none", image_size=package.spec.image_size, norm=norm)
        try:
            model.load_state_dict(load_file(str(package.weights_path)))
        except Exception as e:
            raise ModelError(
                f"cannot load '{package.weights_path}' into {package.architecture}: {type(e).__name__}"
            ) from e
        self.model = model.to(self._device).eval()
        self.extract = FeatureExtractor(self.model)
        self.has_features = True

    def __call__(self, pixels: np.ndarray) -> Outputs:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self._device, non_blocking=True)
            with self._autocast():
                features, logits = self.extract(self._normalise(x, self._spec))
            logits = logits.float()
            probs = torch.softmax(logits, 1)
            return Outputs(logits.cpu().numpy(), probs.cpu().numpy(), features=features.float().cpu().numpy())


def tflite_variant(package: ModelPackage) -> str:
    """The TFLite file served when no variant is asked for: the smallest one exported
    (int8, then fp16, then fp32), for small CPU deployments; int8 when there is none
    (loading it then says how to export it)."""
    formats = package.formats
    return next((v for v, fmt in _TFLITE_FORMATS if fmt in formats), "int8")


_TFLITE_FORMATS = (("int8", "tflite-int8"), ("fp16", "tflite-fp16"), ("fp32", "tflite"))


def _cuda_present() -> bool:
    """Cheap check before importing torch: an NVIDIA driver device node exists
    and PyTorch is installed (``duet[serve]`` leaves it out)."""
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
        return False
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:  # an import hook that refuses torch counts as "not installed"
        return False


def _import_torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError:
        raise ConfigError(
            "--runtime torch needs PyTorch, which this install of duet left out: "
            "pip install 'duet[train]', or serve the ONNX model with --runtime onnxruntime"
        ) from None
    return torch


def load_runtime(
    package: ModelPackage,
    name: str = "auto",
    *,
    device: str = "auto",
    threads: int = 0,
    spinning: bool = False,
    variant: str | None = "fp32",
) -> Runtime:
    """The runtime ``name`` for ``package``. ``tflite`` runs ``model.tflite`` /
    ``model.{fp16,int8}.tflite`` by ``variant`` and ``savedmodel`` the SavedModel
    (``duet.serve.tf_runtimes``). Otherwise a ``variant`` other than fp32 exists
    only as an ONNX file, so it is served by ONNX Runtime (``auto`` then never picks PyTorch).
    ``variant=None``: the runtime's default, :func:`tflite_variant` for tflite, fp32 for the others."""
    if name == "tflite":
        from duet.serve.tf_runtimes import TfliteRuntime

        return TfliteRuntime(package, variant or tflite_variant(package), threads)
    variant = variant or "fp32"
    if name == "savedmodel":
        if variant != "fp32":
            raise ConfigError(f"the SavedModel is fp32 only; --model-variant {variant} is not available with it")
        from duet.serve.tf_runtimes import SavedModelRuntime

        return SavedModelRuntime(package)
    if variant != "fp32":
        if name == "torch":
            raise ConfigError(
                f"--model-variant {variant} is an ONNX graph; serve it with --runtime onnxruntime "
                "(or auto), or use --model-variant fp32 with --runtime torch"
            )
        return OnnxRuntime(package, threads, spinning, variant)
    if name == "auto":
        if device != "cpu" and _cuda_present() and _import_torch().cuda.is_available():
            return TorchRuntime(package, "cuda")
        return OnnxRuntime(package, threads, spinning)
    if name == "onnxruntime":
        return OnnxRuntime(package, threads, spinning)
    if name == "torch":
        torch = _import_torch()
        if device in ("auto", "cuda"):
            if torch.cuda.is_available():
                return TorchRuntime(package, "cuda")
            if device == "cuda":
                raise ConfigError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
        return TorchRuntime(package, "cpu")
    raise ConfigError(f"`--runtime` must be one of auto, onnxruntime, torch, tflite, savedmodel. Received: {name}")
