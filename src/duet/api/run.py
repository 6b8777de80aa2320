"""The Python API's stages: the CLI's commands as functions over run folders.

``train(data, **settings) -> Run``, ``resume(run) -> Run``,
``evaluate(run) -> EvalResult``, ``export(run) -> ExportResult``,
``drift(run_or_export, folder) -> DriftResult``, ``scan(folder) -> Manifest``.
Each wraps the function the CLI command calls (``duet.training.loop.train`` /
``resume``, ``duet.evaluation.evaluate.evaluate``, ``duet.exporting.exporter.export_run``,
``duet.monitor.check.drift_check``, ``duet.data.scan.scan``): a notebook and
a shell get the same run folder, the same numbers and the same errors
(:mod:`duet.errors`, one line each).

Heavy modules (torch, timm, onnx) are imported inside the functions, so
``import duet`` stays light.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duet.api.keras_data import build_data_folder, needs_folder
from duet.api.model import Model, load
from duet.artifacts.run_dir import RunInfo, RunPaths, load_run, read_config, slug
from duet.errors import ConfigError, ModelError, RunError

if TYPE_CHECKING:
    from duet.data.scan import Manifest
    from duet.evaluation.evaluate import EvalResult
    from duet.exporting.exporter import ExportResult
    from duet.monitor.drift import DriftResult
    from duet.monitor.tabular_drift import TabularDriftResult
    from duet.training.config import TrainConfig
    from duet.training.loop import TrainResult
    from duet.training.tabular_config import TableConfig

Log = Callable[[str], None]
PathLike = str | os.PathLike[str]


def _quiet(_: str) -> None:
    pass


class Run:
    """A run folder (``runs/<name>/``, see ``duet.artifacts.run_dir``) as an object.

    ``Run(path)`` opens an existing one (:class:`~duet.errors.RunError` if it is
    not a run); :func:`train` returns one. It is ``os.PathLike``, so it can be
    passed wherever a run folder path is expected. Properties are read from
    the folder each time (a resume changes them).
    """

    def __init__(self, path: PathLike, *, result: TrainResult | None = None) -> None:
        self.path = Path(path)
        self.modality = _modality(self.path)  # RunError now, not at first use
        self.result = result  # the training summary, when this object trained it

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        acc = self.best.get("val_accuracy")
        return f"Run('{self.path}', best_val_accuracy={acc})"

    @property
    def info(self) -> RunInfo:
        """run.json as ``duet.artifacts.run_dir.RunInfo`` (labels, model, preprocessing, best, precision);
        an image run's. A tabular run's run.json: ``json.loads((run.path / "run.json").read_text())``."""
        if self.modality != "image":
            raise RunError(f"'{self.path}' is a {self.modality} run; RunInfo describes image runs")
        return load_run(self.path)

    def _json(self) -> dict[str, Any]:
        return dict(json.loads(RunPaths(self.path).info.read_text(encoding="utf-8")))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def labels(self) -> list[str]:
        """The class names; index ``i`` is the model's output ``i``."""
        return [str(x) for x in self._json()["labels"]]

    @property
    def best(self) -> dict[str, Any]:
        """The best epoch's metrics, e.g. ``{"epoch": 3, "val_accuracy": 0.97, ...}``."""
        return dict(self._json().get("best") or {})

    @property
    def config(self) -> TrainConfig | TableConfig:
        """The resolved settings it was trained with (config.yaml): a TrainConfig, or a tabular run's TableConfig."""
        from duet.training.config import config_from_dict
        from duet.training.tabular_config import table_config_from_dict

        paths = RunPaths(self.path)
        read = table_config_from_dict if self.modality == "tabular" else config_from_dict
        return read(read_config(paths), str(paths.config))

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One row per finished epoch (metrics.jsonl)."""
        path = RunPaths(self.path).metrics
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def evaluate(self, data: PathLike | None = None, *, split: str | None = None, **options: Any) -> EvalResult:
        """:func:`evaluate` of this run."""
        return evaluate(self, data, split=split, **options)

    def export(self, out: PathLike | None = None, **options: Any) -> ExportResult:
        """:func:`export` of this run."""
        return export(self, out, **options)

    def load(self, **options: Any) -> Model:
        """This run's best weights as a :class:`~duet.api.model.Model` (PyTorch); see :func:`duet.load`.
        Image runs; a tabular run is served from its export (``duet serve``)."""
        if self.modality != "image":
            raise ModelError(
                f"duet.load is built for image runs; '{self.path}' is {self.modality}: export it and serve it"
            )
        return load(self.path, **options)

    def drift(self, folder: PathLike, **options: Any) -> DriftResult | TabularDriftResult:
        """:func:`drift` of a folder of new images (a tabular run: a file of new rows) against this run."""
        return drift(self, folder, **options)

    def resume(self, *, epochs: int | None = None, **options: Any) -> Run:
        """:func:`resume` this run."""
        return resume(self, epochs=epochs, **options)


def train(
    data: Any,
    *,
    val: Any = None,
    value_range: tuple[float, float] = (0.0, 255.0),
    progress: bool = True,
    log: Log | None = print,
    **settings: Any,
) -> Run:
    """Train a classifier and return its run folder, as ``duet train`` does.

    Args:
        data: a data folder (one sub-folder per class, or ``train/`` and
            ``val/``), a ``tf.data.Dataset`` of ``(image, label)`` (e.g. from
            ``tf.keras.utils.image_dataset_from_directory``), or a Keras
            ``ImageDataGenerator`` iterator (``flow_from_directory`` or ``flow(x, y)``).
        val: a separate validation set of the same kinds; None: duet holds out
            ``val_split`` of ``data`` (unless ``data`` has ``train/`` ``val/``).
        value_range: the range of float images in a dataset or ``flow`` array
            (Keras yields 0..255; ``(0, 1)`` after ``Rescaling(1/255)``).
        progress: progress bars on stderr.
        log: receives the epoch lines (None: silent).
        **settings: any ``duet.training.config.TrainConfig`` field: ``model``,
            ``epochs``, ``batch_size``, ``lr``, ``image_size``, ``out``,
            ``name``, ``device``, ``seed``, ... (``duet train --help``).

    Anything but one plain folder is first written as a folder next to the
    run, ``<out>/<name>.data/`` (links to the original files where the object
    knows them, else lossless PNGs; see ``duet.api.keras_data``), so the run
    checkpoints, resumes and reports exactly as from a folder. After training
    the drift profile is written (``RUN/profile``).

    Raises:
        ConfigError: an unknown setting or a bad value (the same one line as the CLI).
        DataError: unusable data. RunError: the run name is taken.
        TrainingDiverged, Interrupted: as ``duet train``.
    """
    from duet.training.config import build_config

    say = log or _quiet
    from duet.api.table_run import is_table_data, train_table_api

    if is_table_data(data, settings):  # a table file or a DataFrame with target=: duet train data.csv --target
        result = train_table_api(data, val, settings, name_for=_new_name, progress=progress, log=say)
        return Run(result.run_dir, result=result)
    if "data_dir" in settings:
        raise ConfigError("pass the data as train's first argument, not as data_dir=")
    placeholder = data if isinstance(data, (str, os.PathLike)) else "."
    config = build_config(None, {**settings, "data_dir": placeholder}, source="duet.train() settings")
    written: Path | None = None
    if needs_folder(data, val):
        name = config.name or _new_name(config.out, config.model)
        if (Path(config.out) / name).exists():
            raise RunError(
                f"run '{Path(config.out) / name}' already exists and runs are never overwritten; pick another name="
            )
        written = build_data_folder(data, val, Path(config.out) / f"{name}.data", value_range=value_range)
        say(f"data: written as a folder at {written}")
        config = config.model_copy(update={"data_dir": written, "name": name})
    from duet.tracking import sink_for
    from duet.training.loop import train as train_run  # torch: only once the settings are known good

    try:
        result = train_run(config, progress=progress, log=say, tracker=sink_for(config.track, config.out))
    except BaseException:
        # A run that could not start leaves no folder (duet.training.loop); nor does its data.
        if written is not None and not (Path(config.out) / str(config.name)).exists():
            shutil.rmtree(written, ignore_errors=True)  # removes the links, never the files they point at
        raise
    _write_profile(result.run_dir, config.device, progress, say)
    return Run(result.run_dir, result=result)


def _new_name(out: Path, model: str) -> str:
    """A fresh run name as ``duet train`` makes one, free both as a run and as ``<name>.data``."""
    base = f"{datetime.now():%Y%m%d-%H%M%S}-{slug(model)}"
    for i in range(1, 1000):
        name = base if i == 1 else f"{base}-{i}"
        if not (Path(out) / name).exists() and not (Path(out) / f"{name}.data").exists():
            return name
    return f"{base}-{os.getpid()}"


def _write_profile(run_dir: Path, device: str, progress: bool, log: Log) -> None:
    """The run's drift reference profile (RUN/profile), written once after training."""
    from duet.monitor.profile import ensure_profile

    ensure_profile(run_dir, device=device, workers=None, progress=progress, log=log)


def resume(run: PathLike, *, epochs: int | None = None, progress: bool = True, log: Log | None = print) -> Run:
    """Continue an interrupted run from its last checkpoint (``duet train --resume``);
    ``epochs``: a new total, to train a finished run longer. Writes the drift profile if missing."""
    from duet.tracking import sink_for_run
    from duet.training.loop import resume as resume_run
    from duet.training.tabular_fit import resume_table

    say = log or _quiet
    resume_fn = resume_table if _modality(Path(run)) == "tabular" else resume_run
    result = resume_fn(Path(run), epochs=epochs, progress=progress, log=say, tracker=sink_for_run(Path(run)))
    device = str(read_config(RunPaths(result.run_dir)).get("device", "auto"))
    _write_profile(result.run_dir, device, progress, say)
    return Run(result.run_dir, result=result)


def evaluate(
    run: PathLike,
    data: PathLike | None = None,
    *,
    split: str | None = None,
    device: str = "auto",
    progress: bool = True,
    **options: Any,
) -> EvalResult:
    """Evaluate a run (``duet evaluate``) on its test split (else validation),
    on ``split``, or on a labelled folder ``data``; writes RUN/eval/.

    ``options``: ``out_dir``, ``batch_size``, ``workers``, ``precision`` of
    ``duet.evaluation.evaluate.evaluate``. Returns its ``EvalResult``
    (``.metrics["accuracy"]``, ``.files``, ``.split``)."""
    from duet.evaluation.evaluate import evaluate as evaluate_run
    from duet.tracking.stages import log_evaluation

    folder = Path(data) if data is not None else None
    res = evaluate_run(Path(run), data_dir=folder, split=split, device=device, progress=progress, **options)
    log_evaluation(res.files, res.metrics, res.split)  # when the run was tracked with MLflow
    return res


def export(
    run: PathLike, out: PathLike | None = None, *, progress: bool = True, log: Log | None = print, **options: Any
) -> ExportResult:
    """Export a run (``duet export``): ONNX + safetensors + model.json + card in
    ``out`` (default RUN/export/), behind the parity gate.

    ``options``: ``force``, ``quantize="int8"``, ``tolerance``, ``data_dir``, ...
    of ``duet.exporting.exporter.export_run``. Returns its ``ExportResult``
    (``.export_dir``); ``duet.load(result.export_dir)`` opens it."""
    from duet.exporting.exporter import export_run
    from duet.tracking.stages import log_export

    folder = Path(out) if out is not None else None
    res = export_run(Path(run), out_dir=folder, progress=progress, log=log or _quiet, **options)
    log_export(Path(run), res.export_dir)  # the ONNX model into the run's MLflow run, when it was tracked
    return res


def drift(
    run_or_export: PathLike, folder: PathLike, *, progress: bool = True, **options: Any
) -> DriftResult | TabularDriftResult:
    """Is a folder of new images (a tabular run: a file of new rows) still like the training data (``duet drift``)?

    ``run_or_export``: a run folder, or an export folder whose run (model.json
    ``source.run``) is on this machine. Writes a report to RUN/drift/<folder>/
    unless ``report=False``; ``options`` go to ``duet.monitor.check.drift_check``
    (``max_images``, ``settings``, ``device``, ``seed``, ...). Returns the
    ``DriftResult`` (``.drift``: True, False or None; ``.sentence``; ``.detectors``)."""
    from duet.monitor.check import drift_check

    run_dir = _run_of(Path(run_or_export))
    if _modality(run_dir) == "tabular":  # a file of new rows, compared per column and on the outputs
        from duet.monitor.tabular_check import table_drift_check

        return table_drift_check(run_dir, Path(folder), **options).result
    return drift_check(run_dir, Path(folder), progress=progress, **options).result


def _modality(run_dir: Path) -> str:
    """ "image" or "tabular", from run.json; RunError when ``run_dir`` is not a run."""
    from duet.training.tabular_run import is_tabular_run

    if is_tabular_run(run_dir):
        return "tabular"
    load_run(run_dir)  # an image run, or a RunError saying what is wrong
    return "image"


def _run_of(path: Path) -> Path:
    """The run folder behind a run folder or an export folder."""
    if (path / "run.json").is_file():
        return path
    from duet.artifacts.model_package import read_package

    package = read_package(path, verify=False)
    source = Path(str(package.manifest.get("source", {}).get("run", "")))
    if not (source / "run.json").is_file():
        raise ModelError(
            f"export '{path}' was made from run '{source}', which is not on this machine; "
            "drift needs the run folder (pass it instead), or serve the export with `duet serve --drift`"
        )
    return source


def scan(folder: PathLike, *, progress: bool = False, **options: Any) -> Manifest:
    """Read a data folder as ``duet train`` would (``duet.data.scan.scan``):
    a ``Manifest`` with ``.labels`` and one row per file (``.usable()``, why a file was skipped)."""
    from duet.data.scan import scan as scan_folder

    return scan_folder(Path(folder), progress=progress, **options)
