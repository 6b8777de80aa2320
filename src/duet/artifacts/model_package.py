"""The exported model folder and its manifest, ``model.json``: written by export, read by serve.

```
EXPORT_DIR/                 (by default RUN/export/)
  model.onnx                uint8 NCHW pixels in, logits + probabilities out
  model.int8.onnx           the same graph, statically quantized (``duet export --quantize int8``), when asked
  savedmodel/<name>/1/      TensorFlow SavedModel in TF Serving's layout (``--format savedmodel``)
  savedmodel/models.config  TF Serving's --model_config_file for it
  model.tflite              TFLite fp32 (``--format tflite``); model.fp16.tflite, model.int8.tflite likewise
  model.safetensors         the same weights for PyTorch (the CUDA runtime)
  MODEL_CARD.md             what the model is for, its data, metrics and limits
  profile/                  the run's drift reference profile (duet.monitor), when it has one
  model.json                this schema (below)
```

``model.json`` (``"schema": "duet.model/1"``) is plain JSON with these keys:

- ``name``, ``created`` (UTC ISO 8601), ``architecture`` (duet.training.models name),
  ``labels`` (index -> label), ``num_classes``;
- ``preprocess``: the run's :class:`~duet.data.preprocess.PreprocessSpec` as a dict
  (``image_size``, ``crop_pct``, ``mean``, ``std``, ``interpolation``,
  ``load_size``). The graph normalises with ``mean``/``std`` itself: a client
  sends the uint8 centre crop, never floats;
- ``inputs`` / ``outputs``: the signature, KServe V2 style
  (``name``, ``datatype``, ``shape`` with -1 for the dynamic batch);
- ``metrics``: training/evaluation metrics of the run and the ``parity`` result;
- ``files``: ``{relative path: {"sha256", "bytes"}}`` for every other file of
  the folder; a server refuses to load a folder where one differs;
- ``data``: ``fingerprint`` (sha256 over the usable rows of the run's
  manifest, see :func:`data_fingerprint`), image counts per split;
- ``variants`` (only with ``--quantize int8``): ``{"int8": {"file", "sha256",
  "calibration", "gate"}}``: the quantized graph, how it was calibrated
  (training images, seed, settings) and its accuracy gate against fp32
  (``duet.exporting.quantize``); the file is also listed in ``files``;
- ``formats``: ``{format: entry}`` for every format written (``FORMATS``;
  ``onnx`` always): each entry has ``files`` (paths relative to the folder,
  also listed in ``files``), ``runtime`` (what runs it) and ``gate`` (its
  export gate against PyTorch on the validation split, ``passed`` true); the
  SavedModel's entry adds ``path`` (the version folder), ``signatures`` and
  ``bytes_gate`` (the encoded-image signature's own gate);
- ``norm`` (``batch``, or ``group`` for a DP-SGD run whose BatchNorm layers are
  GroupNorm: ``duet.training.models.build(norm=...)``) and ``privacy`` (the
  run's DP-SGD record: ε spent, δ, noise multiplier, clip; null without DP);
- ``onnx`` (opset, exporter), ``versions`` (duet, torch, timm, onnx,
  onnxruntime, python), ``source`` (the run folder and its weights' sha256).

A **tabular** model (``duet export`` of a run trained on a table,
``duet.exporting.tabular_export``) has the same keys, with these differences:

- ``modality``: ``"tabular"`` (absent means ``"image"``); ``preprocess`` is
  null, ``norm`` and ``privacy`` are null;
- ``columns``: the :class:`~duet.data.tabular.schema.ColumnSchema` as a dict
  (``target``, ``labels``, every column's ``name``, ``kind``, ``note``);
- ``tabular_spec``: the fitted :class:`~duet.data.tabular.spec.TabularSpec` as a
  dict (means, stds, missing flags, vocabularies); model.onnx holds it already;
- ``inputs``: one entry per feature column (``ColumnSchema.features()``, file
  order): ``{"name": ONNX input name, "column": column name, "kind":
  numeric|boolean|categorical, "datatype": "FP64" (numeric; boolean as 0/1) or
  "BYTES" (categorical), "shape": [-1, 1]}``; missing is NaN for FP64 and ""
  for BYTES. The name is the column's own when it is an identifier
  (``[A-Za-z_][A-Za-z0-9_]*``) other than an output's name, else a sanitised,
  unique one (``duet.exporting.tabular_graph.input_names``);
- ``outputs``: ``logits`` and ``probabilities``, FP32 ``[-1, num_classes]``
  (no ``features`` output);
- ``metrics.parity`` / ``formats.onnx.gate``: the parity gate on every
  validation row (``images`` and ``rows`` both count rows); ``metrics.baseline``:
  the run's HistGradientBoosting baseline, when it has one;
- ``data``: ``fingerprint`` (sha256 of the table files' sha256 and the run's
  splits.json), ``rows``, ``per_split``, ``source`` (the table file(s));
- ``onnx`` adds ``ml_opset`` (the ai.onnx.ml opset of the LabelEncoders),
  ``preprocessing_nodes`` and ``feature_edges``; ``versions`` has no timm;
- only ``model.onnx`` (fp32): no ``variants``, no TensorFlow formats.

A **text** model (``duet.exporting.text_export``) has the tabular differences
except the table ones, and these:

- ``modality``: ``"text"``; ``text_spec``: the fitted
  :class:`~duet.data.text.spec.TextSpec` as a dict (standardize mode, ngrams,
  sequence_length, vocabulary); model.onnx holds the tokenizer already;
- ``inputs``: one ``{"name": "text", "datatype": "BYTES", "shape": [-1]}``: raw
  UTF-8 documents, one per element (a 1-D batch);
- ``outputs``: ``logits``, ``probabilities`` FP32 ``[-1, num_classes]`` and
  ``features`` FP32 ``[-1, D]`` (the pooled vector the drift detector reads);
- ``limits``: ``max_chars`` (the longest document a server accepts) and
  ``refused`` (texts the graph cannot read: U+0000, unpaired surrogates);
- ``runtime``: ``{"custom_ops": "onnxruntime_extensions"}``: the library ONNX
  Runtime must register (``duet.exporting.text_graph.session_options``);
- ``metrics.parity``: the gate on every validation document, with ``ids_differ``
  (documents whose graph ids differ from the spec's: must be 0) and
  ``unreadable`` (refused documents left out); ``data``: ``documents`` per split.

This module imports neither torch nor onnxruntime: a server reads and checks a
model folder before it chooses a runtime.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from duet.data.preprocess import PreprocessSpec
from duet.data.tabular.schema import ColumnSchema
from duet.data.tabular.spec import TabularSpec
from duet.data.text.spec import TextSpec
from duet.errors import DuetError, ModelError

SCHEMA = "duet.model/1"
MODALITIES = ("image", "tabular", "text")  # model.json's "modality" (absent: image)
MANIFEST = "model.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # the int8 variant (duet export --quantize int8)
VARIANTS = ("fp32", "int8")  # what `duet serve --model-variant` accepts
WEIGHTS_FILE = "model.safetensors"
# `duet export --format`: what each format writes (savedmodel: a folder in TF Serving's layout)
FORMATS = ("onnx", "savedmodel", "tflite", "tflite-fp16", "tflite-int8")
SAVEDMODEL_DIR = "savedmodel"  # SAVEDMODEL_DIR/<model name>/<SAVEDMODEL_VERSION>/saved_model.pb + variables/
SAVEDMODEL_VERSION = 1
MODELS_CONFIG = "savedmodel/models.config"
TFLITE_FILES = {"tflite": "model.tflite", "tflite-fp16": "model.fp16.tflite", "tflite-int8": "model.int8.tflite"}
CARD_FILE = "MODEL_CARD.md"
PROFILE_DIR = "profile"  # the run's drift reference (duet.monitor), when it has one

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")  # what the public protocols serve
FEATURES_NAME = "features"  # the graph's third output: penultimate features, for drift monitoring only


class ArtifactError(ModelError):
    """A model folder that is missing, incomplete or was modified after export."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256", "bytes"}}`` for files under ``root``."""
    return {n: {"sha256": sha256_file(root / n), "bytes": (root / n).stat().st_size} for n in names}


def data_fingerprint(rows: Iterable[tuple[str, str, str, str]]) -> str:
    """sha256 over ``path\\tlabel\\tsha256\\tsplit\\n`` of each usable manifest
    row, sorted by path: the same files with the same labels and split give the
    same fingerprint, whatever folder they were read from."""
    h = hashlib.sha256()
    for path, label, digest, split in sorted(rows):
        h.update(f"{path}\t{label}\t{digest}\t{split}\n".encode())
    return h.hexdigest()


def signature(spec: PreprocessSpec, num_classes: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs, as model.json and KServe V2 metadata list them."""
    s = spec.image_size
    inputs = [
        {
            "name": INPUT_NAME,
            "datatype": "UINT8",
            "shape": [-1, 3, s, s],
            "layout": "NCHW",
            "description": f"RGB centre crops, 0..255, {s}x{s}; normalised inside the graph",
        }
    ]
    return inputs, output_signature(num_classes)


def output_signature(num_classes: int) -> list[dict[str, Any]]:
    """The graph's public outputs (image and tabular alike), as model.json and KServe V2 list them."""
    return [
        {"name": "logits", "datatype": "FP32", "shape": [-1, num_classes]},
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [-1, num_classes],
            "description": "softmax of logits, in label order",
        },
    ]


@dataclass(frozen=True)
class ModelPackage:
    """An export folder whose files were checked against model.json."""

    root: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["labels"])

    @property
    def architecture(self) -> str:
        return str(self.manifest["architecture"])

    @property
    def modality(self) -> str:
        """``"image"``, ``"tabular"`` or ``"text"`` (model.json's ``modality``; absent in image exports)."""
        return str(self.manifest.get("modality") or "image")

    @property
    def spec(self) -> PreprocessSpec:
        """The image preprocessing; :class:`ArtifactError` for a tabular model, which has none."""
        if self.modality != "image":
            raise ArtifactError(f"model folder '{self.root}' is {self.modality}: it has no image preprocessing")
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def columns(self) -> ColumnSchema:
        """A tabular model's columns (:class:`ArtifactError` for an image model)."""
        return ColumnSchema.from_dict(self._tabular("columns"))

    @property
    def tabular_spec(self) -> TabularSpec:
        """A tabular model's fitted preprocessing spec (:class:`ArtifactError` for an image model)."""
        return TabularSpec.from_dict(self._tabular("tabular_spec"))

    @property
    def text_spec(self) -> TextSpec:
        """A text model's fitted vectorisation spec (:class:`ArtifactError` for another model)."""
        if self.modality != "text":
            raise ArtifactError(f"model folder '{self.root}' is an {self.modality} model: it has no text_spec")
        return TextSpec.from_dict(self.manifest["text_spec"])

    def _tabular(self, key: str) -> dict[str, Any]:
        if self.modality != "tabular":
            raise ArtifactError(f"model folder '{self.root}' is an {self.modality} model: it has no {key}")
        return dict(self.manifest[key])

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_FILE

    def variant_path(self, variant: str) -> Path:
        """The ONNX file of ``variant`` (fp32: model.onnx); :class:`ArtifactError` when the folder has none."""
        if variant == "fp32":
            return self.onnx_path
        entry = (self.manifest.get("variants") or {}).get(variant)
        if variant not in VARIANTS or not isinstance(entry, dict) or entry.get("file") not in self.manifest["files"]:
            have = ", ".join(["fp32", *sorted(self.manifest.get("variants") or {})])
            raise ArtifactError(
                f"model folder '{self.root}' has no {variant} variant (it has: {have}); "
                f"export one with `duet export RUN --quantize {variant} --force`, "
                "or serve --model-variant fp32"
            )
        return self.root / str(entry["file"])

    @property
    def formats(self) -> dict[str, Any]:
        """model.json's ``formats`` (an export older than it: ONNX only)."""
        return dict(self.manifest.get("formats") or {"onnx": {"files": [ONNX_FILE], "runtime": "onnxruntime"}})

    def format_path(self, fmt: str) -> Path:
        """The file (TFLite, ONNX) or version folder (SavedModel) of ``fmt``;
        :class:`ArtifactError` naming the way to export it when the folder has none."""
        entry = self.formats.get(fmt)
        if not isinstance(entry, dict):
            have = ", ".join(sorted(self.formats))
            raise ArtifactError(
                f"model folder '{self.root}' has no {fmt} format (it has: {have}); "
                f"export it with `duet export RUN --format onnx,{fmt} --force`"
            )
        return self.root / str(entry.get("path") or entry["files"][0])

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def onnx_sha256(self) -> str:
        return str(self.manifest["files"][ONNX_FILE]["sha256"])


def resolve_export_dir(path: str | Path) -> Path:
    """A model folder (with model.json), or a run folder whose export/ holds one."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if (p / "export" / MANIFEST).is_file():
        return p / "export"
    if (p / "run.json").is_file():
        raise ArtifactError(f"run '{p}' has not been exported yet; run `duet export {p}` first")
    if not p.exists():
        raise ArtifactError(
            f"'{p}' does not exist; pass a run folder (runs/<name>) or an export folder with model.json"
        )
    raise ArtifactError(
        f"'{p}' holds no model.json; pass a run folder exported with `duet export` or its export/ folder"
    )


def read_package(path: str | Path, *, verify: bool = True) -> ModelPackage:
    """Open a model folder. With ``verify`` (the default) every file listed in
    model.json must exist and match its sha256, else :class:`ArtifactError`:
    a server never loads a file that changed after export."""
    root = resolve_export_dir(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"'{root / MANIFEST}' is unreadable ({type(e).__name__}); re-export the run") from None
    problem = _schema_problem(manifest)
    if problem:
        raise ArtifactError(f"'{root / MANIFEST}' is not a duet model manifest ({problem}); re-export the run")
    if verify:
        verify_files(root, manifest["files"])
    return ModelPackage(root, manifest)


def _schema_problem(m: Any) -> str:
    if not isinstance(m, dict):
        return "not a JSON object"
    if m.get("schema") != SCHEMA:
        return f"schema is {m.get('schema')!r}, expected {SCHEMA!r}"
    modality = m.get("modality", "image")
    if modality not in MODALITIES:
        return f"modality is {modality!r}, expected one of {', '.join(MODALITIES)}"
    specs = {"image": ("preprocess",), "tabular": ("columns", "tabular_spec"), "text": ("text_spec",)}[modality]
    for key, kind in (
        ("name", str),
        ("architecture", str),
        ("labels", list),
        *((name, dict) for name in specs),
        ("files", dict),
        ("inputs", list),
        ("outputs", list),
    ):
        if not isinstance(m.get(key), kind):
            return f"missing or malformed '{key}'"
    if len(m["labels"]) < 2:
        return "fewer than two labels"
    if ONNX_FILE not in m["files"]:
        return f"'{ONNX_FILE}' is not listed in files"
    try:
        if modality == "image":
            PreprocessSpec.from_dict(m["preprocess"])
        elif modality == "text":
            TextSpec.from_dict(m["text_spec"])
        else:
            ColumnSchema.from_dict(m["columns"])
            TabularSpec.from_dict(m["tabular_spec"])
    except (KeyError, TypeError, ValueError, DuetError) as e:
        return f"bad {' / '.join(specs)}: {e}"
    return ""


def verify_files(root: Path, files: dict[str, Any]) -> None:
    for name, entry in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not isinstance(entry, dict):
            raise ArtifactError(f"model.json in '{root}' lists an invalid file entry {name!r}; re-export the run")
        path = root / rel
        if not path.is_file():
            raise ArtifactError(f"'{path}' is listed in model.json but missing; re-export the run")
        found = sha256_file(path)
        if found != entry.get("sha256"):
            raise ArtifactError(
                f"refusing to load '{path}': its sha256 is {found[:12]}..., model.json says "
                f"{str(entry.get('sha256'))[:12]}...; the file changed after export "
                "(re-export with `duet export RUN --force` if the change is yours)"
            )
