"""The `duet` command's process tuning (duet/runtime.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from duet import runtime


def test_sleeping_openmp_is_the_default_and_an_explicit_setting_wins() -> None:
    env: dict[str, str] = {"DUET_NO_MALLOPT": "1"}
    runtime.tune_process(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE", "DUET_NO_MALLOPT": "1"}
    runtime.tune_process(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_tunes_before_torch_is_imported() -> None:
    """libgomp reads OMP_WAIT_POLICY when torch loads: record its value at the
    moment anything imports torch, in a fresh interpreter running the CLI module."""
    code = """
import os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Spy())
import duet.cli
import torch
print(seen["torch"])
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
