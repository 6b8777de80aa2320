"""`duet bench`: the commands run end to end and report every row (speed itself is
proven in docs/benchmarks.md, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli


@pytest.mark.e2e
def test_sample_data_is_reproducible(tmp_path: Path) -> None:
    for out in ("a", "b"):
        proc = run_cli("bench", "sample-data", str(tmp_path / out), "--count", "12", "--classes", "3")
        assert proc.returncode == 0, proc.stderr
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(a) == 12 and len({p.parent for p in a}) == 3
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in a)


@pytest.mark.e2e
def test_bench_data_reports_every_pipeline_on_the_same_files(tmp_path: Path) -> None:
    assert run_cli("bench", "sample-data", str(tmp_path / "d"), "--count", "24", "--classes", "2").returncode == 0
    proc = run_cli(
        "bench",
        "data",
        str(tmp_path / "d"),
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--workers",
        "1",
        "--later-epochs",
        "1",
        "--no-tf",
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    names = [r["name"] for r in result["rows"]]
    assert names == [
        "torchvision ImageFolder + DataLoader",
        'duet "torch"',
        'duet "cache", first epoch (build included)',
        'duet "cache", later epochs',
    ]
    assert all(r["images"] == 24 and r["images_per_s"] > 0 for r in result["rows"])
    assert result["rows"][0]["vs_imagefolder"] == 1.0
    assert {"date", "machine", "torch"} <= set(result["environment"])


@pytest.mark.e2e
def test_bench_data_on_too_few_images_says_its_ratios_are_noise(tmp_path: Path) -> None:
    """24 images finish every row in well under a second: the numbers are printed
    but flagged, in the JSON, the table and on stderr, never passed off as a speed-up."""
    assert run_cli("bench", "sample-data", str(tmp_path / "d"), "--count", "24", "--classes", "2").returncode == 0
    args = [
        "bench",
        "data",
        str(tmp_path / "d"),
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--workers",
        "1",
        "--later-epochs",
        "1",
        "--no-tf",
        "--quiet",
    ]
    as_json = run_cli(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    warnings = json.loads(as_json.stdout)["warnings"]
    assert len(warnings) == 1 and 'duet "cache", later epochs' in warnings[0] and "sample-data" in warnings[0]
    table = run_cli(*args)
    assert table.returncode == 0, table.stderr
    assert "noise, not a measurement" in table.stdout
    assert "warning:" in table.stderr and "under 1 s on 24 images" in table.stderr


@pytest.mark.e2e
def test_bench_train_reports_the_limit_in_fp32_and_bf16_beside_end_to_end(tmp_path: Path) -> None:
    """bf16 autocast runs on any CPU (emulated where not native, only slower): both
    limits are measured, and each end-to-end row is judged against the limit of
    its own precision and against the fp32 one."""
    assert run_cli("bench", "sample-data", str(tmp_path / "d"), "--count", "16", "--classes", "2").returncode == 0
    proc = run_cli(
        "bench",
        "train",
        str(tmp_path / "d"),
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--workers",
        "1",
        "--precision",
        "bf16",
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    rows = result["rows"]
    assert [(r["name"].split(" (")[0], r["precision"]) for r in rows] == [
        ("synthetic tensors on the device", "fp32"),
        ("synthetic tensors on the device, bf16 autocast", "bf16"),
        ('duet "cache" end to end', "bf16"),
        ('duet "torch" end to end', "bf16"),
        ("torchvision ImageFolder + DataLoader end to end", "bf16"),
    ]
    assert all(r["images"] == 8 and r["first_step_s"] > 0 for r in rows)
    assert rows[0]["vs_synthetic"] == 1.0 and rows[1]["vs_synthetic"] == 1.0 and rows[0]["vs_fp32_limit"] == 1.0
    fp32_limit, bf16_limit = rows[0]["images_per_s"], rows[1]["images_per_s"]
    for r in rows[2:]:
        assert abs(r["vs_synthetic"] - r["images_per_s"] / bf16_limit) < 1e-9
        assert abs(r["vs_fp32_limit"] - r["images_per_s"] / fp32_limit) < 1e-9
    assert [(r["precision"], r["images"]) for r in result["inference"]] == [("fp32", 8), ("bf16", 8)]
    assert result["precision"]["asked"] == "bf16" and result["precision"]["end_to_end"] == "bf16"
    assert result["precision"]["reason"].startswith("bf16: asked for")
    assert "AVX-512-BF16" in result["environment"]["cpu capabilities"]


@pytest.mark.e2e
def test_bench_train_table_shows_the_precision_ratio_and_the_capabilities(tmp_path: Path) -> None:
    assert run_cli("bench", "sample-data", str(tmp_path / "d"), "--count", "8", "--classes", "2").returncode == 0
    proc = run_cli(
        "bench",
        "train",
        str(tmp_path / "d"),
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--workers",
        "1",
        "--precision",
        "fp32",
        "--no-imagefolder",
        "--no-inference",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert '| duet "cache" end to end (fp32) |' in proc.stdout and "| vs fp32 limit |" in proc.stdout
    assert "| training images/s (AdamW step) |" in proc.stdout and "inference images/s" not in proc.stdout
    machine = next(line for line in proc.stdout.splitlines() if line.startswith("machine: "))
    assert "AMX " in machine and "AVX-512-BF16 " in machine and "VNNI " in machine


def test_cpu_capabilities_are_booleans_and_a_name(tmp_path: Path) -> None:
    from duet.system.cpu_caps import cpu_capabilities, summary

    caps = cpu_capabilities()
    assert isinstance(caps["cpu"], str) and caps["cpu"]
    assert all(isinstance(caps[k], bool) for k in ("amx", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2"))
    # A Sapphire Rapids line (flags trimmed), then a machine without /proc/cpuinfo.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\n"
    )
    spr = cpu_capabilities(cpuinfo)
    assert spr["cpu"] == "Intel(R) Xeon(R) Platinum 8480+" and spr["amx"] and not spr["avx512_bf16"]
    assert summary(spr) == "AMX yes, AVX-512-BF16 no, VNNI yes" + (
        f" (torch {spr['torch_capability']})" if spr["torch_capability"] else ""
    )
    bare = cpu_capabilities(tmp_path / "missing")
    assert not (bare["amx"] or bare["avx512_bf16"] or bare["avx512_vnni"]) and bare["cpu"]
