"""`duet watch`: the loop that retrains when production data drifts and new labels arrive.

``watch(data_dir, registry=...)`` repeats: when the new images drift from the
champion's profile and new labelled images are present, retrain
(:func:`duet.lifecycle.retrain.retrain`), gate and promote, logging every
decision in one sentence per iteration.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from duet.artifacts.registry import Registry, RegistryError
from duet.errors import DataError
from duet.lifecycle.gate import GateSettings
from duet.lifecycle.merge import _link, fresh_rows
from duet.lifecycle.retrain import Log, RetrainResult, retrain

# --------------------------------------------------------------------------- watch


@dataclass
class WatchDecision:
    """One iteration of the loop: what was seen and what was done, in a sentence."""

    iteration: int
    time: str
    champion: str
    new_images: int
    drift: bool | None
    drift_sentence: str
    action: str  # "none" | "wait_for_labels" | "retrain"
    new_data: str = ""  # fingerprint of the new images (sha256 over their sorted hashes)
    # no_data_folder | no_labelled_images | no_new_images | already_tried | no_live_images
    # | insufficient | no_drift | drift
    state: str = ""
    promoted: bool | None = None
    challenger: str | None = None
    reasons: list[str] = field(default_factory=list)
    sentence: str = ""


def watch(
    data_dir: Path,
    *,
    registry: Registry,
    live_dir: Path | None = None,
    interval: float = 300.0,
    iterations: int | None = None,
    min_new: int = 1,
    drift_settings: Any = None,
    gate: GateSettings = GateSettings(),
    out: Path = Path("runs"),
    epochs: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: bool = False,
    log: Log = print,
    sleep: Callable[[float], None] = time.sleep,
) -> list[WatchDecision]:
    """The closed loop: check, and when drift meets new labels, retrain -> gate -> promote.

    Each iteration reads the registry's champion, counts the images in
    ``data_dir`` (labelled) it has not trained on, and tests for drift the
    images of ``live_dir`` (unlabelled recent traffic) or, without it, those
    new labelled images. Drift and at least ``min_new`` new labelled images ->
    ``retrain``; drift without them -> a request for labels; no drift ->
    nothing. A ``data_dir`` (or ``live_dir``) that does not exist yet or holds
    no images is waited for, not an error. Every decision is logged and
    appended to ``registry/events.jsonl``, except that a waiting state in which
    nothing was checked (no folder, no labels, nothing new) is announced once
    when the loop enters it, not at every tick.

    Args:
        iterations: stop after this many (None: run until interrupted).
        interval: seconds between iterations.
    """
    from duet.monitor.check import drift_check

    # What one iteration calls: the drift check of a folder, and a retrain of the champion.
    check = partial(drift_check, settings=drift_settings, device=device, workers=workers, progress=progress, log=log)
    retrain_champion = partial(
        retrain,
        new_data=Path(data_dir),
        registry=registry,
        out=out,
        epochs=epochs,
        gate=gate,
        device=device if device != "auto" else None,
        workers=workers,
        progress=progress,
        log=log,
    )

    # Unbounded, the loop keeps only its last 1000 decisions (the events keep every announced one).
    decisions: deque[WatchDecision] = deque(maxlen=None if iterations is not None else 1000)
    said: tuple[str, str, str] | None = None
    i = 0
    while iterations is None or i < iterations:
        i += 1
        d = _watch_once(
            i,
            Path(data_dir),
            None if live_dir is None else Path(live_dir),
            registry,
            min_new=min_new,
            check=check,
            retrain_champion=retrain_champion,
            progress=progress,
        )
        state = (d.state, d.champion, d.new_data)
        if d.state not in _SAID_ONCE or state != said:
            registry.log("watch", **asdict(d))
            log(d.sentence)
        said = state
        decisions.append(d)
        if iterations is None or i < iterations:
            sleep(interval)
    return list(decisions)


# States in which nothing was checked: announced (logged, and written to the
# events) when the loop enters them, not again at every tick while it waits.
_SAID_ONCE = frozenset({"no_data_folder", "no_labelled_images", "no_new_images", "already_tried", "no_live_images"})


def _labelled(data_dir: Path, progress: bool) -> tuple[Any, str]:
    """``(scan of data_dir, "")``, or ``(None, why there is nothing to scan yet)``:
    a folder that does not exist yet or holds no labelled image is something to
    wait for, not an error (a path that is a file still is one)."""
    from duet.data.scan import scan

    if not data_dir.exists():
        return None, "no_data_folder"
    try:
        return scan(data_dir, progress=progress), ""
    except DataError:
        if not data_dir.is_dir():
            raise
        return None, "no_labelled_images"  # the one error scan has left for an existing folder


def _has_images(folder: Path) -> bool:
    from duet.monitor.check import list_images

    try:
        list_images(folder)
    except DataError:
        return False
    return True


def _watch_once(
    i: int,
    data_dir: Path,
    live_dir: Path | None,
    registry: Registry,
    *,
    min_new: int,
    check: Callable[[Path, Path], Any],
    retrain_champion: Callable[[Path], RetrainResult],
    progress: bool,
) -> WatchDecision:
    """One iteration of ``watch``: look, decide, act (retrain at most once)."""
    champion = registry.champion()  # read each time: a person may promote another version meanwhile
    if champion is None:
        raise RegistryError(f"registry '{registry.root}' has no champion to watch; `duet registry promote RUN` first")
    v = champion.version
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    d = WatchDecision(i, now, v, 0, None, "", "none")
    manifest, waiting = _labelled(data_dir, progress)
    fresh = fresh_rows(champion.run, manifest)[0] if manifest is not None else []
    d.new_images = len(fresh)
    d.new_data = hashlib.sha256("".join(sorted(r.sha256 for r in fresh)).encode()).hexdigest()[:16] if fresh else ""
    tried = fresh and any(
        e.get("event") == "watch"
        and e.get("action") == "retrain"
        and e.get("champion") == v
        and e.get("new_data") == d.new_data
        for e in registry.events()
    )
    source: Path | None = None
    if tried:
        d.state = "already_tried"
        d.sentence = (
            f"{v}: these {len(fresh)} new images were already tried and the challenger was refused; "
            "waiting for more labelled data"
        )
    elif live_dir is not None:
        source = live_dir if _has_images(live_dir) else None
        d.state = "" if source is not None else "no_live_images"
    elif fresh:
        source = _fresh_folder(fresh, manifest.data_dir, registry.root / "watch" / f"{v}-{d.new_data}")
    if source is None:
        d.state = d.state or waiting or "no_new_images"
        d.action = "wait_for_labels" if waiting else d.action
        d.sentence = d.sentence or _idle_sentence(v, d.state, data_dir, live_dir)
        return d
    result = check(champion.run, source)
    d.drift, d.drift_sentence = result.result.drift, result.result.sentence
    if d.drift is None:  # too few images to judge
        d.state = "insufficient"
        d.sentence = f"{v}: {d.drift_sentence}; waiting for more images in {live_dir or data_dir}"
    elif not d.drift:
        d.state = "no_drift"
        d.sentence = f"{v}: no drift ({d.drift_sentence}); nothing to do"
    elif len(fresh) < min_new:
        d.state, d.action = "drift", "wait_for_labels"
        d.sentence = (
            f"{v}: drift detected but only {len(fresh)} new labelled images (need {min_new}); "
            f"label recent images into {data_dir}"
        )
    else:
        d.state, d.action = "drift", "retrain"
        done = retrain_champion(champion.run)
        d.promoted, d.challenger, d.reasons = done.promoted, str(done.challenger_run), done.comparison.reasons
        d.sentence = f"{v}: drift and {len(fresh)} new labelled images -> retrained {done.challenger_run.name}: " + (
            f"promoted as {done.challenger_version}" if done.promoted else "kept the champion"
        )
    return d


def _idle_sentence(version: str, state: str, data_dir: Path, live_dir: Path | None) -> str:
    if state == "no_data_folder":
        return (
            f"{version}: '{data_dir}' does not exist yet; waiting for labelled images there (one sub-folder per class)"
        )
    if state == "no_labelled_images":
        return f"{version}: no labelled images in '{data_dir}' yet (one sub-folder per class); waiting for labels"
    if state == "no_live_images":
        return f"{version}: no images in '{live_dir}' yet (missing or empty); waiting for recent traffic"
    return f"{version}: no new images in {data_dir}; nothing to do"


def _fresh_folder(rows: list[Any], data_dir: Path, root: Path) -> Path:
    """A folder of links to just the new images (drift is tested on them, not on all
    of data_dir); named by their fingerprint, so the same images reuse one folder."""
    for r in rows:
        dest = root / r.label / f"{r.sha256[:20]}{Path(r.path).suffix.lower()}"
        if not dest.exists():
            _link(data_dir / r.path, dest)
    return root
