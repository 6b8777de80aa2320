"""Differentially private training (`duet train --dp-epsilon`, duet.training.privacy):
a DP run spends at most its ε and says so in run.json, metrics.jsonl and the
summary; a resume after SIGKILL spends exactly what an uninterrupted run does;
settings that break the guarantee are refused in one line; a DP run exports,
serves and evaluates like any other. Unit tests pin the pieces: Poisson batches,
BatchNorm -> GroupNorm, the list of refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from helpers import one_line_error, run_cli, snapshot, write_digit_folder
from serve_support import running_server

EPSILON = 8.0
# One intra-op thread in every process, so that an interrupted run and an
# uninterrupted one compute the same floats (see test_precision's bf16 resume test).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
DP_CONFIG = {"epochs": 2, "batch_size": 8, "lr": 0.005, "checkpoint_every": 2, "dp": {"epsilon": EPSILON}}


def _train_args(data: Path, cfg: Path, runs: Path, name: str) -> list[str]:
    return [
        "train",
        str(data),
        "--config",
        str(cfg),
        "--model",
        "test_resnet",
        "--image-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--seed",
        "3",
        "--out",
        str(runs),
        "--name",
        name,
        "--quiet",
    ]


@pytest.fixture(scope="module")
def dp_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 digit classes at 16 px, the DP config, and one uninterrupted DP run of it
    (2 epochs of test_resnet, ε = 8) with its --json summary; shared read-only."""
    pytest.importorskip("opacus", reason="the dp extra is not installed: pip install 'duet[dp]'")
    root = tmp_path_factory.mktemp("dp")
    data = write_digit_folder(root / "data", classes=(0, 1, 2), per_class=30, size=16)
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(DP_CONFIG))
    runs = root / "runs"
    proc = run_cli(*_train_args(data, cfg, runs, "full"), "--json", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"data": data, "cfg": cfg, "runs": runs, "run": runs / "full", "summary": json.loads(proc.stdout)}


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_a_dp_run_spends_at_most_its_epsilon_and_reports_it(dp_setup: dict[str, Any]) -> None:
    run = dp_setup["run"]
    info = json.loads((run / "run.json").read_text())
    assert info["norm"] == "group"
    privacy = info["privacy"]
    assert 0 < privacy["epsilon"] <= EPSILON + 1e-6
    assert privacy["target_epsilon"] == EPSILON and privacy["accountant"] == "rdp"
    assert 0 < privacy["delta"] < 1 / 63 and privacy["noise_multiplier"] > 0 and privacy["max_grad_norm"] == 1.0
    assert privacy["steps"] == privacy["planned_steps"] > 0  # every planned step counted, empty ones too
    eps = [row["epsilon"] for row in _metrics(run)]
    assert len(eps) == 2 and 0 < eps[0] <= eps[1] <= EPSILON + 1e-6
    assert eps[-1] == pytest.approx(privacy["epsilon"], abs=1e-4)  # run.json rounds to 4 places
    summary = dp_setup["summary"]
    assert summary["privacy"] == privacy
    assert yaml.safe_load((run / "config.yaml").read_text())["dp"]["epsilon"] == EPSILON


@pytest.mark.e2e
def test_a_resume_after_sigkill_spends_the_same_epsilon_as_an_uninterrupted_run(dp_setup: dict[str, Any]) -> None:
    import torch

    runs, name = dp_setup["runs"], "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "duet", *_train_args(dp_setup["data"], dp_setup["cfg"], runs, name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **ONE_THREAD},
    )
    last = runs / name / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert last.exists(), proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    resumed = run_cli("train", "--resume", str(runs / name), "--quiet", "--json", env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    full, cut = _metrics(dp_setup["run"]), _metrics(runs / name)
    keys = ("epoch", "train_loss", "epsilon", "val_loss", "val_accuracy")
    assert [[r[k] for k in keys] for r in cut] == [[r[k] for k in keys] for r in full]
    history = [
        torch.load(r / "checkpoints" / "last.pt", weights_only=False)["privacy"] for r in (runs / name, dp_setup["run"])
    ]
    assert history[0] == history[1]  # the accountant's steps, (noise, q, steps)
    assert abs(json.loads(resumed.stdout)["privacy"]["epsilon"] - dp_setup["summary"]["privacy"]["epsilon"]) <= 1e-9


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ({"mixup": 0.2}, "mixup"),
        ({"class_weights": "on"}, "class_weights"),
        ({"grad_clip": 1.0}, "grad_clip"),
        ({"precision": "bf16"}, "precision"),
    ],
    ids=["mixup", "class_weights", "grad_clip", "bf16"],
)
def test_a_setting_that_breaks_the_guarantee_is_refused_in_one_line(
    tmp_path: Path, dp_setup: dict[str, Any], setting: dict[str, Any], needle: str
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**DP_CONFIG, **setting}))
    args = _train_args(dp_setup["data"], cfg, tmp_path / "runs", "refused")
    if "precision" in setting:  # the flag would override the file
        i = args.index("--precision")
        del args[i : i + 2]
    proc = run_cli(*args)
    one_line_error(proc, 2, "differentially private", needle)
    assert not (tmp_path / "runs" / "refused").exists()


@pytest.mark.e2e
def test_resume_with_more_epochs_is_refused_for_a_dp_run(dp_setup: dict[str, Any]) -> None:
    run = dp_setup["run"]
    before = snapshot(run)
    proc = run_cli("train", "--resume", str(run), "--epochs", "4")
    one_line_error(proc, 2, "differentially private", "more epochs would spend more")
    assert snapshot(run) == before


@pytest.mark.e2e
def test_a_dp_run_exports_serves_and_evaluates(tmp_path: Path, dp_setup: dict[str, Any]) -> None:
    import shutil

    import torch

    from duet.artifacts.run_dir import load_run
    from duet.evaluation.inference import load_model

    run = tmp_path / "dp-run"
    shutil.copytree(dp_setup["run"], run)
    proc = run_cli("export", str(run), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((run / "export" / "model.json").read_text())
    assert manifest["norm"] == "group"
    assert manifest["privacy"]["epsilon"] == json.loads((run / "run.json").read_text())["privacy"]["epsilon"]
    assert "privacy" in (run / "export" / "MODEL_CARD.md").read_text().lower()

    image = next((dp_setup["data"] / "1").glob("*.png"))
    answers = {}
    for runtime in ("onnxruntime", "torch"):  # torch rebuilds the GroupNorm model from model.json's norm
        with running_server(run, tmp_path, "--runtime", runtime) as server:
            files = [("file", (image.name, image.read_bytes(), "image/png"))]
            r = httpx.post(f"{server.url}/v1/predict", files=files)
            assert r.status_code == 200, r.text
            (pred,) = r.json()["predictions"]
            assert pred["label"] in {"0", "1", "2"} and 0 < pred["probability"] <= 1 and len(pred["top"]) == 3
            answers[runtime] = pred
    assert answers["torch"]["label"] == answers["onnxruntime"]["label"]
    assert abs(answers["torch"]["probability"] - answers["onnxruntime"]["probability"]) < 1e-3

    # The PyTorch path rebuilds the GroupNorm model from run.json (no Opacus needed).
    info = load_run(run)
    model = load_model(info, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    evaluated = run_cli("evaluate", str(run), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


# -- units (fast tier) ------------------------------------------------------------------


def test_poisson_batches_have_the_batch_size_on_average_and_are_seeded() -> None:
    import numpy as np

    from duet.data.contract import poisson_plan

    n, batch = 1000, 50
    plans = [poisson_plan(n, batch_size=batch, seed=7, epoch=e) for e in range(20)]
    sizes = np.array([len(b) for plan in plans for b in plan])
    assert len(plans[0]) == n // batch  # ceil(n / batch) steps per epoch
    assert abs(sizes.mean() - batch) < 2.0  # 400 draws of Binomial(1000, 0.05): sd of the mean ~0.34
    assert sizes.std() > 1  # sizes vary: these are not fixed batches
    assert all(0 <= i < n for plan in plans for b in plan for i in b)
    assert all(b == sorted(set(b)) for b in plans[0])  # no image twice in a step
    assert poisson_plan(n, batch_size=batch, seed=7, epoch=3) == plans[3]
    assert poisson_plan(n, batch_size=batch, seed=8, epoch=3) != plans[3]
    assert plans[4] != plans[3]


def test_batchnorm_to_groupnorm_leaves_no_batchnorm_and_keeps_the_output() -> None:
    import torch

    from duet.training.models import batchnorm_to_groupnorm, build

    model = build("test_resnet", 3, image_size=16)
    before = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert before > 0
    assert batchnorm_to_groupnorm(model) == before
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    x = torch.rand(2, 3, 16, 16)
    assert model.eval()(x).shape == (2, 3)

    built = build("test_resnet", 3, image_size=16, norm="group")  # what a DP run trains
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in built.modules())
    assert not any(getattr(m, "inplace", False) is True for m in built.modules())
    assert built.eval()(x).shape == (2, 3)


def test_refusals_name_each_setting_that_breaks_the_guarantee(tmp_path: Path) -> None:
    from duet.training.config import TrainConfig
    from duet.training.privacy import refusals

    def config(**kw: Any) -> TrainConfig:
        return TrainConfig.model_validate({"data_dir": tmp_path, "dp": {"epsilon": 8}, **kw})

    assert refusals(config()) == []
    assert refusals(config(class_weights="auto", ema=True)) == []  # auto is off under DP; EMA is post-processing
    cases: dict[str, dict[str, Any]] = {
        "mixup": {"mixup": 0.2},
        "cutmix": {"cutmix": 1.0},
        "class_weights": {"class_weights": "on"},
        "grad_clip": {"grad_clip": 1.0},
        "precision": {"precision": "bf16"},
        "freeze_epochs": {"weights": "imagenet", "freeze_epochs": 1},
    }
    for needle, kw in cases.items():
        (problem,) = refusals(config(**kw))
        assert needle in problem, (needle, problem)
    assert refusals(config(weights="imagenet", freeze_epochs=0)) == []
    (problem,) = refusals(config(), world=2)
    assert "torchrun" in problem
    everything = config(mixup=0.2, class_weights="on", grad_clip=1.0, precision="bf16")
    assert len(refusals(everything, world=2)) == 5


@pytest.mark.e2e
def test_every_planned_step_is_counted_even_with_one_image_batches(tmp_path: Path, dp_setup: dict[str, Any]) -> None:
    """At batch size 2 of ~63 images a quarter of the Poisson steps take one image
    (or none): each must reach the accountant, or the ε reported is below the ε spent."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 1, "batch_size": 2, "dp": {"epsilon": EPSILON}}))
    proc = run_cli(*_train_args(dp_setup["data"], cfg, tmp_path / "runs", "small-batches"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    privacy = json.loads(proc.stdout)["privacy"]
    assert privacy["steps"] == privacy["planned_steps"] > 20
    assert EPSILON - 0.05 < privacy["epsilon"] <= EPSILON + 1e-6  # the planned steps spend the budget
