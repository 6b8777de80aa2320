"""`duet export --quantize int8`: a QDQ int8 graph calibrated on training images, behind
its own accuracy gate, recorded in model.json and the card, served with
`duet serve --model-variant int8` and benchmarked beside fp32."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from helpers import one_line_error, run_cli
from serve_support import running_server, val_files

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

TOLERANCE = 12.0


@pytest.fixture(scope="module")
def run(small_run: Path) -> Path:
    return small_run


@pytest.fixture(scope="module")
def int8_export(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The shared run exported with --quantize int8 to a folder of its own.

    The shared run is a 1-epoch model with 18 validation images, where one flipped
    answer moves accuracy by 5.6 points: the gate is given 12 points (two net
    flips), so it passes on any CPU's int8 kernels (VNNI or not) and still refuses
    a broken graph. The default of 1 point is measured on the demo (docs/serving.md)."""
    out = tmp_path_factory.mktemp("int8") / "export"
    proc = run_cli(
        "export", str(run), "--out", str(out), "--quantize", "int8", "--int8-tolerance", str(TOLERANCE), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def _train_count(run: Path) -> int:
    import csv

    with (run / "manifest.csv").open() as f:
        return sum(1 for r in csv.DictReader(f) if r["status"] == "ok" and r["split"] == "train")


def test_int8_export_passes_its_gate_and_records_it(run: Path, int8_export: tuple[Path, dict]) -> None:
    out, summary = int8_export
    m = json.loads((out / "model.json").read_text())
    v = m["variants"]["int8"]
    assert v["file"] == "model.int8.onnx" and (out / "model.int8.onnx").is_file()
    # listed and verified like every other file
    digest = hashlib.sha256((out / "model.int8.onnx").read_bytes()).hexdigest()
    assert v["sha256"] == m["files"]["model.int8.onnx"]["sha256"] == digest
    # calibrated on training images only, seeded, with the settings that made the graph
    cal = v["calibration"]
    assert cal["split"] == "train" and cal["seed"] == 0 and cal["images"] == min(256, _train_count(run))
    assert (cal["format"], cal["weights"], cal["method"]) == ("QDQ", "int8, per channel", "MinMax")
    # gated on the whole validation split, against the fp32 graph
    gate = v["gate"]
    assert gate["passed"] and gate["split"] == "val" and gate["images"] == len(val_files(run))
    assert gate["tolerance_points"] == TOLERANCE and gate["accuracy_loss_points"] <= TOLERANCE
    assert gate["int8_accuracy"] >= gate["fp32_accuracy"] - TOLERANCE / 100
    assert 0.0 <= gate["top1_agreement"] <= 1.0
    assert summary["variants"]["int8"]["gate"] == gate
    card = (out / "MODEL_CARD.md").read_text()
    assert "## int8 variant: `model.int8.onnx`" in card and "--model-variant int8" in card
    assert f"calibration: {cal['images']} images of the train split (seed 0)" in card
    assert "| model.int8.onnx |" in card


def test_int8_graph_keeps_uint8_input_fp32_outputs_and_quantizes_convolutions(int8_export: tuple[Path, dict]) -> None:
    import onnx

    out, _ = int8_export
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    (inp,) = graph.input
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in graph.output] == ["logits", "probabilities", "features"]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    # the uint8 input is not quantized again: it is cast and normalised in fp32 inside the graph
    assert [n.op_type for n in graph.node if "pixels" in n.input] == ["Cast"]
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # resnet18: 20 convolutions and the classifier, per-channel int8
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size


def test_a_failed_int8_gate_fails_the_export_and_writes_nothing(run: Path, tmp_path: Path) -> None:
    """A tolerance of -100 points demands int8 beat fp32 by 100 points: the real gate refuses it."""
    out = tmp_path / "export"
    proc = run_cli("export", str(run), "--out", str(out), "--quantize", "int8", "--int8-tolerance", "-100", "--quiet")
    line = one_line_error(proc, 4, "failed the int8 gate", "top-1 accuracy int8", "vs fp32", "nothing was written")
    assert "allowed -" in line and "--int8-tolerance" in line
    assert list(tmp_path.iterdir()) == [], "a failed int8 gate left files behind"


def test_serve_int8_answers_like_fp32_and_keeps_drift_features(
    int8_export: tuple[Path, dict], run: Path, tmp_path: Path
) -> None:
    out, _ = int8_export
    images = [p.read_bytes() for p, _ in val_files(run)]
    labels: dict[str, list[str]] = {}
    for variant in ("fp32", "int8"):
        with running_server(out, tmp_path, "--model-variant", variant) as server:
            answers = [
                httpx.post(
                    f"{server.url}/v1/predict?outliers=true",
                    content=body,
                    headers={"Content-Type": "image/png"},
                    timeout=30,
                )
                for body in images
            ]
            assert all(r.status_code == 200 for r in answers), answers[0].text
            # the int8 graph still gives the features drift monitoring reads
            assert all("outlier" in r.json()["predictions"][0] for r in answers)
            labels[variant] = [r.json()["predictions"][0]["label"] for r in answers]
            assert (": onnxruntime on cpu, int8 at http" in server.log_text()) == (variant == "int8")
            check = run_cli("serve", str(out), "--model-variant", variant, "--check")
            assert check.returncode == 0 and json.loads(check.stdout)["variant"] == variant
    same = sum(a == b for a, b in zip(labels["fp32"], labels["int8"]))
    assert same >= 0.7 * len(images), (labels, same)  # most images: a near-chance model has thin margins


def test_serving_a_variant_the_folder_lacks_is_aone_line_error(small_export: Path) -> None:
    export_dir = small_export  # exported without --quantize
    one_line_error(
        run_cli("serve", str(export_dir), "--model-variant", "int8", "--check"),
        4,
        "has no int8 variant",
        "--quantize int8",
    )
    one_line_error(
        run_cli("serve", str(export_dir), "--model-variant", "int4", "--check"),
        2,
        "`--model-variant` must be one of fp32, int8",
    )
    one_line_error(run_cli("bench", "serve", str(export_dir), "--variants", "fp32,int8"), 4, "has no int8 variant")


def test_quantize_accepts_only_int8(run: Path, tmp_path: Path) -> None:
    one_line_error(
        run_cli("export", str(run), "--out", str(tmp_path / "x"), "--quantize", "int4", "--quiet"),
        2,
        "`--quantize` must be int8",
    )
    assert not (tmp_path / "x").exists()


def test_calibration_draws_seeded_training_images_only(run: Path) -> None:
    import csv

    from duet.exporting.quantize import calibration_samples

    info = json.loads((run / "run.json").read_text())
    data = Path(info["data_dir"])
    with (run / "manifest.csv").open() as f:
        train = {str(data / r["path"]) for r in csv.DictReader(f) if r["status"] == "ok" and r["split"] == "train"}
    first = calibration_samples(run / "manifest.csv", data, info["labels"], count=10, seed=3)
    again = calibration_samples(run / "manifest.csv", data, info["labels"], count=10, seed=3)
    other = calibration_samples(run / "manifest.csv", data, info["labels"], count=10, seed=4)
    assert [s.path for s in first] == [s.path for s in again] and len(first) == 10
    assert {str(s.path) for s in first} <= train and [s.path for s in first] != [s.path for s in other]
    assert len(calibration_samples(run / "manifest.csv", data, info["labels"], count=10_000)) == len(train)


def test_bench_serve_measures_int8_beside_fp32(int8_export: tuple[Path, dict]) -> None:
    out, _ = int8_export
    proc = run_cli(
        "bench",
        "serve",
        str(out),
        "--variants",
        "fp32,int8",
        "--concurrency",
        "4",
        "--requests",
        "40",
        "--no-naive",
        "--json",
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    rows = {(row["server"], row["concurrency"]): row for row in result["rows"]}
    fp32, int8 = rows[("duet serve (batcher)", 4)], rows[("duet serve --model-variant int8", 4)]
    ceiling, ceiling_int8 = (
        rows[("ceiling (decode + session.run, best batch)", 1)],
        rows[("ceiling int8 (decode + session.run, best batch)", 1)],
    )
    assert int8["requests"] == fp32["requests"] == 40 and int8["mean_batch"] >= 1
    # the verdict: int8's throughput as a multiple of fp32's, served and in the runtime's ceiling
    v = result["verdict"]
    assert v["concurrency"] == 4 and v["int8_vs_fp32"] == int8["throughput"] / fp32["throughput"]
    assert v["int8_vs_fp32_ceiling"] == ceiling_int8["throughput"] / ceiling["throughput"]
    assert result["settings"]["variants"] == ["fp32", "int8"]
