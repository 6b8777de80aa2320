"""The Python API on tables: duet.train(frame_or_file, target=...) and the stages after it."""

from __future__ import annotations

from pathlib import Path

import pytest

import duet
from duet.errors import ConfigError, ModelError


def _wine_frame():  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    frame = bunch.frame.copy()
    frame["target"] = [str(bunch.target_names[t]) for t in bunch.target]
    return frame


def test_a_table_needs_its_target_and_comes_as_the_first_argument(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="target"):
        duet.train(str(tmp_path / "t.csv"), out=tmp_path / "runs")
    with pytest.raises(ConfigError, match="first argument"):
        duet.train(str(tmp_path / "t.csv"), target="b", val_data="x", out=tmp_path / "runs")


@pytest.mark.e2e
def test_a_dataframe_trains_evaluates_exports_drifts_and_resumes_like_the_cli(tmp_path: Path) -> None:
    frame = _wine_frame()
    run = duet.train(frame, target="target", out=tmp_path / "runs", epochs=4, progress=False, log=None)
    assert run.modality == "tabular" and run.labels == sorted(set(frame["target"]))
    written = tmp_path / "runs" / f"{run.name}.data.csv"  # the frame, as the run's source file
    assert written.is_file() and len(written.read_text(encoding="utf-8").splitlines()) == len(frame) + 1
    assert type(run.config).__name__ == "TableConfig" and run.config.epochs == 4
    assert run.best["epochs_done"] == 4
    evaluation = run.evaluate(progress=False)
    assert evaluation.unit == "rows" and 0.5 < evaluation.metrics["accuracy"] <= 1.0
    assert (run.export(progress=False, log=None).export_dir / "model.onnx").is_file()
    assert duet.drift(run, written).status in ("no_drift", "drift")  # the rows it was trained on
    longer = duet.resume(run, epochs=5, progress=False, log=None)
    assert longer.best["epochs_done"] == 5
    with pytest.raises(ModelError, match="image runs"):
        run.load()
