"""Train/validation split by content hash: seeded, stratified, stable.

Each usable file gets ``u = H(seed, sha256 of its bytes)`` in [0, 1) and goes to
validation when ``u < val_fraction``. Because ``u`` depends only on the seed and
the file's content:

- adding files later never moves an existing file between train and validation;
- copies of the same bytes always land on the same side (no leakage);
- every class gets about ``val_fraction`` of its files in validation (stratified
  in expectation), with no shuffling state to save.

One correction keeps tiny classes trainable and measurable: a class with two or
more distinct images that landed entirely on one side gives one image to the
other side (the one whose ``u`` is nearest the threshold). Only such tiny classes
can see a file move when they grow; every other file's side is fixed for good.

A data folder with ``train/`` and ``val/`` folders ("splits" layout) keeps the
split its folders say.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from duet.data.scan import LAYOUT_SPLITS, STATUS_OK, Manifest, ManifestRow, with_rows
from duet.errors import ConfigError


def assign_splits(manifest: Manifest, *, val_fraction: float = 0.2, seed: int = 0) -> Manifest:
    """Return a copy of ``manifest`` with ``split`` set to "train" or "val" on every
    usable row ("" on the others). The input is not modified.

    Args:
        manifest: from ``duet.data.scan.scan``.
        val_fraction: expected share of each class in validation, in [0, 1);
            0 puts everything in train.
        seed: changes which files go to validation.

    Raises:
        ConfigError: ``val_fraction`` outside [0, 1).
    """
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ConfigError(
            f"`val_fraction` must be in [0, 1), e.g. 0.2 for 20% validation. Received: val_fraction={val_fraction!r}"
        )
    out = with_rows(manifest, manifest.rows)
    if manifest.layout == LAYOUT_SPLITS:
        return out
    by_class: dict[str, list[tuple[float, ManifestRow]]] = defaultdict(list)
    for row in out.rows:
        if row.status != STATUS_OK:
            row.split = ""
            continue
        u = split_key(row.sha256, seed)
        row.split = "val" if u < val_fraction else "train"
        by_class[row.label].append((u, row))
    if val_fraction > 0:
        for keyed in by_class.values():
            _keep_both_sides(keyed)
    return out


def split_key(sha256: str, seed: int) -> float:
    """The file's position in [0, 1): first 8 bytes of sha256("{seed}:{sha256}")."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _keep_both_sides(keyed: list[tuple[float, ManifestRow]]) -> None:
    """If a class with >= 2 distinct images landed on one side only, move the image
    nearest the threshold (all its copies) to the other side."""
    if len({row.sha256 for _, row in keyed}) < 2:
        return
    sides = {row.split for _, row in keyed}
    if sides == {"train"}:
        target, (_, chosen) = "val", min(keyed, key=lambda k: k[0])
    elif sides == {"val"}:
        target, (_, chosen) = "train", max(keyed, key=lambda k: k[0])
    else:
        return
    for _, row in keyed:
        if row.sha256 == chosen.sha256:
            row.split = target
