"""Text export (issue #19 item 4): the tokenizer inside the ONNX graph gives exactly the ids of
``duet.data.text.spec.encode`` (Keras TextVectorization's), and the whole graph, raw strings in,
agrees with PyTorch."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.test_text_spec import EDGE_TEXTS, stdlib_docstrings

from duet.data.text.spec import PAD_ID, STANDARDIZE_MODES, TextSpec, encode, fit_text_spec
from duet.exporting.text_graph import (
    IDS_EDGE,
    OUTPUTS,
    ids_session,
    refused_reason,
    session_options,
    text_feed,
    tokenizer_proto,
    write_text_onnx,
)

# The data helper's corpus, each piece alone too, and a few more the graph must get right:
# the other ASCII whitespace, runs of separators, Unicode spaces at the ends, a literal OOV token.
MORE_TEXTS = [
    "\t\n\x0b\x0c\r",
    "a\t\tb\n\nc\r\rd\x0b\x0be\x0c\x0cf",
    "\u00a0lead and trail\u3000",
    "x" * 300 + " long token",
    "[UNK] hello [UNK]",
    "ONE two THREE four FIVE six SEVEN eight NINE ten ELEVEN",
]
CORPUS = EDGE_TEXTS + [piece for text in EDGE_TEXTS for piece in text.split(" ")] + MORE_TEXTS


def tokenizer(spec: TextSpec) -> Callable[[list[str]], np.ndarray]:
    """The tokenizer half of the graph alone, in ONNX Runtime: texts -> ids."""
    import onnxruntime as ort

    proto = tokenizer_proto(spec, opset=20, ir_version=10)
    session = ort.InferenceSession(proto.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    return lambda texts: np.asarray(session.run([IDS_EDGE], text_feed(texts))[0])


def tokenizer_ids(spec: TextSpec, texts: list[str]) -> np.ndarray:
    return tokenizer(spec)(texts)


@pytest.mark.parametrize(("mode", "ngrams"), list(itertools.product(STANDARDIZE_MODES, (1, 2))))
def test_graph_ids_equal_encode_on_unicode_edge_cases(mode: str, ngrams: int) -> None:
    spec = fit_text_spec(
        EDGE_TEXTS[:9] + MORE_TEXTS, standardize=mode, ngrams=ngrams, max_tokens=60, sequence_length=24
    )
    assert len(spec.vocabulary) == 58  # max_tokens bites: some fitted tokens are OOV
    graph = tokenizer(spec)
    ids = graph(CORPUS)
    np.testing.assert_array_equal(ids, encode(spec, CORPUS))
    assert (ids == 1).any() and (ids == PAD_ID).any() and (ids > 1).any()
    for text in CORPUS:  # batch of one: the token matrix is as wide as this text alone
        np.testing.assert_array_equal(graph([text]), encode(spec, [text]), err_msg=repr(text))


@pytest.mark.parametrize("length", [1, 2, 5, 64])
def test_graph_truncates_and_pads_unigrams_then_bigrams(length: int) -> None:
    spec = fit_text_spec(MORE_TEXTS, ngrams=2, max_tokens=None, sequence_length=length)
    texts = ["", "   ", "one", "one two", MORE_TEXTS[-1], MORE_TEXTS[-1] + " zzz unseen"]
    np.testing.assert_array_equal(tokenizer_ids(spec, texts), encode(spec, texts))
    np.testing.assert_array_equal(tokenizer_ids(spec, ["", "\t"]), np.zeros((2, length), np.int64))


def test_graph_ids_equal_encode_on_real_text() -> None:
    docs = stdlib_docstrings()
    spec = fit_text_spec(docs[::2], ngrams=2, max_tokens=5000, sequence_length=128)
    held_out = docs[1::2]
    np.testing.assert_array_equal(tokenizer_ids(spec, held_out), encode(spec, held_out))


def test_nul_and_surrogates_are_refused_because_the_graph_would_differ() -> None:
    spec = fit_text_spec(["alpha beta gamma"], sequence_length=4)
    assert refused_reason("alpha beta") is None and refused_reason("") is None
    assert "U+0000" in str(refused_reason("alpha\x00beta"))
    assert "surrogate" in str(refused_reason("alpha\ud800"))
    # Why NUL is refused: the regex operator stops reading at it ("gamma" is lost).
    text = "alpha\x00beta gamma"
    assert not np.array_equal(tokenizer_ids(spec, [text]), encode(spec, [text]))


class TinyText(torch.nn.Module):
    """A text model by the contract of duet.training.text_models: ids -> logits, features."""

    def __init__(self, vocab_size: int, classes: int = 3, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.head = torch.nn.Linear(dim, classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD_ID).unsqueeze(-1).float()
        return (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


@pytest.mark.e2e
def test_whole_graph_takes_raw_strings_and_matches_torch(tmp_path: Path) -> None:
    import onnx

    spec = fit_text_spec(EDGE_TEXTS + MORE_TEXTS, ngrams=2, sequence_length=32)
    model = TinyText(spec.vocab_size).eval()
    path = tmp_path / "model.onnx"
    graph = write_text_onnx(model, spec, ["a", "b", "c"], "tiny", path, max_chars=1000)
    assert graph["custom_ops"] == "onnxruntime_extensions" and graph["features_dim"] == 8
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["text"]
    assert [o.name for o in proto.graph.output] == list(OUTPUTS)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["modality"] == "text" and json.loads(meta["text_spec"]) == spec.to_dict()
    session = ids_session(path)
    for texts in (CORPUS, CORPUS[:1], [""]):
        ids, logits, probs, features = session.run([IDS_EDGE, *OUTPUTS], text_feed(texts))
        reference = torch.from_numpy(encode(spec, texts))
        np.testing.assert_array_equal(ids, reference.numpy())
        with torch.no_grad():
            ref_logits = model(reference)
            np.testing.assert_allclose(probs, torch.softmax(ref_logits, 1).numpy(), atol=1e-6)
            np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-5)
            np.testing.assert_allclose(features, model.features(reference).numpy(), atol=1e-6)
