"""The "tf" backend and the Keras-facing API: safe imports, the same pixels and
batches as the "torch" backend, failures reported not fatal, training end to end.

Tolerance (measured, and asserted below): for the same file the evaluation-time
tensors of the tf path and the torch path differ by at most TOLERANCE_MAX_LEVELS
uint8 levels per value, TOLERANCE_MEAN_LEVELS on average. Measured on this
stack (tensorflow-cpu 2.21, Pillow 13): 0 and 0 - the tf path decodes JPEGs with
the same DCT scaling and integer IDCT as Pillow and resizes with Pillow itself.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401  (before TensorFlow: see duet.data.tfdata.import_tensorflow)
pytest.importorskip("tensorflow", reason="TensorFlow is not importable (pip install 'duet[tf]')", exc_type=ImportError)

from duet.data import (
    augment,
    tfdata,
)
from duet.data.contract import LoaderOptions, Sample, batch_plan
from duet.data.loaders import make_loader
from duet.data.preprocess import PreprocessSpec
from duet.data.torch_loader import TorchLoader
from helpers import run_cli, write_digit_folder
from oddfiles import (
    cmyk_jpeg_bytes,
    encode,
    exif_rotated_jpeg_bytes,
    palette_transparent_png_bytes,
    rgba_png_bytes,
    sixteen_bit_png_bytes,
    varied_image,
    write_text_as_image,
    write_truncated_jpeg,
)

tf = tfdata.tf
CPU = torch.device("cpu")
TOLERANCE_MAX_LEVELS = 1
TOLERANCE_MEAN_LEVELS = 0.01


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(a) for a in load_sample_images().images]  # two real 640x427 photos


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.e2e
def test_tensorflow_then_torchvision_does_not_crash_through_duet() -> None:
    """On this stack `import tensorflow; import torchvision` kills the process with
    SIGSEGV (triton's bundled LLVM loaded after TensorFlow's). duet imports torch,
    torchvision and triton first; after that the user's order no longer matters."""
    code = "\n".join(
        [
            "import sys",
            "import duet, duet.data",
            "assert 'tensorflow' not in sys.modules, 'import duet imported TensorFlow'",
            "from duet import tf_dataset  # imports TensorFlow, the safe way",
            "import tensorflow as tf",
            "import torchvision, torchvision.transforms",
            "import importlib.util",
            "if importlib.util.find_spec('triton'):",
            "    import triton",
            "print('ok', tf.__version__)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("ok ")
    assert "oneDNN" not in proc.stderr  # TensorFlow's start-up chatter is kept off duet's output


def test_eval_tensors_of_the_tf_path_match_the_torch_path(tmp_path: Path) -> None:
    spec = PreprocessSpec(image_size=64, crop_pct=0.875)  # load_size 73
    fast, odd = [], []
    for k, photo in enumerate(_photos()):
        for w, h in ((500, 375), (375, 500), (640, 427), (90, 120), (700, 2000)):
            img = Image.fromarray(photo).resize((w, h), Image.BILINEAR)
            fast.append(_write(tmp_path / f"p{k}_{w}x{h}.jpg", encode(img, "JPEG", quality=90)))
            fast.append(_write(tmp_path / f"p{k}_{w}x{h}.png", encode(img, "PNG")))
        fast.append(_write(tmp_path / f"p{k}_progressive.jpg", encode(img, "JPEG", quality=85, progressive=True)))
        fast.append(_write(tmp_path / f"p{k}_grey.jpg", encode(img.convert("L"), "JPEG", quality=90)))
        fast.append(_write(tmp_path / f"p{k}_palette.png", encode(img.convert("P"), "PNG")))
    for name, data in {
        "cmyk.jpg": cmyk_jpeg_bytes(),
        "sixteen.png": sixteen_bit_png_bytes(),
        "rgba.png": rgba_png_bytes(),
        "exif6.jpg": exif_rotated_jpeg_bytes(),
        "palette_transparent.png": palette_transparent_png_bytes(),
        "gif.gif": encode(varied_image(3), "GIF"),
        "webp.webp": encode(varied_image(4), "WEBP"),
    }.items():
        odd.append(_write(tmp_path / name, data))
    # The comparison must exercise TensorFlow's decoders, not only duet's fallback.
    routes = {p.name: tfdata._route(p.read_bytes(), spec.load_size, 89_478_485) for p in fast + odd}
    assert all(routes[p.name] != tfdata.ROUTE_DUET for p in fast), routes
    assert all(routes[p.name] == tfdata.ROUTE_DUET for p in odd), routes

    samples = [Sample(p, i % 3) for i, p in enumerate(fast + odd)]
    options = LoaderOptions(batch_size=8, shuffle=False, device=CPU, workers=2)
    torch_x = torch.cat([augment.eval_batch(b.images, spec) for b in TorchLoader(samples, spec, options)])
    tf_x = torch.cat([augment.eval_batch(b.images, spec) for b in tfdata.TfLoader(samples, spec, options)])
    std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    levels = ((tf_x - torch_x) * std).abs()  # back in uint8 levels
    assert levels.max().item() <= TOLERANCE_MAX_LEVELS + 1e-3
    assert levels.mean().item() <= TOLERANCE_MEAN_LEVELS


def test_same_batches_as_torch_and_files_broken_after_the_scan_are_reported_not_fatal(tmp_path: Path) -> None:
    spec = PreprocessSpec(image_size=20, crop_pct=0.8)
    photo = _photos()[0]
    samples = []
    for i in range(21):
        img = Image.fromarray(photo[i * 7 : i * 7 + 200, i * 11 : i * 11 + 260])
        path = tmp_path / f"{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        samples.append(Sample(_write(path, encode(img, "PNG" if i % 3 == 0 else "JPEG", quality=90)), i % 2))
    # 21 images at batch 5: the one left over is pooled with the batch before (5, 5, 5, 3, 3).
    options = LoaderOptions(batch_size=5, shuffle=True, device=CPU, workers=2, seed=7)
    loaders = {"torch": TorchLoader(samples, spec, options), "tf": tfdata.TfLoader(samples, spec, options)}
    assert len(loaders["tf"]) == len(loaders["torch"]) == 5
    loaders["tf"].set_epoch(1)
    assert [len(b.index) for b in loaders["tf"]] == [5, 5, 5, 3, 3]

    def epoch(name: str, e: int) -> dict[int, tuple[torch.Tensor, int, str]]:
        loaders[name].set_epoch(e)
        out = {}
        for b in loaders[name]:
            for x, y, i, err in zip(b.images, b.labels.tolist(), b.index.tolist(), b.errors):
                out[i] = (x, y, err)
        return out

    a, b = epoch("torch", 1), epoch("tf", 1)
    assert list(a) == list(b)  # same samples in the same order
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][1:] == b[i][1:] for i in a)

    # Break files after the loaders were built: one deleted, one truncated, and
    # the last file of the epoch's order (the tail path).
    loaders["tf"].set_epoch(2)
    order = [int(i) for b in loaders["tf"] for i in b.index]
    broken = {order[0]: "deleted", order[7]: "truncated", order[-1]: "deleted"}
    for i, how in broken.items():
        if how == "deleted":
            samples[i].path.unlink()
        else:
            write_truncated_jpeg(samples[i].path)
    a, b = epoch("torch", 2), epoch("tf", 2)
    assert sorted(a) == sorted(b)
    failed_a = {i: r for i, (_, y, r) in a.items() if y == -1}
    failed_b = {i: r for i, (_, y, r) in b.items() if y == -1}
    assert failed_b == failed_a
    assert failed_b == {
        i: ("truncated image" if how == "truncated" else "cannot read file: No such file or directory")
        for i, how in broken.items()
    }
    assert all(torch.equal(a[i][0], b[i][0]) for i in a if i not in broken)


def test_make_loader_gives_tf_the_plan_of_its_options(tmp_path: Path) -> None:
    """The factory hands "tf" the same LoaderOptions as the other backends:
    rank 1 of 2, drop_last, seed 9 give the plan's share, batch for batch."""
    samples = [Sample(_write(tmp_path / f"{i}.png", encode(varied_image(i), "PNG")), i % 2) for i in range(11)]
    spec = PreprocessSpec(image_size=16, crop_pct=0.8)
    options = LoaderOptions(batch_size=4, shuffle=True, device=CPU, workers=0, seed=9, drop_last=True, rank=1, world=2)
    loaders = {name: make_loader(name, samples, spec, options) for name in ("torch", "tf")}
    expected = batch_plan(11, batch_size=4, shuffle=True, seed=9, epoch=2, drop_last=True, rank=1, world=2)
    assert [len(b) for b in expected] == [2, 2]
    for loader in loaders.values():
        loader.set_epoch(2)
    got = {name: [b.index.tolist() for b in loader] for name, loader in loaders.items()}
    assert got["tf"] == got["torch"] == expected


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small run trained with the "tf" and the "torch" backend, same seed.
    The data folder holds two files the scan must exclude."""
    root = tmp_path_factory.mktemp("tf-train")
    data = write_digit_folder(root / "digits", classes=(0, 1, 7), per_class=30, size=24)
    write_truncated_jpeg(data / "1" / "truncated.jpg")
    write_text_as_image(data / "7" / "notes.png")
    runs = {}
    for backend in ("tf", "torch"):
        cfg = root / f"{backend}.yaml"
        cfg.write_text(
            f"data_backend: {backend}\nepochs: 2\nlr: 0.003\nimage_size: 24\nbatch_size: 16\n"
            "workers: 0\nseed: 3\naugment:\n  hflip: false\n  scale: [0.7, 1.0]\n"
        )
        proc = run_cli(
            "train",
            str(data),
            "--config",
            str(cfg),
            "--out",
            str(root / "runs"),
            "--name",
            backend,
            "--json",
            "--quiet",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "oneDNN" not in proc.stderr
        runs[backend] = Path(json.loads(proc.stdout)["run"])
    return runs


@pytest.mark.e2e
def test_training_with_the_tf_backend_matches_the_torch_backend(trained: dict[str, Path]) -> None:
    tf_run, torch_run = trained["tf"], trained["torch"]
    config = (tf_run / "config.yaml").read_text()
    assert "data_backend: tf" in config
    skipped = {s["path"]: s["reason"] for s in json.loads((tf_run / "data_report.json").read_text())["skipped"]}
    assert "truncated" in skipped["1/truncated.jpg"] and "not an image" in skipped["7/notes.png"]
    m_tf = [json.loads(line) for line in (tf_run / "metrics.jsonl").read_text().splitlines()]
    m_torch = [json.loads(line) for line in (torch_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in m_tf] == [1, 2] and all(m["load_failures"] == 0 for m in m_tf)
    # Same seed, same batches, same pixels: within the 0.5 pt (in practice equal).
    assert abs(m_tf[-1]["val_accuracy"] - m_torch[-1]["val_accuracy"]) <= 0.005
    assert m_tf[-1]["train_loss"] == pytest.approx(m_torch[-1]["train_loss"], rel=1e-4)


@pytest.mark.e2e
def test_tf_dataset_gives_the_runs_labels_and_preprocessing(trained: dict[str, Path]) -> None:
    from duet import tf_dataset
    from duet.data.imageio import decode
    from duet.data.preprocess import centre_offset, to_load_square
    from duet.data.scan import read_manifest

    run = trained["tf"]
    info = json.loads((run / "run.json").read_text())
    spec = PreprocessSpec.from_dict(info["preprocess"])
    manifest = read_manifest(run / "manifest.csv", Path(info["data_dir"]))
    val = [r for r in manifest.usable() if r.split == "val"]

    ds = tf_dataset(run, "val")  # single images, not shuffled, the eval crop
    images, labels = zip(*[(x.numpy(), int(y)) for x, y in ds])
    assert list(labels) == [info["labels"].index(r.label) for r in val]
    assert images[0].shape == (spec.image_size, spec.image_size, 3) and images[0].dtype == np.uint8
    o, s = centre_offset(spec), spec.image_size
    expected = to_load_square(decode(manifest.data_dir / val[0].path, min_size=spec.load_size), spec)
    assert np.array_equal(images[0], expected[o : o + s, o : o + s])

    x, y = next(iter(tf_dataset(run, "train", batch_size=8)))  # load squares, shuffled
    assert x.shape == (8, spec.load_size, spec.load_size, 3) and x.dtype == tf.uint8
    assert y.dtype == tf.int64 and set(y.numpy().tolist()) <= set(range(len(info["labels"])))


@pytest.mark.e2e
def test_from_tf_dataset_feeds_a_training_step(trained: dict[str, Path], tmp_path: Path) -> None:
    import keras

    from duet import from_tf_dataset

    info = json.loads((trained["tf"] / "run.json").read_text())
    spec = PreprocessSpec.from_dict(info["preprocess"])
    # A Keras user's own pipeline: float32 0..255, batched, channels last, 32x32 (not duet's size).
    folder = write_digit_folder(tmp_path / "user", classes=(0, 1, 7), per_class=8, size=32)
    user_ds = keras.utils.image_dataset_from_directory(
        str(folder), image_size=(32, 32), batch_size=8, shuffle=True, seed=0, verbose=False
    )
    loader = from_tf_dataset(user_ds, spec, CPU)
    assert len(loader) == 3
    batch = next(iter(loader))
    assert batch.images.shape == (8, 3, spec.load_size, spec.load_size) and batch.images.dtype == torch.uint8
    assert batch.labels.dtype == torch.int64 and batch.errors == [""] * 8

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, len(info["labels"])),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x = augment.train_batch(
        batch.images, spec, scale=(0.7, 1.0), ratio=(0.9, 1.1), hflip=False, generator=torch.Generator().manual_seed(0)
    )
    loss = torch.nn.functional.cross_entropy(model(x), batch.labels)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_tutorial_peer_and_duet_tf_bench_rows(tmp_path: Path) -> None:
    from duet.bench import tf_peers

    data = write_digit_folder(tmp_path / "d", classes=(0, 1), per_class=12, size=24)
    for row in (tf_peers.keras_imagedatagenerator(data, 4, 32, 3), tf_peers.duet_tf(data, 4, 32, 3, workers=1)):
        assert set(row) >= {"name", "images", "seconds", "images_per_s"}
        assert row["images"] == 12 and row["images_per_s"] > 0


def test_from_tf_dataset_takes_single_float_images_and_one_hot_labels() -> None:
    from duet import from_tf_dataset

    spec = PreprocessSpec(image_size=16, crop_pct=1.0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 16, 16, 3)).astype(np.uint8)
    one_hot = np.eye(3, dtype=np.float32)[[0, 2, 1, 1, 0, 2]]
    ds = tf.data.Dataset.from_tensor_slices((pixels.astype(np.float32) / 255, one_hot))  # Rescaling(1/255)-style
    batches = list(from_tf_dataset(ds, spec, CPU, batch_size=4, value_range=(0.0, 1.0)))
    assert [len(b.labels) for b in batches] == [4, 2]
    assert torch.cat([b.labels for b in batches]).tolist() == [0, 2, 1, 1, 0, 2]
    images = torch.cat([b.images for b in batches]).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, pixels)  # already load_size: passed through, values restored exactly
