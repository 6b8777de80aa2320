"""The text vectorisation spec (issue #19 item 2): Keras semantics in pure Python, and the
native and Keras ``TextVectorization`` producers give identical ids, on real text and on
Unicode edge cases."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from duet.data.text.spec import (
    FIRST_TOKEN_ID,
    OOV_ID,
    PAD_ID,
    STANDARDIZE_MODES,
    TextSpec,
    encode,
    fit_text_spec,
    split_tokens,
    standardize,
    tokens,
)
from duet.errors import ConfigError, DataError

# Every case the brief names: ASCII vs non-ASCII capitals, ß, Turkish İ, combining accents,
# emoji, CJK without spaces, Unicode and control separators, tabs/newlines, punctuation
# inside words, an empty string, only punctuation.
EDGE_TEXTS = [
    "ÉCOLE Zürich ÀB école ecole",
    "Straße STRASSE strasse ß ẞ",
    "İstanbul istanbul ISTANBUL ı I i",
    "cafe\u0301 café CAFE\u0301 Café",
    "😀 hi😀 😀 👍🏽 👨‍👩‍👧",
    "東京都に住んでいます 東京 東京",
    "a\u00a0b a\u3000b c\u2003d e\x1cf g\x1dh i\x1ej k\x1fl m\x85n o\u2028p",
    "tab\there\nnew\r\nline\vv\ff  two  spaces",
    "don't e-mail [UNK] [unk] UNK (x) a.b.c «quoted» “smart” 50% C++",
    "",
    "!!!...???",
    "   ",
    "  lead  trail  ",
    "Don't DON'T don't dont",
    "the the the a a b",
    "nul\x00inside zero\u200bwidth ＦＵＬＬ ǅ Ω ΣΑΣ \ufeffbom \ufffd",
]


STDLIB_SOURCES = (
    "argparse.py",
    "csv.py",
    "textwrap.py",
    "string.py",
    "shutil.py",
    "pathlib.py",
    "json/__init__.py",
    "subprocess.py",
    "inspect.py",
    "functools.py",
    "tarfile.py",
    "logging/__init__.py",
    "email/message.py",
)


def stdlib_docstrings() -> list[str]:
    """Real English text that ships with Python: the docstrings of stdlib modules and their functions/classes.

    Read from the source files with ``ast`` (no import side effects), raw (indentation, newlines, doctest
    snippets and punctuation kept), so the corpus is the same on any machine with this Python."""
    root = Path(sys.modules["json"].__file__ or "").parent.parent
    docs: list[str] = []
    for name in STDLIB_SOURCES:
        tree = ast.parse((root / name).read_text(encoding="utf-8"))
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
        docs += [d for n in nodes if (d := ast.get_docstring(n, clean=False))]
    return docs


# ---- pure functions (fast)


def test_standardize_is_ascii_only_like_keras() -> None:
    s = "ÉCOLE Zürich ÀB İ ß Don't e-mail «x» 50%"
    assert standardize(s, "lower") == "École zürich Àb İ ß don't e-mail «x» 50%"
    assert standardize(s, "strip_punctuation") == "ÉCOLE Zürich ÀB İ ß Dont email «x» 50"
    assert standardize(s, "lower_and_strip_punctuation") == "École zürich Àb İ ß dont email «x» 50"
    assert standardize(s, "none") == s
    assert standardize("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "strip_punctuation") == ""
    with pytest.raises(ConfigError, match="unknown standardize mode 'upper'"):
        standardize(s, "upper")


def test_split_is_on_ascii_whitespace_only() -> None:
    assert split_tokens("  a\tb\nc\r\nd\ve\ff  ") == ["a", "b", "c", "d", "e", "f"]
    # These do not split in tf.strings.split (Python's str.split() would split each of them).
    for sep in ("\u00a0", "\u3000", "\u2003", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028"):
        assert split_tokens(f"x{sep}y z") == [f"x{sep}y", "z"], repr(sep)
    assert split_tokens("") == [] and split_tokens(" \t\n") == []
    assert split_tokens("東京都に住んでいます") == ["東京都に住んでいます"]


def test_tokens_bigrams_follow_all_unigrams() -> None:
    settings = {"standardize": "lower_and_strip_punctuation", "ngrams": 2}
    assert tokens(settings, "The cat, the HAT.") == ["the", "cat", "the", "hat", "the cat", "cat the", "the hat"]
    assert tokens(settings, "one") == ["one"] and tokens(settings, "...") == []


def test_vocabulary_order_max_tokens_and_oov_token() -> None:
    texts = ["b b a c", "a b d", "[UNK] e"]
    spec = fit_text_spec(texts, standardize="none", max_tokens=None, sequence_length=4)
    # count descending (b 3, a 2), ties by token descending (e, d, c); "[UNK]" is never a token
    assert spec.vocabulary == ("b", "a", "e", "d", "c")
    assert spec.vocab_size == 7 and spec.fitted_docs == 3 and spec.backend == "native"
    small = fit_text_spec(texts, standardize="none", max_tokens=4, sequence_length=4)
    assert small.vocabulary == ("b", "a")  # max_tokens counts the padding and OOV ids
    assert encode(small, ["a z b c d [UNK]"]).tolist() == [[3, OOV_ID, 2, OOV_ID]]


def test_encode_pads_truncates_and_maps_oov() -> None:
    spec = fit_text_spec(["x y", "y"], ngrams=2, max_tokens=None, sequence_length=5)
    assert spec.vocabulary == ("y", "x y", "x")
    ids = encode(spec, ["X Y", "y x y x", "", "q"])
    assert ids.dtype == np.int64 and ids.shape == (4, 5)
    assert ids.tolist() == [
        [4, 2, 3, PAD_ID, PAD_ID],  # x, y, "x y"
        [2, 4, 2, 4, OOV_ID],  # y x y x, then "y x" (unseen): truncated to 5
        [0, 0, 0, 0, 0],
        [OOV_ID, 0, 0, 0, 0],
    ]
    assert FIRST_TOKEN_ID == 2 and encode(spec, []).shape == (0, 5)


def test_spec_json_round_trip_and_version() -> None:
    spec = fit_text_spec(EDGE_TEXTS, ngrams=2, max_tokens=50, sequence_length=16)
    back = TextSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and spec.to_dict()["version"] == 1
    with pytest.raises(DataError, match="version"):
        TextSpec.from_dict({**spec.to_dict(), "version": 99})


def test_fit_errors_are_one_line() -> None:
    with pytest.raises(DataError, match="0 training texts"):
        fit_text_spec([])
    with pytest.raises(DataError, match="no token"):
        fit_text_spec(["", "...", "  "])
    with pytest.raises(ConfigError, match="ngrams"):
        fit_text_spec(["a"], ngrams=3)
    with pytest.raises(ConfigError, match="max_tokens"):
        fit_text_spec(["a"], max_tokens=2)
    with pytest.raises(ConfigError, match="sequence_length"):
        fit_text_spec(["a"], sequence_length=0)


def test_stdlib_corpus_is_real_and_sizeable() -> None:
    docs = stdlib_docstrings()
    assert len(docs) > 200 and sum(map(len, docs)) > 100_000
    spec = fit_text_spec(docs, max_tokens=None)
    assert len(spec.vocabulary) > 2000 and spec.vocabulary[0] == "the"


# ---- the Keras producer: identical ids


@pytest.fixture(scope="module")
def tf_spec():  # type: ignore[no-untyped-def]
    """duet.data.text.tf_spec, TensorFlow imported duet's way, else skip."""
    from duet.system.extras import MissingExtra
    from duet.system.tensorflow_import import import_tensorflow

    try:
        import_tensorflow()
    except MissingExtra:
        pytest.skip("TensorFlow is not importable (pip install 'duet[tf]')")
    from duet.data.text import tf_spec as module

    return module


@pytest.mark.e2e
@pytest.mark.parametrize("corpus", ["stdlib", "edge"])
@pytest.mark.parametrize("mode", STANDARDIZE_MODES)
def test_native_and_keras_give_identical_ids(tf_spec, corpus: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    texts = stdlib_docstrings() if corpus == "stdlib" else EDGE_TEXTS
    held_out = EDGE_TEXTS + texts[::7] + ["unseen words zzqx ÉCOLE", "a " * 400]
    for ngrams in (1, 2):
        for max_tokens in (None, 20 if corpus == "edge" else 1000):
            kw = {"standardize": mode, "ngrams": ngrams, "max_tokens": max_tokens, "sequence_length": 64}
            native, keras = fit_text_spec(texts, **kw), tf_spec.fit_text_spec_keras(texts, **kw)  # type: ignore[arg-type]
            assert keras.vocabulary == native.vocabulary, (ngrams, max_tokens)
            assert keras.backend == "keras" and native.backend == "native"
            ids = encode(native, held_out)
            assert np.array_equal(tf_spec.encode_keras(native, held_out), ids), (ngrams, max_tokens)
            if max_tokens is not None:
                assert len(native.vocabulary) == max_tokens - 2 and (ids == OOV_ID).any()
            assert (ids >= FIRST_TOKEN_ID).sum() > len(held_out)  # real tokens were looked up
