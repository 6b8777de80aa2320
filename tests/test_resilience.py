"""Training survives kills, signals, NaNs, out-of-memory and files that break mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import run_cli, write_digit_folder

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

BASE = ["--image-size", "20", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--seed", "5", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("res") / "d", classes=(3, 8), per_class=30)


def _config(tmp_path: Path, **settings: object) -> str:
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


# Faults are injected by the test, not by a user's config: a tiny program calls
# duet.training.loop.train(config, faults=...) in a fresh process, as `duet train` would.
_DRIVER = """
import json, sys
from duet.errors import DuetError
from duet.training.config import build_config
from duet.training.faults import FaultPlan
from duet.training.loop import train
settings, faults = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:
    result = train(build_config(overrides=settings), faults=FaultPlan(**faults), progress=False,
                   log=lambda line: print(line, file=sys.stderr))
except DuetError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
print(json.dumps({"events": result.events}))
"""


def _train_with_faults(
    data: Path, out: Path, faults: dict[str, list[int]], **settings: object
) -> subprocess.CompletedProcess[str]:
    """A real training process (BASE's settings) with ``faults`` injected at those global steps."""
    base = dict(image_size=20, batch_size=8, workers=0, device="cpu", seed=5)
    config = {"data_dir": str(data), "out": str(out), **base, **settings}
    return subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(config), json.dumps(faults)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _metrics(run: Path) -> list[tuple[int, float, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in rows]


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "duet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if not path.exists():
        proc.kill()
        pytest.fail(f"{path} never appeared: {proc.communicate()[1].decode()[-2000:]}")


def test_kill_and_signals_mid_epoch_resume_to_the_same_result(data: Path, tmp_path: Path) -> None:
    """SIGKILL (twice, mid-epoch) and SIGTERM, each followed by --resume, end with
    exactly the metrics of an uninterrupted run with the same seed."""
    cfg = _config(tmp_path, epochs=2, checkpoint_every=2)
    runs = tmp_path / "runs"
    common = ["train", str(data), "--config", cfg, "--out", str(runs), *BASE]
    assert run_cli(*common, "--name", "full").returncode == 0
    expected = _metrics(runs / "full")
    assert len(expected) == 2

    # SIGKILL as soon as the first (mid-epoch) checkpoint exists, then again during the resume.
    proc = _start([*common, "--name", "killed"])
    last = runs / "killed" / "checkpoints" / "last.pt"
    _wait_for(last, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_mtime = last.stat().st_mtime_ns
    proc = _start(["train", "--resume", str(runs / "killed"), "--quiet"])
    deadline = time.monotonic() + 120
    while last.stat().st_mtime_ns == first_mtime and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli("train", "--resume", str(runs / "killed"), "--quiet")
    if resumed.returncode != 0:
        assert "nothing to resume" in resumed.stderr, resumed.stderr
    assert _metrics(runs / "killed") == expected

    # SIGTERM: a checkpoint, exit 130 and the command that resumes.
    proc = _start([*common, "--name", "termed"])
    _wait_for(runs / "termed" / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 130:
        assert f"duet train --resume {runs / 'termed'}" in err.decode()
        assert run_cli("train", "--resume", str(runs / "termed"), "--quiet").returncode == 0
    else:  # the signal arrived after the last epoch: the run simply finished
        assert proc.returncode == 0, err.decode()
    assert _metrics(runs / "termed") == expected


def test_nan_losses_are_skipped_then_rolled_back_with_a_lower_lr(data: Path, tmp_path: Path) -> None:
    proc = _train_with_faults(
        data, tmp_path / "runs", {"nan": [7, 8, 9]}, name="nan", epochs=2, checkpoint_every=2, rollback_after=3
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert any("rolled back" in e and "x0.5" in e for e in summary["events"]), summary["events"]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["bad_steps"] for r in rows) >= 1
    assert all(r["train_loss"] == r["train_loss"] for r in rows)  # no NaN reached the metrics


def test_persistent_nan_stops_the_run_with_its_own_exit_code(data: Path, tmp_path: Path) -> None:
    proc = _train_with_faults(
        data, tmp_path / "runs", {"nan": list(range(50))}, epochs=2, max_bad_steps=4, rollback_after=100
    )
    assert proc.returncode == 6, proc.stderr  # TrainingDiverged
    assert "non-finite loss" in proc.stderr and "Traceback" not in proc.stderr


def test_out_of_memory_halves_the_micro_batch_and_finishes(data: Path, tmp_path: Path) -> None:
    proc = _train_with_faults(data, tmp_path / "runs", {"oom": [2]}, name="oom", epochs=1)
    assert proc.returncode == 0, proc.stderr
    assert any("2 micro-batches" in e for e in json.loads(proc.stdout)["events"])
    row = json.loads((tmp_path / "runs" / "oom" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["micro_batches"] == 2


def _interrupted_run(data: Path, runs: Path, name: str, **settings: object) -> Path:
    """A run SIGKILLed right after its first checkpoint (after one step), with epochs to go."""
    cfg = _config(runs.parent, epochs=3, data_backend="torch", checkpoint_every=1, **settings)
    proc = _start(["train", str(data), "--config", cfg, "--out", str(runs), "--name", name, *BASE])
    _wait_for(runs / name / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return runs / name


def _train_files(run: Path) -> list[str]:
    import csv

    with open(run / "manifest.csv", newline="") as f:
        return [r["path"] for r in csv.DictReader(f) if r["split"] == "train" and r["status"] == "ok"]


def test_file_that_breaks_mid_training_is_counted_not_fatal(tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "d", classes=(1, 7), per_class=30)
    run = _interrupted_run(data, tmp_path / "runs", "broken", max_load_failures=0.2)
    victim = _train_files(run)[0]
    (data / victim).write_bytes(b"broken after the scan")
    resumed = run_cli("train", "--resume", str(run), "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["load_failures"] >= 2  # once per remaining epoch at least
    info = json.loads((run / "run.json").read_text())
    assert any(f["path"].endswith(victim) and "not an image" in f["reason"] for f in info["best"]["load_failures"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["load_failures"] for r in rows) >= 2


def test_too_many_broken_files_stop_the_run_with_a_clear_error(tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "d", classes=(1, 7), per_class=20)
    run = _interrupted_run(data, tmp_path / "runs", "b")
    for rel in _train_files(run)[::2]:
        (data / rel).write_bytes(b"x")
    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 3, resumed.stderr
    assert "failed to load" in resumed.stderr and "Traceback" not in resumed.stderr


def test_early_stopping_ends_the_run_when_val_stops_improving(data: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, epochs=6, patience=1, lr=1e-9, warmup_epochs=0)
    proc = run_cli(
        "train", str(data), "--config", cfg, "--out", str(tmp_path / "runs"), "--name", "es", "--json", *BASE
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stopped_early"] is True
    assert len(_metrics(tmp_path / "runs" / "es")) < 6


def test_finetune_recipe_from_local_weights_with_ema(data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    base = run_cli("train", str(data), "--epochs", "1", "--out", str(runs), "--name", "base", *BASE)
    assert base.returncode == 0, base.stderr
    weights = runs / "base" / "checkpoints" / "best.safetensors"
    proc = run_cli(
        "train",
        str(data),
        "--weights",
        str(weights),
        "--epochs",
        "2",
        "--ema",
        "--out",
        str(runs),
        "--name",
        "ft",
        "--image-size",
        "20",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "recipe finetune: head only for 1 epoch(s)" in proc.stderr
    assert yaml.safe_load((runs / "ft" / "config.yaml").read_text())["ema"] is True


def test_lr_find_writes_a_plot_and_suggests_a_rate(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "lr.png"
    proc = run_cli(
        "lr-find",
        str(data),
        "--steps",
        "12",
        "--image-size",
        "20",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--out",
        str(out),
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 1e-7 <= result["suggestion"] <= 10
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out.with_suffix(".json").read_text())["suggestion"] == result["suggestion"]
    # The suggested command trains under the settings the curve was measured with.
    assert result["next"] == (f"duet train {data} --batch-size 8 --image-size 20 --lr {result['suggestion']:.1e}")


def test_resume_with_more_epochs_extends_a_finished_run(data: Path, tmp_path: Path) -> None:
    """--epochs with --resume is honoured, never ignored: more than done extends the
    run (finished or not), not more than done is refused, other flags are refused."""
    runs = tmp_path / "runs"
    assert run_cli("train", str(data), "--epochs", "2", "--out", str(runs), "--name", "r", *BASE).returncode == 0
    run = runs / "r"
    before = _metrics(run)
    plain = run_cli("train", "--resume", str(run))
    assert plain.returncode == 5 and f"duet train --resume {run} --epochs N (N > 2)" in plain.stderr, plain.stderr
    fewer = run_cli("train", "--resume", str(run), "--epochs", "2")
    assert fewer.returncode == 2 and "not more than the 2 epochs" in fewer.stderr, fewer.stderr
    other = run_cli("train", "--resume", str(run), "--epochs", "3", "--lr", "0.1", "--image-size", "32")
    assert other.returncode == 2 and "only --epochs can change. Remove: --lr --image-size" in other.stderr
    assert _metrics(run) == before  # refusals touched nothing

    more = run_cli("train", "--resume", str(run), "--epochs", "3", "--json")
    assert more.returncode == 0, more.stderr
    summary = json.loads(more.stdout)
    assert summary["epochs"] == 3 and any("epochs 2 -> 3 after epoch 2" in e for e in summary["events"])
    after = _metrics(run)
    assert after[:2] == before and [m[0] for m in after] == [1, 2, 3]
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 3
    info = json.loads((run / "run.json").read_text())
    assert info["best"]["epochs_done"] == 3
    assert any("re-planned for 3 epochs" in e for e in info["best"]["events"])


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(data: Path, tmp_path: Path) -> None:
    """torchrun, gloo on CPU, global batch 8 (2 processes x 4 vs 1 x 8), same seed.

    Each rank trains its slice of every global batch with the crops a single
    process would draw, so with a model without batch statistics (ConvNeXt uses
    LayerNorm) the two runs differ only by floating-point reduction order:
    losses within 1e-4, identical accuracy. (With BatchNorm, statistics are per
    process under DDP and results agree only approximately.)"""
    runs = tmp_path / "runs"
    args = [
        "-m",
        "duet",
        "train",
        str(data),
        "--epochs",
        "2",
        "--out",
        str(runs),
        "--model",
        "convnext_atto",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--seed",
        "5",
        "--quiet",
    ]
    for n, name in ((1, "one"), (2, "two")):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(n),
            *args,
            "--name",
            name,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _metrics(runs / "one"), _metrics(runs / "two")
    assert [m[0] for m in two] == [1, 2]
    for a, b in zip(one, two):
        assert abs(a[1] - b[1]) < 1e-4 and abs(a[2] - b[2]) < 1e-4 and a[3] == b[3], (one, two)
    assert not (runs / "two" / "checkpoints" / "last.pt.tmp").exists()
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]  # rank 1 wrote no run folder of its own
