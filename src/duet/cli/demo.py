"""`duet demo`: the whole pipeline on bundled real data: the digits (scan, split, train,
evaluate, predict), or with --tabular a table or --text a text corpus (scan, train, evaluate, export, predict,
drift)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape  # messages may hold "[...]": print them as text
from rich.table import Table

from duet.cli.common import out, pct, print_json, stderr_log


def demo(
    workdir: Path = typer.Option(Path("demo"), "--dir", help="Working folder for the data and runs."),
    epochs: int | None = typer.Option(None, help="Override the demo's epoch count."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 (as for train)."),
    tabular: bool = typer.Option(False, "--tabular", help="A table instead: 569 real biopsies (breast cancer, CSV)."),
    text: bool = typer.Option(False, "--text", help="Text instead: docstrings of 9 stdlib modules (.txt folders)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Run the whole pipeline on bundled real data (1,797 handwritten digits): scan, split,
    train, evaluate, predict. About 70 s on 2 CPU cores (README: measured).

    --tabular: scikit-learn's breast cancer table as a CSV: scan, train (beside
    HistGradientBoosting), evaluate, export behind the parity gate, predict through
    the exported graph, and drift on new rows as they are and with one column moved.

    --text: the docstrings of 9 standard-library modules (the module as the class) as
    a folder of .txt files: scan, train fastText (beside TF-IDF + logistic regression),
    evaluate, export with the tokenizer inside the graph, predict raw strings, and drift
    on held-out texts and on modules the model never saw."""
    if tabular and text:
        from duet.errors import ConfigError

        raise ConfigError("--tabular and --text pick different demos; pass one of them")
    if text:
        text_demo(workdir, epochs, quiet, as_json)
        return
    if tabular:
        tabular_demo(workdir, epochs, quiet, as_json)
        return
    from duet.api.demo import run_demo

    res = run_demo(
        workdir, epochs=epochs, device=device, precision=precision, progress=not quiet, log=stderr_log(quiet or as_json)
    )
    m = res.evaluation.metrics
    summary = {
        "data": str(res.data_dir),
        "run": str(res.train.run_dir),
        "accuracy": m["accuracy"],
        "accuracy_split": res.evaluation.split,
        "macro_f1": m["macro"]["f1"],
        "train_images_per_s": round(res.train.train_images_per_s, 1),
        "precision": res.train.precision,
        "seconds": round(res.seconds, 1),
        "report": str(res.evaluation.files["md"]),
        "predictions": res.predictions,
    }
    if as_json:
        print_json(summary)
        return
    t = Table(title="duet demo: handwritten digits", show_header=False, box=None)
    t.add_row(
        "data",
        f"{res.data_dir}  ({res.train.num_train} train / {res.train.num_val} val / "
        f"{res.train.num_test} test images, 10 classes)",
    )
    t.add_row(
        "model",
        f"resnet18 from scratch, {res.train.epochs} epochs, {res.train.train_images_per_s:.0f} img/s, "
        f"{escape(res.train.precision.get('reason', ''))}",
    )
    t.add_row(
        f"{res.evaluation.split} accuracy",
        f"[bold]{pct(m['accuracy'])}[/]  (macro F1 {m['macro']['f1']:.4f}; {res.evaluation.split_meaning})",
    )
    t.add_row("wall time", f"{res.seconds:.0f}s")
    t.add_row("report", str(res.evaluation.files["md"]))
    for p in res.predictions:
        best = p["top"][0]
        t.add_row(
            f"predict {Path(p['file']).parent.name}/{Path(p['file']).name}",
            f"{best['label']} ({100 * best['probability']:.1f}%)",
        )
    t.add_row("try", f"duet predict {res.train.run_dir} {res.predictions[0]['file']}")
    out.print(t)


def tabular_demo(workdir: Path, epochs: int | None, quiet: bool, as_json: bool) -> None:
    """`duet demo --tabular`: run it, then the one-screen summary or its JSON."""
    from duet.api.demo_tabular import run_tabular_demo

    res = run_tabular_demo(workdir, epochs=epochs, progress=not quiet, log=stderr_log(quiet or as_json))
    m, base = res.evaluation.metrics, res.evaluation.baseline or {}
    drift = {name: d.result.to_dict() for name, d in res.drift.items()}
    summary = {
        "data": str(res.data),
        "run": str(res.train.run_dir),
        "test_accuracy": m["accuracy"],
        "baseline_test_accuracy": base.get("accuracy"),
        "export": str(res.export.export_dir),
        "parity_max_abs_prob_diff": res.export.parity.max_abs_prob_diff,
        "predictions": res.predictions,
        "drift": {name: {"status": d["status"], "sentence": d["sentence"]} for name, d in drift.items()},
        "seconds": round(res.seconds, 1),
    }
    if as_json:
        print_json(summary)
        return
    t = Table(title="duet demo --tabular: breast cancer biopsies", show_header=False, box=None)
    rows = res.train
    t.add_row("data", f"{res.data}  ({rows.num_train} train / {rows.num_val} val / {rows.num_test} test rows)")
    t.add_row("scan", f"{res.report['num_features']} feature columns, {len(res.report['warnings'])} warning(s)")
    t.add_row(
        "test accuracy",
        f"[bold]{pct(m['accuracy'])}[/] tab_mlp (macro F1 {m['macro']['f1']:.4f}); "
        f"HistGradientBoosting {pct(base.get('accuracy'))} on the same rows",
    )
    t.add_row(
        "export",
        f"{res.export.export_dir}: parity on {res.export.parity.images} val rows, "
        f"max |Δp| {res.export.parity.max_abs_prob_diff:.1e}",
    )
    for p in res.predictions:
        t.add_row(f"predict test row {p['row']}", f"{p['label']} ({100 * p['probability']:.1f}%), true {p['true']}")
    for name, d in drift.items():
        t.add_row(f"drift: {name}", f"{d['status']}: {escape(d['sentence'])}")
    t.add_row("wall time", f"{res.seconds:.0f}s")
    t.add_row("try", f"duet serve {res.export.export_dir}")
    out.print(t)


def text_demo(workdir: Path, epochs: int | None, quiet: bool, as_json: bool) -> None:
    """`duet demo --text`: run it, then the one-screen summary or its JSON."""
    from duet.api.demo_text import run_text_demo

    res = run_text_demo(workdir, epochs=epochs, progress=not quiet, log=stderr_log(quiet or as_json))
    m, base = res.evaluation.metrics, res.evaluation.baseline or {}
    drift = {name: d.result.to_dict() for name, d in res.drift.items()}
    summary = {
        "data": str(res.data),
        "run": str(res.train.run_dir),
        "documents": res.report["num_documents"],
        "classes": res.report["classes"],
        "test_accuracy": m["accuracy"],
        "baseline_test_accuracy": base.get("accuracy"),
        "export": str(res.export.export_dir),
        "parity": res.export.parity.to_dict(),
        "predictions": res.predictions,
        "drift": {name: {"status": d["status"], "sentence": d["sentence"]} for name, d in drift.items()},
        "seconds": round(res.seconds, 1),
    }
    if as_json:
        print_json(summary)
        return
    t = Table(title="duet demo --text: which stdlib module documents this?", show_header=False, box=None)
    docs = res.train
    t.add_row("data", f"{res.data}  ({docs.num_train} train / {docs.num_val} val / {docs.num_test} test documents)")
    t.add_row(
        "scan",
        f"{summary['documents']} documents, {len(summary['classes'])} classes, {len(res.report['warnings'])} warning(s)",
    )
    t.add_row(
        "test accuracy",
        f"[bold]{pct(m['accuracy'])}[/] fasttext (macro F1 {m['macro']['f1']:.4f}); "
        f"TF-IDF + logistic regression {pct(base.get('accuracy'))} on the same documents",
    )
    parity = summary["parity"]
    t.add_row(
        "export",
        f"{res.export.export_dir}: raw strings in; parity on {parity['documents']} val documents, "
        f"ids differ on {parity['ids_differ']}, max |Δp| {parity['max_abs_prob_diff']:.1e}",
    )
    for p in res.predictions:
        t.add_row(
            "predict", f"{escape(repr(p['text']))}… -> {p['label']} ({100 * p['probability']:.1f}%), true {p['true']}"
        )
    for name, d in drift.items():
        t.add_row(f"drift: {name}", f"{d['status']}: {escape(d['sentence'])}")
    t.add_row("wall time", f"{res.seconds:.0f}s")
    t.add_row("try", f"duet serve {res.export.export_dir}")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
