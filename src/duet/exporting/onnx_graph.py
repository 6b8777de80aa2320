"""The exported graph: uint8 pixels in, normalisation inside, logits, probabilities and features out.

Clients (and the server) send the uint8 ``image_size`` centre crop that
evaluation feeds the model; the graph does the float conversion and the
spec's normalisation with :func:`duet.data.augment.normalise`, the very
function training and evaluation use. A client therefore cannot get the
normalisation wrong, and the ONNX file cannot drift from the run.

The third output, ``features``, is the classifier's input (the penultimate
layer, the same vector :mod:`duet.monitor.embed` records for the drift
profile). The server feeds it to the embedding and outlier detectors, so
monitoring costs no second forward pass; clients of the public protocols see
only ``logits`` and ``probabilities``.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export based, the
default since torch 2.9; the TorchScript exporter is deprecated). The batch
dimension is declared dynamic with ``torch.export.Dim``; export writes one
self-contained file (no external data, fine below 2 GB of weights). When
torch.export cannot trace a model, the TorchScript exporter is tried and
model.json records which one produced the file.

The file alone is usable: :func:`write_metadata` stores the labels and the
preprocessing in the model's ``metadata_props`` (``onnx.load(f).metadata_props``,
or ``InferenceSession(f).get_modelmeta().custom_metadata_map``):

- ``labels``: JSON list, index -> label;
- ``preprocess``: JSON of the :class:`~duet.data.preprocess.PreprocessSpec`
  (``image_size``, ``crop_pct``, ``load_size``, ``interpolation``, ``mean``, ``std``);
- ``input``: in words, what the ``pixels`` input expects;
- ``architecture``, ``duet_version``.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

import duet
from duet.artifacts.model_package import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES
from duet.data.augment import normalise
from duet.data.preprocess import PreprocessSpec
from duet.errors import ModelError

DEFAULT_OPSET = 20
MAX_BATCH = 4096  # upper bound of the dynamic batch dimension (torch.export needs one)


GRAPH_OUTPUTS = (*OUTPUT_NAMES, FEATURES_NAME)


class PixelsToProbabilities(torch.nn.Module):
    """``uint8 (N, 3, S, S)`` -> ``(logits, softmax(logits), features)``:
    float32 ``(N, C)``, ``(N, C)`` and ``(N, D)``, D the classifier's input width."""

    def __init__(self, model: torch.nn.Module, spec: PreprocessSpec) -> None:
        from duet.monitor.embed import FeatureExtractor

        super().__init__()
        self.model = model
        self.spec = spec
        self.extract = FeatureExtractor(model)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, logits = self.extract(normalise(pixels, self.spec))
        logits = logits.float()
        return logits, torch.softmax(logits, dim=1), features.float()


def export_onnx(
    model: torch.nn.Module, spec: PreprocessSpec, path: Path, *, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """Write ``model`` (fp32, eval mode, on the CPU) wrapped in
    :class:`PixelsToProbabilities` to ``path``. Returns what model.json records
    about the graph (opset, exporter, the features output's name and width)."""
    wrapper = PixelsToProbabilities(model.float().cpu().eval(), spec).eval()
    example = torch.randint(0, 256, (2, 3, spec.image_size, spec.image_size), dtype=torch.uint8)
    try:
        with torch.no_grad():
            width = int(wrapper(example)[2].shape[1])
        return {**_export(wrapper, example, path, opset), "features": {"name": FEATURES_NAME, "width": width}}
    finally:
        wrapper.extract.close()


def _export(wrapper: PixelsToProbabilities, example: torch.Tensor, path: Path, opset: int) -> dict[str, Any]:
    errors: list[str] = []
    try:
        _export_dynamo(wrapper, example, path, opset)
        return {"opset": opset, "exporter": f"torch.onnx.export dynamo=True (torch {torch.__version__})"}
    except Exception as e:  # torch.export fails in many ways on untraceable models
        errors.append(f"dynamo: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    try:
        _export_torchscript(wrapper, example, path, min(opset, 17))
        return {
            "opset": min(opset, 17),
            "exporter": f"torch.onnx.export dynamo=False (torch {torch.__version__})",
            "dynamo_error": errors[0],
        }
    except Exception as e:
        errors.append(f"torchscript: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise ModelError("cannot export this model to ONNX: " + "; ".join(errors))


def _export_dynamo(wrapper: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # The exporter reports its steps on stdout; keep stdout clean for --json.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(GRAPH_OUTPUTS),
            dynamic_shapes={"pixels": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _export_torchscript(wrapper: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *GRAPH_OUTPUTS)}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(GRAPH_OUTPUTS),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def metadata_props(labels: list[str], spec: PreprocessSpec, architecture: str) -> dict[str, str]:
    """What :func:`write_metadata` stores (see the module doc)."""
    s = spec.image_size
    return {
        "labels": json.dumps(labels),
        "preprocess": json.dumps(spec.to_dict()),
        "input": (
            f"{INPUT_NAME}: uint8 [N, 3, {s}, {s}] RGB. Decode, resize the shorter side to "
            f"{spec.load_size} px ({spec.interpolation}, antialiased), centre-crop {s} x {s}; "
            "the graph converts to float and normalises with mean/std itself"
        ),
        "architecture": architecture,
        "duet_version": duet.__version__,
    }


def write_metadata(path: Path, props: dict[str, str]) -> None:
    """Set ``props`` as the ONNX model's ``metadata_props`` (rewrites ``path``;
    the graph and weights are untouched)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
