"""The "cache" backend: decode once, identical batches, never trust a damaged store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from duet.data.cache import CacheLoader, fingerprint, open_or_build
from duet.data.contract import LoaderOptions, Sample
from duet.data.preprocess import PreprocessSpec
from duet.data.torch_loader import TorchLoader
from helpers import run_cli, write_digit_folder
from oddfiles import write_good_jpeg, write_good_png

SPEC = PreprocessSpec(image_size=20, crop_pct=0.8)
CPU = torch.device("cpu")


def _samples(root: Path, n: int = 12) -> list[Sample]:
    out = []
    for i in range(n):
        p = root / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        (write_good_png if i % 2 else write_good_jpeg)(p, seed=i)
        out.append(Sample(p, i % 3, hashlib.sha256(p.read_bytes()).hexdigest()))
    return out


def _epochs(loader, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    out = []
    for e in range(1, epochs + 1):
        loader.set_epoch(e)
        out += [(b.images, b.labels, b.index.tolist()) for b in loader]
    return out


@pytest.mark.parametrize("n, sizes", [(13, [5, 5, 3]), (11, [5, 3, 3]), (10, [5, 5])])
def test_cache_and_torch_backends_give_identical_batches_with_every_image_each_epoch(
    tmp_path: Path, n: int, sizes: list[int]
) -> None:
    """13 images at batch 5: the short last batch of 3 is kept; 11: the 1 left
    over is pooled with the batch before and split evenly (never a batch of one)."""
    samples = _samples(tmp_path / "img", n)
    options = LoaderOptions(batch_size=5, shuffle=True, device=CPU, workers=0, seed=3)
    torch_batches = _epochs(TorchLoader(samples, SPEC, options))
    cache_batches = _epochs(CacheLoader(samples, SPEC, replace(options, cache_dir=tmp_path / "c", progress=False)))
    assert [len(b[2]) for b in torch_batches] == [len(b[2]) for b in cache_batches] == sizes * 2
    for (ti, tl, tx), (ci, cl, cx) in zip(torch_batches, cache_batches):
        assert tx == cx and torch.equal(tl, cl) and torch.equal(ti, ci)
    per_epoch = len(sizes)
    for e in range(2):
        seen = [i for b in torch_batches[e * per_epoch : (e + 1) * per_epoch] for i in b[2]]
        assert sorted(seen) == list(range(n))  # every image, once, every epoch
    # Different epochs are shuffled differently.
    assert torch_batches[0][2] != torch_batches[per_epoch][2]


def test_drop_last_still_gives_equal_batches_for_benchmarks(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "img", 12)
    options = LoaderOptions(batch_size=5, shuffle=True, device=CPU, workers=0, seed=3, drop_last=True)
    assert [len(b[2]) for b in _epochs(TorchLoader(samples, SPEC, options), 1)] == [5, 5]


def test_cache_is_built_once_and_reused(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "img", 6)
    first = open_or_build(samples, SPEC, tmp_path / "c", workers=2, max_pixels=10**8, progress=False)
    second = open_or_build(samples, SPEC, tmp_path / "c", workers=2, max_pixels=10**8, progress=False)
    assert first.built and not second.built and first.root == second.root
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))


def test_changed_files_or_spec_give_a_new_cache(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "img", 6)
    base = fingerprint(samples, SPEC)
    assert fingerprint(samples, PreprocessSpec(image_size=24, crop_pct=0.8)) != base
    changed = [*samples[:-1], Sample(samples[-1].path, samples[-1].label, "0" * 64)]
    assert fingerprint(changed, SPEC) != base
    assert fingerprint(samples[:-1], SPEC) != base


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "drop_meta", "garble_meta"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    samples = _samples(tmp_path / "img", 6)
    good = open_or_build(samples, SPEC, tmp_path / "c", workers=2, max_pixels=10**8, progress=False)
    expected = np.array(good.images)
    data, meta = good.root / "images.u8", good.root / "meta.json"
    del good
    if damage == "flip_byte":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
    elif damage == "drop_meta":
        meta.unlink()
    else:
        meta.write_text("{not json")
    again = open_or_build(samples, SPEC, tmp_path / "c", workers=2, max_pixels=10**8, progress=False)
    assert again.built, "a damaged cache was trusted"
    assert np.array_equal(np.asarray(again.images), expected)
    assert json.loads(meta.read_text())["fingerprint"] == again.root.name


def test_file_unreadable_at_build_time_is_reported_per_sample(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "img", 6)
    samples[2].path.write_bytes(b"gone bad after the scan")
    options = LoaderOptions(
        batch_size=6, shuffle=False, device=CPU, workers=0, cache_dir=tmp_path / "c", progress=False
    )
    loader = CacheLoader(samples, SPEC, options)
    (batch,) = list(loader)
    assert batch.labels.tolist()[2] == -1 and batch.errors[2]
    assert all(label >= 0 for i, label in enumerate(batch.labels.tolist()) if i != 2)


@pytest.mark.e2e
def test_cache_and_torch_training_runs_are_identical(tmp_path: Path) -> None:
    """Same seed, same pixels, same order: the backend changes speed, not results."""
    data = write_digit_folder(tmp_path / "d", classes=(2, 5), per_class=16)
    rows = {}
    for backend in ("torch", "cache"):
        proc = run_cli(
            "train",
            str(data),
            "--data-backend",
            backend,
            "--epochs",
            "2",
            "--seed",
            "1",
            "--image-size",
            "20",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "runs"),
            "--name",
            backend,
            "--cache-dir",
            str(tmp_path / "c"),
        )
        assert proc.returncode == 0, proc.stderr
        text = (tmp_path / "runs" / backend / "metrics.jsonl").read_text()
        rows[backend] = [
            (r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in map(json.loads, text.splitlines())
        ]
    assert rows["torch"] == rows["cache"]
    assert any((tmp_path / "c").iterdir())
