"""Model factory: timm and torchvision names, head replacement, local weights, offline errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from duet.errors import ModelError
from duet.training.models import build


def test_timm_resnet18_gets_an_n_way_head() -> None:
    model = build("resnet18", 3).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_torchvision_name_replaces_fc_like_the_classic_fine_tune() -> None:
    model = build("torchvision:resnet18", 2)
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.out_features == 2
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_unknown_model_is_a_model_error_with_suggestions() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'resnet1'.*resnet1"):
        build("resnet1", 2)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_fine_tune_to_new_classes(tmp_path: Path, suffix: str) -> None:
    source = build("resnet18", 1000)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    model = build("resnet18", 5, str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 5


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_file({"blocks.0.w": torch.zeros(3, 3)}, path)
    with pytest.raises(ModelError, match="different architecture"):
        build("resnet18", 2, str(path))


def test_missing_weights_file_says_what_weights_accepts(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="none, imagenet or a file path"):
        build("resnet18", 2, str(tmp_path / "nope.pth"))


@pytest.mark.e2e
def test_imagenet_weights_offline_point_to_weights_path(tmp_path: Path) -> None:
    """In a fresh process with the hub offline (as in CI): a clear error, exit 4."""
    from helpers import run_cli, write_digit_folder

    data = write_digit_folder(tmp_path / "d", classes=(1, 2), per_class=3)
    proc = run_cli("train", str(data), "--weights", "imagenet", "--out", str(tmp_path / "runs"), "--quiet")
    assert proc.returncode == 4, proc.stderr
    assert "--weights PATH" in proc.stderr and "Traceback" not in proc.stderr
