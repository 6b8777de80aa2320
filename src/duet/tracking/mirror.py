"""The MLflow Model Registry as a mirror of duet's registry: the champion carries the alias ``champion``.

duet's registry (``duet.artifacts.registry``) stays the source of truth; after
each promotion or rollback ``mirror_champion`` registers the champion's logged
ONNX model (``duet export`` of a tracked run: RUN/tracking.json ``model_uri``)
as a version of the registered model named after the registry folder, once
per duet version (tag ``duet.version``, so a rollback finds it again), and
moves the alias ``champion`` to it. A champion that was not tracked is
skipped; one tracked but not exported is skipped with a line that says so; a
failure warns once. Returns the MLflow version set, or None.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from duet.artifacts.registry import Registry
from duet.tracking.mlflow_sink import open_client
from duet.tracking.store import Warner, read_tracking, tracked_store

if TYPE_CHECKING:
    from mlflow import MlflowClient

ALIAS = "champion"


def model_name(registry: Registry) -> str:
    """The registered model's name: the registry folder's name (``registry/`` -> "registry")."""
    return registry.root.resolve().name


def mirror_champion(registry: Registry) -> str | None:
    """Point the MLflow alias ``champion`` at the MLflow version of duet's champion."""
    champion = registry.champion()
    if champion is None:
        return None
    doc = read_tracking(champion.run)
    if doc is None:
        return None
    if not doc.get("model_uri"):
        print(
            f"MLflow: {champion.version} ({champion.run}) is tracked but has no logged model; "
            f"`duet export {champion.run}` logs it, then promote again to set the alias",
            file=sys.stderr,
        )
        return None
    done: list[str] = []
    Warner("MLflow registry mirror").guard(lambda: done.append(_mirror(registry, champion.version, doc)))
    return done[0] if done else None


def _mirror(registry: Registry, version: str, doc: dict[str, Any]) -> str:
    client = open_client(tracked_store(doc).uri)
    name = model_name(registry)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description=f"mirrors duet registry {registry.root.resolve()}")
    number = _version_of(client, name, str(doc["run_id"]), str(doc["model_uri"]), version)
    client.set_registered_model_alias(name, ALIAS, number)
    return number


def _version_of(client: MlflowClient, name: str, run_id: str, source: str, duet_version: str) -> str:
    """The MLflow version mirroring ``duet_version`` (tag ``duet.version``): found again on a
    rollback, created from the run's logged model the first time that version is champion."""
    for mv in client.search_model_versions(filter_string=f"name = '{name}' and run_id = '{run_id}'"):
        if mv.tags.get("duet.version") == duet_version:
            return str(mv.version)
    mv = client.create_model_version(name, source, run_id=run_id, tags={"duet.version": duet_version})
    return str(mv.version)
