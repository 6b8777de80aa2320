"""Suite-wide settings: keep every decode cache inside pytest's temp folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Subprocesses of the CLI inherit it, so nothing is written to ~/.cache.
    old = os.environ.get("DUET_CACHE_DIR")
    os.environ["DUET_CACHE_DIR"] = str(tmp_path_factory.mktemp("duet-cache"))
    yield
    if old is None:
        os.environ.pop("DUET_CACHE_DIR", None)
    else:
        os.environ["DUET_CACHE_DIR"] = old
