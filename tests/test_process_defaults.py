"""Process defaults duet sets for its users: ONNX Runtime telemetry off unless chosen, and
thread counts capped by a container's CPU quota (duet.system.process, duet.system.device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from duet.system.process import ORT_TELEMETRY_ENV, no_onnxruntime_telemetry


def test_it_is_set_only_when_the_user_did_not_choose() -> None:
    env: dict[str, str] = {}
    assert no_onnxruntime_telemetry(env) and env == {ORT_TELEMETRY_ENV: "1"}
    chosen = {ORT_TELEMETRY_ENV: "0"}
    assert not no_onnxruntime_telemetry(chosen) and chosen == {ORT_TELEMETRY_ENV: "0"}


def test_an_onnx_session_in_a_duet_process_writes_nothing_under_home(tmp_path: Path) -> None:
    """Measured with onnxruntime 1.32 on Linux: one session without the variable left
    a device id and a 1.1 MB event queue under ~/.cache/Microsoft."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != ORT_TELEMETRY_ENV} | {"HOME": str(home)}
    code = (
        "import duet, onnxruntime as ort; "
        f"ort.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider']).run(None, {{'x': __import__('numpy').ones(1, 'float32')}})"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert list(home.rglob("*")) == []


def test_a_containers_cpu_quota_caps_the_cpu_count(tmp_path: Path) -> None:
    """cgroup v2 cpu.max and v1 cfs files, as the kernel writes them."""
    from duet.system.device import cgroup_cpu_limit

    def v2(text: str) -> tuple[tuple[Path, ...], ...]:
        (tmp_path / "cpu.max").write_text(text)
        return ((tmp_path / "cpu.max"),), ((tmp_path / "absent"),)

    assert cgroup_cpu_limit(v2("200000 100000\n")) == 2
    assert cgroup_cpu_limit(v2("150000 100000\n")) == 2  # 1.5 CPUs: rounded up
    assert cgroup_cpu_limit(v2("50000 100000\n")) == 1
    assert cgroup_cpu_limit(v2("max 100000\n")) is None
    assert cgroup_cpu_limit(v2("garbage\n")) is None
    (tmp_path / "q").write_text("300000\n")
    (tmp_path / "p").write_text("100000\n")
    assert cgroup_cpu_limit(((tmp_path / "absent",), (tmp_path / "q", tmp_path / "p"))) == 3
    (tmp_path / "q").write_text("-1\n")
    assert cgroup_cpu_limit(((tmp_path / "q", tmp_path / "p"),)) is None
    assert cgroup_cpu_limit(((tmp_path / "absent",),)) is None


def test_a_swallowed_sigint_still_stops_training() -> None:
    """A SIGINT that an import swallowed (torch's, measured) is remembered by the CLI's handler,
    and the training loop's stop flag starts with it set: the run checkpoints and exits 130."""
    import signal

    import pytest

    from duet.system import process
    from duet.training.faults import stop_signals

    old = signal.getsignal(signal.SIGINT)
    try:
        process.remember_interrupts()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert process.pending_interrupt() == "SIGINT"
        with stop_signals() as stop:
            assert stop == {"signal": "SIGINT"}
    finally:
        process._interrupts.clear()
        signal.signal(signal.SIGINT, old)
    with stop_signals() as stop:
        assert stop == {}
