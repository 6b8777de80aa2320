"""`duet serve` speaks three protocols, and every one of them returns what offline
prediction (duet.evaluation.inference) returns, image for image. A real server on 127.0.0.1,
real clients: httpx, tritonclient[http] with its defaults, plain TF Serving JSON."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_support import Server, metric_value, running_server, val_files

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

TOL = 1e-4


@pytest.fixture(scope="module")
def run(small_run: Path) -> Path:
    return small_run


@pytest.fixture(scope="module")
def server(small_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    run = small_export.parent
    with running_server(run, tmp_path_factory.mktemp("logs"), "--max-batch-size", "8") as s:
        yield s


@pytest.fixture(scope="module")
def offline(run: Path) -> dict[str, np.ndarray]:
    """Probabilities of every validation image from duet.evaluation.inference (PyTorch, CPU)."""
    import torch

    from duet.artifacts.run_dir import load_run
    from duet.data.contract import Sample
    from duet.evaluation.inference import load_model, predict_samples

    info = load_run(run)
    files = val_files(run)
    samples = [Sample(p, info.labels.index(label)) for p, label in files]
    model = load_model(info, torch.device("cpu"))
    preds = predict_samples(model, info, samples, torch.device("cpu"), batch_size=7, workers=0, progress=False)
    assert not any(preds.errors)
    return {str(p): row for (p, _), row in zip(files, preds.probs)}


def _assert_same(served: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert served.shape == expected.shape, what
    assert int(served.argmax()) == int(expected.argmax()), f"{what}: top-1 differs"
    assert float(np.abs(served - expected).max()) <= TOL, f"{what}: {served} vs {expected}"


def test_server_preprocessing_is_the_evaluation_path_pixel_for_pixel(run: Path) -> None:
    """The uint8 tensor the server builds from a file's bytes is exactly the centre crop that
    evaluation feeds the model (same decode, same load square, same crop)."""
    import torch

    from duet.artifacts.run_dir import load_run
    from duet.data import augment
    from duet.data.contract import LoaderOptions, Sample
    from duet.data.loaders import make_loader
    from duet.serve.images import pixels_from_bytes

    info = load_run(run)
    files = val_files(run)
    options = LoaderOptions(batch_size=64, shuffle=False, device=torch.device("cpu"), workers=0)
    loader = make_loader("torch", [Sample(p, 0) for p, _ in files], info.preprocess, options)
    (batch,) = list(loader)
    expected = augment.centre_crop(batch.images, info.preprocess).numpy()
    served = np.stack([pixels_from_bytes(p.read_bytes(), info.preprocess, 10**7) for p, _ in files])
    assert served.dtype == np.uint8 and np.array_equal(served, expected)


def test_server_preprocessing_without_torch_is_the_evaluation_path_pixel_for_pixel(run: Path, tmp_path: Path) -> None:
    """The same check in a process where torch cannot be imported, as in a duet[serve]
    install: there the resize is duet.data.resample's NumPy twin of torch's kernel."""
    import subprocess
    import sys

    import torch

    from duet.artifacts.run_dir import load_run
    from duet.data import augment
    from duet.data.contract import LoaderOptions, Sample
    from duet.data.loaders import make_loader

    info = load_run(run)
    files = val_files(run)
    (tmp_path / "files.json").write_text(json.dumps([str(p) for p, _ in files]))
    script = """
import json, sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(name=name)
sys.meta_path.insert(0, NotInstalled())
import numpy as np
from pathlib import Path
from duet.artifacts.run_dir import load_run
from duet.serve.images import pixels_from_bytes
spec = load_run(Path(sys.argv[1])).preprocess
files = json.loads(Path(sys.argv[2], "files.json").read_text())
np.save(Path(sys.argv[2], "served.npy"), np.stack([pixels_from_bytes(Path(f).read_bytes(), spec, 10**7) for f in files]))
assert "torch" not in sys.modules
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(run), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    options = LoaderOptions(batch_size=64, shuffle=False, device=torch.device("cpu"), workers=0)
    loader = make_loader("torch", [Sample(p, 0) for p, _ in files], info.preprocess, options)
    (batch,) = list(loader)
    expected = augment.centre_crop(batch.images, info.preprocess).numpy()
    served = np.load(tmp_path / "served.npy")
    assert served.dtype == np.uint8 and np.array_equal(served, expected)


def test_v1_predict_multipart_equals_offline_for_every_validation_image(
    server: Server, run: Path, offline: dict[str, np.ndarray]
) -> None:
    files = val_files(run)
    labels = json.loads((run / "run.json").read_text())["labels"]
    for start in range(0, len(files), 6):
        chunk = files[start : start + 6]
        multipart = [("file", (p.name, p.read_bytes(), "image/png")) for p, _ in chunk]
        r = httpx.post(f"{server.url}/v1/predict", files=multipart, params={"top_k": 3}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "digits" and len(body["predictions"]) == len(chunk)
        for (path, _), pred in zip(chunk, body["predictions"]):
            assert pred["file"] == path.name
            probs = np.zeros(len(labels), dtype=np.float32)
            for t in pred["top"]:
                probs[labels.index(t["label"])] = t["probability"]
            _assert_same(probs, offline[str(path)], str(path))
            assert pred["label"] == pred["top"][0]["label"]


def test_v1_predict_raw_body(server: Server, run: Path, offline: dict[str, np.ndarray]) -> None:
    path, _ = val_files(run)[0]
    r = httpx.post(
        f"{server.url}/v1/predict",
        content=path.read_bytes(),
        headers={"Content-Type": "image/png"},
        params={"top_k": 1},
    )
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    assert len(pred["top"]) == 1 and pred["file"] is None
    assert abs(pred["probability"] - float(offline[str(path)].max())) <= TOL


def test_tritonclient_with_its_defaults_equals_offline(
    server: Server, run: Path, offline: dict[str, np.ndarray]
) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "pixels": "UINT8"}
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]

    files = val_files(run)
    images = np.array([p.read_bytes() for p, _ in files], dtype=np.object_)
    inp = triton.InferInput("image", [len(files)], "BYTES")
    inp.set_data_from_numpy(images)  # binary tensor data: tritonclient's default
    result = client.infer("digits", [inp])  # no outputs named: all of them, binary
    probs = result.as_numpy("probabilities")
    assert result.as_numpy("logits").shape == probs.shape == (len(files), 3)
    for (path, _), row in zip(files, probs):
        _assert_same(row, offline[str(path)], str(path))

    # classification extension: "score:index:label", best first
    result = client.infer("digits", [inp], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    top = result.as_numpy("probabilities")
    assert top.shape == (len(files), 2)
    score, index, label = top[0][0].decode().split(":")
    assert int(index) == int(probs[0].argmax()) and label == ["0", "1", "7"][int(index)]
    assert abs(float(score) - float(probs[0].max())) < 1e-5

    # UINT8 pixel tensors, binary and JSON, go straight to the graph
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 3, 24, 24), dtype=np.uint8)
    for binary in (True, False):
        inp = triton.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels, binary_data=binary)
        out = client.infer("digits", [inp], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)])
        p = out.as_numpy("probabilities")
        assert p.shape == (3, 3) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_tritonclient_gets_errors_as_exceptions(server: Server) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    inp = triton.InferInput("pixels", [1, 3, 24, 24], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 24, 24), np.float32))
    with pytest.raises(InferenceServerException, match="UINT8"):
        client.infer("digits", [inp])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("other", [inp])


def test_kserve_v2_json_with_base64_images(server: Server, run: Path, offline: dict[str, np.ndarray]) -> None:
    path, _ = val_files(run)[1]
    body = {
        "id": "r-1",
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(path.read_bytes()).decode()]}
        ],
    }
    r = httpx.post(f"{server.url}/v2/models/digits/versions/1/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r-1" and out["probabilities"]["shape"] == [1, 3]
    _assert_same(np.array(out["probabilities"]["data"], dtype=np.float32), offline[str(path)], str(path))


def test_tf_serving_rest(server: Server, run: Path, offline: dict[str, np.ndarray]) -> None:
    status = httpx.get(f"{server.url}/v1/models/digits").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    meta = httpx.get(f"{server.url}/v1/models/digits/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image_bytes"]["dtype"] == "DT_STRING"

    files = val_files(run)[:4]
    b64 = [base64.b64encode(p.read_bytes()).decode() for p, _ in files]
    rows = httpx.post(f"{server.url}/v1/models/digits:predict", json={"instances": [{"b64": b} for b in b64]})
    assert rows.status_code == 200, rows.text
    for (path, _), pred in zip(files, rows.json()["predictions"]):
        _assert_same(np.array(pred["probabilities"], dtype=np.float32), offline[str(path)], str(path))
        assert pred["label"] == ["0", "1", "7"][pred["label_index"]]

    named = httpx.post(
        f"{server.url}/v1/models/digits/versions/1:predict",
        json={"signature_name": "serving_default", "instances": [{"image_bytes": {"b64": b}} for b in b64]},
    )
    columnar = httpx.post(
        f"{server.url}/v1/models/digits:predict", json={"inputs": {"image_bytes": [{"b64": b} for b in b64]}}
    )
    assert named.status_code == columnar.status_code == 200, (named.text, columnar.text)
    assert [p["probabilities"] for p in named.json()["predictions"]] == columnar.json()["outputs"]["probabilities"]

    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 24, 24)).tolist()
    r = httpx.post(f"{server.url}/v1/models/digits:predict", json={"instances": pixels})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text

    missing = httpx.post(f"{server.url}/v1/models/nope:predict", json={"instances": [{"b64": b64[0]}]})
    assert missing.status_code == 404 and "Servable not found" in missing.json()["error"]


def test_metrics_follow_prometheus_naming(server: Server) -> None:
    httpx.get(f"{server.url}/v2/models/nope")  # a 404 to count
    text = httpx.get(f"{server.url}/metrics").text
    names = set(re.findall(r"^(duet_\w+?)(?:_bucket|_count|_sum|_created)?[{ ]", text, flags=re.M))
    for name in (
        "duet_requests_total",
        "duet_request_duration_seconds",
        "duet_batch_size_images",
        "duet_inference_duration_seconds",
        "duet_predictions_total",
        "duet_prediction_confidence_ratio",
        "duet_model_info",
        "duet_model_loaded",
        "duet_queue_images",
        "duet_requests_in_flight",
    ):
        assert name in names, name
    assert metric_value(text, "duet_requests_total", route="/v2/models/{name}/infer", code="200") >= 1
    assert metric_value(text, "duet_requests_total", route="/v2/models/{name}", code="404") >= 1
    assert 'duet_request_duration_seconds_bucket{le="0.25"' in text  # an SLO edge is a bucket edge
    assert metric_value(text, "duet_predictions_total") >= 10
    assert metric_value(text, "duet_model_info", name="digits", runtime="onnxruntime") == 1
    assert metric_value(text, "duet_model_loaded") == 1
    from prometheus_client.parser import text_string_to_metric_families

    counters = [f for f in text_string_to_metric_families(text) if f.type == "counter" and f.name.startswith("duet_")]
    assert len(counters) >= 4
    for family in counters:  # every counter sample is named *_total
        assert {s.name for s in family.samples} <= {f"{family.name}_total", f"{family.name}_created"}, family.name
    assert "_milliseconds" not in text and "_ms" not in text  # base units only


def test_metrics_pass_promtool_lint(server: Server) -> None:
    import shutil
    import subprocess

    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    text = httpx.get(f"{server.url}/metrics").text
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("duet_")]
    assert not problems, problems


def test_drift_verdict_on_recent_requests(server: Server, run: Path) -> None:
    """The model folder carries the run's reference profile; the server keeps a window of
    recent requests and answers GET /v1/monitor with the verdict (and metrics)."""
    files = val_files(run)[:12]
    for _ in range(2):  # 24 + 12 images: more than the 30 every detector needs
        r = httpx.post(
            f"{server.url}/v1/predict", files=[("file", (p.name, p.read_bytes(), "image/png")) for p, _ in files]
        )
        assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server.url}/v1/predict",
        params={"outliers": "true"},
        files=[("file", (p.name, p.read_bytes(), "image/png")) for p, _ in files],
    )
    assert r.status_code == 200, r.text
    for prediction in r.json()["predictions"]:  # opt-in per-image outlier fields
        o = prediction["outlier"]
        assert set(o) == {"score", "p_value", "flagged"} and 0 < o["p_value"] <= 1 and isinstance(o["flagged"], bool)
    assert (
        "outlier"
        not in httpx.post(
            f"{server.url}/v1/predict", content=files[0][0].read_bytes(), headers={"Content-Type": "image/png"}
        ).json()["predictions"][0]
    )
    verdict = httpx.get(f"{server.url}/v1/monitor").json()
    assert verdict["status"] in ("drift", "no_drift") and isinstance(verdict["drift"], bool), verdict
    assert verdict["n_current"] >= 36, verdict
    detectors = {d["detector"]: d for d in verdict["detectors"]}
    # Every detector runs: the graph's features output feeds the embedding and outlier detectors.
    assert set(detectors) == {"embedding", "predicted_class", "confidence", "image_stats", "outlier_rate"}
    assert not any(d["skipped"] for d in detectors.values()), detectors
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_value(text, "duet_drift_window_images") == verdict["n_current"]
    assert metric_value(text, "duet_drift_evaluations_total") >= 1
    assert metric_value(text, "duet_drift_score", detector="embedding") == pytest.approx(
        detectors["embedding"]["statistic"]
    )
    assert metric_value(text, "duet_drift_outlier_rate") == pytest.approx(detectors["outlier_rate"]["statistic"])
    assert metric_value(text, "duet_drift_insufficient") == 0


def test_outlier_fields_are_refused_up_front_when_drift_is_off(
    small_export: Path, tmp_path_factory: pytest.TempPathFactory, run: Path
) -> None:
    """?outliers=true on a server without monitoring: 409 with the reason, before any image is decoded."""
    with running_server(small_export, tmp_path_factory.mktemp("logs"), "--no-drift") as s:
        p, _ = val_files(run)[0]
        r = httpx.post(
            f"{s.url}/v1/predict",
            params={"outliers": "true"},
            content=p.read_bytes(),
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 409 and r.json()["code"] == "outliers_unavailable", r.text
        assert "--no-drift" in r.json()["error"]
        ok = httpx.post(f"{s.url}/v1/predict", content=p.read_bytes(), headers={"Content-Type": "image/png"})
        assert ok.status_code == 200 and "outlier" not in ok.json()["predictions"][0]


def test_alert_rules_use_metrics_the_server_exports(server: Server) -> None:
    import yaml

    httpx.get(f"{server.url}/v1/monitor")  # the drift gauges exist once a verdict was computed
    exprs = ""
    for name in ("alerts.yml", "drift_rules.yml"):
        path = Path(__file__).parents[1] / "deploy" / "prometheus" / name
        if path.is_file():
            doc = yaml.safe_load(path.read_text())
            exprs += " ".join(rule["expr"] for group in doc["groups"] for rule in group["rules"])
    text = httpx.get(f"{server.url}/metrics").text
    for name in set(re.findall(r"\bduet_\w+", exprs)):
        assert re.search(rf"^{name}[{{ ]", text, flags=re.M), f"alert rules use {name}, the server has no such series"


def test_openapi_docs(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/v1/predict", "/v2/models/{name}/infer", "/v1/models/{name}:predict", "/v2/health/ready", "/metrics"):
        assert path in spec["paths"], path
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_torch_runtime_matches_onnx_runtime(small_export: Path) -> None:
    """The PyTorch runtime (used on CUDA) computes what the ONNX graph computes; here on the CPU."""
    from duet.artifacts.model_package import read_package
    from duet.serve.runtimes import OnnxRuntime, load_runtime

    package = read_package(small_export)
    torch_rt = load_runtime(package, "torch", device="cpu")
    assert torch_rt.name == "torch" and torch_rt.device == "cpu"
    pixels = np.random.default_rng(3).integers(0, 256, (5, 3, 24, 24), dtype=np.uint8)
    a, b = torch_rt(pixels), OnnxRuntime(package)(pixels)
    assert np.abs(a.probabilities - b.probabilities).max() <= TOL
    assert (a.probabilities.argmax(1) == b.probabilities.argmax(1)).all()


def test_bench_serve_measures_duet_naive_and_bare(small_export: Path) -> None:
    from helpers import run_cli

    export = small_export
    proc = run_cli("bench", "serve", str(export), "--requests", "12", "--concurrency", "1,3", "--drift-cost", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    short = {"duet serve --no-drift": "no-drift"}
    rows = {(short.get(r["server"], r["server"].split()[0]), r["concurrency"]): r for r in result["rows"]}
    assert set(rows) == {
        ("bare", 1),
        ("ceiling", 1),
        ("duet", 1),
        ("duet", 3),
        ("naive", 1),
        ("naive", 3),
        ("no-drift", 1),
        ("no-drift", 3),
    }
    assert result["settings"]["drift_profile"]  # the shared export carries its run's profile: drift is on
    ceiling = rows.pop(("ceiling", 1))
    assert all(r["requests"] == 12 and r["p50_ms"] > 0 and r["throughput"] > 0 for r in rows.values())
    assert rows[("duet", 3)]["mean_batch"] >= 1
    # The ceiling is the best of decode + session.run at batch 1, 2, 4, ... 32 (the default maximum).
    assert set(ceiling["by_batch"]) == {"1", "2", "4", "8", "16", "32"}
    assert ceiling["throughput"] == max(ceiling["by_batch"].values()) == ceiling["by_batch"][str(ceiling["batch"])]
    verdict = result["verdict"]
    assert verdict["concurrency"] == 3 and verdict["ceiling_batch"] == ceiling["batch"]
    assert verdict["share_of_ceiling"] == rows[("duet", 3)]["throughput"] / ceiling["throughput"]
    assert verdict["p99_vs_naive"] == rows[("duet", 3)]["p99_ms"] / rows[("naive", 3)]["p99_ms"]
    # What drift monitoring costs: duet with it vs duet --no-drift, at each level.
    assert verdict["drift_cost"] == {
        str(c): 1 - rows[("duet", c)]["throughput"] / rows[("no-drift", c)]["throughput"] for c in (1, 3)
    }


# --- protocol fidelity: each checked with the real client or the real protobuf ---


def test_tf_serving_status_and_metadata_parse_into_the_real_protobufs(server: Server, tmp_path: Path) -> None:
    """TF Serving clients read these answers with json_format into its own messages; the
    signature map is a google.protobuf.Any, so it needs its "@type". (In a subprocess:
    the protobuf modules import TensorFlow, which must not load into the test process.)"""
    import subprocess
    import sys

    pytest.importorskip("tensorflow_serving", reason="tensorflow-serving-api (make test installs it with --no-deps)")
    (tmp_path / "metadata.json").write_text(httpx.get(f"{server.url}/v1/models/digits/metadata").text)
    (tmp_path / "status.json").write_text(httpx.get(f"{server.url}/v1/models/digits").text)
    script = """
import json, pathlib, sys
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
d = pathlib.Path(sys.argv[1])
meta = json_format.Parse((d / "metadata.json").read_text(), get_model_metadata_pb2.GetModelMetadataResponse())
sigs = get_model_metadata_pb2.SignatureDefMap()
assert meta.metadata["signature_def"].Unpack(sigs)
status = json_format.Parse((d / "status.json").read_text(), get_model_status_pb2.GetModelStatusResponse())
default = sigs.signature_def["serving_default"]
print(json.dumps({"name": meta.model_spec.name, "version": meta.model_spec.version.value,
                  "signatures": {k: v.method_name for k, v in sigs.signature_def.items()},
                  "image_dtype": default.inputs["image_bytes"].dtype,
                  "prob_dims": [d.size for d in default.outputs["probabilities"].tensor_shape.dim],
                  "status": [[v.version, v.state] for v in status.model_version_status]}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed["name"] == "digits" and parsed["version"] == 1
    assert parsed["signatures"] == {
        "serving_default": "tensorflow/serving/predict",
        "classify": "tensorflow/serving/classify",
    }
    assert parsed["image_dtype"] == 7 and parsed["prob_dims"] == [-1, 3]  # DT_STRING; [batch, classes]
    assert parsed["status"] == [[1, 30]]  # ModelVersionStatus.AVAILABLE


def test_tf_serving_classify_answers_results_and_regress_is_a_clear_400(
    server: Server, run: Path, offline: dict[str, np.ndarray]
) -> None:
    files = val_files(run)[:3]
    labels = ["0", "1", "7"]
    examples = [
        {"image_bytes": {"b64": base64.b64encode(p.read_bytes()).decode()}, "caption": "ignored"} for p, _ in files
    ]
    for url in (f"{server.url}/v1/models/digits:classify", f"{server.url}/v1/models/digits/versions/1:classify"):
        r = httpx.post(url, json={"signature_name": "serving_default", "examples": examples})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(files)
        for (path, _), pairs in zip(files, results):
            assert sorted(label for label, _ in pairs) == labels
            scores = [score for _, score in pairs]
            assert scores == sorted(scores, reverse=True)  # best first
            probs = np.array([dict(pairs)[label] for label in labels], dtype=np.float32)
            _assert_same(probs, offline[str(path)], str(path))

    # a feature shared by every example may come in "context", as TF Serving allows
    one = examples[0]["image_bytes"]
    shared = httpx.post(
        f"{server.url}/v1/models/digits:classify",
        json={"context": {"image_bytes": [one]}, "examples": [{"caption": "a"}]},
    )
    assert shared.status_code == 200 and shared.json()["results"][0] == results[0], shared.text

    regress = httpx.post(f"{server.url}/v1/models/digits:regress", json={"examples": examples})
    assert regress.status_code == 400 and "no regression signature" in regress.json()["error"], regress.text
    unknown = httpx.post(f"{server.url}/v1/models/digits:explain", json={})
    assert unknown.status_code == 400 and ":predict, :classify" in unknown.json()["error"], unknown.text


def test_unpadded_base64_is_accepted_as_tf_serving_accepts_it(
    server: Server, run: Path, offline: dict[str, np.ndarray]
) -> None:
    path = next(p for p, _ in val_files(run) if len(base64.b64encode(p.read_bytes()).rstrip(b"=")) % 4)
    unpadded = base64.b64encode(path.read_bytes()).decode().rstrip("=")
    tf = httpx.post(f"{server.url}/v1/models/digits:predict", json={"instances": [{"b64": unpadded}]})
    assert tf.status_code == 200, tf.text
    _assert_same(np.array(tf.json()["predictions"][0]["probabilities"], dtype=np.float32), offline[str(path)], "tf")
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [unpadded]}]}
    v2 = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    assert v2.status_code == 200, v2.text
    bad = httpx.post(f"{server.url}/v1/models/digits:predict", json={"instances": [{"b64": unpadded + "!"}]})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_request_compression(
    server: Server, run: Path, offline: dict[str, np.ndarray], algorithm: str
) -> None:
    import tritonclient.http as triton

    files = val_files(run)[:4]
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    for binary in (True, False):  # JSON BYTES elements are base64 text
        data = [p.read_bytes() if binary else base64.b64encode(p.read_bytes()) for p, _ in files]
        inp = triton.InferInput("image", [len(files)], "BYTES")
        inp.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        result = client.infer(
            "digits", [inp], request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
        )
        for (path, _), row in zip(files, result.as_numpy("probabilities")):
            _assert_same(row, offline[str(path)], f"{algorithm} {path}")


def test_unsupported_or_corrupt_content_encoding_is_named(server: Server, run: Path) -> None:
    import gzip

    path, _ = val_files(run)[0]
    body = json.dumps({"instances": [{"b64": base64.b64encode(path.read_bytes()).decode()}]}).encode()
    url = f"{server.url}/v1/models/digits:predict"
    br = httpx.post(url, content=body, headers={"Content-Encoding": "br", "Content-Type": "application/json"})
    assert br.status_code == 415 and br.json()["code"] == "unsupported_encoding", br.text
    assert "gzip, deflate" in br.json()["error"]
    corrupt = httpx.post(url, content=b"\x1f\x8b not gzip", headers={"Content-Encoding": "gzip"})
    assert corrupt.status_code == 400 and corrupt.json()["code"] == "bad_encoding", corrupt.text
    truncated = httpx.post(url, content=gzip.compress(body)[:-12], headers={"Content-Encoding": "gzip"})
    assert truncated.status_code == 400 and truncated.json()["code"] == "bad_encoding", truncated.text


def test_a_gzip_bomb_is_refused_by_the_body_limit_after_decompression(server: Server) -> None:
    import gzip

    limit = 16 * 1024 * 1024  # the default --max-body-bytes
    bomb = gzip.compress(b"[" + b" " * (limit + 1024) + b"]", compresslevel=9)
    assert len(bomb) < 100_000  # tiny on the wire: only the decompressed size can catch it
    r = httpx.post(
        f"{server.url}/v1/models/digits:predict",
        content=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["code"] == "body_too_large", r.text
    assert "decompresses" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_one_multipart_file_over_the_limit_gets_the_documented_413(server: Server, run: Path) -> None:
    path, _ = val_files(run)[0]
    data = path.read_bytes()
    over = httpx.post(f"{server.url}/v1/predict", files=[("file", (f"{i}.png", data, "image/png")) for i in range(65)])
    assert over.status_code == 413 and over.json()["code"] == "too_many_images", over.text
    assert "64" in over.json()["error"]
    far_over = httpx.post(
        f"{server.url}/v1/predict", files=[("file", (f"{i}.png", data, "image/png")) for i in range(70)]
    )
    assert far_over.status_code == 413 and far_over.json()["code"] == "too_many_images", far_over.text
    at_limit = httpx.post(
        f"{server.url}/v1/predict", files=[("file", (f"{i}.png", data, "image/png")) for i in range(64)], timeout=60
    )
    assert at_limit.status_code == 200 and len(at_limit.json()["predictions"]) == 64, at_limit.text


def test_tf_serving_reports_a_registry_version_as_its_int64(
    small_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """TF Serving versions are int64: duet's registry version "v3" is 3 there, in answers and in URLs."""
    export = small_export
    with running_server(export, tmp_path_factory.mktemp("logs"), "--model-version", "v3") as s:
        status = httpx.get(f"{s.url}/v1/models/digits/versions/3")
        assert status.status_code == 200, status.text
        assert status.json()["model_version_status"][0]["version"] == "3"
        assert httpx.get(f"{s.url}/v1/models/digits/versions/3/metadata").json()["model_spec"]["version"] == "3"
        assert httpx.get(f"{s.url}/v1/models/digits/versions/4").status_code == 404
