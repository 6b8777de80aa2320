"""``export_text_run(run_dir)``: a text run -> the same checked, self-describing model folder.

``duet export RUN`` comes here when RUN/run.json says ``"modality": "text"``
(``duet.exporting.exporter.export_run`` dispatches). The story, as for tables:

1. the run's best weights, spec and labels (``duet.training.text_run.load_text_model``)
   and its split documents (``load_split_texts``: the corpus is read again and must
   not have changed);
2. ``model.onnx`` (raw UTF-8 strings in, the tokenizer inside:
   ``duet.exporting.text_graph``) and ``model.safetensors`` into a temporary folder
   beside the destination;
3. the parity gate (:func:`check_text_parity`) on **every** validation document
   (the test documents, then the training ones, when a run has none): the graph's
   token ids must equal ``duet.data.text.spec.encode``'s on every document, top-1
   must agree and max |Δprobability| be <= ``tolerance`` (1e-4) against the torch
   model on those ids, else :class:`~duet.exporting.parity.ParityError` and nothing
   is left behind. A document the graph cannot take (:func:`refused_reason`: one
   holding U+0000, which onnxruntime-extensions' regex operator reads as the end of
   the string, or an unpaired surrogate, which is not UTF-8) is left out of the
   gate and counted (``unreadable``); the model's ``limits`` tell a server to
   refuse such texts;
4. RUN/profile (the drift reference, when the run has one) is copied to ``profile/``;
5. ``MODEL_CARD.md`` and ``model.json`` (``modality`` "text", ``text_spec``, the
   one ``text`` input, ``features`` among the outputs, ``limits``, ``runtime``),
   then the folder is renamed into place.

ONNX (fp32) is the only format: ``--quantize``, ``--data`` and the TensorFlow
formats are refused with one line (:func:`refuse_options`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from duet.artifacts.model_package import (
    FEATURES_NAME,
    MANIFEST,
    ONNX_FILE,
    output_signature,
)
from duet.data.text.spec import TextSpec, encode
from duet.errors import RunError
from duet.exporting.memory_export import copy_run_files, manifest_head, manifest_tail, with_card
from duet.exporting.memory_export import refuse_image_options as refuse
from duet.exporting.onnx_graph import DEFAULT_OPSET
from duet.exporting.parity import DEFAULT_TOLERANCE, ParityError, ParityReport, compare
from duet.exporting.staging import ExportResult, destination, staged, versions
from duet.exporting.tabular_export import parity_chunks
from duet.exporting.text_graph import (
    CUSTOM_OPS,
    IDS_EDGE,
    OUTPUTS,
    TEXT_INPUT,
    ids_session,
    refused_reason,
    text_feed,
    write_text_onnx,
)
from duet.system.atomic import write_json_atomic
from duet.system.progress import make_progress
from duet.training.text_run import SPLITS_FILE, load_split_texts, load_text_model, read_run_info

Log = Callable[[str], None]
MAX_CHARS = 100_000  # model.json limits.max_chars: the longest document a server accepts (a long article)


def refuse_options(*, quantize: str | None, formats: Sequence[str] | str, data_dir: Path | None) -> None:
    """``duet export`` options a text run cannot take: one ConfigError line each."""
    refuse(
        "a text run",
        ": its graph tokenizes raw strings with onnxruntime-extensions operators, which SavedModel and TFLite "
        "cannot run",
        "reads its corpus from the path in run.json's source (put it back there)",
        quantize=quantize,
        formats=formats,
        data_dir=data_dir,
    )


@dataclass
class TextParityReport(ParityReport):
    """The gate's result: ``images`` counts documents; ``ids_differ`` documents whose graph ids are not
    ``encode``'s; ``unreadable`` documents left out (:func:`refused_reason`)."""

    ids_differ: int = 0
    max_abs_feature_diff: float = 0.0

    @property
    def passed(self) -> bool:
        return super().passed and self.ids_differ == 0

    def failure(self) -> str:
        parts = [super().failure().replace("images", "documents")] if not super().passed else []
        if self.ids_differ:
            parts.append(f"token ids differ from the spec's on {self.ids_differ} of {self.images} documents")
        return "; ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "passed": self.passed, "documents": self.images}


def export_text_run(
    run_dir: str | Path,
    *,
    out_dir: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 32,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    max_chars: int = MAX_CHARS,
    progress: bool = True,
    log: Log = print,
) -> ExportResult:
    """Export a text run's best weights to ``out_dir`` (default RUN/export/); see the module doc.

    Raises:
        ParityError: the graph disagrees with the spec or PyTorch on a validation document; nothing is written.
        RunError, DataError, ModelError: the run, its corpus or the model is unusable.
    """
    t0 = time.perf_counter()
    root = Path(run_dir)
    info = read_run_info(root)
    dest = destination(root, out_dir, force)
    model, spec, labels = load_text_model(root)
    model = model.float().cpu().eval()
    splits = load_split_texts(root)
    texts, split = gate_texts(splits, root)

    with staged(dest) as tmp:
        log(f"exporting {info['model']} ({len(labels)} classes, {len(spec.vocabulary)} tokens) to ONNX")
        graph = write_text_onnx(
            model, spec, labels, str(info["model"]), tmp / ONNX_FILE, max_chars=max_chars, opset=opset
        )
        copy_run_files(root, tmp)  # weights, and the drift reference when the run has one
        log(f"parity gate: {len(texts)} {split} documents through the spec + PyTorch and ONNX Runtime")
        parity = check_text_parity(
            model, tmp / ONNX_FILE, spec, texts, split=split, tolerance=tolerance, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
        if not parity.passed:
            raise ParityError(
                f"export of '{root}' failed the parity gate: {parity.failure()} ({parity.images} {split} documents, "
                "fp32); nothing was written. Re-run with --debug, try another --opset, or report it as an exporter bug"
            )
        manifest = text_manifest(root, info, (spec, labels), graph, parity, splits, tmp, max_chars)
        write_json_atomic(tmp / MANIFEST, manifest)
    return ExportResult(dest, manifest, parity, time.perf_counter() - t0)


def gate_texts(splits: dict[str, tuple[list[str], list[str]]], root: Path) -> tuple[list[str], str]:
    """The documents the parity gate runs on: the validation split, else test, else train."""
    for split in ("val", "test", "train"):
        texts = splits.get(split, ([], []))[0]
        if texts:
            return list(texts), split
    raise RunError(f"run '{root}' has no document in any split; the parity gate needs documents")


@torch.no_grad()
def check_text_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    spec: TextSpec,
    texts: Sequence[str],
    *,
    split: str,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 32,
    progress: bool = True,
) -> TextParityReport:
    """Every document of ``texts`` through ``encode`` + ``model`` and through the ONNX file fed the raw
    strings (each batch as ``batch_size - 1`` documents, then 1). PyTorch runs every chunk first, on one
    thread (see ``duet.exporting.tabular_export.check_tabular_parity`` for why), then ONNX Runtime."""
    session = ids_session(onnx_path)
    usable = [t for t in texts if refused_reason(t) is None]
    chunks = parity_chunks(len(usable), batch_size)
    differ = ids_differ = 0
    max_p = max_l = max_f = 0.0
    with make_progress(progress) as bar:
        task = bar.add_task("parity", total=2 * len(usable), info="pytorch")
        references = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for lo, hi in chunks:
                ids = encode(spec, usable[lo:hi])
                tensor = torch.from_numpy(ids)
                references.append((ids, model(tensor).float(), model.features(tensor).float()))  # type: ignore[operator]
                bar.advance(task, hi - lo)
        finally:
            torch.set_num_threads(threads)
        bar.update(task, info="onnxruntime")
        for (lo, hi), (ref_ids, ref_logits, ref_features) in zip(chunks, references):
            ids, logits, probs, features = session.run([IDS_EDGE, *OUTPUTS], text_feed(usable[lo:hi]))
            ids_differ += int((ids != ref_ids).any(axis=1).sum()) if ids.shape == ref_ids.shape else hi - lo
            d, mp = compare(torch.softmax(ref_logits, 1).numpy(), probs)
            _, ml = compare(ref_logits.numpy(), logits)
            _, mf = compare(ref_features.numpy(), features)
            differ, max_p, max_l, max_f = differ + d, max(max_p, mp), max(max_l, ml), max(max_f, mf)
            bar.advance(task, hi - lo)
    n = len(usable)
    return TextParityReport(
        images=n,
        split=split,
        top1_agreement=(n - differ) / n if n else 0.0,
        disagreements=differ,
        max_abs_prob_diff=max_p,
        max_abs_logit_diff=max_l,
        tolerance=tolerance,
        unreadable=len(texts) - n,
        batch_sizes=sorted({hi - lo for lo, hi in chunks}),
        ids_differ=ids_differ,
        max_abs_feature_diff=max_f,
    )


def data_section(root: Path, info: dict[str, Any], splits: dict[str, tuple[list[str], list[str]]]) -> dict[str, Any]:
    """model.json's ``data``: the corpus, documents per split and a fingerprint of corpus and split."""
    source = dict(info.get("source") or {})
    splits_path = root / SPLITS_FILE
    assignment = json.loads(splits_path.read_text(encoding="utf-8")) if splits_path.is_file() else {}
    digest = json.dumps(
        {"fingerprint": source.get("fingerprint"), "val_fingerprint": source.get("val_fingerprint"),
         "splits": assignment},
        sort_keys=True,
    )  # fmt: skip
    return {
        "fingerprint": hashlib.sha256(digest.encode()).hexdigest(),
        "fingerprint_of": "sha256 of the JSON {fingerprint, val_fingerprint (the corpora's, run.json source), "
        "splits (splits.json)}, keys sorted",
        "documents": sum(len(texts) for texts, _ in splits.values()),
        "per_split": {name: len(texts) for name, (texts, _) in splits.items()},
        "source": source,
    }


def text_manifest(
    root: Path,
    info: dict[str, Any],
    fitted: tuple[TextSpec, list[str]],
    graph: dict[str, Any],
    parity: TextParityReport,
    splits: dict[str, tuple[list[str], list[str]]],
    tmp: Path,
    max_chars: int,
) -> dict[str, Any]:
    """model.json of a text export (duet.artifacts.model_package); writes MODEL_CARD.md into ``tmp``."""
    spec, labels = fitted
    gate = parity.to_dict()
    features = {"name": FEATURES_NAME, "datatype": "FP32", "shape": [-1, graph["features_dim"]],
                "description": "the model's pooled vector (drift monitoring)"}  # fmt: skip
    manifest = manifest_head(root, info, "text", labels) | {
        "text_spec": spec.to_dict(),
        "inputs": [
            {
                "name": TEXT_INPUT,
                "datatype": "BYTES",
                "shape": [-1],
                "description": "raw UTF-8 documents, one per element; tokenized inside the graph",
            }
        ],
        "outputs": [*output_signature(len(labels)), features],
        "limits": {
            "max_chars": max_chars,
            "refused": "texts containing U+0000 or an unpaired surrogate (not UTF-8): the graph cannot read them",
        },
        "runtime": {"custom_ops": graph["custom_ops"]},
    }
    data = data_section(root, info, splits)
    manifest |= manifest_tail(
        root, info, gate, graph, data, {**versions(with_timm=False), **_extensions_version(graph)}
    )
    return with_card(manifest, tmp)


def _extensions_version(graph: dict[str, Any]) -> dict[str, str]:
    if graph.get("custom_ops") != CUSTOM_OPS:
        return {}
    from importlib.metadata import version

    return {"onnxruntime_extensions": version("onnxruntime-extensions")}
