"""`duet audit privacy`: the attacks' metrics on synthetic scores, and the audit end to end:
it must find the leak of an overfitted run and must not find one in a DP-SGD run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import beta

from duet.audit import membership
from duet.audit.privacy import AuditSet, _halves, _out_mask, audit_privacy
from duet.data.contract import Sample
from duet.errors import ConfigError
from helpers import one_line_error, run_cli, write_digit_folder

# ----------------------------------------------------------------- the metrics, on synthetic scores


def test_separable_scores_give_auc_1_and_a_high_epsilon_bound() -> None:
    rng = np.random.default_rng(0)
    members, non_members = rng.normal(10, 1, 200), rng.normal(0, 1, 200)
    m = membership.attack_metrics(members, non_members, delta=1e-5)
    assert m["auc"] == 1.0 and m["tpr_at_fpr"]["0.01"] == 1.0
    # All 200 members above all 200 non-members: TPR_lo = FNR... = 0.025^(1/200) by Clopper-Pearson.
    bound = 0.025 ** (1 / 200)
    assert m["epsilon_lb"] == pytest.approx(np.log((bound - 1e-5) / (1 - bound)), rel=1e-6)
    assert m["epsilon_lb"] > 3.5


def test_identical_distributions_give_auc_near_half_and_no_epsilon() -> None:
    rng = np.random.default_rng(1)
    m = membership.attack_metrics(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5)
    assert abs(m["auc"] - 0.5) < 0.03  # 3.3 standard errors (sd of the AUC under the null: 0.009)
    assert m["epsilon_lb"] < 0.15
    assert m["tpr_at_fpr"]["0.01"] < 0.03 and "0.001" in m["tpr_at_fpr"]  # >= 1000 non-members: 0.1 % too


def test_epsilon_bound_is_the_best_threshold_by_clopper_pearson() -> None:
    """60 of 100 members score above every non-member: that threshold proves the ε below."""
    members = np.repeat([9.0, 0.0], [60, 40])
    non_members = np.zeros(100)
    m = membership.epsilon_lower_bound(members, non_members, delta=1e-5)
    tpr_lo = beta.ppf(0.025, 60, 41)  # Clopper-Pearson, 95 % two-sided, of 60 / 100
    fpr_hi = 1 - 0.025 ** (1 / 100)  # of 0 / 100
    assert m["epsilon_lb"] == pytest.approx(np.log((tpr_lo - 1e-5) / fpr_hi))
    assert (m["true_positives"], m["false_positives"]) == (60, 0) and m["epsilon_lb"] > 2.5
    few = membership.epsilon_lower_bound(members[::10], non_members[::10], delta=1e-5)
    assert few["epsilon_lb"] == 0.0  # the same rates on 10 + 10 images prove nothing


def test_cross_entropy_stays_exact_for_a_confident_model() -> None:
    probs = np.array([[1 - 1e-9, 1e-9, 0.0], [0.2, 0.5, 0.3]], dtype=np.float32)  # 1 - 1e-9 rounds to 1.0
    loss = membership.cross_entropy(probs, np.array([0, 1]))
    assert loss[0] == pytest.approx(1e-9, rel=1e-3) and loss[1] == pytest.approx(np.log(2), rel=1e-6)
    assert membership.logit_confidence(probs, np.array([0, 1]))[1] == pytest.approx(0.0, abs=1e-6)


def test_offline_lira_calibrates_away_how_hard_each_example_is() -> None:
    """Examples differ in difficulty far more than membership moves them: the raw
    confidence hardly separates members, the per-example test does."""
    rng = np.random.default_rng(2)
    n, k = 400, 16
    difficulty = rng.normal(0, 5, n)
    member = np.arange(n) < n // 2
    target = difficulty + rng.normal(0, 1, n) + 2.5 * member
    shadows = difficulty + rng.normal(0, 1, (k, n))
    out = np.ones((k, n), dtype=bool)
    lira = membership.offline_lira_scores(target, shadows, out)
    raw = membership.attack_metrics(target[member], target[~member], 1e-5)["auc"]
    calibrated = membership.attack_metrics(lira[member], lira[~member], 1e-5)["auc"]
    assert raw < 0.7 and calibrated > 0.9
    out[:, 0] = False
    with pytest.raises(ValueError, match="no OUT shadow"):
        membership.offline_lira_scores(target, shadows, out)


def test_shadow_halves_are_stratified_and_complementary_in_pairs() -> None:
    pool = [Sample(Path(f"{c}/{i}.png"), c) for c in range(3) for i in range(7)]
    sets = _halves(pool, 4, seed=0)
    for a, b in (sets[0], sets[1]), (sets[2], sets[3]):
        assert {s.path for s in a} | {s.path for s in b} == {s.path for s in pool}
        assert not {s.path for s in a} & {s.path for s in b}
        assert {s.label for s in a} == {s.label for s in b} == {0, 1, 2}
    out_counts = [sum(s.path not in {x.path for x in h} for h in sets) for s in pool]
    assert set(out_counts) == {2}  # every example is OUT of half of the shadows


def test_members_and_non_members_are_compared_with_as_many_out_shadows() -> None:
    pool = [Sample(Path(f"{c}/{i}.png"), c) for c in range(3) for i in range(8)]
    members = [Sample(Path(f"train/{c}/{i}.png"), c) for c in range(3) for i in range(8)]
    audit_set = AuditSet(members + pool, np.arange(48) < 24, pool, {"members": 24, "non_members": 24})
    sets = _halves(pool, 6, seed=0)
    out = _out_mask(sets, audit_set, seed=0)
    assert set(out.sum(0)) == {3}  # one shadow of each of the 3 pairs, for every image
    for k, half in enumerate(sets):  # never a shadow that trained on the image
        trained = {s.path for s in half}
        assert not any(out[k, n] for n, s in enumerate(audit_set.samples) if s.path in trained)


# ----------------------------------------------------------------- end to end

# The leak the audit must find: a small net trained far past the point of generalising, on
# 10 digit classes of 20 images where every third image carries the next class's label. Such
# mislabelled images (the "canaries" of privacy audits) can only be fitted by memorising them,
# so held-out ones keep a high loss. Clean digits alone generalise too well at this size to
# leak clearly (measured: AUC 0.66-0.73 for 60-100 epochs); with the canaries it is 0.89.
# val_split 0 makes the last (most overfitted) epoch the best one; the test split (60 %)
# holds the non-members.
_OVERFIT = {
    "model": "test_resnet",
    "image_size": 16,
    "batch_size": 16,
    "workers": 0,
    "device": "cpu",
    "precision": "fp32",
    "epochs": 100,
    "lr": 3e-3,
    "warmup_epochs": 0,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "val_split": 0.0,
    "test_split": 0.6,
    "augment": {"scale": [1.0, 1.0], "hflip": False},
}


# A 16 px net gains nothing from a second thread, and on 2 shared cores the two threads
# wait on each other (measured: 25 vs 59 ms a step under load).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _mislabelled_digits(root: Path, per_class: int) -> Path:
    data = write_digit_folder(root, classes=tuple(range(10)), per_class=per_class, size=16)
    files = {c: sorted((data / str(c)).iterdir()) for c in range(10)}
    for c, paths in files.items():
        for path in paths[::3]:
            path.rename(data / str((c + 1) % 10) / f"moved-{path.name}")
    return data


def _train(tmp: Path, name: str, per_class: int, **settings: object) -> Path:
    data = _mislabelled_digits(tmp / f"{name}-data", per_class)
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**_OVERFIT, **settings}), encoding="utf-8")
    args = ("--config", str(config), "--out", str(tmp / "runs"), "--name", name, "-q")
    proc = run_cli("train", str(data), *args, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    return tmp / "runs" / name


def _audit(run: Path, *args: str) -> dict:
    proc = run_cli("audit", "privacy", str(run), "--json", *args, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == {**json.loads((run / "audit" / "privacy.json").read_text()), "files": report["files"]}
    return report


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("audit"), "overfit", per_class=20)


@pytest.mark.e2e
def test_the_audit_finds_the_leak_of_an_overfitted_run(overfit_run: Path) -> None:
    report = _audit(overfit_run, "--shadow", "2", "--shadow-epochs", "30")
    loss, lira = report["attacks"]["loss"], report["attacks"]["lira_offline"]
    print(f"overfitted: loss {loss['auc']:.3f} / {loss['epsilon_lb']:.2f}, lira {lira['auc']:.3f}")
    assert report["members"]["count"] == report["non_members"]["count"] == 80  # 8 train / 12 test per class
    assert loss["auc"] >= 0.6 and loss["epsilon_lb"] > 0.5
    assert lira["auc"] >= 0.6
    assert report["guarantee"] is None and report["delta"] == 1e-5
    assert report["shadow"]["out_per_example"] == {"min": 1, "max": 1}  # one shadow of the pair each
    assert not list((overfit_run / "audit").glob("shadows-*"))  # the shadows' folder is gone
    md = (overfit_run / "audit" / "privacy.md").read_text()
    assert "lower bound" in md and "No DP guarantee" in md
    assert (overfit_run / "audit" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_the_audit_finds_no_leak_in_a_dp_run(tmp_path: Path) -> None:
    """The same kind of data and recipe under DP-SGD at ε = 1: 300 members against 300
    non-members, where chance gives AUC 0.5 with a standard deviation of 0.024, so
    0.6 is four of them away."""
    run = _train(tmp_path, "private", per_class=60, test_split=0.5, epochs=6, batch_size=32, dp={"epsilon": 1.0})
    report = _audit(run)
    loss = report["attacks"]["loss"]
    print(f"DP eps=1: loss AUC {loss['auc']:.3f}, eps_lb {loss['epsilon_lb']:.2f}")
    assert report["members"]["count"] == 300
    assert loss["auc"] <= 0.6
    assert report["guarantee"]["epsilon"] <= 1.0 + 1e-6
    assert loss["epsilon_lb"] <= report["guarantee"]["epsilon"]  # an audit can never prove more than DP allows
    assert report["delta"] == report["guarantee"]["delta"]


@pytest.mark.e2e
def test_max_images_caps_both_sets_and_broken_runs_are_refused_in_one_line(overfit_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(overfit_run, run, ignore=shutil.ignore_patterns("audit"))
    small = audit_privacy(run, max_images=12, seed=3, device="cpu", workers=0, progress=False).report
    assert small["members"]["count"] == small["non_members"]["count"] == 12
    assert small["attacks"]["loss"]["members"] == 12 and set(small["attacks"]) == {"loss"}
    (run / "checkpoints" / "best.safetensors").unlink()
    one_line_error(run_cli("audit", "privacy", str(run)), 5, "no trained weights")

    shutil.copytree(overfit_run, run, dirs_exist_ok=True, ignore=shutil.ignore_patterns("audit"))
    info = json.loads((run / "run.json").read_text())
    data = tmp_path / "data"
    shutil.copytree(info["data_dir"], data)
    next(iter(sorted((data / "3").iterdir()))).unlink()
    (run / "run.json").write_text(json.dumps({**info, "data_dir": str(data)}))
    one_line_error(run_cli("audit", "privacy", str(run)), 3, "1 of the run's", "missing")
    with pytest.raises(ConfigError, match="--shadow"):  # one shadow leaves half the images without an OUT one
        audit_privacy(run, shadow=1)
