"""The Keras hand-off in one call: ``duet.train`` takes a ``tf.data.Dataset`` or an
``ImageDataGenerator`` iterator (with a separate validation set) and trains,
checkpoints and reports as from a folder."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch  # noqa: F401  (before TensorFlow: see duet.data.tfdata.import_tensorflow)
from PIL import Image

if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401
pytest.importorskip("tensorflow", reason="TensorFlow is not importable (pip install 'duet[tf]')", exc_type=ImportError)

import duet
from duet.api.keras_data import build_data_folder
from duet.data.scan import read_manifest
from duet.data.tfdata import import_tensorflow
from duet.errors import ConfigError
from helpers import TINY, write_digit_folder

tf = import_tensorflow()
pytestmark = pytest.mark.e2e  # TensorFlow in the process; most of these train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(
        tmp_path_factory.mktemp("keras-data") / "digits", classes=(0, 1, 2), per_class=20, size=20
    )


def _manifest(run: Any) -> Any:
    return read_manifest(run.path / "manifest.csv", run.config.data_dir)


def test_image_dataset_from_directory_with_its_validation_subset(data: Path, tmp_path: Path) -> None:
    train_ds, val_ds = tf.keras.utils.image_dataset_from_directory(
        data, validation_split=0.25, subset="both", seed=1, image_size=(20, 20), batch_size=8
    )
    run = duet.train(train_ds, val=val_ds, **TINY, out=tmp_path, name="idfd", progress=False, log=None)
    assert run.labels == train_ds.class_names == ["0", "1", "2"]
    rows = _manifest(run).usable()
    assert sum(r.split == "train" for r in rows) == len(train_ds.file_paths)
    assert sum(r.split == "val" for r in rows) == len(val_ds.file_paths)
    folder = tmp_path / "idfd.data"
    assert run.config.data_dir == folder
    linked = next((folder / "train" / "1").iterdir())  # the user's own file, not a re-encoded copy
    assert linked.resolve().parent == (data / "1").resolve()
    assert (run.path / "checkpoints" / "last.pt").is_file() and (run.path / "profile" / "profile.json").is_file()


def test_a_dataset_of_pixels_is_written_once_as_lossless_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 12, 12, 3)).astype(np.float32)  # Keras-style 0..255 floats
    y = np.array([0, 5, 11] * 8)  # ids beyond 9: folders padded so that sorted order is id order
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    folder = build_data_folder(ds, None, tmp_path / "d.data")
    assert sorted(p.name for p in folder.iterdir()) == ["00", "05", "11"]
    first = sorted((folder / "00").iterdir())[0]
    assert first.name == "000000.png"
    np.testing.assert_array_equal(np.asarray(Image.open(first)), x[0].astype(np.uint8))


def test_pixels_in_zero_one_need_the_value_range(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 10, 10, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(6) % 2))
    with pytest.raises(ConfigError, match=r"value_range=\(0, 1\)"):
        build_data_folder(ds, None, tmp_path / "bad.data")
    assert not (tmp_path / "bad.data").exists() and list(tmp_path.iterdir()) == []  # nothing left behind
    folder = build_data_folder(ds, None, tmp_path / "ok.data", value_range=(0, 1))
    assert sorted(p.name for p in folder.iterdir()) == ["0", "1"]


def test_a_one_hot_dataset_without_files_trains_with_a_separate_val(data: Path, tmp_path: Path) -> None:
    images, labels = [], []
    for c in range(3):
        for f in sorted((data / str(c)).glob("*.png")):
            images.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(np.eye(3)[c])
    x, y = np.stack(images).astype(np.float32), np.stack(labels).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    train_ds = tf.data.Dataset.from_tensor_slices((x[:45], y[:45])).batch(8)
    val_ds = tf.data.Dataset.from_tensor_slices((x[45:], y[45:])).batch(8)
    run = duet.train(train_ds, val=val_ds, **TINY, out=tmp_path, name="onehot", progress=False, log=None)
    assert run.labels == ["0", "1", "2"]
    rows = _manifest(run).usable()
    assert sum(r.split == "train" for r in rows) == 45 and sum(r.split == "val" for r in rows) == 15
    assert run.best["epoch"] == 1


def test_flow_from_directory_iterators_train_and_resume(data: Path, tmp_path: Path) -> None:
    gen = tf.keras.preprocessing.image.ImageDataGenerator(rescale=1 / 255, validation_split=0.25)
    train_it = gen.flow_from_directory(data, target_size=(20, 20), batch_size=8, subset="training", seed=1)
    val_it = gen.flow_from_directory(data, target_size=(20, 20), batch_size=8, subset="validation", seed=1)
    run = duet.train(train_it, val=val_it, **TINY, out=tmp_path, name="gen", progress=False, log=None)
    assert run.labels == sorted(train_it.class_indices) == ["0", "1", "2"]
    rows = _manifest(run).usable()
    assert sum(r.split == "train" for r in rows) == len(train_it.filepaths)
    assert sum(r.split == "val" for r in rows) == len(val_it.filepaths)
    longer = run.resume(epochs=2, progress=False, log=None)  # the written folder outlives the call
    assert [row["epoch"] for row in longer.metrics] == [1, 2]


def test_flow_of_arrays_is_read_without_augmentation(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, (8, 10, 10, 3)).astype(np.float32)
    y = np.array([0, 1] * 4)
    it = tf.keras.preprocessing.image.ImageDataGenerator(rotation_range=90, horizontal_flip=True).flow(x, y)
    folder = build_data_folder(it, None, tmp_path / "flow.data")
    written = sorted((folder / "0").iterdir())
    assert len(written) == 4 and len(list((folder / "1").iterdir())) == 4
    np.testing.assert_array_equal(np.asarray(Image.open(written[0])), x[0].astype(np.uint8))


def test_a_folder_with_a_separate_val_folder(data: Path, tmp_path: Path) -> None:
    val = write_digit_folder(tmp_path / "val", classes=(0, 1, 2), per_class=5, size=20)
    folder = build_data_folder(data, val, tmp_path / "runs" / "f.data")
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["0", "1", "2"]
    assert os.path.realpath(folder / "val" / "2") == os.path.realpath(val / "2")


def test_a_keras_session_that_imported_tensorflow_first_trains(data: Path, tmp_path: Path) -> None:
    """The user's order: TensorFlow first, then duet, then torch (imported by
    duet.train). On this stack the other order of triton and TensorFlow segfaults;
    duet's guard keeps the process alive."""
    code = "\n".join(
        [
            "import sys",
            "import tensorflow as tf",
            "import duet",
            f"train_ds, val_ds = tf.keras.utils.image_dataset_from_directory({str(data)!r}, validation_split=0.25,",
            "    subset='both', seed=1, image_size=(20, 20), batch_size=8)",
            f"run = duet.train(train_ds, val=val_ds, out={str(tmp_path)!r}, name='k', progress=False, log=None,",
            "    model='test_resnet', image_size=16, batch_size=16, epochs=1, workers=0, device='cpu')",
            "print('ok', run.labels, run.best['epoch'])",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip().splitlines()[-1] == "ok ['0', '1', '2'] 1"
