"""``duet drift RUN --data new.csv`` for a tabular run: are new rows still like the validation rows?

The file (CSV/TSV/Parquet) is read with the run's column kinds; the target
column may be absent or empty (drift needs no labels), columns the model does
not use are ignored, and a row with a value its column cannot hold is left out
and counted (as ``duet scan`` reports it). The run's model predicts the rows,
:func:`duet.monitor.tabular_drift.compare_table` compares them with
``RUN/profile/tabular.json`` (written first when missing), and ``report.json``
and ``report.html`` go to ``RUN/drift/<file name>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from duet.data.tabular.read import SkippedRow, read_feature_rows
from duet.errors import DataError
from duet.monitor.tabular_drift import TabularDriftResult, compare_table
from duet.monitor.tabular_profile import TabularDriftSettings, ensure_tabular_profile

DEFAULT_MAX_ROWS = 1000


@dataclass
class TableDrift:
    result: TabularDriftResult
    rows: int  # rows compared
    rows_in_file: int  # readable rows in the file (before max_rows)
    skipped: list[SkippedRow]  # rows left out, and why
    files: dict[str, Path]  # {"json": report.json, "html": report.html} ({} when no report was written)


def table_drift_check(
    run_dir: str | Path,
    data: str | Path,
    *,
    out_dir: Path | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    settings: TabularDriftSettings | None = None,
    seed: int = 0,
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> TableDrift:
    """Compare the rows of the file ``data`` with the tabular run's reference profile.

    Args:
        run_dir: a tabular run folder (its profile is written first if missing).
        data: a CSV/TSV/Parquet file of new rows; labels are not needed.
        out_dir: where report.json goes [default: RUN/drift/<file name>/].
        max_rows: compare a seeded random sample of at most this many rows.
        settings: the verdict's thresholds [default: the profile's].
    """
    from duet.artifacts.run_dir import slug
    from duet.training.tabular_run import load_tabular_model, predict_proba

    say = log or (lambda _m: None)
    if max_rows < 2:
        raise DataError(f"`max_rows` must be at least 2. Received: max_rows={max_rows}")
    root = Path(run_dir)
    model, spec, schema, _ = load_tabular_model(root)
    table, skipped = read_feature_rows(data, schema)
    total = len(next(iter(table.values())))
    if total > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False))
        table = {k: v[pick] for k, v in table.items()}
        say(f"comparing a random sample of {max_rows} of the {total} rows (--max-images)")
    if skipped:
        say(f"{len(skipped)} rows could not be read and are left out (listed in report.json)")
    profile = ensure_tabular_profile(root, log=say)
    probabilities = predict_proba(model, spec, table)
    result = compare_table(profile, table, probabilities, settings)
    rows = len(probabilities)
    files: dict[str, Path] = {}
    if report:
        from duet.monitor.drift_report import write_table_drift_report  # matplotlib only when a report is written

        reference = profile.meta.get("reference", {})
        files = write_table_drift_report(
            result,
            profile,
            table,
            probabilities,
            Path(out_dir) if out_dir is not None else root / "drift" / slug(Path(data).resolve().stem),
            title=f"Drift of {Path(data).name} vs {root.name}",
            context={
                "run": str(root),
                "data": str(Path(data).resolve()),
                "rows compared": rows,
                "rows in file": total,
                "rows left out": len(skipped),
                "reference": f"{profile.rows} held-out rows ({reference.get('split', '?')} split)",
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            },
            skipped=[{"line": s.line, "reason": s.reason} for s in skipped],
        )
    return TableDrift(result, rows, total, skipped, files)
