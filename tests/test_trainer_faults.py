"""The training loop's fault handling (duet.training.faults), unit by unit, and the
fault injector that tests supply: never a setting of a user's config."""

from __future__ import annotations

import inspect
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from duet.errors import ConfigError, DataError, Interrupted, TrainingDiverged
from duet.training import loop
from duet.training.config import TrainConfig, build_config
from duet.training.faults import (
    FaultPlan,
    Injector,
    count_bad_step,
    count_load_failures,
    interrupted,
    step_with_oom_retry,
    stop_signals,
)
from duet.training.state import LoopState
from duet.training.step import StepResult


def test_inject_faults_in_a_user_config_is_an_unknown_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"inject_faults": {"nan": [1]}}))
    with pytest.raises(ConfigError) as e:
        build_config(cfg, {"data_dir": str(tmp_path)})
    message = str(e.value)
    assert message.startswith("unknown setting `inject_faults`")
    allowed = message.split("allowed: ", 1)[1]
    assert "inject_faults" not in allowed and "epochs" in allowed


def test_a_saved_config_has_no_test_hooks(tmp_path: Path) -> None:
    saved = build_config(overrides={"data_dir": str(tmp_path)}).to_yaml_dict()
    assert "inject_faults" not in saved and "inject_faults" not in TrainConfig.model_fields
    assert saved["epochs"] == 10  # the dump is the config.yaml a run writes


def test_train_and_resume_take_faults_only_by_keyword() -> None:
    for fn in (loop.train, loop.resume):
        param = inspect.signature(fn).parameters["faults"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None


def test_an_injected_out_of_memory_fires_once_then_the_nan() -> None:
    inject = Injector(FaultPlan(nan=[3], oom=[3]))
    x = torch.ones(4)
    with pytest.raises(torch.OutOfMemoryError):
        inject.apply(3, x)
    assert torch.isnan(inject.apply(3, x)).all()  # the retry of step 3 sees its NaN
    assert torch.equal(inject.apply(3, x), x)  # each fault once, also when a rollback replays the step
    assert torch.equal(inject.apply(4, x), x)


def test_out_of_memory_doubles_the_micro_batches_until_one_image_each() -> None:
    state, lines, tried = LoopState(), [], []

    def step(x: torch.Tensor, micro_batches: int) -> StepResult:
        tried.append(micro_batches)
        if micro_batches < 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return StepResult(1.0, True)

    result = step_with_oom_retry(step, torch.zeros(8, 3), state, Injector(), lines.append)
    assert result.stepped and tried == [1, 2, 4] and state.micro_batches == 4
    assert state.events == lines and "now 4 micro-batches of ~2 images" in lines[-1]

    def never(x: torch.Tensor, micro_batches: int) -> StepResult:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        step_with_oom_retry(never, torch.zeros(2, 3), LoopState(), Injector(), lines.append)


def test_non_finite_steps_roll_back_in_a_row_and_stop_the_run_past_the_limit(tmp_path: Path) -> None:
    config = TrainConfig(data_dir=tmp_path, rollback_after=2, max_bad_steps=3)
    last = tmp_path / "last.pt"
    state = LoopState()
    assert count_bad_step(state, config, last) is False
    assert count_bad_step(state, config, last) is False  # two in a row, but no checkpoint to go back to
    last.write_bytes(b"x")
    assert count_bad_step(state, config, last) is True
    with pytest.raises(TrainingDiverged, match=f"4 steps had a non-finite loss .*last good checkpoint is {last}"):
        count_bad_step(state, config, last)


def test_load_failures_are_recorded_and_stop_the_epoch_past_the_limit(tmp_path: Path) -> None:
    from duet.data.contract import Sample

    config = TrainConfig(data_dir=tmp_path, max_load_failures=0.1)
    samples = [Sample(tmp_path / f"{i}.png", 0) for i in range(20)]
    state = LoopState(epoch=2)
    count_load_failures(state, [0, 1], ["", "not an image"], samples, config)
    assert state.load_failures == [{"path": str(tmp_path / "1.png"), "reason": "not an image", "epoch": "2"}]
    count_load_failures(state, [2], ["truncated"], samples, config)  # 2 of 20: at the limit
    with pytest.raises(DataError, match="3 training images failed to load in epoch 2"):
        count_load_failures(state, [3], ["gone"], samples, config)


def test_sigterm_sets_the_stop_flag_and_the_old_handler_comes_back(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop == {"signal": "SIGTERM"}
    assert signal.getsignal(signal.SIGTERM) is before
    error = interrupted(stop, LoopState(epoch=3, step_in_epoch=5), tmp_path / "run")
    assert isinstance(error, Interrupted) and error.exit_code == 130
    assert str(error).endswith(f"Resume with: duet train --resume {tmp_path / 'run'}")
