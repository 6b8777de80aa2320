"""The training stage's small parts, each on its own and without training: the LR
schedule, the fine-tuning recipe, checkpoints as plain dicts of state and the
layered config (defaults < YAML < flags, unknown keys refused in one line, saved
with every run). End-to-end runs of the same parts are in test_resilience.py and
test_cli.py."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from duet.artifacts.run_dir import RunPaths, read_config, write_config
from duet.errors import ConfigError, RunError
from duet.training import checkpoint, recipe
from duet.training.config import build_config, config_from_dict
from duet.training.models import build
from duet.training.schedule import warmup_cosine

# --------------------------------------------------------------------------- schedule


def test_warmup_rises_linearly_to_the_peak_then_cosine_decays_to_the_floor() -> None:
    lrs = [warmup_cosine(s, total=100, warmup=10) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # step 9 reaches the peak
    assert lrs[10] == pytest.approx(1.0)  # the peak, where the cosine starts
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # never rises after the peak
    assert warmup_cosine(55, total=100, warmup=10) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way: mid-point
    assert warmup_cosine(100, total=100, warmup=10) == pytest.approx(0.01)  # the floor ...
    assert warmup_cosine(500, total=100, warmup=10) == pytest.approx(0.01)  # ... and it stays there


def test_no_warmup_starts_at_the_peak_and_final_sets_the_floor() -> None:
    assert warmup_cosine(0, total=10, warmup=0) == pytest.approx(1.0)
    assert warmup_cosine(10, total=10, warmup=0, final=0.2) == pytest.approx(0.2)
    # warm-up as long as the run: no division by zero, ends at the peak
    assert warmup_cosine(9, total=10, warmup=10) == pytest.approx(1.0)


# --------------------------------------------------------------------------- recipe


class _Tiny(nn.Module):
    """A backbone and an ``fc`` head, as torchvision names them (no timm group matcher)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 2)


def test_auto_recipe_is_finetune_with_weights_and_scratch_without() -> None:
    assert recipe.resolve("auto", "none") == "scratch"
    assert recipe.resolve("auto", "imagenet") == "finetune"
    assert recipe.resolve("auto", "/w/model.safetensors") == "finetune"
    assert recipe.resolve("scratch", "imagenet") == "scratch"  # an explicit choice wins


def test_finetune_gives_the_head_the_peak_lr_the_backbone_a_tenth_and_norms_no_decay() -> None:
    model = _Tiny()
    groups = recipe.param_groups(model, lr=1e-3, weight_decay=0.05, recipe="finetune", layer_decay=0.75)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert len(by_param) == len(list(model.parameters()))  # every parameter in exactly one group
    assert by_param[id(model.fc.weight)]["lr"] == pytest.approx(1e-3)
    assert by_param[id(model.body[0].weight)]["lr"] == pytest.approx(1e-4)
    assert by_param[id(model.body[0].weight)]["weight_decay"] == 0.05
    for p in (model.fc.bias, model.body[1].weight, model.body[1].bias):  # biases and norms: no decay
        assert by_param[id(p)]["weight_decay"] == 0.0


def test_scratch_trains_every_layer_at_one_lr() -> None:
    groups = recipe.param_groups(_Tiny(), lr=3e-3, weight_decay=0.05, recipe="scratch", layer_decay=0.75)
    assert {g["lr"] for g in groups} == {3e-3}


def test_timm_layer_decay_lowers_the_lr_block_by_block_away_from_the_head() -> None:
    model = build("test_resnet", 3)
    groups = recipe.param_groups(model, lr=1e-3, weight_decay=0.05, recipe="finetune", layer_decay=0.5)
    lrs = sorted({g["lr"] for g in groups}, reverse=True)
    assert lrs[0] == pytest.approx(1e-3) and len(lrs) >= 3
    assert all(b == pytest.approx(a * 0.5) for a, b in itertools.pairwise(lrs))


def test_a_frozen_backbone_leaves_only_the_head_trainable() -> None:
    model = _Tiny()
    recipe.set_backbone_frozen(model, True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert recipe.trainable_fraction(model) == pytest.approx(10 / sum(p.numel() for p in model.parameters()))
    recipe.set_backbone_frozen(model, False)
    assert recipe.trainable_fraction(model) == 1.0


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    w = recipe.class_weights([10, 30, 0])  # an empty class counts as one image, not a division by zero
    assert w.tolist() == pytest.approx([41 / 30, 41 / 90, 41 / 3])
    assert recipe.class_weights([5, 5]).tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- checkpoint


def test_weights_round_trip_through_safetensors(tmp_path: Path) -> None:
    model = _Tiny()
    state = checkpoint.weights_state(model)
    checkpoint.save_weights(tmp_path / "best.safetensors", state)
    loaded = checkpoint.load_weights(tmp_path / "best.safetensors")
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_weights_with_nan_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    model = _Tiny()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(RunError, match="NaN or Inf"):
        checkpoint.save_weights(tmp_path / "best.safetensors", checkpoint.weights_state(model))
    with pytest.raises(RunError, match="NaN or Inf"):
        checkpoint.save_last(tmp_path / "last.pt", {"model": checkpoint.weights_state(model), "epoch": 1})
    assert list(tmp_path.iterdir()) == []


def test_last_checkpoint_restores_state_and_every_random_generator(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    checkpoint.save_last(
        tmp_path / "last.pt",
        {"model": checkpoint.weights_state(_Tiny()), "epoch": 3, "rng": checkpoint.rng_state()},
    )
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = checkpoint.load_last(tmp_path / "last.pt")
    assert state["epoch"] == 3
    checkpoint.set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_missing_or_damaged_checkpoints_are_run_errors_that_say_which(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no checkpoint to resume from"):
        checkpoint.load_last(tmp_path / "last.pt")
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="damaged"):
        checkpoint.load_last(tmp_path / "last.pt")
    (tmp_path / "best.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(RunError, match="damaged"):
        checkpoint.load_weights(tmp_path / "best.safetensors")


# --------------------------------------------------------------------------- config


def test_flags_override_yaml_which_overrides_the_defaults(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("epochs: 3\nlr: 0.01\naugment:\n  hflip: false\n")
    cfg = build_config(file, {"data_dir": tmp_path, "lr": 0.5, "batch_size": None, "augment": {"scale": (0.5, 1.0)}})
    assert cfg.epochs == 3  # YAML over the default (10)
    assert cfg.lr == 0.5  # the flag over YAML
    assert cfg.batch_size == 64  # a flag not given (None) leaves the default
    assert cfg.augment.hflip is False and cfg.augment.scale == (0.5, 1.0)  # augment merged key by key
    assert cfg.image_size == 224  # untouched default


def test_an_unknown_key_is_refused_in_one_line_naming_it_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("epohcs: 3\n")
    with pytest.raises(ConfigError) as e:
        build_config(file, {"data_dir": tmp_path})
    message = str(e.value)
    assert "\n" not in message and message.startswith("unknown setting `epohcs`") and str(file) in message
    assert "epochs" in message  # the allowed keys are listed


def test_a_bad_value_names_the_setting_what_was_received_and_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        build_config(None, {"data_dir": tmp_path, "epochs": 0})
    assert "\n" not in str(e.value)
    assert "`epochs`" in str(e.value) and "Received: epochs=0" in str(e.value) and "command line" in str(e.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("epochs: [1\n", "not valid YAML at line"), ("- 1\n- 2\n", "must hold a mapping of settings, got list")],
)
def test_a_config_file_that_is_not_a_mapping_of_settings_is_a_config_error(
    tmp_path: Path, text: str, needle: str
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        build_config(tmp_path / "c.yaml", {"data_dir": tmp_path})
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "missing.yaml", {"data_dir": tmp_path})


def test_the_config_saved_with_a_run_reads_back_as_the_same_config(tmp_path: Path) -> None:
    cfg = build_config(None, {"data_dir": tmp_path / "data", "epochs": 2, "augment": {"hflip": False}})
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    write_config(paths, cfg.to_yaml_dict())
    saved = read_config(paths)
    assert saved["epochs"] == 2 and saved["augment"]["hflip"] is False
    assert config_from_dict(saved, str(paths.config)) == cfg
