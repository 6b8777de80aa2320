"""Reading and scanning a text corpus (issue #19 item 1): both layouts, every bad input
reported (binary files named .txt, a 10 MB document, empty files, mixed encodings, one
class), and what `duet scan` says about it."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from duet.data.text.checks import normalised, read_trainable_corpus, require_trainable_corpus, text_report
from duet.data.text.read import MAX_DOC_BYTES, TextCorpus, is_text_folder, read_corpus
from duet.errors import ConfigError, DataError
from helpers import one_line_error, run_cli

LATIN1 = "café crème brûlée, très bon".encode("latin-1")  # 5 bytes that are not UTF-8


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def bad_corpus(root: Path) -> Path:
    """Two classes and every bad input the issue names, plus files that must be ignored."""
    write(root / "neg" / "001.txt", "A terrible film. Boring!")
    write(root / "neg" / "002.txt", "Great movie, loved it.")  # also under pos: a conflict
    write(root / "neg" / "003.txt", b"")
    write(root / "neg" / "004.txt", "   \n\t")
    write(root / "neg" / "005.txt", "!!! ...")
    write(root / "neg" / "sub" / "006.txt", "\ufeffnested, with a BOM".encode())
    write(root / "pos" / "001.txt", "Great movie, loved it.")
    write(root / "pos" / "002.txt", "great  MOVIE\u00a0loved it")  # normalised duplicate of pos/001
    write(root / "pos" / "003.txt", "Great movie, loved it.")  # exact duplicate of pos/001
    write(root / "pos" / "latin1.txt", LATIN1)
    write(root / "pos" / "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(root / "pos" / "noise.txt", bytes(range(0x80, 0xFF)))  # no NUL, but nothing decodes
    with (root / "pos" / "huge.txt").open("wb") as f:  # 10 MB, sparse: costs no disk
        f.truncate(10_000_000)
    write(root / "pos" / "notes.md", "not a document")
    write(root / "pos" / "UPPER.TXT", "upper-case suffix counts")
    write(root / "pos" / ".hidden.txt", "hidden")
    write(root / ".cache" / "x.txt", "hidden folder")
    write(root / "README.txt", "top level")
    (root / "empty_class").mkdir()
    return root


def test_folder_reads_reports_skips_and_ignores(tmp_path: Path) -> None:
    start = time.perf_counter()
    corpus = read_corpus(bad_corpus(tmp_path / "corpus"))
    assert time.perf_counter() - start < 1.0  # the 10 MB file is never read
    assert corpus.layout == "folder" and corpus.classes == ("neg", "pos")
    assert corpus.origins == [
        "neg/001.txt", "neg/002.txt", "neg/003.txt", "neg/004.txt", "neg/005.txt", "neg/sub/006.txt",
        "pos/001.txt", "pos/002.txt", "pos/003.txt", "pos/UPPER.TXT", "pos/latin1.txt",
    ]  # fmt: skip
    assert corpus.labels == ["neg"] * 6 + ["pos"] * 5
    assert corpus.texts[5] == "nested, with a BOM" and corpus.texts[2] == ""
    assert corpus.replaced == ["pos/latin1.txt"] and corpus.replaced_bytes == {"pos/latin1.txt": 5}
    assert corpus.texts[-1] == "caf\ufffd cr\ufffdme br\ufffdl\ufffde, tr\ufffds bon"
    reasons = dict(corpus.skipped)
    assert set(reasons) == {"pos/huge.txt", "pos/image.txt", "pos/noise.txt"}
    assert reasons["pos/huge.txt"] == "10.0 MB, over the 1.0 MB limit for one document"
    assert reasons["pos/image.txt"] == "binary (NUL bytes), not text"
    assert reasons["pos/noise.txt"].startswith("binary (100% of its bytes are not UTF-8)")
    assert corpus.ignored == {"at the top level (not in a class folder)": 1, "hidden": 2, "not .txt": 1}
    assert corpus.empty_classes == ["empty_class"]


def traced(read: Callable[[], TextCorpus]) -> tuple[TextCorpus, int]:
    """What ``read`` returns and the peak of Python memory allocated while it ran."""
    tracemalloc.start()
    try:
        return read(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ten_megabyte_document_costs_no_memory(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write(root / "a" / "1.txt", "x " * 5_000_000)  # 10 MB of real text, not sparse
    write(root / "b" / "1.txt", "y")
    corpus, peak = traced(lambda: read_corpus(root))
    assert peak < 1_000_000  # bytes: the 10 MB file was not read
    assert corpus.skipped == [("a/1.txt", "10.0 MB, over the 1.0 MB limit for one document")]
    with pytest.raises(DataError, match="only 1 class"):
        require_trainable_corpus(corpus)
    corpus, peak = traced(lambda: read_corpus(root, max_doc_bytes=20_000_000))
    assert corpus.texts[0].startswith("x x") and peak > 10_000_000  # the measure sees a read


def test_utf16_and_fifo_are_skipped_with_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write(root / "a" / "utf16.txt", "hello wide world".encode("utf-16"))
    write(root / "a" / "ok.txt", "fine")
    write(root / "b" / "1.txt", "y")
    os.mkfifo(root / "b" / "pipe.txt")
    start = time.perf_counter()
    corpus = read_corpus(root)
    assert time.perf_counter() - start < 1.0  # the FIFO was never opened (it would block)
    assert corpus.origins == ["a/ok.txt", "b/1.txt"]
    assert corpus.skipped == [
        ("a/utf16.txt", "UTF-16 text (byte-order mark), not UTF-8; save it as UTF-8"),
        ("b/pipe.txt", "not a regular file"),
    ]


def test_is_text_folder(tmp_path: Path) -> None:
    text = bad_corpus(tmp_path / "text")
    images = tmp_path / "images"
    write(images / "cat" / "1.png", b"\x89PNG")
    write(images / "cat" / "notes.txt", "a note beside images")
    assert is_text_folder(text) and not is_text_folder(images)
    assert not is_text_folder(tmp_path / "nowhere") and not is_text_folder(text / "README.txt")
    assert not is_text_folder(write(tmp_path / "flat" / "a.txt", "no class folder").parent)
    write(tmp_path / "hidden_only" / "a" / ".notes.txt", "hidden")
    write(text / "pos" / ".thumbs" / "1.png", b"\x89PNG")  # hidden: does not make it an image folder
    assert is_text_folder(text) and not is_text_folder(tmp_path / "hidden_only")


def test_table_layout_lines_and_skips(tmp_path: Path) -> None:
    csv = write(
        tmp_path / "reviews.csv",
        'id,review,label\n1,"Great movie, loved it.",pos\n2,"Awful, boring.",neg\n3,NA,pos\n'
        '4,"Multi\nline review",neg\n5,"great movie loved it",neg\n6,fine,\n7,"' + "z" * 2000 + '",pos\n',
    )
    corpus = read_corpus(csv, text_column="review", target="label", max_doc_bytes=1000)
    assert corpus.layout == "table" and corpus.classes == ("neg", "pos")
    assert corpus.texts == ["Great movie, loved it.", "Awful, boring.", "Multi\nline review", "great movie loved it"]
    assert corpus.origins == ["reviews.csv line 2", "reviews.csv line 3", "reviews.csv line 5", "reviews.csv line 7"]
    assert corpus.skipped == [
        ("reviews.csv line 4", "no text in the column 'review'"),
        ("reviews.csv line 8", "no value in the target column 'label'"),
        ("reviews.csv line 9", "2000 bytes, over the 1000 bytes limit for one document"),
    ]
    with pytest.raises(DataError, match="no column 'body'"):
        read_corpus(csv, text_column="body", target="label")
    with pytest.raises(ConfigError, match="needs --text-column and --target"):
        read_corpus(csv, target="label")
    with pytest.raises(ConfigError, match="for a table file"):
        read_corpus(tmp_path, text_column="review", target="label")


def test_report_counts_lengths_duplicates_and_conflicts(tmp_path: Path) -> None:
    report = text_report(read_corpus(bad_corpus(tmp_path / "corpus")))
    json.dumps(report)  # JSON-able, as `duet scan --json` prints it
    assert report["class_counts"] == {"neg": 6, "pos": 5} and report["num_documents"] == 11
    neg = report["per_class"]["neg"]
    assert neg["count"] == 6 and neg["empty"] == 2 and neg["chars"]["p0"] == 0 and neg["chars"]["p100"] == 24
    assert report["per_class"]["pos"]["tokens"]["p50"] == 4  # "great movie loved it"
    assert report["empty"]["shown"] == ["neg/003.txt", "neg/004.txt"]
    assert report["no_tokens"]["shown"] == ["neg/005.txt"]
    assert report["replaced"]["shown"] == [{"origin": "pos/latin1.txt", "bytes": 5}]
    dups = report["duplicates"]
    assert dups["exact"]["shown"] == [{"origin": "pos/003.txt", "same_as": "pos/001.txt"}]
    assert dups["normalised"]["shown"] == [{"origin": "pos/002.txt", "same_as": "pos/001.txt"}]
    assert report["conflicts"]["shown"] == [
        {"origins": ["neg/002.txt", "pos/001.txt", "pos/002.txt", "pos/003.txt"], "labels": ["neg", "pos"]}
    ]
    assert report["errors"] == [] and len(report["skipped"]) == 3
    assert "class folders with no usable document: empty_class" in report["warnings"]
    assert normalised("Great\u3000MOVIE,  loved\tit!") == "great movie loved it"


def test_trainable_errors_are_one_line(tmp_path: Path) -> None:
    write(tmp_path / "one" / "a" / "1.txt", "hello")
    with pytest.raises(DataError, match=r"only 1 class \('a'\) in its 1 document;"):
        read_trainable_corpus(tmp_path / "one", text_column=None, target=None, log=print)
    write(tmp_path / "blank" / "a" / "1.txt", "...")
    write(tmp_path / "blank" / "b" / "1.txt", "")
    with pytest.raises(DataError, match=r"none of the 2 documents .* holds a word"):
        require_trainable_corpus(read_corpus(tmp_path / "blank"))
    write(tmp_path / "bin" / "a" / "1.txt", b"\x00\x01")
    with pytest.raises(DataError, match=r"all 1 skipped \(first, a/1.txt: binary"):
        read_corpus(tmp_path / "bin")
    write(tmp_path / "flat" / "a.txt", "x")
    with pytest.raises(DataError, match="no class folder"):
        read_corpus(tmp_path / "flat")
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "nowhere")
    logged: list[str] = []
    read_trainable_corpus(bad_corpus(tmp_path / "bad"), text_column=None, target=None, log=logged.append)
    assert logged[0].startswith("3 documents of ") and "pos/huge.txt: 10.0 MB" in logged[0]
    assert logged[1].endswith("decoded with replacement (pos/latin1.txt; all: duet scan)")
    assert MAX_DOC_BYTES == 1_000_000


@pytest.mark.e2e
def test_duet_scan_text_folder_and_table(tmp_path: Path) -> None:
    corpus = bad_corpus(tmp_path / "corpus")
    proc = run_cli("scan", str(corpus))
    assert proc.returncode == 0, proc.stderr
    assert "(text, folder layout)" in proc.stdout and "11 documents in 2 classes; 3 skipped" in proc.stdout
    assert "skipped pos/huge.txt: 10.0 MB, over the 1.0 MB limit" in proc.stdout
    assert "pos/latin1.txt: 5 bytes not UTF-8" in proc.stdout
    report = json.loads(run_cli("scan", str(corpus), "--json").stdout)
    assert report["class_counts"] == {"neg": 6, "pos": 5}
    csv = write(tmp_path / "r.csv", "review,label\ngood film,pos\nbad film,neg\nNA,neg\n")
    proc = run_cli("scan", str(csv), "--text-column", "review", "--target", "label")
    assert proc.returncode == 0 and "(text, table layout)" in proc.stdout
    assert "skipped r.csv line 4: no text in the column 'review'" in proc.stdout
    one_line_error(run_cli("scan", str(csv), "--text-column", "review"), 2, "needs --text-column and --target")
    write(tmp_path / "one" / "a" / "1.txt", "hello")
    one_line_error(run_cli("scan", str(tmp_path / "one")), 3, "only 1 class ('a')")
