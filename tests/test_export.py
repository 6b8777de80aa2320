"""`duet export`: ONNX with uint8 input and normalisation inside, safetensors, model.json,
model card, and a parity gate that fails the export when ONNX and PyTorch disagree."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import one_line_error, run_cli
from serve_support import val_files


@pytest.fixture(scope="module")
def run(small_run: Path) -> Path:
    return small_run


@pytest.fixture(scope="module")
def export_dir(small_export: Path) -> Path:
    return small_export


@pytest.mark.e2e
def test_export_writes_onnx_weights_manifest_and_card(run: Path, export_dir: Path) -> None:
    m = json.loads((export_dir / "model.json").read_text())
    assert m["schema"] == "duet.model/1"
    assert m["labels"] == ["0", "1", "7"] and m["architecture"] == "resnet18"
    assert m["preprocess"]["image_size"] == 24 and m["preprocess"]["load_size"] == 27
    assert m["inputs"] == [
        {
            "name": "pixels",
            "datatype": "UINT8",
            "shape": [-1, 3, 24, 24],
            "layout": "NCHW",
            "description": m["inputs"][0]["description"],
        }
    ]
    assert [o["name"] for o in m["outputs"]] == ["logits", "probabilities"]
    for key in ("duet", "torch", "onnx", "onnxruntime"):
        assert m["versions"][key]
    # sha256 of every file, the model card and the drift reference profile among them
    assert set(m["files"]) == {
        "model.onnx",
        "model.safetensors",
        "MODEL_CARD.md",
        "profile/profile.json",
        "profile/reference.npz",
    }
    for name, entry in m["files"].items():
        assert hashlib.sha256((export_dir / name).read_bytes()).hexdigest() == entry["sha256"], name
    # the safetensors are the run's best weights, byte for byte
    assert (export_dir / "model.safetensors").read_bytes() == (run / "checkpoints" / "best.safetensors").read_bytes()
    # the data fingerprint can be recomputed from the run's manifest
    with (run / "manifest.csv").open() as f:
        rows = sorted(
            (r["path"], r["label"], r["sha256"], r["split"]) for r in csv.DictReader(f) if r["status"] == "ok"
        )
    expected = hashlib.sha256("".join(f"{p}\t{lab}\t{h}\t{s}\n" for p, lab, h, s in rows).encode()).hexdigest()
    assert m["data"]["fingerprint"] == expected and m["data"]["images"] == len(rows)
    # the parity gate ran over the whole validation split and passed
    parity = m["metrics"]["parity"]
    assert parity["passed"] and parity["split"] == "val" and parity["images"] == len(val_files(run))
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_prob_diff"] <= 1e-4
    assert 1 in parity["batch_sizes"]
    card = (export_dir / "MODEL_CARD.md").read_text()
    for needle in ("# Model card: digits", "## Intended use", "## Limitations", m["data"]["fingerprint"], "| 2 | 7 |"):
        assert needle in card


@pytest.mark.e2e
def test_onnx_takes_uint8_with_dynamic_batch_and_normalises_inside(run: Path, export_dir: Path) -> None:
    import onnx
    import onnxruntime as ort

    from duet.artifacts.run_dir import load_run
    from duet.data import augment
    from duet.evaluation.inference import load_model
    from duet.monitor.embed import FeatureExtractor

    graph = onnx.load(str(export_dir / "model.onnx")).graph
    (inp,) = graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 24, 24]

    info = load_run(run)
    model = load_model(info, torch.device("cpu"))
    session = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for n in (1, 3, 70):
        squares = torch.from_numpy(rng.integers(0, 256, (n, 3, 27, 27), dtype=np.uint8))
        with torch.no_grad():
            expected = torch.softmax(model(augment.eval_batch(squares, info.preprocess)), 1).numpy()
        pixels = augment.centre_crop(squares, info.preprocess).contiguous().numpy()
        logits, probs, features = session.run(None, {"pixels": pixels})
        assert probs.shape == (n, 3) and logits.shape == (n, 3)
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        # The third output is the penultimate layer drift monitoring reads: the profile's features.
        with torch.no_grad():
            want, _ = FeatureExtractor(model)(augment.eval_batch(squares, info.preprocess))
        np.testing.assert_allclose(features, want.numpy(), rtol=1e-4, atol=1e-4)
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities", "features"]
    manifest = json.loads((export_dir / "model.json").read_text())
    assert manifest["onnx"]["features"] == {"name": "features", "width": features.shape[1]}
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "probabilities"]  # the public signature


@pytest.mark.e2e
def test_existing_export_is_kept_unless_forced(run: Path, export_dir: Path) -> None:
    before = (export_dir / "model.json").read_bytes()
    one_line_error(run_cli("export", str(run), "--quiet"), 5, "already exists", "--force")
    assert (export_dir / "model.json").read_bytes() == before


@pytest.mark.e2e
def test_export_json_summary_is_the_only_stdout(run: Path, export_dir: Path) -> None:
    summary = json.loads((run.parent / "export-stdout.json").read_text())  # `duet export RUN --json`
    assert summary["parity"]["passed"] and Path(summary["export"]) == run / "export"
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "MODEL_CARD.md",
        "model.json",
        "model.onnx",
        "model.safetensors",
        "profile",
    ]
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary folders were left behind"


@pytest.mark.e2e
def test_parity_gate_fails_the_export_and_writes_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph that differs from the PyTorch model (here: a shifted head bias, as a
    preprocessing or exporter bug would cause) must not ship."""
    from duet.exporting import exporter, onnx_graph
    from duet.exporting.parity import ParityError

    real_export = onnx_graph.export_onnx

    def skewed_export(model, spec, path, *, opset):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.fc.bias += torch.tensor([0.0, 0.0, 0.05])
        return real_export(other, spec, path, opset=opset)

    monkeypatch.setattr(onnx_graph, "export_onnx", skewed_export)
    out = tmp_path / "skewed"
    with pytest.raises(ParityError) as info:
        exporter.export_run(run, out_dir=out, progress=False, log=lambda _: None)
    assert "parity gate" in str(info.value) and "Δprobability" in str(info.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "a failed export left files behind"


def test_compare_counts_top1_flips_and_max_difference() -> None:
    from duet.exporting.parity import compare

    a = np.array([[0.6, 0.4], [0.2, 0.8]], dtype=np.float32)
    assert compare(a, a) == (0, 0.0)
    b = np.array([[0.49, 0.51], [0.2, 0.8]], dtype=np.float32)
    flips, diff = compare(a, b)
    assert flips == 1 and diff == pytest.approx(0.11, abs=1e-6)


@pytest.mark.e2e
def test_serving_an_unexported_run_says_how_to_export(tmp_path: Path, run: Path) -> None:
    copy = tmp_path / "r"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    one_line_error(run_cli("serve", str(copy), "--check"), 4, "has not been exported", "duet export")


@pytest.mark.e2e
def test_the_onnx_file_alone_carries_labels_and_preprocessing(export_dir: Path) -> None:
    """Copied away from model.json, model.onnx still says what its outputs mean and
    what its input wants: labels and the preprocessing spec in metadata_props."""
    import onnx
    import onnxruntime as ort

    from duet.data.preprocess import PreprocessSpec

    manifest = json.loads((export_dir / "model.json").read_text())
    props = {p.key: p.value for p in onnx.load(str(export_dir / "model.onnx")).metadata_props}
    assert json.loads(props["labels"]) == manifest["labels"] == ["0", "1", "7"]
    assert json.loads(props["preprocess"]) == manifest["preprocess"]
    assert PreprocessSpec.from_dict(json.loads(props["preprocess"])).load_size == 27
    assert props["architecture"] == "resnet18" and "uint8 [N, 3, 24, 24]" in props["input"]
    custom = (
        ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )
    assert json.loads(custom["labels"]) == manifest["labels"]
    assert json.loads(custom["preprocess"]) == manifest["preprocess"]
