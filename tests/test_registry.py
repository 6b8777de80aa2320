"""The model registry: versions, an atomically switched champion pointer,
promote/rollback through the CLI, and the watcher a server polls."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from helpers import run_cli, write_digit_folder

from duet.config import build_config
from duet.registry import ChampionWatcher, Registry, RegistryError
from duet.train.loop import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real (tiny) runs: digits 0 and 1, 12 images each, one epoch, different seeds."""
    base = tmp_path_factory.mktemp("registry-runs")
    data = write_digit_folder(base / "data", classes=(0, 1), per_class=12, size=16)
    made = []
    for seed in (0, 1):
        cfg = build_config(None, {"data_dir": data, "model": "test_resnet", "image_size": 16, "batch_size": 8,
                                  "epochs": 1, "workers": 0, "seed": seed, "out": base / "runs", "name": f"r{seed}"})
        made.append(train(cfg, progress=False, log=lambda _m: None).run_dir)
    return made[0], made[1]


def _one_line_error(proc, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, last


def test_promote_list_and_rollback_through_the_cli(runs: tuple[Path, Path], tmp_path: Path) -> None:
    reg = str(tmp_path / "registry")
    first = run_cli("registry", "promote", str(runs[0]), "--registry", reg, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["champion"] == "v1"
    second = run_cli("registry", "promote", str(runs[1]), "--registry", reg, "--json", "--reason", "better")
    assert json.loads(second.stdout) == {"champion": "v2", "seq": 2, "run": str(runs[1].resolve()), "history": ["v1"]}

    listed = json.loads(run_cli("registry", "list", "--registry", reg, "--json").stdout)
    assert [v["version"] for v in listed["versions"]] == ["v1", "v2"]
    assert listed["champion"]["version"] == "v2" and listed["champion"]["history"] == ["v1"]
    assert listed["versions"][0]["labels"] == ["0", "1"] and len(listed["versions"][0]["weights_sha256"]) == 64
    table = run_cli("registry", "list", "--registry", reg)
    assert "v1" in table.stdout and "v2" in table.stdout and "champion: v2" in table.stdout

    back = run_cli("registry", "rollback", "--registry", reg, "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["champion"] == "v1"
    _one_line_error(run_cli("registry", "rollback", "--registry", reg), 6, "nothing to roll back")
    again = run_cli("registry", "promote", "v2", "--registry", reg, "--json")
    assert json.loads(again.stdout)["champion"] == "v2"

    events = [json.loads(line) for line in (tmp_path / "registry" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["register", "promote", "register", "promote", "rollback", "promote"]


def test_registering_the_same_run_twice_gives_the_same_version(runs: tuple[Path, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    assert reg.register(runs[0]).version == "v1"
    assert reg.register(runs[0]).version == "v1"
    assert reg.get(runs[0]).version == reg.get("1").version == "v1"
    assert reg.champion() is None


def test_unknown_versions_and_non_runs_are_one_line_errors(runs: tuple[Path, Path], tmp_path: Path) -> None:
    reg = str(tmp_path / "registry")
    _one_line_error(run_cli("registry", "promote", "v7", "--registry", reg), 6, "no version 'v7'")
    _one_line_error(run_cli("registry", "promote", str(tmp_path), "--registry", reg), 5, "not a duet run")
    _one_line_error(run_cli("registry", "rollback", "--registry", reg), 6, "no champion yet")
    empty = run_cli("registry", "list", "--registry", reg)
    assert empty.returncode == 0 and "empty" in empty.stdout


def test_champion_pointer_switches_atomically_under_concurrent_readers(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Two writer threads flip the champion 2 x 100 times while readers parse the pointer
    file in a loop: every read is a complete, valid pointer, and no switch is lost."""
    reg = Registry(tmp_path / "registry")
    v1, v2 = reg.register(runs[0]).version, reg.register(runs[1]).version
    reg.promote(v1)
    stop = threading.Event()
    seen: set[str] = set()
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                doc = json.loads(reg.pointer.read_text())
                seen.add(doc["version"])
            except Exception as e:  # any partial file would land here
                problems.append(repr(e))

    def write(n: int) -> None:
        for i in range(n):
            try:
                reg.promote(v2 if i % 2 == 0 else v1)
            except Exception as e:
                problems.append(repr(e))

    readers = [threading.Thread(target=read) for _ in range(3)]
    writers = [threading.Thread(target=write, args=(100,)) for _ in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not problems, problems[:3]
    assert seen <= {v1, v2} and seen
    promotions = [e for e in reg.events() if e["event"] == "promote"]
    assert reg.champion_pointer().seq == len(promotions)  # every switch counted exactly once
    assert sorted(p.name for p in reg.root.iterdir()) == [".lock", "champion.json", "events.jsonl", "versions"]


def test_watcher_reports_each_new_champion_once(runs: tuple[Path, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    watcher = ChampionWatcher(reg)
    assert watcher.poll() is None  # no pointer yet
    reg.promote(runs[0])
    first = watcher.poll()
    assert first is not None and first.version == "v1" and first.run == runs[0].resolve()
    assert watcher.poll() is None
    reg.promote(runs[1])
    assert watcher.poll().version == "v2"
    assert watcher.poll() is None
    reg.rollback()
    assert watcher.poll().version == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback(to="v2")
