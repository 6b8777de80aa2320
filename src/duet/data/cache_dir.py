"""Where the decode cache lives when the config does not say (read by the config and the cache)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """$DUET_CACHE_DIR, else $XDG_CACHE_HOME/duet, else ~/.cache/duet."""
    if env.get("DUET_CACHE_DIR"):
        return Path(env["DUET_CACHE_DIR"])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "duet"
