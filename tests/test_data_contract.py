"""The data contract (duet.data.contract) and its one front door (duet.data.loaders.make_loader):
options are typed and checked once, and every backend follows the same batch plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from duet.data.contract import LoaderOptions, Sample, batch_plan
from duet.data.loaders import BACKENDS, make_loader
from duet.data.preprocess import PreprocessSpec
from duet.errors import ConfigError
from oddfiles import write_good_jpeg, write_good_png

SPEC = PreprocessSpec(image_size=16, crop_pct=0.8)
CPU = torch.device("cpu")


def _samples(root: Path, n: int) -> list[Sample]:
    return [
        Sample((write_good_png if i % 2 else write_good_jpeg)(root / f"{i:02d}.{'png' if i % 2 else 'jpg'}", i), i % 2)
        for i in range(n)
    ]


def _plan(loader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [b.index.tolist() for b in loader]


def _options(tmp_path: Path, **changes: object) -> LoaderOptions:
    base = LoaderOptions(batch_size=3, shuffle=True, device=CPU, workers=0, seed=5, cache_dir=tmp_path / "c")
    return dataclasses.replace(base, progress=False, **changes)  # type: ignore[arg-type]


def test_unknown_backend_is_a_config_error_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        make_loader("pillow", _samples(tmp_path, 2), SPEC, _options(tmp_path))
    assert "'pillow'" in e.value.message and all(b in e.value.message for b in BACKENDS)
    assert "\n" not in e.value.message


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"workers": -1}, "workers"),
        ({"rank": 2, "world": 2}, "rank"),
        ({"device_share": 1.5}, "device_share"),
    ],
)
def test_options_are_checked_when_built(tmp_path: Path, changes: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        _options(tmp_path, **changes)


def test_options_cannot_change_under_a_loader(tmp_path: Path) -> None:
    options = _options(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 4  # type: ignore[misc]


def test_torch_and_cache_follow_the_one_batch_plan(tmp_path: Path) -> None:
    """7 images at batch 3 (3, 2, 2: the one left over pooled with the batch
    before): both backends give the plan's batches, epoch after epoch, with
    the same pixels and labels."""
    samples = _samples(tmp_path / "img", 7)
    options = _options(tmp_path)
    loaders = {name: make_loader(name, samples, SPEC, options) for name in ("torch", "cache")}
    for epoch in (1, 2):
        expected = batch_plan(7, batch_size=3, shuffle=True, seed=5, epoch=epoch, drop_last=False)
        assert [len(b) for b in expected] == [3, 2, 2]
        assert _plan(loaders["torch"], epoch) == _plan(loaders["cache"], epoch) == expected
    torch_batches, cache_batches = list(loaders["torch"]), list(loaders["cache"])
    for t, c in zip(torch_batches, cache_batches, strict=True):
        assert torch.equal(t.images, c.images) and torch.equal(t.labels, c.labels) and t.errors == c.errors
    assert any((tmp_path / "c").iterdir()), "the cache backend ignored options.cache_dir"


def test_a_process_gets_its_rank_slice_of_the_plan(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "img", 8)
    options = _options(tmp_path, batch_size=4, rank=1, world=2)
    got = _plan(make_loader("torch", samples, SPEC, options), 3)
    assert got == batch_plan(8, batch_size=4, shuffle=True, seed=5, epoch=3, drop_last=False, rank=1, world=2)
    assert [len(b) for b in got] == [2, 2]


def test_resuming_mid_epoch_skips_the_batches_already_seen(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "img", 7)
    loader = make_loader("torch", samples, SPEC, _options(tmp_path))
    whole = _plan(loader, 4)
    loader.set_epoch(4, start_batch=1)
    assert [b.index.tolist() for b in loader] == whole[1:]
    assert len(loader) == 3
