"""deploy/prometheus: the alert rules parse, their promtool unit tests pass, and the
example scrape config is valid. Needs promtool (Debian: apt-get install prometheus)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).parents[1] / "deploy" / "prometheus"

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid() -> None:
    proc = _promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rules_unit_tests_pass() -> None:
    proc = _promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_scrape_config_is_valid() -> None:
    proc = _promtool("check", "config", "prometheus.example.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
