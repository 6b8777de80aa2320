"""The two test tiers keep their promise: `pytest -m "not e2e"` never runs the CLI or
a server, because a test that asks for one without the e2e mark fails with the fix
(tests/helpers.py ``require_e2e``, told the tier by tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent


def _suite(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    """Run ``body`` as a test module under this suite's conftest and helpers."""
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    e2e: end-to-end\n    slow: implies e2e\n")
    pytester.makepyfile(test_inner=body)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")


def test_running_the_cli_without_the_e2e_mark_fails_and_says_how_to_mark_it(pytester: pytest.Pytester) -> None:
    result = _suite(
        pytester,
        "from helpers import run_cli\n\ndef test_unmarked():\n    run_cli('--version')\n",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked runs the CLI in a subprocess: mark it @pytest.mark.e2e*"])


def test_marked_and_slow_tests_may_run_the_cli_and_a_server(pytester: pytest.Pytester) -> None:
    result = _suite(
        pytester,
        "import pytest\nfrom helpers import require_e2e\n\n"
        "@pytest.mark.e2e\ndef test_marked():\n    require_e2e('runs the CLI')\n\n"
        "@pytest.mark.slow\ndef test_slow():\n    require_e2e('starts a server')\n\n"
        "def test_unmarked_unit():\n    assert 1 + 1 == 2\n",
    )
    result.assert_outcomes(passed=3)
    fast = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q", "-m", "not e2e")
    fast.assert_outcomes(passed=1, deselected=2)  # slow implies e2e
