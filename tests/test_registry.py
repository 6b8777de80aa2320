"""The model registry: versions, an atomically switched champion pointer,
promote/rollback through the CLI, and the watcher a server polls."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from duet.artifacts.registry import HISTORY_KEPT, ChampionWatcher, Registry, RegistryError
from duet.training.config import build_config
from duet.training.loop import train
from helpers import run_cli, write_digit_folder

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real (tiny) runs: digits 0 and 1, 12 images each, one epoch, different seeds."""
    base = tmp_path_factory.mktemp("registry-runs")
    data = write_digit_folder(base / "data", classes=(0, 1), per_class=12, size=16)
    made = []
    for seed in (0, 1):
        cfg = build_config(
            None,
            {
                "data_dir": data,
                "model": "test_resnet",
                "image_size": 16,
                "batch_size": 8,
                "epochs": 1,
                "workers": 0,
                "seed": seed,
                "out": base / "runs",
                "name": f"r{seed}",
            },
        )
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
    _one_line_error(run_cli("registry", "rollback", "--registry", reg), 7, "nothing to roll back")
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
    _one_line_error(run_cli("registry", "promote", "v7", "--registry", reg), 7, "no version 'v7'")
    _one_line_error(run_cli("registry", "promote", str(tmp_path), "--registry", reg), 5, "not a duet run")
    _one_line_error(run_cli("registry", "rollback", "--registry", reg), 7, "no champion yet")
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


def _killed_mid_training(tmp_path: Path) -> Path:
    """A real `duet train` SIGKILLed once its first epoch is written (best weights
    and run.json), with 200 epochs to go: what `kill -9` during a retrain leaves."""
    data = write_digit_folder(tmp_path / "data", classes=(0, 1), per_class=12, size=16)
    run = tmp_path / "runs" / "cut"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "duet",
            "train",
            str(data),
            "--model",
            "test_resnet",
            "--image-size",
            "16",
            "--batch-size",
            "8",
            "--epochs",
            "200",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "runs"),
            "--name",
            "cut",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            info = run / "run.json"
            if info.is_file() and json.loads(info.read_text()).get("best", {}).get("epochs_done"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
        assert (run / "checkpoints" / "best.safetensors").is_file(), "no first epoch within 180 s"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return run


def test_a_run_killed_mid_training_is_refused_unless_forced(tmp_path: Path) -> None:
    run = _killed_mid_training(tmp_path)
    reg = str(tmp_path / "registry")
    _one_line_error(run_cli("registry", "promote", str(run), "--registry", reg), 5, "did not finish training")
    assert not (tmp_path / "registry" / "champion.json").exists()
    assert not list((tmp_path / "registry" / "versions").glob("v*.json"))  # not even registered

    forced = run_cli("registry", "promote", str(run), "--registry", reg, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["champion"] == "v1"
    assert "did not finish training" in forced.stderr and "--force" in forced.stderr
    record = Registry(reg).get("v1").record
    assert record["training"]["finished"] is False and record["training"]["forced"] is True
    assert record["training"]["epochs"] == 200 and 1 <= record["training"]["epochs_done"] < 200
    register, promote = Registry(reg).events()
    assert register["event"] == "register" and register["forced"].startswith("unfinished run")
    assert promote["event"] == "promote" and promote["forced"].startswith("unfinished run")
    # Once registered (forced), the version itself is still refused without --force.
    second = Registry(tmp_path / "registry2")
    second.register(run, force=True)
    refused = run_cli("registry", "promote", "v1", "--registry", str(second.root))
    _one_line_error(refused, 5, "before its training finished")


def test_a_finished_run_records_that_it_finished(runs: tuple[Path, Path], tmp_path: Path) -> None:
    version = Registry(tmp_path / "registry").register(runs[0])
    assert version.record["training"] == {
        "finished": True,
        "epochs_done": 1,
        "epochs": 1,
        "stopped_early": False,
        "forced": False,
    }
    assert version.unfinished == ""


def test_a_run_killed_between_its_last_checkpoint_and_run_json_is_caught_up_by_resume(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The narrow window: the last epoch's checkpoint is saved, run.json (and the profile) are
    not yet rewritten. The registry refuses such a run; `duet train --resume` says the run is
    finished and brings its records up to the checkpoint, after which it can be promoted."""
    run = tmp_path / "r"
    shutil.copytree(runs[0], run)
    info = json.loads((run / "run.json").read_text())
    info["best"]["epochs_done"] = 0  # as the kill leaves it: the final epoch not yet recorded
    (run / "run.json").write_text(json.dumps(info))
    shutil.rmtree(run / "profile", ignore_errors=True)
    registry = str(tmp_path / "registry")
    _one_line_error(run_cli("registry", "promote", str(run), "--registry", registry), 5, "--force")
    resumed = run_cli("train", "--resume", str(run))
    _one_line_error(resumed, 5, "already finished")
    assert "brought up to date" in resumed.stderr
    assert json.loads((run / "run.json").read_text())["best"]["epochs_done"] == 1
    assert (run / "profile" / "profile.json").is_file()
    promoted = run_cli("registry", "promote", str(run), "--registry", registry)
    assert promoted.returncode == 0, promoted.stderr


def test_temp_files_a_killed_writer_left_are_removed_by_the_next_writer(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    reg = Registry(tmp_path / "registry")
    reg.promote(runs[0])
    # What SIGKILL between mkstemp and os.replace leaves (the names write_json_atomic uses).
    stray = [reg.root / ".champion.json.k1ll3d.tmp", reg.versions_dir / ".v2.json.k1ll3d.tmp"]
    for path in stray:
        path.write_text('{"version": "v')
    reg.promote(runs[1])
    assert not any(p.exists() for p in stray)
    assert sorted(p.name for p in reg.root.iterdir()) == [".lock", "champion.json", "events.jsonl", "versions"]
    assert sorted(p.name for p in reg.versions_dir.iterdir()) == ["v1.json", "v2.json"]


def test_every_pointer_a_reader_sees_is_already_in_the_event_log(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """The promote/rollback event is written (and fsynced) before the pointer moves:
    readers that read the pointer and then the log never find a switch missing
    from the log, over 150 switches."""
    reg = Registry(tmp_path / "registry")
    v1, v2 = reg.register(runs[0]).version, reg.register(runs[1]).version
    reg.promote(v1)
    stop = threading.Event()
    missing: list[int] = []
    errors: list[BaseException] = []
    checks = [0]

    def read() -> None:
        reader = Registry(reg.root)
        try:
            while not stop.is_set():
                seq = reader.champion_pointer().seq
                # events() while the writer appends: a half-written line must not be read
                logged = {e.get("seq") for e in reader.events() if e["event"] in ("promote", "rollback")}
                checks[0] += 1
                if seq not in logged:
                    missing.append(seq)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for _ in range(75):
            reg.promote(v2)
            reg.rollback()
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not errors, errors[:1]
    assert checks[0] > 50 and not missing, (checks[0], missing[:5])
    assert reg.champion_pointer().seq == 151


def test_a_damaged_event_line_is_skipped_not_fatal(runs: tuple[Path, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.promote(reg.register(runs[0]).version)
    with reg.events_file.open("a", encoding="utf-8") as f:
        f.write('{"event": "promote", "seq"\n')  # cut off by a crash, then appended after
    reg.promote(reg.register(runs[1]).version)
    with reg.events_file.open("a", encoding="utf-8") as f:
        f.write('{"event": "prom')  # being appended right now: no newline yet
    events = reg.events()
    assert [e["event"] for e in events].count("promote") == 2 and events[-1]["seq"] == 2


def test_a_switch_logged_but_never_made_is_marked_by_the_next_writer(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL after the event line and before the rename: the log says seq 2 went
    to v2, the pointer still says seq 1, v1. The next writer records that the
    switch did not happen, then makes its own switch with seq 2."""
    reg = Registry(tmp_path / "registry")
    v1, v2 = reg.register(runs[0]).version, reg.register(runs[1]).version
    reg.promote(v1)
    reg.log("promote", durable=True, version=v2, previous=v1, seq=2, reason="")  # the killed writer's line
    assert reg.champion_pointer().seq == 1
    reg.promote(v2, reason="again")
    tail = [(e["event"], e.get("version"), e.get("seq")) for e in reg.events()[-3:]]
    assert tail == [("promote", v2, 2), ("switch_interrupted", v2, 2), ("promote", v2, 2)]
    assert reg.events()[-2]["champion"] == v1
    reg.rollback()
    assert [e["event"] for e in reg.events()].count("switch_interrupted") == 1  # marked once, not at every write


def test_champion_history_keeps_the_last_50_and_the_log_keeps_all(runs: tuple[Path, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    v1, v2 = reg.register(runs[0]).version, reg.register(runs[1]).version
    for i in range(HISTORY_KEPT + 10):
        reg.promote(v1 if i % 2 == 0 else v2)
    pointer = reg.champion_pointer()
    assert HISTORY_KEPT == 50 and len(pointer.history) == HISTORY_KEPT and pointer.seq == HISTORY_KEPT + 10
    assert len(json.loads(reg.pointer.read_text())["history"]) == HISTORY_KEPT
    assert len([e for e in reg.events() if e["event"] == "promote"]) == HISTORY_KEPT + 10
    assert reg.rollback().version == pointer.history[-1]
