"""The champion/challenger gate at the sizes users have: 10 classes, 12 held-out
images each (120 of the champion's own), on synthetic predictions.

A challenger that loses 4 of one class's 12 images and a few elsewhere is
refused, even when new held-out images with doubtful labels make it look better
overall; an equal or slightly better one passes; the minimum detectable drop the
gate prints is what a simulation of the gate itself measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from duet.errors import ConfigError, DataError
from duet.lifecycle.gate import (
    GateSettings,
    compare_predictions,
    drop_test,
    markdown,
    min_detectable_drop,
    refusal_probability,
)

CLASSES = [str(i) for i in range(10)]
PER_CLASS = 12
GATE = GateSettings()


def champion_held_out(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(true, champion's predictions)``: 12 images per class, 4 of 120 wrong (96.7 %)."""
    true = np.array([c for c in CLASSES for _ in range(PER_CLASS)], dtype=object)
    pred = true.copy()
    for i in rng.choice(len(true), 4, replace=False):
        pred[i] = CLASSES[(int(true[i]) + 1) % 10]
    return true, pred


def challenger_from(
    true: np.ndarray, champion: np.ndarray, *, lose: list[int], gain: int, rng: np.random.Generator
) -> np.ndarray:
    """The champion's predictions with the images at ``lose`` made wrong and ``gain``
    of its mistakes fixed."""
    pred = champion.copy()
    for i in lose:
        pred[i] = CLASSES[(int(true[i]) + 5) % 10]
    wrong = np.flatnonzero(champion != true)
    for i in rng.choice(wrong, gain, replace=False):
        pred[i] = true[i]
    return pred


def losing_one_class(true: np.ndarray, champion: np.ndarray) -> list[int]:
    """4 of class '3's images and 3 elsewhere, all ones the champion gets right."""
    right = champion == true
    in3 = [i for i in np.flatnonzero(right & (true == "3"))][:4]
    elsewhere = [i for i in np.flatnonzero(right & (true != "3"))][::40][:3]
    return in3 + elsewhere


def test_a_challenger_losing_a_third_of_one_class_is_refused_though_it_wins_overall() -> None:
    rng = np.random.default_rng(0)
    true, champ = champion_held_out(rng)
    chall = challenger_from(true, champ, lose=losing_one_class(true, champ), gain=1, rng=rng)
    # 150 new held-out images whose (wrong) labels only the challenger learned: overall it looks better.
    new_true = np.array([CLASSES[i % 10] for i in range(150)], dtype=object)
    new_champ = np.array([CLASSES[(i + 3) % 10] for i in range(150)], dtype=object)
    c = compare_predictions(
        np.concatenate([true, new_true]),
        np.concatenate([champ, new_champ]),
        np.concatenate([chall, new_true]),
        np.r_[np.ones(120, bool), np.zeros(150, bool)],
        GATE,
    )
    assert c.challenger["accuracy"] > c.champion["accuracy"]  # the point estimate alone would promote it
    assert not any(r["regressed"] for r in c.per_class_old)  # 4 of 12 is beyond any per-class test
    t = c.drop_test
    assert (t["images"], t["losses"], t["gains"]) == (120, 7, 1)
    assert t["refused"] and t["p_value"] == pytest.approx(stats.binom.sf(6, 8, 0.5))
    assert c.promote is False
    assert any(r.startswith("significantly worse on the champion's own held-out images") for r in c.reasons)
    assert t["min_detectable_drop"] == pytest.approx(min_detectable_drop(120, gain_rate=1 / 120, margin=0.02))


@pytest.mark.parametrize(
    "lose, gain", [(0, 0), (3, 3), (2, 4)], ids=["identical", "equal-with-churn", "slightly-better"]
)
def test_an_equal_or_slightly_better_challenger_passes(lose: int, gain: int) -> None:
    rng = np.random.default_rng(1)
    true, champ = champion_held_out(rng)
    chall = challenger_from(true, champ, lose=list(np.flatnonzero(champ == true)[::37][:lose]), gain=gain, rng=rng)
    c = compare_predictions(true, champ, chall, np.ones(len(true), bool), GATE)
    assert c.promote is True, c.reasons
    assert c.drop_test["refused"] is False and c.drop_test["losses"] == lose and c.drop_test["gains"] == gain
    assert any(r.startswith("not significantly worse by more than 2% on the champion's own") for r in c.reasons)


def test_shuffled_labels_are_refused_by_the_drop_test() -> None:
    """A challenger trained on labels moved three classes over predicts them for most images."""
    rng = np.random.default_rng(2)
    true, champ = champion_held_out(rng)
    chall = champ.copy()
    moved = rng.random(len(true)) < 0.6
    chall[moved] = [CLASSES[(int(t) + 3) % 10] for t in true[moved]]
    c = compare_predictions(true, champ, chall, np.ones(len(true), bool), GATE)
    assert c.promote is False and c.drop_test["refused"] is True and c.drop_test["p_value"] < 1e-10
    assert c.reasons[1].startswith("significantly worse on the champion's own held-out images")


def test_class_checks_run_only_where_they_can_fire_and_say_what_they_can_see() -> None:
    """10 classes at 5 %: Bonferroni level 0.005, so a class needs 8 images
    (0.5 ** 8 < 0.005 < 0.5 ** 7): the 7-image class is listed as unchecked."""
    true = np.array([c for c in CLASSES for _ in range(7 if c == "9" else PER_CLASS)], dtype=object)
    c = compare_predictions(true, true.copy(), true.copy(), np.ones(len(true), bool), GATE)
    rows = {r["label"]: r for r in c.per_class_old}
    assert rows["9"]["checked"] is False and rows["9"]["min_detectable_drop"] is None
    checked = [r for r in rows.values() if r["checked"]]
    assert len(checked) == 9
    # At 12 images a class's check only sees drops of ~70 points: the overall test carries the power.
    assert all(0.6 < r["min_detectable_drop"] < 0.8 for r in checked)
    assert "9 of 10 classes checked on all held-out images, 9 on the champion's own" in c.reasons[2]
    assert "a class's minimum detectable drop is 73 points" in c.reasons[2]


def test_refusal_probability_is_exact() -> None:
    """The power formula against enumerating every (losses, gains) outcome of 30
    images and applying the gate's own test to each."""
    n, loss, gain, level, margin = 30, 0.15, 0.03, 0.05, 0.02
    total = 0.0
    for b in range(n + 1):
        for c in range(n + 1 - b):
            champ = np.array([True] * b + [False] * c + [True] * (n - b - c))
            chall = np.array([False] * b + [True] * c + [True] * (n - b - c))
            if drop_test(champ, chall, where="x", level=level, margin=margin, power=0.8).refused:
                total += stats.multinomial.pmf([b, c, n - b - c], n, [loss, gain, 1 - loss - gain])
    assert refusal_probability(n, loss, gain, level=level, margin=margin) == pytest.approx(total, abs=1e-12)


@pytest.mark.parametrize("n, gain", [(120, 0.0), (120, 0.02), (500, 0.02)])
def test_the_minimum_detectable_drop_is_what_a_simulation_of_the_gate_measures(n: int, gain: float) -> None:
    """Draw 3,000 held-out sets at the stated drop and at 3 points less, and let the
    gate decide each: it refuses ~80 % at the minimum detectable drop (binomial SE
    0.7 points), clearly fewer below it, and at most 5 % of equal challengers."""
    mdd = min_detectable_drop(n, gain_rate=gain, margin=GATE.drop_margin, level=GATE.significance)
    assert mdd is not None
    rng = np.random.default_rng(7)

    def refused(drop: float) -> float:
        u = rng.random((3000, n))
        champ = u >= gain  # champion wrong on the gains
        chall = (u < gain) | (u >= 2 * gain + drop)  # challenger wrong on the losses
        return float(
            np.mean(
                [
                    drop_test(
                        a, b, where="sim", level=GATE.significance, margin=GATE.drop_margin, power=GATE.power
                    ).refused
                    for a, b in zip(champ, chall)
                ]
            )
        )

    assert refused(mdd) == pytest.approx(0.80, abs=0.03)
    assert refused(mdd - 0.03) < 0.70
    assert refused(0.0) <= 0.05


def test_minimum_detectable_drop_at_the_sizes_users_have() -> None:
    """The numbers docs/monitoring.md quotes (margin 2 %, 5 %, 80 % power)."""
    expected = {
        (120, 0.0): 5.5,
        (120, 0.02): 8.2,
        (500, 0.0): 2.7,
        (500, 0.02): 3.2,
        (2000, 0.0): 2.3,
        (2000, 0.02): 2.5,
    }
    for (n, gain), points in expected.items():
        assert 100 * min_detectable_drop(n, gain_rate=gain, margin=0.02) == pytest.approx(points, abs=0.05)
    assert min_detectable_drop(3, level=0.05) is None  # 3 images: 0.5 ** 3 > 5 %, nothing is detectable


def test_the_report_states_what_the_gate_could_see() -> None:
    rng = np.random.default_rng(0)
    true, champ = champion_held_out(rng)
    c = compare_predictions(true, champ, champ.copy(), np.ones(len(true), bool), GATE)
    text = "\n".join(markdown(c, champion=Path("runs/a"), challenger=Path("runs/a-r1"), decision="promoted"))
    assert "Minimum detectable drop (80% power): **5.5 points** on 120 images" in text
    assert "| 0 | 12 | 100.0% | 100.0% | +0.0 | 1 | 73.1 points | no |" in text


@pytest.mark.parametrize("field, value", [("drop_margin", 1.5), ("power", 1.0), ("significance", 0.0)])
def test_bad_gate_settings_are_refused_with_the_value(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{field}={value}"):
        GateSettings(**{field: value})


def test_no_images_to_compare_is_a_data_error() -> None:
    empty = np.array([], dtype=object)
    with pytest.raises(DataError, match="nothing to compare them on"):
        compare_predictions(empty, empty, empty, np.array([], bool), GATE)
