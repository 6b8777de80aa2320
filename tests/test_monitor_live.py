"""Live monitoring end to end: a real `duet serve` of the digits champion is fed
clean, then shifted traffic; its /metrics are scraped and the series go through
deploy/prometheus/drift_rules.yml with promtool, so the alert rules are tested
on what the server really exports (not on hand-written numbers).

Shifted traffic: 60 inverted digits (white on black) and 40 crops of photos,
all unlike the reference profile; clean traffic: 100 unseen digits.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from duet.bench.shifts import write_photos
from helpers import run_cli
from serve_support import metric_value, running_server

pytestmark = pytest.mark.e2e  # trains, serves or runs the CLI in a subprocess

RULES = Path(__file__).parents[1] / "deploy" / "prometheus" / "drift_rules.yml"
WINDOW = 100
ALERTS = ("DuetInputDrift", "DuetEmbeddingDriftSevere", "DuetOutlierInputs", "DuetEstimatedAccuracyDrop")
SCRAPED = ("duet_drift_", "duet_estimated_accuracy", "duet_reference_accuracy")


@pytest.fixture(scope="module")
def live(digits_champion: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run, pool = digits_champion
    base = tmp_path_factory.mktemp("live")
    proc = run_cli("export", str(run), "--out", str(base / "export"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    files = sorted(pool.rglob("*.png"))
    pick = np.random.default_rng(3).permutation(len(files))
    clean = [files[i] for i in pick[:WINDOW]]
    shifted = []
    for i in pick[WINDOW : WINDOW + 60]:
        dest = base / "shifted" / f"inverted_{i}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(files[i]) as img:
            Image.fromarray(255 - np.asarray(img.convert("RGB"))).save(dest)
        shifted.append(dest)
    shifted += write_photos(base / "shifted", WINDOW - 60, 16, seed=0)
    return {"export": base / "export", "clean": clean, "shifted": shifted, "base": base}  # type: ignore[dict-item]


def _feed(url: str, paths: list[Path]) -> list[dict]:
    """POST the images 10 per request; returns the predictions with their outlier fields."""
    out = []
    for i in range(0, len(paths), 10):
        chunk = paths[i : i + 10]
        r = httpx.post(
            f"{url}/v1/predict",
            params={"outliers": "true"},
            timeout=30,
            files=[("file", (p.name, p.read_bytes(), "image/png")) for p in chunk],
        )
        assert r.status_code == 200, r.text
        out += r.json()["predictions"]
    return out


def _scrape_after(url: str, images: int = WINDOW) -> str:
    """/metrics once a verdict was computed entirely after the feed (call it right after feeding):
    two more evaluations, the first of which may have begun before the last request."""
    evaluations_before = metric_value(httpx.get(f"{url}/metrics").text, "duet_drift_evaluations_total")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics").text
        if (
            metric_value(text, "duet_drift_evaluations_total") >= evaluations_before + 2
            and metric_value(text, "duet_drift_window_images") == images
        ):
            return text
        time.sleep(0.2)
    pytest.fail(f"no drift verdict on {images} images within 30 s")


def _firing(scrape: str, tmp: Path) -> set[str]:
    """Alerts of drift_rules.yml firing after the scraped values held for an hour (promtool test rules)."""
    series = []
    for line in scrape.splitlines():
        if line.startswith(SCRAPED) and not line.startswith("duet_drift_evaluations_created"):
            head, _, value = line.rpartition(" ")
            name, _, labels = head.partition("{")
            labels = labels.rstrip("}")
            extra = 'job="duet",instance="a:8000"'
            series.append({"series": f"{name}{{{labels + ',' if labels else ''}{extra}}}", "values": f"{value}x70"})
    # The rules as shipped, annotations left out (their text is tested in drift_rules_test.yml).
    groups = yaml.safe_load(RULES.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp / "rules.yml").write_text(yaml.safe_dump(groups))
    firing = set()
    for alert in ALERTS:
        expected = {
            "rule_files": ["rules.yml"],
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": series,
                    "alert_rule_test": [{"eval_time": "60m", "alertname": alert, "exp_alerts": []}],
                }
            ],
        }
        (tmp / "test.yml").write_text(yaml.safe_dump(expected))
        proc = subprocess.run(
            ["promtool", "test", "rules", "test.yml"], cwd=tmp, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:  # "expected no alerts" failed: the alert fires
            assert alert in proc.stdout + proc.stderr, proc.stdout + proc.stderr
            firing.add(alert)
    return firing


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
def test_shifted_traffic_raises_every_drift_alert_and_clean_traffic_none(live: dict, tmp_path: Path) -> None:
    with running_server(live["export"], tmp_path, "--drift-window", str(WINDOW), "--drift-interval", "0.3") as server:
        _feed(server.url, live["clean"][:20])  # fewer than a detector needs: "insufficient", never a green verdict
        early = _scrape_after(server.url, 20)
        assert httpx.get(f"{server.url}/v1/monitor").json()["status"] == "insufficient"
        assert metric_value(early, "duet_drift_insufficient") == 1 and metric_value(early, "duet_drift_detected") == 0
        clean = _feed(server.url, live["clean"][20:])
        calm = _scrape_after(server.url)
        verdict = httpx.get(f"{server.url}/v1/monitor").json()
        assert verdict["status"] == "no_drift", verdict["sentence"]
        assert verdict["accuracy_estimate"]["n"] == WINDOW and verdict["accuracy_estimate"]["caution"] is None
        assert not any(d["skipped"] for d in verdict["detectors"])  # embeddings come from the graph
        assert sum(p["outlier"]["flagged"] for p in clean) <= 3
        (tmp_path / "calm").mkdir()
        assert _firing(calm, tmp_path / "calm") == set()

        shifted = _feed(server.url, live["shifted"])
        alarm = _scrape_after(server.url)
        verdict = httpx.get(f"{server.url}/v1/monitor").json()
    assert verdict["status"] == "drift", verdict["sentence"]
    assert "too optimistic" in verdict["accuracy_estimate"]["caution"]  # no false comfort from the estimate
    photos = [p for p in shifted if (p["file"] or "").startswith("photo_")]
    assert sum(p["outlier"]["flagged"] for p in photos) >= 0.9 * len(photos)
    assert metric_value(alarm, "duet_drift_score", detector="embedding") > 0.05
    assert metric_value(alarm, "duet_drift_outlier_rate") > 0.3
    high = metric_value(alarm, "duet_estimated_accuracy", bound="high")
    assert high < metric_value(alarm, "duet_reference_accuracy") - 0.05
    (tmp_path / "alarm").mkdir()
    assert _firing(alarm, tmp_path / "alarm") == set(ALERTS)
