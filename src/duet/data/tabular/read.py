"""A CSV/TSV or Parquet file -> a typed table, its inferred schema, and every row skipped and why.

Reading happens in three steps, so that no bad value is ever silently coerced:

1. **Cells.** The file becomes one list of strings per column (``RawColumns``):
   CSV/TSV through the stdlib ``csv`` module (the first record is the header),
   Parquet through pyarrow (the ``duet[tabular]`` extra, imported only here).
   Cells are stripped of surrounding whitespace; an empty cell and the markers
   in ``MISSING_MARKERS`` (any case) are missing (``None``). A CSV record whose
   field count differs from the header's is skipped with its line number;
   blank lines are not records.
2. **Kinds.** ``duet.data.tabular.infer`` decides each column's kind from its
   cells (or takes the caller's override).
3. **Values.** Each column is converted as ``duet.data.tabular.schema`` says.
   A row with a cell its column cannot hold (``abc`` in a numeric column,
   ``maybe`` in a boolean one, ``inf``), or with no target value, is skipped
   with the reason and its line number (``row N`` for Parquet: data rows
   counted from 1).

Encoding: CSV must be UTF-8 (a byte-order mark is accepted). Other bytes stop the
read with one line naming the line and the byte, rather than decoding with
replacement characters, which would turn into categories nobody wrote.

Limits: at most ``MAX_COLUMNS`` columns (a clear error beyond); rows are bounded
by memory only: the file is read whole and every cell is a Python string while
kinds are inferred (measured: a 74 MB CSV of 1,000 rows x 10,000 numeric columns
peaks at 1.2 GB and scans in about 12 s; docs/tabular.md has the numbers).
The input file is only ever opened for reading.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from duet.data.tabular.infer import BOOLEAN_TOKENS, infer_schema, parse_numbers
from duet.data.tabular.schema import ColumnSchema, Table
from duet.errors import ConfigError, DataError

TABLE_SUFFIXES: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
_LONGEST_MARKER = max(len(m) for m in MISSING_MARKERS)
MAX_COLUMNS = 20_000
_FIELD_LIMIT = 1 << 24  # 16 MiB per cell; csv's default (128 KiB) would stop on long free text

RawColumns = dict[str, list[str | None]]


@dataclass(frozen=True)
class SkippedRow:
    """One record of the file that is not in the table, and why (one line)."""

    line: int  # CSV: the line the record starts on; Parquet: the data row, from 1
    reason: str


@dataclass
class TableData:
    """What reading a table file gives: the typed table, its schema, and what was left out."""

    source: Path
    table: Table  # kept rows only, in file order (schema.py says how each kind is held)
    schema: ColumnSchema
    lines: np.ndarray  # int64, the source line (or Parquet row) of each kept row
    skipped: list[SkippedRow] = field(default_factory=list)
    num_records: int = 0  # data records in the file (kept + skipped)
    unit: str = "line"  # how ``lines`` count: "line" (CSV) or "row" (Parquet)


def is_table_file(path: Path) -> bool:
    return path.suffix.lower() in TABLE_SUFFIXES


def read_table(path: str | Path, target: str, kinds: Mapping[str, str] | None = None) -> TableData:
    """Read ``path`` (.csv, .tsv, .parquet) with ``target`` as the label column.

    Args:
        path: the table file; it is never modified.
        target: the column holding each row's class.
        kinds: optional ``{column: kind}`` overriding inference (see ``infer.infer_schema``).

    Raises:
        DataError: missing/empty file, no data row, no such target column, non-UTF-8
            bytes, too many columns, or no row left after skipping.
        ConfigError: an unknown suffix or a bad override.
        MissingExtra: a Parquet file without pyarrow installed.
    """
    source = Path(path).expanduser()
    fmt = _check_file(source)
    cells, lines, skipped, unit = _read_parquet(source) if fmt == "parquet" else _read_delimited(source, fmt)
    if target not in cells:
        shown = ", ".join(list(cells)[:12]) + (f", ... ({len(cells)} in all)" if len(cells) > 12 else "")
        raise DataError(f"no column '{target}' in {source} (its columns: {shown}); pass --target <column>")
    num_records = len(lines) + len(skipped)
    if not lines:
        raise DataError(_no_rows_message(source, skipped, unit))
    schema = infer_schema(cells, target, kinds)
    table, keep, bad = _typed_table(cells, schema, lines)
    skipped = sorted(skipped + bad, key=lambda s: s.line)
    if not keep.any():
        raise DataError(_no_rows_message(source, skipped, unit))
    kept = {name: values[keep] for name, values in table.items()}
    labels = tuple(sorted({str(v) for v in kept[target]}))
    schema = ColumnSchema(columns=schema.columns, target=target, labels=labels)
    line_array = np.asarray(lines, dtype=np.int64)[keep]
    return TableData(source, kept, schema, line_array, skipped, num_records, unit)


def read_feature_rows(path: str | Path, schema: ColumnSchema) -> tuple[Table, list[SkippedRow]]:
    """The feature columns of a table file, read with ``schema``'s kinds; no target needed.

    Uses the reader's own steps (cells, then typed values) with a schema of the
    features alone, so a cell is read exactly as training read it."""
    source = Path(path).expanduser()
    fmt = _check_file(source)
    cells, lines, skipped, unit = _read_parquet(source) if fmt == "parquet" else _read_delimited(source, fmt)
    features = schema.features()
    absent = [c.name for c in features if c.name not in cells]
    if absent:
        raise DataError(
            f"{source} has no column {absent[0]!r}, which the model reads "
            f"(its feature columns: {', '.join(c.name for c in features)})"
        )
    if not lines:
        raise DataError(f"{source} has no data {unit}")
    only = ColumnSchema(columns=tuple(features), target=schema.target)  # the target is never typed here
    table, keep, bad = _typed_table(cells, only, lines)
    skipped = sorted(skipped + bad, key=lambda s: s.line)
    if not keep.any():
        raise DataError(f"no {unit} of {source} could be read (e.g. {unit} {skipped[0].line}: {skipped[0].reason})")
    return {name: values[keep] for name, values in table.items()}, skipped


def _check_file(source: Path) -> str:
    suffix = source.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"'{source}' is not a table file; use one of {', '.join(TABLE_SUFFIXES)}")
    if not source.exists():
        raise DataError(f"table file '{source}' does not exist")
    if not source.is_file():
        raise DataError(f"'{source}' is not a file")
    return TABLE_SUFFIXES[suffix]


def _no_rows_message(source: Path, skipped: list[SkippedRow], unit: str) -> str:
    if not skipped:
        return f"{source} has a header but no data rows; add rows below the header"
    first = skipped[0]
    return (
        f"{source} has no usable row: all {len(skipped)} skipped "
        f"(first, {unit} {first.line}: {first.reason}); fix the file or the column kinds"
    )


def _cells(texts: Iterable[str]) -> list[str | None]:
    """``_cell`` over a column, inlined (it runs once per cell: 10 million for a 10k-column file)."""
    return [None if len(t) <= _LONGEST_MARKER and t.lower() in MISSING_MARKERS else t for t in map(str.strip, texts)]


def _cell(text: str) -> str | None:
    text = text.strip()
    return None if len(text) <= _LONGEST_MARKER and text.lower() in MISSING_MARKERS else text


# ---------------------------------------------------------------- CSV / TSV


def _decode(source: Path) -> str:
    data = source.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{source} line {line}: byte 0x{data[e.start]:02x} is not UTF-8; "
            f"save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.csv > out.csv)"
        ) from None


def _read_delimited(source: Path, fmt: str) -> tuple[RawColumns, list[int], list[SkippedRow], str]:
    text = _decode(source)
    if not text.strip():
        raise DataError(f"{source} is empty; a table file needs a header line and at least one data row")
    csv.field_size_limit(_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    try:
        header = _header(source, next(reader))
        rows, lines, skipped = _records(reader, len(header))
    except csv.Error as e:
        raise DataError(f"{source} line {reader.line_num}: not readable as {fmt.upper()} ({e})") from None
    columns: RawColumns = {name: [] for name in header}
    for name, texts in zip(header, zip(*rows)):
        columns[name] = _cells(texts)
    return columns, lines, skipped, "line"


def _header(source: Path, names: list[str]) -> list[str]:
    """The column names; an empty one (a pandas index column) becomes ``unnamed_<position>``."""
    header = [n.strip() or f"unnamed_{i + 1}" for i, n in enumerate(names)]
    if len(header) > MAX_COLUMNS:
        raise DataError(f"{source} has {len(header)} columns; at most {MAX_COLUMNS} are supported")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{source}: column name '{name}' appears twice in the header; rename one")
        seen.add(name)
    return header


def _records(reader: Any, width: int) -> tuple[list[list[str]], list[int], list[SkippedRow]]:
    """Data records of the right width (and the line each starts on); the others skipped. ``reader`` is a csv reader."""
    rows: list[list[str]] = []
    lines: list[int] = []
    skipped: list[SkippedRow] = []
    start = reader.line_num + 1
    for record in reader:
        if not record or (len(record) == 1 and not record[0].strip() and width > 1):
            start = reader.line_num + 1
            continue  # a blank line is not a record
        if len(record) != width:
            skipped.append(SkippedRow(start, f"{len(record)} fields, the header has {width}"))
        else:
            rows.append(record)
            lines.append(start)
        start = reader.line_num + 1
    return rows, lines, skipped


# ---------------------------------------------------------------- Parquet


def _read_parquet(source: Path) -> tuple[RawColumns, list[int], list[SkippedRow], str]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        from duet.system.extras import MissingExtra

        raise MissingExtra(
            f"reading {source.name} needs pyarrow ('pyarrow' is not installed): pip install 'duet[tabular]'"
        ) from None
    try:
        arrow = pq.read_table(source)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for a bad file
        raise DataError(f"{source} is not a readable Parquet file ({type(e).__name__}: {e})") from None
    if arrow.num_columns > MAX_COLUMNS:
        raise DataError(f"{source} has {arrow.num_columns} columns; at most {MAX_COLUMNS} are supported")
    columns: RawColumns = {
        name: [_parquet_cell(v) for v in arrow.column(name).to_pylist()] for name in arrow.column_names
    }
    return columns, list(range(1, arrow.num_rows + 1)), [], "row"


def _parquet_cell(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return _cell(str(value))


# ---------------------------------------------------------------- typed values


def _typed_table(
    cells: RawColumns, schema: ColumnSchema, lines: list[int]
) -> tuple[Table, np.ndarray, list[SkippedRow]]:
    """Each column held as its kind says; rows with a value their column cannot hold are marked bad."""
    n = len(lines)
    keep = np.ones(n, dtype=bool)
    reasons: dict[int, str] = {}
    table: Table = {}
    for column in schema.columns:
        values = cells[column.name]
        if column.name == schema.target:
            table[column.name] = _strings(values)
            for i, v in enumerate(values):
                if v is None:
                    reasons.setdefault(i, f"no value in the target column '{column.name}'")
            continue
        if column.kind == "numeric":
            table[column.name], not_numbers = parse_numbers(values)
            for i in not_numbers:
                reasons.setdefault(i, f"column '{column.name}': '{_short(values[i])}' is not a (finite) number")
        elif column.kind == "boolean":
            array = np.empty(n, dtype=np.float64)
            for i, v in enumerate(values):
                array[i], problem = _boolean(v)
                if problem:
                    reasons.setdefault(i, f"column '{column.name}': '{_short(v)}' {problem}")
            table[column.name] = array
        else:
            table[column.name] = _strings(values)
    for i in reasons:
        keep[i] = False
    bad = [SkippedRow(lines[i], reason) for i, reason in sorted(reasons.items())]
    return table, keep, bad


def _strings(values: list[str | None]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _boolean(text: str | None) -> tuple[float, str]:
    if text is None:
        return math.nan, ""
    value = BOOLEAN_TOKENS.get(text.lower())
    if value is None:
        return math.nan, "is not a boolean (true/false, yes/no, 1/0, t/f, y/n)"
    return value, ""


def _short(text: str | None, limit: int = 40) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
