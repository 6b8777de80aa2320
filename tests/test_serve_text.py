"""duet serve for a text model: raw strings in, the three protocols, limits, drift.

Fast tests check the request reader and the limits against model.json's
contract (docs/text.md, "Serving"); the e2e tests train a run on real English
that ships with Python (stdlib docstrings, a class per module) with the CLI,
export it, serve it, and check that EVERY validation text gets from each
protocol the probabilities the run gives offline (within 1e-5, same top-1), that
bad input is a 4xx with one line (never a 5xx), and that the drift monitor
publishes a verdict on the served documents.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from duet.serve.errors import ApiError
from duet.serve.protocols.kserve_v2 import serialize_bytes
from duet.serve.text_rows import TextLimits, documents, instance_text, strings
from helpers import run_cli
from serve_support import metric_value, running_server

MODULES = {"inspect": "inspect.py", "pathlib": "pathlib.py", "tarfile": "tarfile.py"}
BATCH = 50  # documents per request (under the default --max-images 64)


def refused(call: Any, status: int, *needles: str) -> str:
    with pytest.raises(ApiError) as info:
        call()
    err = info.value
    assert err.status == status, (err.status, err.message)
    assert "\n" not in err.message
    for needle in needles:
        assert needle in err.message, err.message
    return err.message


def test_request_bodies_become_documents() -> None:
    assert documents("one") == ["one"]
    assert documents(["a", "b"]) == ["a", "b"]
    assert documents({"text": "x"}) == ["x"]
    assert documents({"texts": ["x", ""]}) == ["x", ""]
    refused(lambda: documents({"texts": "x"}), 400, "'texts' must be a list")
    refused(lambda: documents({"text": "x", "other": 1}), 400, "the body must be")
    refused(lambda: documents(3), 400, "the body must be")
    assert [instance_text(v, i) for i, v in enumerate(["a", {"text": "b"}, ["c"]])] == ["a", "b", "c"]
    refused(lambda: instance_text({"txt": "a"}, 4), 400, "document 4", "txt")


def test_non_strings_and_unreadable_characters_are_400_naming_the_index() -> None:
    assert strings(["a", "", "é 😀"]) == ["a", "", "é 😀"]
    refused(lambda: strings(["a", 3]), 400, "document 1", "JSON number")
    refused(lambda: strings(["a", "b", None]), 400, "document 2", "JSON null")
    refused(lambda: strings([{"text": "a"}]), 400, "document 0", "JSON object")
    refused(lambda: strings(["ok", "a\x00b"]), 400, "document 1", "U+0000")
    refused(lambda: strings([json.loads('"\\ud800x"')]), 400, "document 0", "U+D800")


def test_limits_come_from_model_json_and_are_413() -> None:
    limits = TextLimits.from_manifest({"limits": {"max_chars": 10, "refused": "..."}}, max_documents=4)
    assert limits == TextLimits(10, 40)  # per request: max_chars x --max-images
    limits.check(["x" * 10] * 4)
    refused(lambda: limits.check(["ok", "x" * 11]), 413, "document 1", "11 characters", "limit is 10")
    both = TextLimits.from_manifest({"limits": {"max_chars": 10, "max_request_chars": 15}}, max_documents=4)
    refused(lambda: both.check(["x" * 8, "y" * 8]), 413, "16 characters", "15 per request")
    assert TextLimits.from_manifest({}, max_documents=64).max_chars == 100_000
    with pytest.raises(ValueError, match="max_chars"):
        TextLimits.from_manifest({"limits": {"max_chars": 0}}, max_documents=4)


# ---------------------------------------------------------------- e2e: a trained, exported, served run


def docstrings(relative: str) -> list[str]:
    root = Path(json.__file__).parent.parent
    tree = ast.parse((root / relative).read_text(encoding="utf-8"))
    nodes = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef))
    return [d for n in nodes if (d := ast.get_docstring(n, clean=False))]


@dataclass
class Served:
    run: Path
    model: Path
    texts: list[str]  # the run's validation texts
    probabilities: np.ndarray  # the run's offline probabilities on them
    name: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("text_serve")
    corpus = root / "corpus"
    for label, relative in MODULES.items():
        (corpus / label).mkdir(parents=True)
        for i, text in enumerate(docstrings(relative)):
            (corpus / label / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    args = ["--epochs", "12", "--patience", "0", "--batch-size", "16", "--device", "cpu", "--seed", "0"]
    trained = run_cli("train", str(corpus), "--out", str(root / "runs"), *args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (root / "runs").iterdir()
    assert (run / "profile" / "text.json").is_file()  # duet train writes the drift reference
    model = root / "model"
    done = run_cli("export", str(run), "--out", str(model))
    assert done.returncode == 0, done.stderr[-3000:]
    from duet.training.text_run import load_split_texts, load_text_model, predict_proba

    texts = load_split_texts(run)["val"][0]
    net, spec, _ = load_text_model(run)
    name = json.loads((model / "model.json").read_text(encoding="utf-8"))["name"]
    return Served(run, model, texts, predict_proba(net, spec, texts), name)


@pytest.fixture(scope="module")
def server(exported: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    args = ("--drift-interval", "3600", "--drift-window", "1000")
    with running_server(exported.model, tmp_path_factory.mktemp("logs"), *args) as s:
        yield s


def batches(texts: list[str]) -> Iterator[tuple[int, list[str]]]:
    for start in range(0, len(texts), BATCH):
        yield start, texts[start : start + BATCH]


def check_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    assert float(np.abs(got - want).max()) <= 1e-5, (what, float(np.abs(got - want).max()))
    assert np.array_equal(got.argmax(1), want.argmax(1)), what


def served_simple(url: str, texts: list[str], labels: list[str]) -> np.ndarray:
    rows = []
    for _, chunk in batches(texts):
        r = httpx.post(f"{url}/v1/predict", json={"texts": chunk}, timeout=60)
        assert r.status_code == 200, r.text
        for p in r.json()["predictions"]:
            rows.append([p["probabilities"][lab] for lab in labels])
            assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    return np.array(rows, dtype=np.float32)


def served_kserve(url: str, name: str, texts: list[str], binary: bool) -> np.ndarray:
    rows = []
    for _, chunk in batches(texts):
        tensor: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": [len(chunk)]}
        if binary:
            raw = serialize_bytes([t.encode("utf-8") for t in chunk])
            tensor["parameters"] = {"binary_data_size": len(raw)}
            head = json.dumps({"inputs": [tensor], "outputs": [{"name": "probabilities"}]}).encode()
            r = httpx.post(
                f"{url}/v2/models/{name}/infer",
                content=head + raw,
                headers={"Inference-Header-Content-Length": str(len(head))},
                timeout=60,
            )
        else:
            tensor["data"] = chunk
            r = httpx.post(f"{url}/v2/models/{name}/infer", json={"inputs": [tensor]}, timeout=60)
        assert r.status_code == 200, r.text
        out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
        rows.append(np.array(out["data"], dtype=np.float32).reshape(out["shape"]))
    return np.concatenate(rows)


def served_tfserving(url: str, name: str, texts: list[str], columnar: bool) -> np.ndarray:
    rows = []
    for start, chunk in batches(texts):
        if columnar:
            r = httpx.post(f"{url}/v1/models/{name}:predict", json={"inputs": {"text": chunk}}, timeout=60)
            assert r.status_code == 200, r.text
            rows.append(np.array(r.json()["outputs"]["probabilities"], dtype=np.float32))
        else:  # strings and {"text": ...} objects, alternating
            instances = [t if (start + i) % 2 else {"text": t} for i, t in enumerate(chunk)]
            r = httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": instances}, timeout=60)
            assert r.status_code == 200, r.text
            rows.append(np.array([p["probabilities"] for p in r.json()["predictions"]], dtype=np.float32))
    return np.concatenate(rows)


@pytest.mark.e2e
def test_every_validation_text_is_served_as_offline_by_every_protocol(exported: Served, server: Any) -> None:
    labels = json.loads((exported.model / "model.json").read_text(encoding="utf-8"))["labels"]
    texts, want = exported.texts, exported.probabilities
    assert len(texts) >= 40
    check_same(served_simple(server.url, texts, labels), want, "/v1/predict")
    check_same(served_kserve(server.url, exported.name, texts, binary=False), want, "KServe V2 JSON")
    check_same(served_kserve(server.url, exported.name, texts, binary=True), want, "KServe V2 binary")
    check_same(served_tfserving(server.url, exported.name, texts, columnar=False), want, "TF Serving instances")
    check_same(served_tfserving(server.url, exported.name, texts, columnar=True), want, "TF Serving inputs")
    meta = httpx.get(f"{server.url}/v2/models/{exported.name}").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["parameters"]["modality"] == "text"


@pytest.mark.e2e
def test_bad_input_is_one_line_4xx_never_5xx(exported: Served, server: Any) -> None:
    url, name = server.url, exported.name
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/v1/predict", {"json": ["ok", 3]}, 400, "document 1"),
        ("/v1/predict", {"json": {"texts": ["a\x00b"]}}, 400, "U+0000"),
        ("/v1/predict", {"content": b'["\\ud800"]', "headers": {"Content-Type": "application/json"}}, 400, "U+D800"),
        ("/v1/predict", {"json": {"texts": []}}, 400, "no document"),
        ("/v1/predict", {"json": ["x"] * 65}, 413, "65 documents"),
        ("/v1/predict", {"json": {"text": "x" * 100_001}}, 413, "100,001 characters"),
        ("/v1/predict", {"content": b"\xff\xfe", "headers": {"Content-Type": "text/plain"}}, 400, "not UTF-8"),
        ("/v1/predict", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        (
            f"/v2/models/{name}/infer",
            {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", None]}]}},
            400,
            "document 1",
        ),
        (
            f"/v2/models/{name}/infer",
            {"json": {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}},
            400,
            "BYTES",
        ),
        (f"/v1/models/{name}:predict", {"json": {"instances": [{"txt": "a"}]}}, 400, "document 0"),
        (f"/v1/models/{name}:predict", {"json": {"instances": ["a", ["b", "c"]]}}, 400, "document 1"),
        (f"/v1/models/{name}:classify", {"json": {"examples": [{"text": 5}]}}, 400, "document 0"),
    ]
    for path, kwargs, status, needle in cases:
        r = httpx.post(f"{url}{path}", timeout=30, **kwargs)
        assert r.status_code == status, (path, kwargs, r.status_code, r.text)
        message = r.json()["error"]
        assert needle in message and "\n" not in message, (path, message)
    assert httpx.post(f"{url}/v1/predict", json={"text": ""}, timeout=30).status_code == 200  # empty is a document
    assert "Traceback" not in server.log_text()


@pytest.mark.e2e
def test_the_monitor_publishes_a_verdict_on_served_documents(exported: Served, server: Any) -> None:
    httpx.post(f"{server.url}/v1/predict", json={"texts": exported.texts[:40]}, timeout=60)
    report = httpx.get(f"{server.url}/v1/monitor", timeout=60).json()
    assert report["modality"] == "text" and report["status"] in ("drift", "no_drift")
    assert {c["column"] for c in report["columns"]} == {
        "oov_rate",
        "length",
        "predicted_class",
        "confidence",
        "embedding",
    }
    assert all(c["adjusted_p"] is not None for c in report["columns"])
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert metric_value(metrics, "duet_drift_window_images") >= 40
    assert metric_value(metrics, "duet_drift_evaluations_total") >= 1
    assert 0 <= metric_value(metrics, "duet_drift_p_value", detector="oov_rate") <= 1
