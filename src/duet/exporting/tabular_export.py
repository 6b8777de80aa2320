"""``export_tabular_run(run_dir)``: a tabular run -> the same checked, self-describing model folder.

``duet export RUN`` comes here when RUN/run.json says ``"modality": "tabular"``
(``duet.exporting.exporter.export_run`` dispatches). The story, as for images:

1. the run's best weights, spec, schema and labels
   (``duet.training.tabular_run.load_tabular_model``) and its split tables
   (``load_split_tables``: the table file is read again and must not have changed);
2. ``model.onnx`` (one input per feature column, all preprocessing inside:
   ``duet.exporting.tabular_graph``) and ``model.safetensors`` into a temporary
   folder beside the destination;
3. the parity gate (:func:`check_tabular_parity`) on **every** validation row
   (the test rows, then the training rows, when a run has none): ONNX Runtime
   fed the raw columns against the torch model on ``spec.transform`` of the
   same rows; top-1 must agree on every row and max |Δprobability| be <=
   ``tolerance`` (1e-4), else :class:`~duet.exporting.parity.ParityError` and
   nothing is left behind;
4. RUN/profile (the drift reference, ``profile/tabular.json`` of
   ``duet.monitor.tabular_profile``, when the run has one) is copied to ``profile/``;
5. ``MODEL_CARD.md`` and ``model.json`` (the tabular keys of
   ``duet.artifacts.model_package``: ``modality``, ``columns``, ``tabular_spec``,
   ``inputs`` per column), then the folder is renamed into place.

ONNX (fp32) is the only format: ``--quantize`` and the TensorFlow formats are
refused with one line (:func:`refuse_image_options`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from duet.artifacts.model_package import (
    MANIFEST,
    ONNX_FILE,
    output_signature,
)
from duet.data.tabular.schema import ColumnSchema, Table, num_rows, take
from duet.data.tabular.spec import TabularSpec
from duet.errors import RunError
from duet.exporting.memory_export import copy_run_files, manifest_head, manifest_tail, with_card
from duet.exporting.memory_export import refuse_image_options as refuse
from duet.exporting.onnx_graph import DEFAULT_OPSET
from duet.exporting.parity import DEFAULT_TOLERANCE, ParityError, ParityReport, compare
from duet.exporting.staging import ExportResult, destination, staged, versions
from duet.exporting.tabular_graph import graph_feed, signature_inputs, write_tabular_onnx
from duet.system.atomic import write_json_atomic
from duet.system.progress import make_progress
from duet.training.tabular_run import SPLITS_FILE, features, load_split_tables, load_tabular_model, read_run_info

Log = Callable[[str], None]


def refuse_image_options(*, quantize: str | None, formats: Sequence[str] | str, data_dir: Path | None) -> None:
    """``duet export`` options a tabular run cannot take: one ConfigError line each."""
    refuse(
        "a tabular run",
        " (SavedModel and TFLite exports are for image runs)",
        "reads its table from the path in run.json's source (put the file back there)",
        quantize=quantize,
        formats=formats,
        data_dir=data_dir,
    )


def export_tabular_run(
    run_dir: str | Path,
    *,
    out_dir: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 32,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    progress: bool = True,
    log: Log = print,
) -> ExportResult:
    """Export a tabular run's best weights to ``out_dir`` (default RUN/export/); see the module doc.

    Raises:
        ParityError: the graph disagrees with PyTorch on a validation row; nothing is written.
        RunError, DataError, ModelError: the run, its table or the model is unusable.
    """
    t0 = time.perf_counter()
    root = Path(run_dir)
    info = read_run_info(root)
    dest = destination(root, out_dir, force)
    model, spec, schema, labels = load_tabular_model(root)
    model = model.float().cpu().eval()
    tables = load_split_tables(root)
    table, split = gate_table(tables, root)

    with staged(dest) as tmp:
        log(f"exporting {info['model']} ({len(labels)} classes, {len(schema.features())} feature columns) to ONNX")
        graph = write_tabular_onnx(model, spec, schema, labels, str(info["model"]), tmp / ONNX_FILE, opset=opset)
        copy_run_files(root, tmp)  # weights, and profile/tabular.json (the drift reference)
        log(f"parity gate: {num_rows(table)} {split} rows through PyTorch and ONNX Runtime")
        parity = check_tabular_parity(
            model, tmp / ONNX_FILE, spec, schema, table, split=split, tolerance=tolerance, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
        if not parity.passed:
            raise ParityError(
                f"export of '{root}' failed the parity gate: {parity.failure().replace('images', 'rows')} "
                f"({parity.images} {split} rows, fp32); nothing was written. "
                "Re-run with --debug, try another --opset, or report the model name as an exporter bug"
            )
        manifest = tabular_manifest(root, info, (spec, schema, labels), graph, parity, tables, tmp)
        write_json_atomic(tmp / MANIFEST, manifest)
    return ExportResult(dest, manifest, parity, time.perf_counter() - t0)


def gate_table(tables: dict[str, Table], root: Path) -> tuple[Table, str]:
    """The rows the parity gate runs on: the validation split, else test, else train."""
    for split in ("val", "test", "train"):
        if num_rows(tables.get(split, {})) > 0:
            return tables[split], split
    raise RunError(f"run '{root}' has no row in any split; the parity gate needs rows")


@torch.no_grad()
def check_tabular_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    spec: TabularSpec,
    schema: ColumnSchema,
    table: Table,
    *,
    split: str,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 32,
    progress: bool = True,
) -> ParityReport:
    """Every row of ``table`` through ``model`` on ``features(spec, rows)`` and through the
    ONNX file fed the raw columns (``graph_feed``). Each batch of ``batch_size`` rows runs as
    ``batch_size - 1`` rows and then 1, so the dynamic batch is exercised at size 1 too.
    ``ParityReport.images`` counts rows.

    PyTorch runs every chunk first, on one thread, then ONNX Runtime. On the
    shared 2-core build machine (load ~8, 2026-11-29) the FT-Transformer's
    reference for 5,000 rows in 31-row chunks took 10-47 s with torch's two
    OpenMP threads and 1.9-2.1 s with one (small batches gain nothing from a
    second thread, and its spin-waits lose to every other process); interleaving
    PyTorch and ONNX Runtime per chunk made it worse (17 s for 1,000 rows).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = signature_inputs(schema)
    model = model.float().cpu().eval()
    n = num_rows(table)
    chunks = parity_chunks(n, batch_size)
    differ = 0
    max_p = max_l = 0.0
    with make_progress(progress) as bar:
        task = bar.add_task("parity", total=2 * n, info="pytorch")
        references = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for lo, hi in chunks:
                references.append(model(*features(spec, take(table, np.arange(lo, hi)))).float())
                bar.advance(task, hi - lo)
        finally:
            torch.set_num_threads(threads)
        bar.update(task, info="onnxruntime")
        for (lo, hi), ref_logits in zip(chunks, references):
            feed = graph_feed(inputs, take(table, np.arange(lo, hi)))
            logits, probs = session.run(["logits", "probabilities"], feed)
            d, mp = compare(torch.softmax(ref_logits, 1).numpy(), probs)
            _, ml = compare(ref_logits.numpy(), logits)
            differ, max_p, max_l = differ + d, max(max_p, mp), max(max_l, ml)
            bar.advance(task, hi - lo)
    rows = sum(hi - lo for lo, hi in chunks)
    sizes = {hi - lo for lo, hi in chunks}
    return ParityReport(
        images=rows,
        split=split,
        top1_agreement=(rows - differ) / rows if rows else 0.0,
        disagreements=differ,
        max_abs_prob_diff=max_p,
        max_abs_logit_diff=max_l,
        tolerance=tolerance,
        unreadable=0,
        batch_sizes=sorted(sizes),
    )


def parity_chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges covering ``n`` rows once: each batch's first ``batch_size - 1`` rows, then its last row."""
    chunks = []
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        chunks += [(lo, hi) for lo, hi in ((start, end - 1), (end - 1, end)) if hi > lo]
    return chunks


def data_section(root: Path, info: dict[str, Any], tables: dict[str, Table]) -> dict[str, Any]:
    """model.json's ``data``: the table file(s), rows per split and a fingerprint of both."""
    source = dict(info.get("source") or {})
    splits_path = root / SPLITS_FILE
    splits = json.loads(splits_path.read_text(encoding="utf-8")) if splits_path.is_file() else {}
    digest = json.dumps(
        {"sha256": source.get("sha256"), "val_sha256": source.get("val_sha256"), "splits": splits}, sort_keys=True
    )
    return {
        "fingerprint": hashlib.sha256(digest.encode()).hexdigest(),
        "fingerprint_of": "sha256 of the JSON {sha256, val_sha256 (the table files'), splits (splits.json)}, "
        "keys sorted",
        "rows": sum(num_rows(t) for t in tables.values()),
        "per_split": {name: num_rows(t) for name, t in tables.items()},
        "source": source,
    }


def tabular_manifest(
    root: Path,
    info: dict[str, Any],
    fitted: tuple[TabularSpec, ColumnSchema, list[str]],
    graph: dict[str, Any],
    parity: ParityReport,
    tables: dict[str, Table],
    tmp: Path,
) -> dict[str, Any]:
    """model.json of a tabular export (duet.artifacts.model_package); writes MODEL_CARD.md into ``tmp``."""
    spec, schema, labels = fitted
    gate = {**parity.to_dict(), "rows": parity.images}
    manifest = manifest_head(root, info, "tabular", labels) | {
        "columns": schema.to_dict(),
        "tabular_spec": spec.to_dict(),
        "inputs": signature_inputs(schema),
        "outputs": output_signature(len(labels)),
    }
    manifest |= manifest_tail(root, info, gate, graph, data_section(root, info, tables), versions(with_timm=False))
    return with_card(manifest, tmp)
