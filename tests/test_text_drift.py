"""Text drift (#19): OOV rate, document length, predicted class, confidence and the embedding
test against a text run's reference; few false alarms on windows of the same distribution,
planted shifts caught; the server's rolling window."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from duet.data.text.spec import TextSpec, fit_text_spec
from duet.monitor.text_drift import TESTS, compare_text, oov_permutation_test
from duet.monitor.text_profile import (
    DocStats,
    TextDriftSettings,
    TextProfile,
    TextProfileError,
    build_text_profile,
    doc_stats,
    fit_embedding,
)
from duet.serve.text_drift_watch import TextDriftWatch
from helpers import run_cli

LABELS = ("neg", "pos", "neutral")
WORDS = tuple(f"w{i:03d}" for i in range(400))


def corpus(n: int, seed: int, *, words: tuple[str, ...] = WORDS, mean_len: float = 20.0) -> list[str]:
    """Documents of Zipf-distributed words, Poisson lengths, some punctuation and case."""
    r = np.random.default_rng(seed)
    zipf = 1 / np.arange(1, len(words) + 1)
    p = zipf / zipf.sum()
    docs = []
    for _ in range(n):
        k = max(1, int(r.poisson(mean_len)))
        toks = list(r.choice(words, size=k, p=p))
        docs.append(" ".join(toks).capitalize() + ".")
    return docs


def outputs(n: int, seed: int, mix: tuple[float, ...] = (0.4, 0.4, 0.2)) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a fairly confident model with class mix ``mix``, and 8-d features by class."""
    r = np.random.default_rng(seed)
    classes = r.choice(len(LABELS), size=n, p=mix)
    logits = r.normal(size=(n, len(LABELS)))
    logits[np.arange(n), classes] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    centres = np.random.default_rng(99).normal(size=(len(LABELS), 8))
    features = centres[classes] + r.normal(scale=0.8, size=(n, 8))
    return probs.astype(np.float32), features.astype(np.float32)


@pytest.fixture(scope="module")
def spec() -> TextSpec:
    return fit_text_spec(corpus(400, 0), max_tokens=150, ngrams=2, sequence_length=32)


def profile_of(spec: TextSpec, n: int = 300, seed: int = 1) -> TextProfile:
    texts = corpus(n, seed)
    probs, feats = outputs(n, seed)
    _, fit_feats = outputs(600, seed + 1000)
    return build_text_profile(spec, texts, probs, list(LABELS), embedding=fit_embedding(fit_feats, feats, components=4))


def test_doc_stats_counts_words_and_tokens_outside_the_vocabulary() -> None:
    spec = fit_text_spec(["a b c", "a b", "a"], max_tokens=4, ngrams=1, sequence_length=4)  # vocabulary: a, b
    stats = doc_stats(spec, ["A b, zz!", "", "c c c c c c"])
    assert stats.lengths.tolist() == [3, 0, 6]  # not truncated to sequence_length
    assert stats.oov.tolist() == [1, 0, 6]
    assert stats.tokens.tolist() == [3, 0, 6]
    bigrams = fit_text_spec(["a b c", "a b"], max_tokens=None, ngrams=2, sequence_length=4)
    two = doc_stats(bigrams, ["a b x"])  # words a b x; bigrams "a b" (known), "b x" (not)
    assert two.lengths.tolist() == [3] and two.tokens.tolist() == [5] and two.oov.tolist() == [2]


def test_oov_permutation_test_unchanged_vs_surge() -> None:
    r = np.random.default_rng(0)

    def docs(n: int, rate: float) -> DocStats:
        tokens = r.poisson(20, n) + 1
        return DocStats(tokens, r.binomial(tokens, rate), tokens)

    ref = docs(300, 0.05)
    _, p_same, _, _ = oov_permutation_test(ref, docs(200, 0.05), permutations=500, rng=r)
    delta, p_surge, before, now = oov_permutation_test(ref, docs(200, 0.10), permutations=500, rng=r)
    assert p_same > 0.01
    assert p_surge < 0.005 and delta > 0.03 and now > before


def test_profile_round_trips_and_damaged_files_are_one_line_errors(spec: TextSpec, tmp_path: Path) -> None:
    profile = profile_of(spec)
    path = profile.save(tmp_path / "profile" / "text.json")
    again = TextProfile.load(path)
    assert again.labels == list(LABELS) and again.spec == spec and again.rows == 300
    assert np.array_equal(again.docs.oov, profile.docs.oov)
    assert again.embedding is not None and profile.embedding is not None
    assert np.allclose(again.embedding.reference, profile.embedding.reference)
    path.write_text('{"schema": "other"}', encoding="utf-8")
    with pytest.raises(TextProfileError, match="schema 'other'"):
        TextProfile.load(path)
    with pytest.raises(TextProfileError, match="no text drift profile"):
        TextProfile.load(tmp_path / "nothing.json")


def test_too_few_documents_is_its_own_verdict(spec: TextSpec) -> None:
    profile = profile_of(spec)
    result = compare_text(profile, doc_stats(spec, corpus(10, 5)), *outputs(10, 5))
    assert result.status == "insufficient" and result.drift is None
    assert [c.column for c in result.columns] == list(TESTS) and all(c.skipped for c in result.columns)


def test_few_false_alarms_on_windows_of_the_same_distribution(spec: TextSpec) -> None:
    profile = profile_of(spec)
    alarms = 0
    trials = 20
    for t in range(trials):
        texts = corpus(200, 100 + t)
        probs, feats = outputs(200, 100 + t)
        result = compare_text(profile, doc_stats(spec, texts), probs, feats, TextDriftSettings(seed=t))
        assert [c.column for c in result.columns] == list(TESTS)
        assert all(c.adjusted_p is not None for c in result.columns)
        alarms += bool(result.drift)
    assert alarms <= 3  # alpha 0.04: expected ~1 in 20 (measured rates: docs/text.md)


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        ("oov", "oov_rate"),
        ("longer", "length"),
        ("class_mix", "predicted_class"),
        ("embedding", "embedding"),
    ],
)
def test_planted_shifts_are_caught_by_their_test(spec: TextSpec, shift: str, expected: str) -> None:
    profile = profile_of(spec)
    n = 200
    texts = corpus(n, 7)
    probs, feats = outputs(n, 7)
    if shift == "oov":  # a new vocabulary: a third of the words never seen in training
        new = tuple(f"novel{i}" for i in range(200))
        texts = [a if i % 3 else b for i, (a, b) in enumerate(zip(texts, corpus(n, 8, words=new)))]
    elif shift == "longer":
        texts = corpus(n, 7, mean_len=30.0)
    elif shift == "class_mix":
        probs, feats = outputs(n, 7, mix=(0.1, 0.3, 0.6))
    else:
        feats = feats + np.float32(1.0)
    result = compare_text(profile, doc_stats(spec, texts), probs, feats)
    assert result.status == "drift", result.sentence
    assert expected in result.to_dict()["drifted"]
    assert result.to_dict()["modality"] == "text"


def test_the_server_window_is_bounded_and_reports(spec: TextSpec) -> None:
    watch = TextDriftWatch(profile_of(spec), window=120)
    for seed in range(5):
        probs, feats = outputs(40, seed)
        watch.observe(corpus(40, seed), probs, feats)
    assert watch.rows == 120 and watch.seen == 200
    texts, probs, feats = watch.snapshot()
    assert len(texts) == 120 and probs.shape == (120, 3) and feats is not None and feats.shape == (120, 8)
    report = watch.report()
    assert report["status"] in ("drift", "no_drift") and report["n_current"] == 120 and report["seen"] == 200
    assert {c["column"] for c in report["columns"]} == set(TESTS)
    with pytest.raises(ValueError, match="probabilities"):
        watch.observe(["a"], np.zeros((2, 3)))
    watch.observe(corpus(40, 9), outputs(40, 9)[0])  # no features: the embedding test is skipped
    assert watch.snapshot()[2] is None
    skipped = next(c for c in watch.report()["columns"] if c["column"] == "embedding")
    assert skipped["skipped"]


# ---------------------------------------------------------------- e2e: duet drift of a trained text run


def docstrings(relative: str) -> list[str]:
    root = Path(json.__file__).parent.parent
    tree = ast.parse((root / relative).read_text(encoding="utf-8"))
    nodes = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef))
    return [d for n in nodes if (d := ast.get_docstring(n, clean=False))]


def write_texts(folder: Path, texts: list[str]) -> Path:
    folder.mkdir(parents=True)
    for i, text in enumerate(texts):
        (folder / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A fastText run on three stdlib modules' docstrings, with a test split held out: (run, test texts)."""
    root = tmp_path_factory.mktemp("text_drift")
    for label, relative in {"inspect": "inspect.py", "pathlib": "pathlib.py", "tarfile": "tarfile.py"}.items():
        write_texts(root / "corpus" / label, docstrings(relative))
    args = ["--epochs", "10", "--patience", "0", "--device", "cpu", "--seed", "0", "--test-split", "0.3"]
    done = run_cli("train", str(root / "corpus"), "--out", str(root / "runs"), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (root / "runs").iterdir()
    from duet.training.text_run import load_split_texts

    return run, load_split_texts(run)["test"][0]


@pytest.mark.e2e
def test_duet_drift_of_held_out_texts_and_of_foreign_ones(text_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    run, held_out = text_run
    assert (run / "profile" / "text.json").is_file()
    write_texts(tmp_path / "same" / "any" / "layout", held_out)
    (tmp_path / "same" / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    done = run_cli("drift", str(run), "--data", str(tmp_path / "same"), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = json.loads(done.stdout)
    assert verdict["modality"] == "text" and verdict["status"] == "no_drift", verdict["sentence"]
    assert verdict["documents"] == len(held_out) and verdict["skipped_documents"] == 1
    assert {c["column"] for c in verdict["columns"]} == set(TESTS)
    report = json.loads(Path(verdict["report"]["json"]).read_text(encoding="utf-8"))
    assert report["skipped"][0]["document"] == "image.txt" and "binary" in report["skipped"][0]["reason"]
    with (tmp_path / "new.csv").open("w", newline="", encoding="utf-8") as f:  # a table: its `text` column
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, t] for i, t in enumerate(held_out))
    table = run_cli("drift", str(run), "--data", str(tmp_path / "new.csv"), "--json")
    assert table.returncode == 0, table.stderr[-3000:]
    assert json.loads(table.stdout)["documents"] == len(held_out)
    foreign = write_texts(tmp_path / "foreign", docstrings("asyncio/base_events.py") + docstrings("email/message.py"))
    gated = run_cli("drift", str(run), "--data", str(foreign), "--fail-on-drift")
    assert gated.returncode == 1, (gated.returncode, gated.stdout[-2000:], gated.stderr[-2000:])
    assert "drift found" in gated.stderr and "Traceback" not in gated.stderr
