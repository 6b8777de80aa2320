"""``ensure_profile``: the drift profile is written once, by whoever trained, and only
for a run with validation images; a second call loads what is there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from duet.monitor.profile import JSON_FILE, ensure_profile, load_profile, profile_dir
from helpers import snapshot, write_digit_folder


def _train(data: Path, out: Path, name: str, val_split: float) -> Path:
    from duet.training.config import TrainConfig
    from duet.training.loop import train

    config = TrainConfig(
        data_dir=data,
        model="test_resnet",
        image_size=16,
        epochs=1,
        batch_size=16,
        workers=0,
        device="cpu",
        val_split=val_split,
        test_split=0.0,
        out=out,
        name=name,
    )
    return Path(train(config, progress=False, log=lambda _m: None).run_dir)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), per_class=20, size=16)


@pytest.fixture(scope="module")
def trained(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a validation split (tests copy it before changing it)."""
    return _train(digits, tmp_path_factory.mktemp("runs"), "with-val", val_split=0.3)


@pytest.mark.e2e
def test_ensure_profile_writes_once_and_then_loads(trained: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    shutil.rmtree(profile_dir(run), ignore_errors=True)  # whatever training left: start without one
    said: list[str] = []
    written = ensure_profile(run, device="cpu", workers=0, progress=False, log=said.append)
    assert written is not None and (profile_dir(run) / JSON_FILE).is_file()
    assert written.meta["reference"]["split"] == "val" and written.n_reference > 0
    assert any("no drift profile yet" in line for line in said)
    before = snapshot(profile_dir(run))
    loaded = ensure_profile(run, device="cpu", workers=0, progress=False, log=said.append)
    assert loaded is not None and loaded.files == written.files
    assert snapshot(profile_dir(run)) == before  # loaded, not rewritten


@pytest.mark.e2e
def test_ensure_profile_of_a_run_without_validation_images_writes_nothing(digits: Path, tmp_path: Path) -> None:
    run = _train(digits, tmp_path, "no-val", val_split=0.0)
    shutil.rmtree(profile_dir(run), ignore_errors=True)
    before = snapshot(run)
    assert ensure_profile(run, device="cpu", workers=0, progress=False, log=lambda _m: None) is None
    assert not profile_dir(run).exists() and snapshot(run) == before


@pytest.mark.e2e
def test_retrain_gives_the_challenger_a_profile_whether_or_not_it_is_promoted(trained: Path, tmp_path: Path) -> None:
    from duet.lifecycle.retrain import retrain

    new = write_digit_folder(tmp_path / "new", classes=(0, 1, 2), per_class=25, size=16)
    result = retrain(
        trained, new, out=tmp_path / "runs", epochs=1, device="cpu", workers=0, progress=False, log=lambda _m: None
    )
    assert result.promoted is False  # no registry: never promoted
    profile = load_profile(result.challenger_run)
    assert profile.meta["reference"]["split"] == "val" and profile.meta["run"] == str(result.challenger_run)
