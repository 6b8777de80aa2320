"""`duet train corpus/` or `duet train reviews.csv --text-column review --target label`: the text side of `duet train`.

`duet train` hands over here when DATA is a text folder (class folders of .txt
files), when --text-column is given, or when --resume names a text run (or
--config a text config). The flags all modalities share keep their meaning;
image-only flags are refused by name rather than silently ignored. The
vectorisation settings (standardize, ngrams, max_tokens, sequence_length) come
from --config (docs/text.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from duet.cli.common import out
from duet.cli.train_memory import (
    MEMORY_FLAGS,
    SHARED_CONFIG_KEYS,
    baseline_text,
    config_overrides,
    head_rows,
    print_json_or_table,
    read_info,
    summary_head,
    tail_rows,
)

if TYPE_CHECKING:
    from duet.training.state import Log, TrainResult
    from duet.training.text_config import TextConfig

# `duet train` flags a text run takes (the rest are image-only)
TEXT_FLAGS = MEMORY_FLAGS | {"text_column"}


def wants_text(flags: dict[str, Any]) -> bool:
    """Whether `duet train` was given a text corpus (or a text run to resume, or a text config)."""
    if flags.get("text_column") is not None:
        return True
    if flags.get("data_dir") is not None:
        from duet.data.text.read import is_text_folder

        return is_text_folder(Path(flags["data_dir"]))
    if flags.get("resume") is not None:
        from duet.training.text_run import is_text_run

        return is_text_run(Path(flags["resume"]))
    if flags.get("config") is not None:
        from duet.training.config import load_yaml
        from duet.training.text_config import is_text_config

        return is_text_config(load_yaml(Path(flags["config"])))
    return False


def text_config(flags: dict[str, Any]) -> TextConfig:
    """The run's TextConfig from --config and the flags given; image-only flags are an error."""
    from duet.training.text_config import build_text_config

    overrides = config_overrides(
        flags,
        TEXT_FLAGS,
        [*SHARED_CONFIG_KEYS, "text_column"],
        "text",
        "missing DATA: pass a folder of class folders of .txt files, or a table with --text-column",
    )
    overrides["modality"] = "text"
    return build_text_config(flags["config"], overrides)


def train_text_command(flags: dict[str, Any], log: Log) -> None:
    """Train (or resume) a text run, write its drift profile (when that exists) and print the summary."""
    from duet.tracking import sink_for, sink_for_run

    quiet = bool(flags["quiet"])
    if flags["resume"] is not None:
        from duet.training.text_fit import resume_text

        run = Path(flags["resume"])
        result = resume_text(run, epochs=flags["epochs"], progress=not quiet, log=log, tracker=sink_for_run(run))
    else:
        from duet.data.text.checks import read_trainable_corpus

        cfg = text_config(flags)
        # a bad corpus fails before torch imports
        corpus = read_trainable_corpus(cfg.data, text_column=cfg.text_column, target=cfg.target, log=log)
        from duet.training.text_fit import train_text

        result = train_text(cfg, progress=not quiet, log=log, tracker=sink_for(cfg.track, cfg.out), corpus=corpus)
    from duet.monitor.profile import ensure_profile

    ensure_profile(result.run_dir, progress=not quiet, log=log)
    report_text_train(result, bool(flags["as_json"]))


def report_text_train(result: TrainResult, as_json: bool) -> None:
    """The one-screen summary of a text run, or its JSON."""
    info = read_info(result)
    baseline = info.get("baseline") or {}
    speed = info.get("throughput") or {}
    summary = summary_head(result, info) | {
        "docs": info["docs"],
        "baseline": baseline or None,
        "throughput": speed or None,
        "epochs": result.epochs,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
        "last_epoch": result.last,
    }
    t = print_json_or_table(summary, as_json, "duet train (text)")
    if t is None:
        return
    head_rows(t, result, info, info["docs"], "documents")
    if baseline.get("skipped"):
        t.add_row("TF-IDF + LogReg", f"not trained: {baseline['skipped']}")
    elif baseline:
        t.add_row(
            "TF-IDF + LogReg",
            baseline_text(baseline) + f" (scikit-learn, same split; {baseline['train_docs_per_s']:.0f} train docs/s)",
        )
    if speed:
        t.add_row(
            "speed",
            f"{speed['train_docs_per_s']:.0f} train docs/s, {speed['predict_docs_per_s']:.0f} predicted docs/s "
            f"from raw text; {result.seconds:.1f}s total",
        )
    tail_rows(t, result, "duet evaluate")
    out.print(t)
