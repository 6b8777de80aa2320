"""The exported text graph: raw UTF-8 strings in, the spec's tokenizer inside, logits, probabilities and features out.

```
text string [N] --> standardize --> ASCII whitespace -> " " --> StringSplit --> tokens [N, M], counts [N]
                    (RE2 replaces)                              (ONNX)            |
                        LabelEncoder(tokens) ++ LabelEncoder(bigrams) ++ [0] <----+
                        GatherElements at each document's positions 0..L-1      --> duet/ids int64 [N, S]
duet/ids --> the model (torch.onnx, dynamo) --> logits, probabilities [N, C], features [N, D]
```

The tokenizer is :func:`duet.data.text.spec.encode` (Keras ``TextVectorization``)
op for op, and a test proves the ids equal (``tests/test_text_export.py``, a
Unicode edge-case corpus, every standardize mode, ngrams 1 and 2):

- **lower**: 26 ``StringRegexReplace`` nodes, ``A`` -> ``a`` ... ``Z`` -> ``z``
  (onnxruntime-extensions, RE2 like ``tf.strings``): exactly the ASCII letters,
  byte for byte, on every platform. The standard ``StringNormalizer`` is
  refused: it needs a named locale ("en_US.UTF-8" fails to load where the
  locale is not installed) and lowercases Unicode letters with "C.UTF-8"
  ("ÉCOLE" -> "école", "ẞ" -> "ß", "İ" -> "i"); with "C" it is ASCII-only on
  glibc, but that is the C library's table, not a property of the graph.
  onnxruntime-extensions' own ``StringLower`` is Unicode too ("À" -> "à").
- **strip punctuation**: one ``StringRegexReplace`` of Keras' regex
  (:data:`PUNCTUATION`) with "" (``tf.strings.regex_replace`` is RE2 as well).
- **split**: the standard ``StringSplit`` (opset 20) without a delimiter splits
  on runs of " " only, so the five other ASCII whitespace characters
  (``\\t\\n\\v\\f\\r``) are first replaced by " " (:data:`OTHER_WHITESPACE`);
  U+00A0, U+3000, U+2003, U+0085, U+001C-U+001F stay inside tokens, as in Keras.
- **bigrams** (ngrams 2): ``StringConcat(StringConcat(tokens[:, :-1], " "), tokens[:, 1:])``.
- **lookup**: ONNX-ML ``LabelEncoder``, keys ``["", *vocabulary]`` -> ``[0, 2, 3, ...]``,
  default ``OOV_ID`` (the "" key only keeps the list non-empty; split never makes "").
- **pack**: document i's ids are its L unigrams then its max(L - 1, 0) bigrams,
  truncated or 0-padded to ``sequence_length`` S: position p takes the unigram
  column p when p < L, the bigram column p - L when p < L + B, else a 0 column
  appended at the end (``GatherElements`` with indices built from ``Range``-free
  integer arithmetic: ``Where``, ``Less``, ``Add``).

The model part is ``torch.onnx.export(..., dynamo=True)`` of ``model(ids)`` and
``model.features(ids)`` (the contract of ``duet.training.text_models``) with a
softmax; its names are prefixed ``model/`` and it is joined to the tokenizer
with ``onnx.compose.merge_models`` (as ``duet.exporting.tabular_graph`` does).
The whitespace step makes every text graph use onnxruntime-extensions, whose
library must be registered in the session options (:func:`session_options`).
"""

from __future__ import annotations

import functools
import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch

import duet
from duet.artifacts.model_package import FEATURES_NAME, OUTPUT_NAMES
from duet.data.text.spec import FIRST_TOKEN_ID, OOV_ID, PAD_ID, TextSpec
from duet.errors import ModelError
from duet.exporting.memory_graph import dynamo_proto, merge_and_save
from duet.exporting.onnx_graph import DEFAULT_OPSET, MAX_BATCH, write_metadata
from duet.exporting.tabular_graph import BATCH, ML_DOMAIN, ML_OPSET, MODEL_PREFIX

TEXT_INPUT = "text"  # the graph's one input: string [N], one document per element
IDS_EDGE = "duet/ids"  # the tokenizer's int64 [N, sequence_length] output inside model.onnx
CONTRIB_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' custom operators
CONTRIB_OPSET = 1
CUSTOM_OPS = "onnxruntime_extensions"  # model.json runtime.custom_ops when the graph uses them
MIN_OPSET = 20  # StringSplit and StringConcat
PUNCTUATION = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'  # Keras' DEFAULT_STRIP_REGEX, verbatim
OTHER_WHITESPACE = r"[\t\n\x0b\x0c\r]"  # ASCII whitespace that StringSplit does not split on
OUTPUTS = (*OUTPUT_NAMES, FEATURES_NAME)  # the graph's outputs, in order


def session_options() -> Any:
    """ONNX Runtime session options with onnxruntime-extensions' custom-op library registered
    (:class:`ModelError` naming the extra to install when it is missing, or when its regex
    operator does not work in this process: :func:`custom_ops_library`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(custom_ops_library())
    return options


@functools.cache
def custom_ops_library() -> str:
    """The library's path, loaded (``duet.serve.runtimes.extensions_library``: it must call its
    own RE2, not TensorFlow's) and checked once per process on a one-node graph: "A,b" with
    ``[A,]`` replaced by "a" must give "aab"."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from duet.serve.runtimes import extensions_library

    library = extensions_library()
    if library is None:
        raise ModelError(
            "a text model's graph tokenizes with onnxruntime-extensions operators; "
            "install them: pip install 'duet[text]' (onnxruntime-extensions)"
        )
    b = _Nodes()
    out = b.replace(TEXT_INPUT, "[A,]", "a", "canary")
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        b.nodes,
        "canary",
        [value(TEXT_INPUT, TensorProto.STRING, [1])],
        [value(out, TensorProto.STRING, [1])],
        b.initializers,
    )
    opsets = [helper.make_opsetid("", MIN_OPSET), helper.make_opsetid(CONTRIB_DOMAIN, CONTRIB_OPSET)]
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    got = str(session.run(None, {TEXT_INPUT: np.array(["A,b"], dtype=object)})[0][0])
    if got != "aab":
        raise ModelError(
            f"onnxruntime-extensions' regex operator does not work in this process ('A,b' gave {got!r}, not 'aab'): "
            "TensorFlow was probably imported before it and its RE2 took the library's place; run the export or "
            "the model in a process that loads the text model before importing TensorFlow"
        )
    return library


def refused_reason(text: str) -> str | None:
    """Why the graph cannot take ``text`` (None when it can): onnxruntime-extensions'
    ``StringRegexReplace`` reads a string up to its first NUL, so "a\\x00b" would lose "b"
    (measured: the ids differ from ``encode``'s), and ONNX strings are UTF-8, which an
    unpaired surrogate is not. A server refuses such texts (model.json ``limits``)."""
    if "\x00" in text:
        return "contains U+0000 (NUL), which the graph's regex operator reads as the end of the text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate, which is not UTF-8"
    return None


class _Nodes:
    """A tiny builder of the tokenizer's nodes and constants, each named ``duet/...``."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: Any, dtype: Any = None) -> str:
        from onnx import numpy_helper

        array = np.array(value, dtype=dtype if dtype is not None else np.int64)
        self.initializers.append(numpy_helper.from_array(array, f"duet/{name}"))
        return f"duet/{name}"

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        from onnx import helper

        out = f"duet/{output}" if not output.startswith("duet/") else output
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def replace(self, text: str, pattern: str, rewrite: str, name: str) -> str:
        p = self.const(f"{name}_pattern", pattern, object)
        r = self.const(f"{name}_rewrite", rewrite, object)
        return self.op("StringRegexReplace", [text, p, r], name, domain=CONTRIB_DOMAIN, global_replace=1)


def _standardize(b: _Nodes, text: str, mode: str) -> str:
    if mode in ("lower", "lower_and_strip_punctuation"):
        for upper in string.ascii_uppercase:
            text = b.replace(text, upper, upper.lower(), f"lower_{upper}")
    if mode in ("strip_punctuation", "lower_and_strip_punctuation"):
        text = b.replace(text, PUNCTUATION, "", "strip_punctuation")
    return b.replace(text, OTHER_WHITESPACE, " ", "whitespace")


def _lookup(b: _Nodes, strings: str, spec: TextSpec, name: str) -> str:
    return b.op(
        "LabelEncoder",
        [strings],
        name,
        domain=ML_DOMAIN,
        keys_strings=["", *spec.vocabulary],
        values_int64s=[PAD_ID, *range(FIRST_TOKEN_ID, spec.vocab_size)],
        default_int64=OOV_ID,
    )


def _pack(b: _Nodes, tokens: str, counts: str, spec: TextSpec) -> None:
    """:data:`IDS_EDGE` from the id columns ``[unigrams | bigrams | 0]`` (module doc, "pack")."""
    from onnx import TensorProto, helper

    columns = [_lookup(b, tokens, spec, "unigram_ids")]
    n = b.op("Unsqueeze", [counts, b.const("axis_1", [1])], "n_unigrams")  # [N, 1]
    total = n
    if spec.ngrams == 2:
        left = b.op(
            "Slice", [tokens, b.const("start_0", [0]), b.const("end_minus_1", [-1]), b.const("axes", [1])], "left"
        )
        right = b.op("Slice", [tokens, b.const("start_1", [1]), b.const("end_max", [2**62]), "duet/axes"], "right")
        spaced = b.op("StringConcat", [left, b.const("space", " ", object)], "left_space")
        columns.append(_lookup(b, b.op("StringConcat", [spaced, right], "bigrams"), spec, "bigram_ids"))
        minus_1 = b.op("Sub", [n, b.const("one", 1)], "n_minus_1")
        total = b.op("Add", [n, b.op("Max", [minus_1, b.const("zero", 0)], "n_bigrams")], "n_ids")
    rows = b.op("Concat", [b.op("Shape", [counts], "batch"), b.const("one_column", [1])], "pad_shape", axis=0)
    pad = helper.make_tensor("zero_id", TensorProto.INT64, [1], [PAD_ID])
    columns.append(b.op("ConstantOfShape", [rows], "pad_ids", value=pad))
    ids = b.op("Concat", columns, "id_columns", axis=1)  # [N, M + B + 1]
    second = b.const("dim_1", 1)  # a scalar index: Gather of it is a scalar
    width = b.op("Gather", [b.op("Shape", [tokens], "token_shape"), second], "n_columns")  # M
    last = b.op(
        "Sub",
        [b.op("Gather", [b.op("Shape", [ids], "id_shape"), second], "id_width"), b.const("one_", 1)],
        "pad_column",
    )
    position = b.const("positions", np.arange(spec.sequence_length))  # [S]
    bigram = b.op("Add", [width, b.op("Sub", [position, n], "after_unigrams")], "bigram_column")
    index = b.op("Where", [b.op("Less", [position, total], "in_ids"), bigram, last], "bigram_or_pad")
    index = b.op("Where", [b.op("Less", [position, n], "in_unigrams"), position, index], "gather_index")
    b.op("GatherElements", [ids, index], IDS_EDGE, axis=1)


def tokenizer_proto(spec: TextSpec, *, opset: int, ir_version: int) -> Any:
    """The tokenizer half: :data:`TEXT_INPUT` string ``[N]`` -> :data:`IDS_EDGE` int64 ``[N, S]``."""
    from onnx import TensorProto, helper

    b = _Nodes()
    text = _standardize(b, TEXT_INPUT, spec.standardize)
    b.nodes.append(helper.make_node("StringSplit", [text], ["duet/tokens", "duet/counts"], name="duet/split"))
    _pack(b, "duet/tokens", "duet/counts", spec)
    graph = helper.make_graph(
        b.nodes,
        "duet_text_tokenizer",
        [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, [BATCH])],
        [helper.make_tensor_value_info(IDS_EDGE, TensorProto.INT64, [BATCH, spec.sequence_length])],
        b.initializers,
    )
    imports = [helper.make_opsetid("", max(opset, MIN_OPSET)), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    if any(node.domain == CONTRIB_DOMAIN for node in b.nodes):
        imports.append(helper.make_opsetid(CONTRIB_DOMAIN, CONTRIB_OPSET))
    return helper.make_model(graph, opset_imports=imports, ir_version=ir_version)


class IdsToOutputs(torch.nn.Module):
    """``ids`` -> ``(logits, softmax(logits), features)``, float32 ``(N, C)``, ``(N, C)``, ``(N, D)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(ids).float()
        features = self.model.features(ids).float()  # type: ignore[operator]
        return logits, torch.softmax(logits, dim=1), features


def _model_proto(model: torch.nn.Module, spec: TextSpec, opset: int) -> Any:
    """The torch half: ``ids`` int64 ``[N, S]`` -> logits, probabilities, features."""
    wrapper = IdsToOutputs(model.float().cpu().eval()).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, spec.vocab_size, (2, spec.sequence_length), generator=generator)
    example[1, spec.sequence_length // 2 :] = PAD_ID  # a padded row too
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    opset = max(opset, MIN_OPSET)
    return dynamo_proto(wrapper, (example,), ["ids"], list(OUTPUTS), ({0: batch},), opset, "text")


def export_text_onnx(
    model: torch.nn.Module, spec: TextSpec, path: Path, *, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """Write the whole graph (see the module doc) to ``path``; returns what model.json records about it."""
    import onnx
    from onnx import compose

    trained = _model_proto(model, spec, opset)
    version = next(o.version for o in trained.opset_import if o.domain in ("", "ai.onnx"))
    pre = tokenizer_proto(spec, opset=version, ir_version=trained.ir_version)
    trained = compose.add_prefix(trained, MODEL_PREFIX, rename_outputs=False)
    merged = merge_and_save(pre, trained, [(IDS_EDGE, MODEL_PREFIX + "ids")], "text", path)
    custom = any(node.domain == CONTRIB_DOMAIN for node in pre.graph.node)
    features = next(o for o in merged.graph.output if o.name == FEATURES_NAME).type.tensor_type.shape.dim[1]
    return {
        "opset": version,
        "ml_opset": ML_OPSET,
        "custom_opset": {CONTRIB_DOMAIN: CONTRIB_OPSET} if custom else None,
        "exporter": f"torch.onnx.export dynamo=True (torch {torch.__version__}) + onnx.compose.merge_models "
        f"(onnx {onnx.__version__})",
        "tokenizer_nodes": len(pre.graph.node),
        "ids_edge": IDS_EDGE,
        "custom_ops": CUSTOM_OPS if custom else None,
        "features_dim": int(features.dim_value),
    }


def metadata_props(labels: list[str], spec: TextSpec, architecture: str, max_chars: int) -> dict[str, str]:
    """What ``model.onnx`` carries in its ``metadata_props``, so the file alone is usable."""
    return {
        "modality": "text",
        "labels": json.dumps(labels),
        "text_spec": json.dumps(spec.to_dict()),
        "input": (
            f"'{TEXT_INPUT}': string [N], one raw UTF-8 document per element (at most {max_chars} characters "
            "each); the graph standardises, splits and looks tokens up itself (Keras TextVectorization's ids)"
        ),
        "custom_ops": CUSTOM_OPS,
        "architecture": architecture,
        "duet_version": duet.__version__,
    }


def write_text_onnx(
    model: torch.nn.Module,
    spec: TextSpec,
    labels: list[str],
    architecture: str,
    path: Path,
    *,
    max_chars: int,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """:func:`export_text_onnx` with the labels and spec in the file's metadata."""
    graph = export_text_onnx(model, spec, path, opset=opset)
    write_metadata(path, metadata_props(labels, spec, architecture, max_chars))
    return graph


def text_feed(texts: list[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime's feed for ``texts``: the one string input, ``[N]``."""
    return {TEXT_INPUT: np.array(list(texts), dtype=object).reshape(-1)}


def ids_session(onnx_path: Path) -> Any:
    """An ONNX Runtime session on ``onnx_path`` that also returns :data:`IDS_EDGE` (for the gate and tests):
    the shipped graph, unchanged but for one more graph output."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    proto = onnx.load(str(onnx_path))
    proto.graph.output.append(helper.make_tensor_value_info(IDS_EDGE, TensorProto.INT64, None))
    return ort.InferenceSession(proto.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
