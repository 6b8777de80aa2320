"""The text vectorisation spec: fitted on the training texts only, applied everywhere.

One spec, two producers, the same ids. ``fit_text_spec``/``encode`` (pure
Python, the default) and ``duet.data.text.tf_spec`` (Keras
``TextVectorization`` adapted on the same texts, ``--data-backend tf``) give the
same vocabulary in the same order and exactly the same ids
(tests/test_text_spec.py, on real text and on Unicode edge cases). The steps
are Keras 3's, reproduced byte for byte:

1. **standardize** (``STANDARDIZE_MODES``): ``lower`` lowercases the ASCII
   letters A-Z only (``tf.strings.lower``: "ÉCOLE" -> "École", "İ" and "ß"
   unchanged); ``strip_punctuation`` deletes the 32 ASCII punctuation
   characters (Python's ``string.punctuation``, Keras' regex
   ``[!"#$%&()\\*\\+,-\\./:;<=>?@\\[\\\\\\]^_`{|}~\\']``), so "don't" -> "dont",
   "e-mail" -> "email"; non-ASCII punctuation (« », ", 。, …) stays.
   ``lower_and_strip_punctuation`` (the default) does both; ``none`` neither.
2. **split** on runs of the six ASCII whitespace characters
   `` \\t\\n\\v\\f\\r`` (``tf.strings.split``); U+00A0, U+3000, U+2003,
   U+0085 and U+001C-U+001F do *not* split, unlike Python's ``str.split()``.
   CJK text without spaces is one token.
3. **ngrams** 2 adds the bigrams ("a b", joined by one space) *after* all the
   unigrams of a document (``tf.strings.ngrams(width=(1, 2))``).
4. **vocabulary**: every token of the training texts counted; "[UNK]" (the
   OOV token) is never a vocabulary entry; ordered by count descending, ties by
   token descending (code point order = UTF-8 byte order: Keras'
   ``np.lexsort((tokens, counts))[::-1]``). ``max_tokens`` is Keras' meaning:
   the size of the whole id space *including* the padding id 0 and the OOV
   id 1, so at most ``max_tokens - 2`` tokens are kept.
5. **encode**: ``PAD_ID`` 0 for padding, ``OOV_ID`` 1 for a token not in the
   vocabulary, ``FIRST_TOKEN_ID + i`` for the i-th token; each document's id
   list (unigrams then bigrams) is truncated to ``sequence_length`` or padded
   with 0 at the end (``output_sequence_length``).

The spec is plain data with a JSON round-trip (``to_dict``/``from_dict``, a
"version" key) for run.json and model.json.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any, Protocol

import numpy as np

from duet.errors import ConfigError, DataError

PAD_ID = 0
OOV_ID = 1
FIRST_TOKEN_ID = 2
OOV_TOKEN = "[UNK]"  # Keras' OOV token: dropped from the counts, never a vocabulary entry
STANDARDIZE_MODES = ("lower_and_strip_punctuation", "lower", "strip_punctuation", "none")
NGRAMS = (1, 2)
SPEC_VERSION = 1
ASCII_WHITESPACE = " \t\n\v\f\r"  # what tf.strings.split splits on (absl::ascii_isspace)

_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_STRIP = str.maketrans("", "", string.punctuation)
_SPLIT = re.compile("[" + re.escape(ASCII_WHITESPACE) + "]+")


class TokenSettings(Protocol):
    """What tokenising needs: a ``TextSpec`` has both, and so may any settings object."""

    @property
    def standardize(self) -> str: ...

    @property
    def ngrams(self) -> int: ...


@dataclass(frozen=True)
class TextSpec:
    """Everything ``encode`` needs, fitted on ``fitted_docs`` training texts."""

    standardize: str
    ngrams: int
    max_tokens: int | None
    sequence_length: int
    vocabulary: tuple[str, ...]  # tokens only: token i has id FIRST_TOKEN_ID + i
    fitted_docs: int
    backend: str = "native"  # who fitted it: "native" or "keras" (the same vocabulary either way)

    @cached_property
    def index(self) -> dict[str, int]:
        """token -> id, built once per spec (a server encodes request after request)."""
        return {t: FIRST_TOKEN_ID + i for i, t in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        """How many ids ``encode`` can give (padding, OOV and the tokens): an embedding table's rows."""
        return FIRST_TOKEN_ID + len(self.vocabulary)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vocabulary"] = list(self.vocabulary)
        d["version"] = SPEC_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextSpec:
        if d.get("version") != SPEC_VERSION:
            raise DataError(f"text spec version {d.get('version')!r} is not {SPEC_VERSION}: refit the spec")
        spec = cls(
            standardize=str(d["standardize"]),
            ngrams=int(d["ngrams"]),
            max_tokens=None if d.get("max_tokens") is None else int(d["max_tokens"]),
            sequence_length=int(d["sequence_length"]),
            vocabulary=tuple(map(str, d["vocabulary"])),
            fitted_docs=int(d["fitted_docs"]),
            backend=str(d.get("backend", "native")),
        )
        check_settings(spec.standardize, spec.ngrams, spec.max_tokens, spec.sequence_length)
        return spec


def check_settings(standardize: str, ngrams: int, max_tokens: int | None, sequence_length: int) -> None:
    """The checks both producers make on their arguments (ConfigError, one line each)."""
    if standardize not in STANDARDIZE_MODES:
        raise ConfigError(f"unknown standardize mode {standardize!r}; use one of {', '.join(STANDARDIZE_MODES)}")
    if ngrams not in NGRAMS:
        raise ConfigError(f"ngrams must be 1 (words) or 2 (words and bigrams). Received: ngrams={ngrams}")
    if max_tokens is not None and max_tokens < FIRST_TOKEN_ID + 1:
        raise ConfigError(
            f"max_tokens counts the padding and OOV ids too, so it must be at least 3 or unset. "
            f"Received: max_tokens={max_tokens}"
        )
    if sequence_length < 1:
        raise ConfigError(f"sequence_length must be at least 1. Received: sequence_length={sequence_length}")


def standardize(text: str, mode: str) -> str:
    """``text`` standardised as Keras does (module docstring, step 1)."""
    if mode not in STANDARDIZE_MODES:
        raise ConfigError(f"unknown standardize mode {mode!r}; use one of {', '.join(STANDARDIZE_MODES)}")
    if mode in ("lower", "lower_and_strip_punctuation"):
        text = text.translate(_LOWER)
    if mode in ("strip_punctuation", "lower_and_strip_punctuation"):
        text = text.translate(_STRIP)
    return text


def split_tokens(text: str) -> list[str]:
    """``text`` split on runs of ASCII whitespace, no empty tokens (``tf.strings.split``)."""
    return [t for t in _SPLIT.split(text) if t]


def tokens(spec_or_settings: TokenSettings | Mapping[str, Any], text: str) -> list[str]:
    """The tokens of one document: standardised, split, then (ngrams 2) the bigrams after the unigrams."""
    mode, ngrams = _settings(spec_or_settings)
    words = split_tokens(standardize(text, mode))
    if ngrams == 2:
        return words + [f"{a} {b}" for a, b in pairwise(words)]
    return words


def _settings(source: TokenSettings | Mapping[str, Any]) -> tuple[str, int]:
    if isinstance(source, Mapping):
        return str(source["standardize"]), int(source["ngrams"])
    return source.standardize, source.ngrams


def rank_vocabulary(counts: Mapping[str, int], max_tokens: int | None) -> tuple[str, ...]:
    """Tokens by count then token, both descending, less the OOV token, at most ``max_tokens - 2`` (Keras)."""
    ranked = sorted(((n, t) for t, n in counts.items() if t not in ("", OOV_TOKEN)), reverse=True)
    if max_tokens is not None:
        ranked = ranked[: max_tokens - FIRST_TOKEN_ID]
    return tuple(t for _, t in ranked)


def require_vocabulary(vocabulary: Sequence[str], num_texts: int) -> None:
    if num_texts == 0:
        raise DataError("cannot fit the text vectorisation on 0 training texts")
    if not vocabulary:
        raise DataError(
            f"the {num_texts} training texts hold no token after standardising (all empty or punctuation); "
            f"nothing to learn a vocabulary from"
        )


def fit_text_spec(
    texts: Sequence[str],
    *,
    standardize: str = "lower_and_strip_punctuation",
    ngrams: int = 1,
    max_tokens: int | None = 20000,
    sequence_length: int = 256,
) -> TextSpec:
    """Fit the spec on ``texts``, the training split only (never validation or test texts).

    Raises:
        ConfigError: an unknown standardize mode, ngrams not 1 or 2, max_tokens < 3, sequence_length < 1.
        DataError: no texts, or no token in any of them.
    """
    check_settings(standardize, ngrams, max_tokens, sequence_length)
    settings = {"standardize": standardize, "ngrams": ngrams}
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokens(settings, text))
    vocabulary = rank_vocabulary(counts, max_tokens)
    require_vocabulary(vocabulary, len(texts))
    return TextSpec(standardize, ngrams, max_tokens, sequence_length, vocabulary, len(texts), "native")


def encode(spec: TextSpec, texts: Iterable[str]) -> np.ndarray:
    """Ids int64 ``[N, spec.sequence_length]``: OOV 1, token i -> 2 + i, truncated or 0-padded at the end."""
    index = spec.index
    length = spec.sequence_length
    rows = [[index.get(t, OOV_ID) for t in tokens(spec, text)[:length]] for text in texts]
    ids = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids
