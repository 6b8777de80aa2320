"""MODEL_CARD.md: the model's facts for a human reader, generated from model.json.

Sections follow the usual model-card outline (details, intended use, data,
metrics, preprocessing, limitations); the facts come from the manifest, the
intended-use and limitation lines are prompts for the owner to complete. A
tabular model (``"modality": "tabular"``) gets a card of its own
(:func:`render_tabular_card`): its columns and what the graph does to each
instead of the image preprocessing; a text model (``"modality": "text"``)
one with its tokenizer (:func:`render_text_card`).
"""

from __future__ import annotations

import math
from typing import Any


def _pct(x: Any) -> str:
    return f"{100 * float(x):.2f}%" if isinstance(x, (int, float)) else "n/a"


def render_card(m: dict[str, Any], files: dict[str, dict[str, Any]]) -> str:
    """Markdown for manifest ``m`` (as written to model.json) and the files it ships with."""
    if m.get("modality") == "tabular":
        return render_tabular_card(m, files)
    if m.get("modality") == "text":
        return render_text_card(m, files)
    spec = m["preprocess"]
    metrics = m.get("metrics", {})
    data = m.get("data", {})
    lines = [
        f"# Model card: {m['name']}",
        "",
        f"Image classifier, **{m['architecture']}**, {m['num_classes']} classes, exported by duet "
        f"{m['versions'].get('duet', '?')} on {m['created']}.",
        "",
        "## Intended use",
        "",
        "Classify images into the labels below, with the same kind of images as the training data. "
        "*Owner: describe the intended users and uses, and uses that are out of scope.*",
        "",
        "## Labels",
        "",
        "| index | label |",
        "|---|---|",
        *(f"| {i} | {label} |" for i, label in enumerate(m["labels"])),
        "",
        "## Training data",
        "",
        f"- folder: `{m.get('source', {}).get('data_dir', '?')}`",
        f"- usable images: {data.get('images', '?')} "
        + "("
        + ", ".join(f"{k} {v}" for k, v in data.get("per_split", {}).items())
        + ")",
        f"- fingerprint (sha256 of the usable manifest rows): `{data.get('fingerprint', '?')}`",
        "",
        "## Metrics",
        "",
        *_metric_lines(metrics),
        "",
        *_variant_lines(m.get("variants") or {}),
        *_format_lines(m.get("formats") or {}),
        *_privacy_lines(m.get("privacy")),
        "## Preprocessing (inside and outside the graph)",
        "",
        "1. decode with `duet.data.imageio.decode` (EXIF orientation applied; alpha composited on white; RGB uint8)",
        f"2. resize the shorter side to {spec['load_size']} px ({spec['interpolation']}, antialiased) and take the "
        f"centre {spec['load_size']}x{spec['load_size']} square",
        f"3. take the centre {spec['image_size']}x{spec['image_size']} crop, uint8, NCHW -> input `pixels`",
        f"4. inside the graph: `(x - 255*mean) / (255*std)` with mean {spec['mean']}, std {spec['std']}",
        "",
        "## Signature",
        "",
        "| | name | datatype | shape |",
        "|---|---|---|---|",
        *(f"| input | `{t['name']}` | {t['datatype']} | {t['shape']} |" for t in m["inputs"]),
        *(f"| output | `{t['name']}` | {t['datatype']} | {t['shape']} |" for t in m["outputs"]),
        "",
        "## Limitations",
        "",
        "- Predicts only these labels: every input gets one of them, however unlike the training images it is.",
        "- Metrics hold for images like the training data; watch drift in production.",
        "- *Owner: add known failure modes and fairness considerations.*",
        "",
        *_files_lines(m, files),
    ]
    return "\n".join(lines)


def _files_lines(m: dict[str, Any], files: dict[str, dict[str, Any]]) -> list[str]:
    """The card's closing table of files and the command that serves them."""
    return [
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *(f"| {n} | {e['bytes']} | `{e['sha256']}` |" for n, e in files.items()),
        "",
        "Serve it: `duet serve " + str(m.get("source", {}).get("run", "EXPORT_DIR")) + "`",
        "",
    ]


def _opening(m: dict[str, Any], summary: str, use: str) -> list[str]:
    """A table's or text's card up to its "Training data" heading: title, ``summary``, ``use``, the labels."""
    return [
        f"# Model card: {m['name']}",
        "",
        summary,
        "",
        "## Intended use",
        "",
        f"{use} *Owner: describe the intended users and uses, and uses that are out of scope.*",
        "",
        "## Labels",
        "",
        "| index | label |",
        "|---|---|",
        *(f"| {i} | {label} |" for i, label in enumerate(m["labels"])),
        "",
        "## Training data",
        "",
    ]


def render_tabular_card(m: dict[str, Any], files: dict[str, dict[str, Any]]) -> str:
    """The card of a tabular model: the same outline, with its columns in place of image preprocessing."""
    data = m.get("data", {})
    source = data.get("source", {})
    features = m["inputs"]
    lines = [
        *_opening(
            m,
            f"Tabular classifier, **{m['architecture']}**, {m['num_classes']} classes from {len(features)} feature "
            f"columns, exported by duet {m['versions'].get('duet', '?')} on {m['created']}.",
            "Classify rows with the columns below, drawn like the training table's rows.",
        ),
        f"- table: `{source.get('data', '?')}` (sha256 `{source.get('sha256', '?')}`)"
        + (f"; validation table `{source['val_data']}`" if source.get("val_data") else ""),
        f"- rows: {data.get('rows', '?')} ("
        + ", ".join(f"{k} {v}" for k, v in data.get("per_split", {}).items())
        + f"); target column `{m['columns']['target']}`",
        f"- fingerprint (the table files and the split): `{data.get('fingerprint', '?')}`",
        "",
        "## Metrics",
        "",
        *_metric_lines(m.get("metrics", {}), unit="rows"),
        *_baseline_lines(m.get("metrics", {}).get("baseline")),
        "",
        *_column_lines(m),
        "## Privacy",
        "",
        "Trained without differential privacy: the weights may reveal whether a given row was in the training set.",
        "",
        "## Limitations",
        "",
        "- Predicts only these labels: every row gets one of them, however unlike the training rows it is.",
        "- A category never seen in training is out of vocabulary (one shared id for all of them); a missing "
        "value in a column that had none in training becomes the column's mean, with no indicator.",
        "- Metrics hold for rows like the training data; watch drift per column in production.",
        "- *Owner: add known failure modes and fairness considerations.*",
        "",
        *_files_lines(m, files),
    ]
    return "\n".join(lines)


def render_text_card(m: dict[str, Any], files: dict[str, dict[str, Any]]) -> str:
    """The card of a text model: the same outline, with the tokenizer in place of image preprocessing."""
    data = m.get("data", {})
    source = data.get("source", {})
    spec = m["text_spec"]
    parity = m.get("metrics", {}).get("parity", {})
    lines = [
        *_opening(
            m,
            f"Text classifier, **{m['architecture']}**, {m['num_classes']} classes, exported by duet "
            f"{m['versions'].get('duet', '?')} on {m['created']}.",
            "Classify documents into the labels below, written like the training documents.",
        ),
        f"- corpus: `{source.get('data', '?')}`"
        + (f"; validation `{source['val_data']}`" if source.get("val_data") else ""),
        f"- documents: {data.get('documents', '?')} ("
        + ", ".join(f"{k} {v}" for k, v in data.get("per_split", {}).items())
        + ")",
        f"- fingerprint (the corpus and the split): `{data.get('fingerprint', '?')}`",
        "",
        "## Metrics",
        "",
        *_metric_lines(m.get("metrics", {}), unit="documents"),
        f"- token ids of the graph = the training spec's on every gated document (differ on {parity.get('ids_differ', '?')}); "
        f"{parity.get('unreadable', 0)} documents the graph refuses were left out",
        *_baseline_lines(m.get("metrics", {}).get("baseline")),
        "",
        "## Tokenizer (inside model.onnx: send raw UTF-8 strings)",
        "",
        f"- standardize `{spec['standardize']}` (ASCII letters and ASCII punctuation only, as Keras "
        "TextVectorization), split on ASCII whitespace, "
        + ("unigrams then bigrams" if spec["ngrams"] == 2 else "unigrams")
        + f"; {len(spec['vocabulary'])} tokens (ids 2..; 0 padding, 1 out of vocabulary), "
        f"{spec['sequence_length']} ids per document (longer documents are truncated)",
        "- input: "
        + ", ".join(f"`{t['name']}` {t['datatype']} {t['shape']}" for t in m["inputs"])
        + "; outputs: "
        + ", ".join(f"`{t['name']}` {t['datatype']} {t['shape']}" for t in m["outputs"]),
        f"- ONNX Runtime needs the custom operators of `{(m.get('runtime') or {}).get('custom_ops')}` "
        "(`pip install 'duet[text]'`)",
        "",
        "## Privacy",
        "",
        "Trained without differential privacy: the weights may reveal whether a given document was in the "
        "training set.",
        "",
        "## Limitations",
        "",
        "- Predicts only these labels: every document gets one of them, whatever its language or topic.",
        f"- Words outside the training vocabulary share one id; only the first {spec['sequence_length']} ids count; "
        f"the server refuses documents over {(m.get('limits') or {}).get('max_chars', '?')} characters; the graph "
        "cannot read U+0000 (the text ends there) or unpaired surrogates (model.json limits.refused).",
        "- Metrics hold for documents like the training data; watch drift (OOV rate, length, classes) in production.",
        "- *Owner: add known failure modes and fairness considerations.*",
        "",
        *_files_lines(m, files),
    ]
    return "\n".join(lines)


def _baseline_lines(baseline: dict[str, Any] | None) -> list[str]:
    if not baseline:
        return []
    scores = ", ".join(
        f"{split} accuracy {_pct(baseline[f'{split}_accuracy'])}"
        for split in ("val", "test")
        if f"{split}_accuracy" in baseline
    )
    return [f"- baseline ({baseline.get('model', '?')}, trained on the same split): {scores or 'no score'}"]


def _column_lines(m: dict[str, Any]) -> list[str]:
    """What the graph does to each input column, and the columns it leaves out."""
    spec = m["tabular_spec"]
    numeric = {f["name"]: f for f in spec["numeric"]}
    vocab = {f["name"]: len(f["tokens"]) for f in spec["categorical"]}
    rows = []
    for t in m["inputs"]:
        column = t["column"]
        if column in vocab:
            inside = f'{vocab[column]} categories -> ids 2.. (unseen -> 0, "" -> 1), ONNX-ML LabelEncoder'
        else:
            f = numeric[column]
            inside = "0/1 as is" if f["kind"] == "boolean" else f"(x - {f['mean']:.6g}) / {f['std']:.6g} in float64"
            inside += ", NaN -> 0" + (" + a missing indicator" if f["has_missing"] else "")
        rows.append(f"| `{column}` | {t['kind']} | `{t['name']}` | {t['datatype']} {t['shape']} | {inside} |")
    used = {t["column"] for t in m["inputs"]}
    target = m["columns"]["target"]
    left = [c for c in m["columns"]["columns"] if c["name"] not in used and c["name"] != target]
    return [
        "## Columns (the graph's inputs; all preprocessing is inside model.onnx)",
        "",
        "| column | kind | ONNX input | datatype | inside the graph |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *(f"- left out: `{c['name']}` ({c['kind']}: {c['note']})" for c in left),
        *([""] if left else []),
        "Outputs: " + ", ".join(f"`{t['name']}` {t['datatype']} {t['shape']}" for t in m["outputs"]) + ".",
        "",
    ]


def _metric_lines(metrics: dict[str, Any], unit: str = "images") -> list[str]:
    """The card's metrics, each saying which split it comes from."""
    parity = metrics.get("parity", {})
    evaluation = metrics.get("evaluation") or {}
    lines = [
        f"- validation accuracy (best epoch {metrics.get('best_epoch', '?')}; validation chose the epoch, so it is "
        f"optimistic): {_pct(metrics.get('val_accuracy'))}"
    ]
    if metrics.get("test_accuracy") is not None:
        lines.append(
            f"- test accuracy (held-out test split, measured once after training): {_pct(metrics.get('test_accuracy'))}"
        )
    if evaluation:
        lines.append(
            f"- evaluation on {evaluation.get('split', '?')} ({evaluation.get('num_images', '?')} {unit}): "
            f"accuracy {_pct(evaluation.get('accuracy'))}, macro F1 {_pct(evaluation.get('macro_f1'))}"
        )
    else:
        lines.append("- no `duet evaluate` report was found when exporting")
    lines.append(
        f"- export parity (ONNX Runtime vs PyTorch, fp32, {parity.get('images', '?')} {parity.get('split', '')} {unit}): "
        f"top-1 agreement {_pct(parity.get('top1_agreement'))}, max |Δprobability| "
        f"{parity.get('max_abs_prob_diff', float('nan')):.2e} (gate: 100% and <= {parity.get('tolerance', 1e-4):g})"
    )
    return lines


def _variant_lines(variants: dict[str, Any]) -> list[str]:
    """The card's section on quantized variants (``duet export --quantize int8``), empty without one."""
    lines: list[str] = []
    for name, v in variants.items():
        g, c = v["gate"], v["calibration"]
        lines += [
            f"## {name} variant: `{v['file']}`",
            "",
            f"- quantization: static, {c['format']}, weights {c['weights']}, activations {c['activations']}, "
            f"{c['method']} calibration, ops {', '.join(c['ops'])} (the uint8 input and the normalisation stay fp32)",
            f"- calibration: {c['images']} images of the {c['split']} split (seed {c['seed']}), preprocessed as served",
            f"- gate on {g['images']} {g['split']} images: top-1 accuracy {_pct(g['int8_accuracy'])} vs fp32 "
            f"{_pct(g['fp32_accuracy'])} ({0.0 - g['accuracy_loss_points'] + 0.0:+.2f} points; "
            f"allowed -{g['tolerance_points']:g}), "
            f"top-1 agreement with fp32 {_pct(g['top1_agreement'])}",
            f"- serve it: `duet serve MODEL --model-variant {name}`",
            "",
        ]
    return lines


def _format_lines(formats: dict[str, Any]) -> list[str]:
    """The card's table of TensorFlow formats (``duet export --format``), empty with ONNX alone."""
    rows = []
    for name, entry in formats.items():
        for key, label in (("gate", name), ("bytes_gate", f"{name} (image bytes)")):
            g = entry.get(key)
            if name == "onnx" or not g:
                continue
            rows.append(
                f"| {label} | `{entry.get('path') or entry['files'][0]}` | {entry['runtime']} | "
                f"{g['size_bytes'] / 1e6:.1f} MB | {_pct(g['top1_agreement'])} | {g['max_abs_prob_diff']:.1e} | "
                f"{_pct(g['accuracy'])} (PyTorch {_pct(g['reference_accuracy'])}) |"
            )
    if not rows:
        return []
    return [
        "## Other formats (each passed its gate on the validation split, against PyTorch)",
        "",
        "| format | file | runtime | size | top-1 agreement | max abs Δp | accuracy |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _privacy_lines(privacy: dict[str, Any] | None) -> list[str]:
    """The card's privacy section: the DP-SGD guarantee, or that there is none."""
    if not privacy:
        return [
            "## Privacy",
            "",
            "Trained without differential privacy: the weights may reveal whether a given image was in the "
            "training set. `duet audit privacy RUN` measures it; `duet train --dp-epsilon` bounds it.",
            "",
        ]
    return [
        "## Privacy",
        "",
        f"Trained with differential privacy ({privacy['mechanism']}): "
        f"(ε = {privacy['epsilon']:.2f}, δ = {privacy['delta']:.1e}) over {privacy['steps']} steps, "
        f"noise multiplier {privacy['noise_multiplier']:g}, per-sample clip {privacy['max_grad_norm']:g}, "
        f"{privacy['accountant'].upper()} accountant. Whatever an attacker knows, the model changes their odds "
        f"that any one image was in the training set by a factor of at most e^ε = "
        f"{math.exp(min(privacy['epsilon'], 50)):.3g} (except with probability δ; docs/privacy.md).",
        "",
    ]
