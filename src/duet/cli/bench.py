"""`duet bench data|train|sample-data|monitor|serve|export|tabular|text`: the measurements behind docs/benchmarks.md,
docs/serving.md and docs/monitoring.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from duet.cli.common import out, print_json, serve_default, stderr_log

bench_app = typer.Typer(
    help="Measure duet beside its peers on this machine: data, train, serve "
    "(results for docs/benchmarks.md and docs/serving.md).",
    no_args_is_help=True,
)


def _device(name: str):
    from duet.system.device import resolve_device

    return resolve_device(name)


def _emit(result: dict, as_json: bool, md: str, command: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    env = result["environment"]
    print()
    print(md)
    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"command: {command}")


@bench_app.command("data")
def bench_data_cmd(
    data_dir: Path = typer.Argument(..., help="Folder of class sub-folders (e.g. from `duet bench sample-data`)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    image_size: int = typer.Option(224, "--image-size"),
    workers: int | None = typer.Option(None, help="Loader workers for every row. [default: one per core, max 8]"),
    later_epochs: int = typer.Option(2, "--later-epochs", help="Cache epochs averaged for the steady-state row."),
    max_images: int | None = typer.Option(None, "--max-images", help="Use only the first N usable images."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    no_tf: bool = typer.Option(False, "--no-tf", help="Skip the TensorFlow rows even when TensorFlow is installed."),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Input pipeline images/s: ImageFolder + DataLoader vs Keras vs duet torch / cache / tf."""
    from duet.bench.data import bench_data, markdown

    log = (lambda m: None) if (quiet or as_json) else (lambda m: print(m, file=sys.stderr))
    result = bench_data(
        data_dir,
        batch_size=batch_size,
        image_size=image_size,
        workers=workers,
        later_epochs=later_epochs,
        max_images=max_images,
        device=_device(device),
        include_tf=not no_tf,
        progress=not quiet,
        log=log,
    )
    _emit(result, as_json, markdown(result), "duet bench data " + " ".join(sys.argv[3:]))
    warnings: list[str] = result["warnings"]  # type: ignore[assignment]  # bench_data returns dict[str, object]
    for warning in warnings:  # after the table, on stderr, even with --quiet/--json
        print(f"warning: {warning}", file=sys.stderr)


@bench_app.command("train")
def bench_train_cmd(
    data_dir: Path = typer.Argument(..., help="Folder of class sub-folders."),
    model: str = typer.Option("resnet18"),
    batch_size: int = typer.Option(32, "--batch-size"),
    image_size: int = typer.Option(224, "--image-size"),
    steps: int = typer.Option(10, help="Timed steps per row (after --warmup untimed steps)."),
    warmup: int = typer.Option(2),
    workers: int | None = typer.Option(None),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    compile: bool = typer.Option(
        False, "--compile", help="torch.compile the model; each row's first step (compile included) is reported."
    ),
    precision: str = typer.Option(
        "auto",
        help="auto | fp32 | bf16: the end-to-end rows' precision (auto: what "
        "`duet train` picks on this machine). The limit is measured in both.",
    ),
    inference: bool = typer.Option(
        True,
        "--inference/--no-inference",
        help="Also measure the forward-only limit (eval, no autograd) in fp32 and bf16.",
    ),
    no_imagefolder: bool = typer.Option(False, "--no-imagefolder", help="Skip the ImageFolder row."),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """End-to-end training images/s beside the synthetic-data limit of the same model, in fp32 and bf16."""
    from duet.bench.train import bench_train, markdown

    log = (lambda m: None) if (quiet or as_json) else (lambda m: print(m, file=sys.stderr))
    result = bench_train(
        data_dir,
        model_name=model,
        batch_size=batch_size,
        image_size=image_size,
        steps=steps,
        warmup=warmup,
        workers=workers,
        device=_device(device),
        compile=compile,
        precision=precision,
        inference=inference,
        include_imagefolder=not no_imagefolder,
        progress=not quiet,
        log=log,
    )
    _emit(result, as_json, markdown(result), "duet bench train " + " ".join(sys.argv[3:]))


@bench_app.command("sample-data")
def sample_data_cmd(
    out_dir: Path = typer.Argument(..., help="Where to write the JPEGs (class_00/ ... class_NN/)."),
    count: int = typer.Option(4000, min=2),
    classes: int = typer.Option(10, min=2),
    seed: int = typer.Option(0),
) -> None:
    """Write a reproducible folder of ~500x375 JPEGs cut from real photos (no download)."""
    from duet.bench.sample_data import write_sample_photos

    info = write_sample_photos(out_dir, count=count, classes=classes, seed=seed)
    print(f"{info['images']} images in {info['classes']} class folders at {info['dir']} ({info['written']} written)")


@bench_app.command("monitor")
def bench_monitor_cmd(
    run: Path | None = typer.Option(
        None, "--run", help="A run to measure (with --pool). \\[default: train the digits champion under --work, once]"
    ),
    pool: Path | None = typer.Option(None, "--pool", help="Labelled images the run never saw (class sub-folders)."),
    work: Path = typer.Option(Path("duet-bench-monitor"), "--work", help="Where the champion and shifted images go."),
    windows: str = typer.Option("30,100,300", help="Window sizes, comma-separated."),
    trials: int = typer.Option(100, help="Windows drawn per scenario and window size."),
    max_images: int | None = typer.Option(None, "--max-images", help="Observe at most N pool images (seeded sample)."),
    seed: int = typer.Option(0, help="Seeds the shifts, the photo crops and the windows."),
    setup_seed: int = typer.Option(
        0,
        "--setup-seed",
        help="Without --run: which digits train the champion, its split and init (0: the tests' champion).",
    ),
    out: Path = typer.Option(
        Path("bench-monitor.json"), "--out", help="The JSON result (the tables go beside it as .md)."
    ),
    device: str = typer.Option("cpu", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Drift detection and label-free accuracy estimates on shifted images, against true labels
    (about 2 minutes on 2 CPU cores with the defaults, after ~20 s to train the digits champion once)."""
    from duet.bench.monitor import bench_monitor, markdown
    from duet.errors import ConfigError
    from duet.system.atomic import write_json_atomic, write_text_atomic

    try:
        sizes = [int(w) for w in windows.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(
            f"`--windows` must be comma-separated integers, e.g. 30,100,300. Received: {windows!r}"
        ) from None
    log = (lambda m: None) if (quiet or as_json) else (lambda m: print(m, file=sys.stderr))
    result = bench_monitor(
        run,
        pool,
        work_dir=work,
        windows=sizes,
        trials=trials,
        max_images=max_images,
        seed=seed,
        setup_seed=setup_seed,
        device=device,
        log=log,
    )
    command = "duet bench monitor " + " ".join(sys.argv[3:])
    result["command"] = command
    md = markdown(result)
    write_json_atomic(out, result)
    write_text_atomic(
        out.with_suffix(".md"),
        md
        + f"\n\ncommand: {command}\n"
        + "machine: "
        + ", ".join(f"{k} {v}" for k, v in result["environment"].items())
        + "\n",
    )
    _emit(result, as_json, md, command)
    if not as_json:
        print(f"written: {out} and {out.with_suffix('.md')}")


_BENCH_SERVE_IMAGES = typer.Option(
    None,
    "--images",
    help="Folder of images to send (searched recursively). \\[default: 16 synthetic 500x375 JPEGs]",
)
_BENCH_SERVE_NAIVE = typer.Option(
    True, "--naive/--no-naive", help="Also measure a naive server (one ONNX Runtime call per request, no batching)."
)
_BENCH_SERVE_REPEAT = typer.Option(
    1,
    "--repeat",
    min=1,
    help="Measure each point this many times (alternating servers) and keep the best: use on a shared machine.",
)
_BENCH_SERVE_DRIFT_COST = typer.Option(
    False,
    "--drift-cost",
    help="Also measure duet serve --no-drift, to see what drift monitoring (features, outlier scores, the window) costs.",
)
_BENCH_SERVE_VARIANTS = typer.Option(
    "fp32",
    "--variants",
    help="Model variants served side by side: fp32, or fp32,int8 (needs `duet export --quantize int8`); the verdict gives int8's throughput as a multiple of fp32's.",
)


@bench_app.command("serve")
def bench_serve(
    model: Path = typer.Argument(..., help="A run folder or export folder to serve."),
    images: Path | None = _BENCH_SERVE_IMAGES,
    concurrency: str = typer.Option("1,8,32", help="Comma-separated numbers of concurrent clients."),
    requests: int = typer.Option(200, "--requests", min=1, help="Requests per measurement (after warm-up)."),
    max_batch_size: int = typer.Option(serve_default("max_batch_size"), "--max-batch-size"),
    max_delay_ms: float = typer.Option(serve_default("max_delay_ms"), "--max-delay-ms"),
    naive: bool = _BENCH_SERVE_NAIVE,
    repeat: int = _BENCH_SERVE_REPEAT,
    drift_cost: bool = _BENCH_SERVE_DRIFT_COST,
    variants: str = _BENCH_SERVE_VARIANTS,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Serving latency (p50/p99) and throughput over HTTP on 127.0.0.1.

    Measures duet serve (dynamic batcher) at each --concurrency, beside a naive server (one ONNX Runtime call per request) and decode + bare session.run (no HTTP), in one run on this machine.

    Example: duet bench serve runs/pets-r50 --concurrency 1,8,32
    """
    from duet.bench.serve import run_bench

    levels = [int(x) for x in concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        from duet.errors import ConfigError

        raise ConfigError(
            f"`--concurrency` must be a comma-separated list of positive integers. Received: {concurrency}"
        )
    result = run_bench(
        model,
        images_dir=images,
        levels=levels,
        requests=requests,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        naive=naive,
        log=stderr_log(as_json),
        repeat=repeat,
        drift_cost=drift_cost,
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
    )
    if as_json:
        print_json(result)
        return
    _print_serve_bench(result, repeat)


def _print_serve_bench(result: dict[str, Any], repeat: int) -> None:
    """The one-screen summary of `duet bench serve`: the table, the machine line and the verdicts."""
    t = Table(title=f"duet bench serve: {result['model']} ({result['image_size']}px, {result['machine']['cpus']} CPUs)")
    for col in ("server", "clients", "p50 ms", "p99 ms", "images/s", "mean batch"):
        t.add_column(col, justify="left" if col == "server" else "right")
    for row in result["rows"]:
        t.add_row(
            row["server"],
            str(row["concurrency"]),
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['throughput']:.1f}",
            f"{row.get('mean_batch', row.get('batch', 0)):.2f}" if row.get("mean_batch") or row.get("batch") else "",
        )
    out.print(t)
    m = result["machine"]
    out.print(
        f"{m['cpu']}, {m['cpus']} CPUs, {m['date']}; load average {m['load_avg_1m']:.2f} at start, "
        f"{m['load_avg_1m_end']:.2f} at end; {result['images']}; best of {repeat}",
        highlight=False,
    )
    v = result["verdict"]
    if v:
        line = (
            f"at {v['concurrency']} clients duet serve reaches {v['share_of_ceiling']:.0%} of the runtime's ceiling "
            f"(decode + session.run at batch {v['ceiling_batch']}; goal >= 90 %: {'met' if v['share_met'] else 'NOT met'})"
        )
        if "p99_vs_naive" in v:
            line += (
                f"; p99 {v['p99_vs_naive']:.2f}x the naive server's (goal <= 1: {'met' if v['p99_met'] else 'NOT met'})"
            )
        out.print(line, highlight=False)
    if v.get("drift_cost"):
        costs = ", ".join(f"{cost:+.1%} at {c} clients" for c, cost in v["drift_cost"].items())
        out.print(f"drift monitoring costs {costs} of the throughput without it (goal <= 5 % at 8)", highlight=False)
    if v.get("int8_vs_fp32"):
        ratio = v["int8_vs_fp32"]
        ceiling_ratio = f" (runtime ceiling: {v['int8_vs_fp32_ceiling']:.2f}x)" if "int8_vs_fp32_ceiling" in v else ""
        out.print(
            f"at {v['concurrency']} clients duet serve int8 reaches {ratio:.2f}x fp32's images/s"
            f"{ceiling_ratio} (goal >= 2x on an AMX/VNNI CPU: {'met' if ratio >= 2 else 'NOT met'})",
            highlight=False,
        )


_BENCH_EXPORT_MODEL = typer.Argument(
    ...,
    help="A run folder exported with `duet export` (any --format), or its export folder.",
)
_BENCH_EXPORT_THREADS = typer.Option(
    None, "--threads", help="Intra-op threads for every runtime. \\[default: every core this process may use]"
)
_BENCH_EXPORT_OUT = typer.Option(
    Path("bench-export.json"), "--out", help="The JSON result (the table goes beside it as .md)."
)


@bench_app.command("export")
def bench_export_cmd(
    model: Path = _BENCH_EXPORT_MODEL,
    data: Path | None = typer.Option(None, "--data", help="Where the run's images are now, if they moved."),
    threads: int | None = _BENCH_EXPORT_THREADS,
    latency_runs: int = typer.Option(50, "--latency-runs", help="Timed batch-1 calls per format."),
    throughput_batches: int = typer.Option(10, "--throughput-batches", help="Timed batches per format."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per throughput (and accuracy) batch."),
    out: Path = _BENCH_EXPORT_OUT,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Every exported format of one model in one table: size, validation accuracy, batch-1 latency, images/s.

    A row per format in the export (PyTorch, ONNX, ONNX int8, SavedModel, TFLite fp32/fp16/int8), each on its own runtime on this CPU with the same threads and the same validation images, decoded once. A format the export lacks has no row; one whose runtime is not installed is listed as skipped.

    Example: duet bench export runs/pets-r50 --out bench-export.json
    """
    from duet.bench.export import Plan, bench_export, markdown
    from duet.system.atomic import write_json_atomic, write_text_atomic

    result = bench_export(
        model,
        data_dir=data,
        threads=threads,
        plan=Plan(latency_runs=latency_runs, throughput_batches=throughput_batches, batch_size=batch_size),
        progress=not (quiet or as_json),
        log=stderr_log(quiet or as_json),
    )
    command = "duet bench export " + " ".join(sys.argv[3:])
    result["command"] = command
    write_json_atomic(out, result)
    machine = "machine: " + ", ".join(f"{k} {v}" for k, v in result["environment"].items())
    write_text_atomic(out.with_suffix(".md"), f"{markdown(result)}\n\ncommand: {command}\n{machine}\n")
    if as_json:
        print_json(result)
        return
    _print_export_bench(result)
    print(f"written: {out} and {out.with_suffix('.md')}")


def _print_export_bench(result: dict[str, Any]) -> None:
    """The one-screen summary of `duet bench export`: the table, what was measured, the machine."""
    from duet.bench.export import SHORT_COLUMNS, caption, table_rows

    t = Table(title=f"duet bench export: {result['model']}")
    for col in SHORT_COLUMNS:
        t.add_column(col, justify="left" if col in ("format", "runtime") else "right", no_wrap=True)
    for cells in table_rows(result):
        t.add_row(*cells)
    out.print(t)
    out.print(caption(result), highlight=False)
    for s in result["skipped"]:
        out.print(f"skipped {s['format']}: {s['reason']}", highlight=False)
    out.print("machine: " + ", ".join(f"{k} {v}" for k, v in result["environment"].items()), highlight=False)


_BENCH_TABULAR_OUT = typer.Option(
    Path("bench-tabular.json"), "--out", help="The JSON result (the table goes beside it as .md)."
)
_BENCH_TABULAR_WORK = typer.Option(
    None, "--work", help="Keep the tables and run folders here. \\[default: a temporary folder, deleted]"
)


@bench_app.command("tabular")
def bench_tabular_cmd(
    datasets: str = typer.Option("breast_cancer,wine,digits", help="scikit-learn's bundled tables, comma-separated."),
    models: str = typer.Option("tab_mlp,ft_transformer", help="Tabular models, comma-separated."),
    seeds: int = typer.Option(5, help="Seeds 0..N-1: each one another split and initialisation."),
    val_split: float | None = typer.Option(None, "--val-split", help="\\[default: duet train's]"),
    test_split: float | None = typer.Option(None, "--test-split", help="\\[default: duet train's]"),
    epochs: int | None = typer.Option(None, help="\\[default: duet train's]"),
    work: Path | None = _BENCH_TABULAR_WORK,
    threads: int | None = typer.Option(None, "--threads", help="torch intra-op threads. \\[default: duet train's]"),
    out: Path = _BENCH_TABULAR_OUT,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Validation accuracy of the tabular models beside HistGradientBoosting on the same splits.

    Each data set is written to a CSV and trained by `duet train data.csv --target label` once per model and seed, with duet train's defaults; HistGradientBoosting is fitted on each seed's split. The table gives mean ± std over the seeds, the gap to HistGB, train seconds and rows/s.

    Example: duet bench tabular --datasets wine --seeds 3 --models tab_mlp
    """
    from duet.bench.tabular import as_seeds, bench_tabular, markdown
    from duet.system.atomic import write_json_atomic, write_text_atomic

    settings = {"val_split": val_split, "test_split": test_split, "epochs": epochs}
    result = bench_tabular(
        [d.strip() for d in datasets.split(",") if d.strip()],
        [m.strip() for m in models.split(",") if m.strip()],
        as_seeds(seeds),
        settings={k: v for k, v in settings.items() if v is not None},
        work=work,
        threads=threads,
        log=stderr_log(quiet or as_json),
    )
    command = "duet bench tabular " + " ".join(sys.argv[3:])
    result["command"] = command
    md = markdown(result)
    write_json_atomic(out, result)
    machine = "machine: " + ", ".join(f"{k} {v}" for k, v in result["environment"].items())
    write_text_atomic(out.with_suffix(".md"), f"{md}\n\ncommand: {command}\n{machine}\n")
    _emit(result, as_json, md, command)
    if not as_json:
        print(f"written: {out} and {out.with_suffix('.md')}")


_BENCH_TEXT_OUT = typer.Option(
    Path("bench-text.json"), "--out", help="The JSON result (the table goes beside it as .md)."
)
_BENCH_TEXT_WORK = typer.Option(
    None, "--work", help="Keep the corpora and run folders here. \\[default: a temporary folder, deleted]"
)


@bench_app.command("text")
def bench_text_cmd(
    corpora: str = typer.Option("stdlib,libs", help="Real corpora shipped with the installed packages: stdlib, libs."),
    models: str = typer.Option("fasttext,text_transformer", help="Text models, comma-separated."),
    seeds: int = typer.Option(3, help="Seeds 0..N-1: each one another split and initialisation."),
    val_split: float | None = typer.Option(None, "--val-split", help="\\[default: duet train's]"),
    test_split: float | None = typer.Option(None, "--test-split", help="\\[default: 0.2]"),
    epochs: int | None = typer.Option(None, help="\\[default: duet train's]"),
    work: Path | None = _BENCH_TEXT_WORK,
    threads: int | None = typer.Option(None, "--threads", help="torch and ONNX Runtime threads. \\[default: theirs]"),
    out: Path = _BENCH_TEXT_OUT,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Accuracy and docs/s of the text models beside TF-IDF + logistic regression on the same splits.

    Each corpus (docstrings of stdlib modules or of installed libraries; no download) is written as class folders of .txt files and trained by `duet train corpus/` once per model and seed, then exported (tokenizer inside the ONNX graph) and timed on the held-out documents from raw strings; TF-IDF + LR is fitted on each seed's split. The table gives mean ± std over the seeds and the gaps to TF-IDF + LR.

    Example: duet bench text --corpora stdlib --models fasttext --seeds 3
    """
    from duet.bench.text import as_seeds, bench_text, markdown
    from duet.system.atomic import write_json_atomic, write_text_atomic

    settings = {"val_split": val_split, "test_split": test_split, "epochs": epochs}
    result = bench_text(
        [c.strip() for c in corpora.split(",") if c.strip()],
        [m.strip() for m in models.split(",") if m.strip()],
        as_seeds(seeds),
        settings={k: v for k, v in settings.items() if v is not None},
        work=work,
        threads=threads,
        log=stderr_log(quiet or as_json),
    )
    command = "duet bench text " + " ".join(sys.argv[3:])
    result["command"] = command
    md = markdown(result)
    write_json_atomic(out, result)
    machine = "machine: " + ", ".join(f"{k} {v}" for k, v in result["environment"].items())
    write_text_atomic(out.with_suffix(".md"), f"{md}\n\ncommand: {command}\n{machine}\n")
    _emit(result, as_json, md, command)
    if not as_json:
        print(f"written: {out} and {out.with_suffix('.md')}")


def register(app: typer.Typer) -> None:
    """Add `duet bench data|train|sample-data|monitor|serve|export|tabular|text`."""
    app.add_typer(bench_app, name="bench")
