"""`duet predict` over a folder: batched JSON lines that equal the per-file results,
resumable after a real SIGTERM / SIGKILL, shardable, and unreadable files listed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from duet.api.batch_predict import list_files, parse_shard, read_done
from duet.errors import ConfigError
from helpers import one_line_error, run_cli, write_digit_folder


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _by_file(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    files = [r["file"] for r in results]
    assert len(files) == len(set(files)), "a file is answered twice"
    return {r["file"]: r for r in results}


def _assert_same(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]], tol: float) -> None:
    assert got.keys() == want.keys()
    for f, w in want.items():
        g = got[f]
        if "error" in w:
            assert g == w
            continue
        assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]], f
        for a, b in zip(g["top"], w["top"]):
            assert abs(a["probability"] - b["probability"]) <= tol, (f, a, b)
        assert g["runtime"] == w["runtime"]


# --------------------------------------------------------------------------- fast: shards and the resume file


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 files named like images (listing and sharding never open them)."""
    root = tmp_path_factory.mktemp("shards")
    for c in range(4):
        (root / str(c)).mkdir()
        for i in range(25):
            (root / str(c) / f"{i:04d}.png").write_bytes(b"")
    return root


def test_shards_cover_every_file_once_and_do_not_move_when_files_are_added(folder: Path, tmp_path: Path) -> None:
    everything = [i.path for i in list_files([folder])]
    shards = [[i.path for i in list_files([folder], parse_shard(f"{k}/3"))] for k in range(3)]
    assert sorted(p for s in shards for p in s) == everything  # union = all, and no file twice
    assert all(15 <= len(s) <= 60 for s in shards), [len(s) for s in shards]  # a hash split, not all in one
    # The key is the path under the folder given: the same split from another mount point.
    moved = tmp_path / "elsewhere"
    os.symlink(folder, moved)
    assert [i.path.relative_to(moved) for i in list_files([moved], parse_shard("1/3"))] == [
        p.relative_to(folder) for p in shards[1]
    ]


@pytest.mark.parametrize("bad", ["3/3", "0/0", "-1/2", "1", "a/b", "1/2/3"])
def test_a_bad_shard_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(bad)


def test_the_torn_last_line_is_cut_and_complete_lines_are_kept_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    kept = b'{"file":"a.png","top":[{"label":"0","probability":1.0}],"runtime":"r"}\n{"file":"b.png","error":"x"}\n'
    out.write_bytes(kept + b'{"file":"c.png","top":[{"lab')
    done = read_done(out)
    assert sorted(done) == ["a.png", "b.png"] and done["b.png"]["error"] == "x"
    assert out.read_bytes() == kept


def test_a_file_that_is_not_predict_output_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "notes.jsonl"
    out.write_bytes(b'{"file":"a.png","error":"x"}\nmy own notes\npartial')
    with pytest.raises(ConfigError, match="line 2 is not a `duet predict` result"):
        read_done(out)
    assert out.read_bytes() == b'{"file":"a.png","error":"x"}\nmy own notes\npartial'


# --------------------------------------------------------------------------- e2e: the real CLI


def _per_file(model: Path, files: list[Path], top: int) -> dict[str, dict[str, Any]]:
    """The results as `duet predict` computed them before batching: one file at a time, through
    the exported format's own runtime (the server's image preparation) or ``predict_file``."""
    import torch

    from duet.api.batch_predict import batch_model
    from duet.api.exported import open_format, resolve_target
    from duet.artifacts.run_dir import load_run
    from duet.data.imageio import DEFAULT_MAX_PIXELS
    from duet.evaluation.inference import load_model, predict_file, top_k
    from duet.serve.images import pixels_from_bytes
    from duet.training.precision import recorded_or

    target = resolve_target(model)
    if target.format is None:
        info, cpu = load_run(model), torch.device("cpu")
        net, precision = load_model(info, cpu), recorded_or(None, info.precision, cpu)
        labels = list(info.labels)

        def probabilities(f: Path) -> Any:
            return predict_file(net, info, f, cpu, DEFAULT_MAX_PIXELS, precision=precision)
    else:
        opened = open_format(target)
        labels = opened.package.labels

        def probabilities(f: Path) -> Any:
            pixels = pixels_from_bytes(f.read_bytes(), opened.package.spec, DEFAULT_MAX_PIXELS)
            return opened.probabilities(pixels[None])[0]

    runtime = batch_model(target, device="cpu").runtime
    return {str(f): {"file": str(f), "top": top_k(probabilities(f), labels, top), "runtime": runtime} for f in files}


@pytest.mark.e2e
@pytest.mark.parametrize("which", ["export", "run"])
def test_json_lines_equal_the_per_file_results(which: str, small_run: Path, small_export: Path, tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "d", classes=(0, 1, 7), per_class=12)
    model = small_export if which == "export" else small_run
    proc = run_cli("predict", str(model), str(data), "--json", "-k", "2", "--batch-size", "5", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    got = _lines(proc.stdout)
    files = sorted(data.rglob("*.png"))
    assert [r["file"] for r in got] == [str(f) for f in files]  # sorted order, one line each
    # ONNX Runtime gives the per-file numbers exactly; PyTorch's batched kernels within rounding.
    _assert_same(_by_file(got), _per_file(model, files, 2), 0.0 if which == "export" else 1e-5)


def _kill_after_lines(args: list[str], out: Path, lines: int, sig: int) -> None:
    """Start `duet predict ARGS`, and send ``sig`` once ``out`` holds ``lines`` lines (the run must still be going)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "duet", "predict", *args], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_file() and out.read_bytes().count(b"\n") >= lines):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no output in 120 s"
            time.sleep(0.002)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == -sig  # killed by the signal, not finished
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.e2e
def test_a_run_killed_twice_resumes_to_exactly_the_uninterrupted_output(small_export: Path, tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "d", classes=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9), per_class=40, size=16)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    total = 401
    whole, out = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    proc = run_cli("predict", str(small_export), str(data), "--output", str(whole), "-q")
    one_line_error(proc, 3, "1 of 401 files could not be read", str(whole))
    reference = _by_file(_lines(whole.read_text()))
    assert len(reference) == total and "error" in reference[str(data / "broken.png")]

    args = [str(small_export), str(data), "--output", str(out), "--batch-size", "2", "-q"]
    _kill_after_lines(args, out, 20, signal.SIGTERM)
    first = out.read_bytes()
    _kill_after_lines(args, out, first.count(b"\n") + 20, signal.SIGKILL)
    second = out.read_bytes()
    assert second.startswith(first[: first.rfind(b"\n") + 1])  # earlier lines never rewritten
    assert first.count(b"\n") < second.count(b"\n") < total  # each run did some, and was stopped early

    proc = run_cli("predict", *args)
    one_line_error(proc, 3, "1 of 401 files could not be read")  # the broken file counts on resume too
    _assert_same(_by_file(_lines(out.read_text())), reference, 1e-6)
    again = run_cli("predict", *args)  # all done: nothing appended
    assert again.returncode == 3 and len(_lines(out.read_text())) == total


@pytest.mark.e2e
def test_three_shards_written_to_three_files_cover_the_folder_once(small_export: Path, tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "d", classes=(0, 1, 7), per_class=20, size=16)
    seen: list[str] = []
    for k in range(3):
        out = tmp_path / f"part-{k}.jsonl"
        proc = run_cli("predict", str(small_export), str(data), "--shard", f"{k}/3", "--output", str(out))
        assert proc.returncode == 0, proc.stderr
        assert f"shard {k}/3" in proc.stderr and proc.stdout == ""
        seen += [r["file"] for r in _lines(out.read_text())]
    assert sorted(seen) == sorted(str(f) for f in data.rglob("*.png"))  # every file, exactly once
    one_line_error(run_cli("predict", str(small_export), str(data), "--shard", "3/3"), 2, "--shard", "3/3")


@pytest.mark.e2e
def test_a_few_files_print_readable_lines_and_unreadable_ones_are_listed(small_export: Path, tmp_path: Path) -> None:
    data = write_digit_folder(tmp_path / "d", classes=(7,), per_class=2)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    proc = run_cli("predict", str(small_export), str(data), str(bad), "-k", "1")
    one_line_error(proc, 3, "1 of 3 files could not be read")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("runtime: onnx on onnxruntime")
    assert [ln.split(": ")[0] for ln in lines[1:]] == [*(str(f) for f in sorted(data.rglob("*.png"))), str(bad)]
    assert "error" in lines[-1] and "%" in lines[1]
