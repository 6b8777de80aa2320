"""Text export (issue #19 item 4): the tokenizer inside the ONNX graph gives exactly the ids of
``duet.data.text.spec.encode`` (Keras TextVectorization's), and the whole graph, raw strings in,
agrees with PyTorch."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import shutil
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
ALL_TEXTS = EDGE_TEXTS + [piece for text in EDGE_TEXTS for piece in text.split(" ")] + MORE_TEXTS
CORPUS = [text for text in ALL_TEXTS if refused_reason(text) is None]
REFUSED = [text for text in ALL_TEXTS if refused_reason(text) is not None]  # the corpus's NUL cases


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
    assert REFUSED and all("\x00" in t for t in REFUSED)  # the data helper's corpus has NUL cases


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
@pytest.mark.parametrize("name", ["tiny", "fasttext", "text_transformer"])
def test_whole_graph_takes_raw_strings_and_matches_torch(tmp_path: Path, name: str) -> None:
    """Each model of duet.training.text_models (freshly initialised) and a tiny one of this test's own."""
    import onnx

    from duet.training.text_models import build_text_model

    spec = fit_text_spec(EDGE_TEXTS + MORE_TEXTS, ngrams=2, sequence_length=32)
    torch.manual_seed(0)
    model = (TinyText(spec.vocab_size) if name == "tiny" else build_text_model(name, spec, 3)).eval()
    path = tmp_path / "model.onnx"
    graph = write_text_onnx(model, spec, ["a", "b", "c"], name, path, max_chars=1000)
    assert graph["custom_ops"] == "onnxruntime_extensions"
    assert graph["features_dim"] == model.features(torch.zeros((1, 32), dtype=torch.int64)).shape[1]
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
            np.testing.assert_allclose(probs, torch.softmax(ref_logits, 1).numpy(), atol=1e-5)
            np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
            np.testing.assert_allclose(features, model.features(reference).numpy(), atol=1e-4)
    # The gate over the whole corpus, NUL cases included: those are left out and counted, the rest pass.
    from duet.exporting.text_export import check_text_parity

    report = check_text_parity(model, path, spec, CORPUS + REFUSED, split="val", batch_size=8, progress=False)
    assert report.passed and report.images == len(CORPUS) and report.unreadable == len(REFUSED) > 0
    assert report.ids_differ == 0 and report.batch_sizes == [1, 7] and report.to_dict()["documents"] == len(CORPUS)


def write_corpus(root: Path, per_class: int = 48, seed: int = 0) -> Path:
    """Two class folders of .txt files: words that tell the class apart, shared words, and every
    fourth document carries one of the Unicode edge cases, so the gate runs over them too."""
    rng = np.random.default_rng(seed)
    words = {"neg": ["bad", "Awful", "hate", "sad", "poor"], "pos": ["good", "GREAT", "fine", "love", "happy"]}
    shared = ["the", "movie", "was", "a", "it", "Don't", "e-mail", "ÉCOLE", "straße"]
    for label, own in words.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            text = " ".join(rng.choice(own + shared, size=int(rng.integers(3, 40))))
            if i % 4 == 0:
                text += "\n" + EDGE_TEXTS[(i // 4) % len(EDGE_TEXTS)]
            (root / label / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fastText run with bigrams, trained by `duet train` on a small corpus (read-only: copy to change)."""
    from helpers import run_cli

    tmp = tmp_path_factory.mktemp("text_run")
    corpus = write_corpus(tmp / "corpus")
    config = tmp / "text.yaml"
    config.write_text("ngrams: 2\nsequence_length: 48\n", encoding="utf-8")
    args = ("--epochs", "2", "--out", str(tmp / "runs"), "--name", "t", "--quiet", "--config", str(config))
    proc = run_cli("train", str(corpus), *args, "--track", "mlflow")  # the export logs the graph to MLflow too
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "t"


@pytest.mark.e2e
def test_duet_export_of_a_text_run_serves_the_runs_own_predictions(text_run: Path, tmp_path: Path) -> None:
    """`duet export RUN`: the gate ran on every validation document (ids equal, top-1 equal, |Δp| <= 1e-4),
    model.json follows the contract, and model.onnx fed the raw validation texts gives the run's
    own probabilities (``predict_proba``) and the spec's ids."""
    from duet.artifacts.model_package import read_package
    from duet.training.text_run import load_split_texts, load_text_model, predict_proba
    from helpers import one_line_error, run_cli

    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    proc = run_cli("export", str(run), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # MLflow logged the graph quietly: no session of its own on the tokenizer's custom operators
    assert "StringRegexReplace" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((run / "tracking.json").read_text(encoding="utf-8"))["model_uri"].startswith("models:/")
    summary = json.loads(proc.stdout)
    texts = load_split_texts(run)["val"][0]
    assert summary["parity"]["passed"] and summary["parity"]["documents"] == len(texts) > 0
    package = read_package(run / "export")
    m = package.manifest
    assert m["modality"] == "text" and m["preprocess"] is None and package.text_spec.ngrams == 2
    assert m["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1], "description": m["inputs"][0]["description"]}
    ]
    assert [(o["name"], o["shape"]) for o in m["outputs"]] == [
        ("logits", [-1, 2]), ("probabilities", [-1, 2]), ("features", [-1, 64])
    ]  # fmt: skip
    assert m["runtime"] == {"custom_ops": "onnxruntime_extensions"} and m["limits"]["max_chars"] == 100_000
    gate = m["metrics"]["parity"]
    assert gate["ids_differ"] == 0 and gate["unreadable"] == 0 and gate["max_abs_prob_diff"] <= 1e-4
    assert m["metrics"]["baseline"] and "Tokenizer" in (run / "export" / "MODEL_CARD.md").read_text(encoding="utf-8")

    model, spec, _ = load_text_model(run)
    ids, probs = ids_session(package.onnx_path).run([IDS_EDGE, "probabilities"], text_feed(texts))
    np.testing.assert_array_equal(ids, encode(spec, texts))
    reference = predict_proba(model, spec, texts)
    np.testing.assert_array_equal(probs.argmax(1), reference.argmax(1))
    assert np.abs(probs - reference).max() <= 1e-4

    one_line_error(run_cli("export", str(run)), 5, "already exists", "--force")
    for args, needle in ((("--quantize", "int8"), "--quantize"), (("--format", "tflite"), "--format")):
        one_line_error(run_cli("export", str(run), "--out", str(tmp_path / "other"), *args), 2, needle)
    assert not (tmp_path / "other").exists()


@pytest.mark.e2e
def test_a_tokenizer_that_differs_from_the_spec_fails_the_gate_and_writes_nothing(
    text_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph whose vocabulary is the run's with two tokens swapped (as a wrong tie order would give)
    must not ship, even if the model's predictions barely move: the ids are compared too."""
    from duet.exporting import text_export
    from duet.exporting.parity import ParityError

    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    real = text_export.write_text_onnx

    def swapped(model, spec, labels, architecture, path, **kwargs):  # type: ignore[no-untyped-def]
        vocabulary = list(spec.vocabulary)
        vocabulary[-1], vocabulary[-2] = vocabulary[-2], vocabulary[-1]
        return real(
            model, dataclasses.replace(spec, vocabulary=tuple(vocabulary)), labels, architecture, path, **kwargs
        )

    monkeypatch.setattr(text_export, "write_text_onnx", swapped)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ParityError, match="token ids differ"):
        text_export.export_text_run(run, progress=False, log=lambda _: None)
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.e2e
@pytest.mark.parametrize("ngrams", [1, 2])
def test_graph_ids_equal_keras_textvectorization_directly(ngrams: int) -> None:
    """Closing the loop without the native spec in between: a vocabulary fitted by Keras
    TextVectorization, and Keras' own ids, on the edge corpus (every text the graph accepts)."""
    from duet.system.extras import MissingExtra
    from duet.system.tensorflow_import import import_tensorflow

    try:
        import_tensorflow()
    except MissingExtra:
        pytest.skip("TensorFlow is not importable (pip install 'duet[tf]')")
    from duet.data.text.tf_spec import encode_keras, fit_text_spec_keras

    for mode in STANDARDIZE_MODES:
        spec = fit_text_spec_keras(EDGE_TEXTS, standardize=mode, ngrams=ngrams, max_tokens=None, sequence_length=40)
        np.testing.assert_array_equal(tokenizer_ids(spec, CORPUS), encode_keras(spec, CORPUS), err_msg=mode)


_AFTER_TENSORFLOW = """
import sys
sys.path[:0] = {paths!r}
from duet.system.tensorflow_import import import_tensorflow
import_tensorflow()
{before}
from duet.errors import ModelError
from test_text_export import CORPUS, EDGE_TEXTS, encode, fit_text_spec, tokenizer_ids
spec = fit_text_spec(EDGE_TEXTS, max_tokens=None, sequence_length=40)
try:
    print("differ", int((tokenizer_ids(spec, CORPUS) != encode(spec, CORPUS)).any(axis=1).sum()))
except ModelError as e:
    print("refused", e)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("before", ["", "import onnxruntime_extensions"])
def test_tensorflow_imported_first_neither_breaks_nor_silently_changes_the_tokenizer(before: str) -> None:
    """TensorFlow's global RE2 symbols would take the place of onnxruntime-extensions' own (its
    regex operator then replaces nothing: 34 of the corpus's documents got other ids). The library
    is loaded with RTLD_DEEPBIND first, so the graph is right; when the package was imported after
    TensorFlow by someone else, the one-node check refuses with a clear error instead."""
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is None:  # not imported here: this process must stay TF-free
        pytest.skip("TensorFlow is not installed")
    here = Path(__file__).parent
    script = _AFTER_TENSORFLOW.format(paths=[str(here), str(here.parent)], before=before)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    if before:
        assert last.startswith("refused") and "TensorFlow" in last and "aab" in last
    else:
        assert last == "differ 0"
