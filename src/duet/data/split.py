"""Train/validation/test split by content hash: seeded, exactly stratified, stable.

Each usable file gets ``u = H(seed, sha256 of its bytes)`` in [0, 1). Within each
class, the distinct images are ranked by ``u``; the lowest ``k_val`` go to
validation, the highest ``k_test`` to test, the rest to train, with::

    k_val  = ⌊val_fraction  × n⌉   (at least 1 when the class has 2+ images)
    k_test = ⌊test_fraction × n⌉   (0 unless the test split is on, below)

where ``n`` is the number of distinct usable images of the class and ``⌊x⌉``
rounds half up; at least one image of each class stays in train. So the
per-class counts are exact (100 images at 0.2 -> exactly 20 in validation),
and the sides depend only on the seed and the images' bytes:

- copies of the same bytes always land on the same side (no leakage);
- paths, file order and the other classes do not matter;
- adding ``m`` images to a class moves at most ``m`` of its existing images
  across the train/validation boundary and at most ``m`` across the
  train/test boundary, and only those ranked nearest the boundary; every
  other existing image keeps its side, and other classes are untouched.
  Validation takes the lowest ``u`` and test the highest, so the two
  boundaries lie at opposite ends of the ranking and move independently.

Exact counts cannot be had with "no existing file ever moves": growing a class
from ``n`` to ``n + 1`` images usually keeps ``k_val``, so a newcomer ranked into
validation must push one image out. The pure threshold rule (``u < share``)
never moved a file but gave 8 vs 21 validation images for two classes of 100.
When a run's split must not move at all (a champion's held-out images),
``duet.lifecycle.retrain`` keeps the sides recorded in the run's ``manifest.csv``.

The test split is on when ``test_fraction > 0`` and every class has at least
``test_min_per_class`` (20) distinct images: with fewer, a test split of a
class would be one or two images, too few to measure anything, and the data
are better spent on training and validation. When the rule turns the split on
(the smallest class reaches 20), only train images move, into test.

A data folder with ``train/`` and ``val/`` folders (and optionally ``test/``,
the "splits" layout) keeps the split its folders say.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

from duet.data.scan import LAYOUT_SPLITS, STATUS_OK, Manifest, ManifestRow, with_rows
from duet.errors import ConfigError

TEST_MIN_PER_CLASS = 20
DEFAULT_TEST_FRACTION = 0.1


def assign_splits(
    manifest: Manifest,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    test_min_per_class: int = TEST_MIN_PER_CLASS,
) -> Manifest:
    """Return a copy of ``manifest`` with ``split`` set to "train", "val" or "test"
    on every usable row ("" on the others). The input is not modified.

    Args:
        manifest: from ``duet.data.scan.scan``.
        val_fraction: share of each class in validation, in [0, 1); 0 puts
            nothing in validation.
        test_fraction: share of each class in test, in [0, 1); 0 (the default
            here; training's config default is 0.1) holds out no test split.
        seed: changes which files go where.
        test_min_per_class: the test split is held out only when every class
            has at least this many distinct usable images (0: always).

    Raises:
        ConfigError: a fraction outside [0, 1), or the two adding up to 1 or more.
    """
    _check_fraction("val_fraction", val_fraction, "0.2 for 20% validation")
    _check_fraction("test_fraction", test_fraction, "0.1 for a 10% test split")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"`val_fraction` + `test_fraction` must be below 1 so that some images are left to train on. "
            f"Received: val_fraction={val_fraction!r}, test_fraction={test_fraction!r}"
        )
    out = with_rows(manifest, manifest.rows)
    if manifest.layout == LAYOUT_SPLITS:
        return out
    by_class: dict[str, dict[str, list[ManifestRow]]] = defaultdict(lambda: defaultdict(list))
    for row in out.rows:
        if row.status != STATUS_OK:
            row.split = ""
            continue
        by_class[row.label][row.sha256].append(row)
    if not holds_out_test(out, test_fraction, test_min_per_class):
        test_fraction = 0.0
    for copies_by_sha in by_class.values():
        _split_class(copies_by_sha, val_fraction, test_fraction, seed)
    return out


def holds_out_test(manifest: Manifest, test_fraction: float, test_min_per_class: int = TEST_MIN_PER_CLASS) -> bool:
    """Whether ``assign_splits`` holds out a test split for this (classes-layout) manifest."""
    if test_fraction <= 0:
        return False
    distinct: dict[str, set[str]] = defaultdict(set)
    for row in manifest.usable():
        distinct[row.label].add(row.sha256)
    return bool(distinct) and min(len(s) for s in distinct.values()) >= test_min_per_class


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """``(k_val, k_test)`` for a class of ``n`` distinct images (see the module docstring)."""
    if n < 2:
        return 0, 0
    k_val = _round_half_up(val_fraction * n)
    if val_fraction > 0:
        k_val = max(1, k_val)
    k_val = min(k_val, n - 1)  # at least one training image
    k_test = min(_round_half_up(test_fraction * n), n - 1 - k_val)  # test gives way first
    return k_val, k_test


def split_key(sha256: str, seed: int) -> float:
    """The file's position in [0, 1): first 8 bytes of sha256("{seed}:{sha256}")."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_class(
    copies_by_sha: dict[str, list[ManifestRow]], val_fraction: float, test_fraction: float, seed: int
) -> None:
    """Rank the class's distinct images by ``u``: val from the bottom, test from the top."""
    ranked = sorted(copies_by_sha, key=lambda sha: (split_key(sha, seed), sha))
    k_val, k_test = split_counts(len(ranked), val_fraction, test_fraction)
    for rank, sha in enumerate(ranked):
        side = "val" if rank < k_val else "test" if rank >= len(ranked) - k_test else "train"
        for row in copies_by_sha[sha]:
            row.split = side


def _round_half_up(x: float) -> int:
    # The epsilon keeps products like 0.15 * 10 = 1.4999999999999998 at 1.5.
    return math.floor(x + 0.5 + 1e-9)


def _check_fraction(name: str, value: float, example: str) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ConfigError(f"`{name}` must be in [0, 1), e.g. {example}. Received: {name}={value!r}")
