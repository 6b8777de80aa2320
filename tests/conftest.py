"""Suite-wide settings: every decode cache inside pytest's temp folder, the two
tiers (`e2e` marks end-to-end tests; `slow` implies it) and the builders several
modules share (session-scoped where they train)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Subprocesses of the CLI inherit it, so nothing is written to ~/.cache.
    old = os.environ.get("DUET_CACHE_DIR")
    os.environ["DUET_CACHE_DIR"] = str(tmp_path_factory.mktemp("duet-cache"))
    yield
    if old is None:
        os.environ.pop("DUET_CACHE_DIR", None)
    else:
        os.environ["DUET_CACHE_DIR"] = old


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tell tests/helpers.py the tier of the test about to run (before its fixtures,
    which may build a trained run): run_cli and running_server refuse to run in a
    test without the e2e mark."""
    helpers.CURRENT_TEST.update(name=item.nodeid, e2e=item.get_closest_marker("e2e") is not None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` is an older name for the longest end-to-end tests: each is also e2e,
    so `pytest -m "not e2e"` never runs one."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def digits_champion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, pool)``: the champion of the drift, retrain and monitoring tests, trained
    once per session on 500 random digits and profiled (the recipe `duet bench monitor`
    measures), and the folder of the 1,297 digits it never saw. Shared read-only:
    a test that changes the run copies it first."""
    from duet.bench.monitor import digits_champion as build

    return build(tmp_path_factory.getbasetemp() / "digits-champion")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small trained run (3 digit classes, 24 px, one epoch) the export, quantize and
    serve tests share, trained once per session (tests/serve_support.py builds it).
    Read-only: a test that changes it copies it first."""
    from serve_support import shared_run

    return shared_run(tmp_path_factory)


@pytest.fixture(scope="session")
def small_export(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``small_run`` exported to RUN/export (once per session; read-only)."""
    from serve_support import shared_export

    return shared_export(tmp_path_factory)


@pytest.fixture(scope="session")
def small_tf_run(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``small_run`` exported with every format (`duet export --format all`:
    ONNX, SavedModel, TFLite fp32/fp16/int8), once per session; read-only. Skips
    where the tf extra (TensorFlow, LiteRT) is not installed."""
    pytest.importorskip("tensorflow", reason="the tf extra is not installed: pip install 'duet[tf]'")
    pytest.importorskip("ai_edge_litert", reason="the tf extra is not installed: pip install 'duet[tf]'")
    from serve_support import shared_tf_export

    return shared_tf_export(tmp_path_factory)
