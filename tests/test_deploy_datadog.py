"""deploy/datadog/conf.yaml: a valid OpenMetrics V2 check instance (validated against the
check's own option spec, tests/data/datadog/), that maps every metric a real `duet serve`
exposes and nothing it does not, and that authenticates without the key in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema  # with kubernetes-validate (the dev extra)
import pytest
import yaml

from serve_support import running_server

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "datadog" / "conf.yaml"
SPEC = Path(__file__).parent / "data" / "datadog" / "openmetrics_instance_options.yaml"


def _json_schema(value: dict[str, Any]) -> dict[str, Any]:
    """A value schema of Datadog's config spec as JSON Schema: the spec lists ``properties``
    as ``[{name: ..., type: ...}]``; everything else (type, items, anyOf, pattern, enum,
    additionalProperties) is JSON Schema already."""
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "properties":
            out[key] = {p["name"]: _json_schema({k: x for k, x in p.items() if k != "name"}) for p in v}
        elif key in ("items", "additionalProperties") and isinstance(v, dict):
            out[key] = _json_schema(v)
        elif key == "anyOf":
            out[key] = [_json_schema(s) for s in v]
        else:
            out[key] = v
    return out


def _instance_validator() -> jsonschema.Draft7Validator:
    spec = yaml.safe_load(SPEC.read_text())
    schema = {
        "type": "object",
        "required": spec["required"],
        "properties": {name: _json_schema(v) for name, v in spec["options"].items()},
        "additionalProperties": False,  # an option the check does not know is a mistake
    }
    return jsonschema.Draft7Validator(schema)


def _instances() -> list[dict[str, Any]]:
    conf = yaml.safe_load(CONF.read_text())
    assert set(conf) == {"init_config", "instances"}
    return list(conf["instances"])


def _mapping(instance: dict[str, Any]) -> dict[str, str]:
    """Exposed metric name -> sent name, from the ``metrics`` list of one-entry mappings."""
    pairs = [next(iter(m.items())) for m in instance["metrics"]]
    assert all(len(m) == 1 for m in instance["metrics"])
    assert len({k for k, _ in pairs}) == len(pairs), "a metric is listed twice"
    return dict(pairs)


def test_the_conf_is_a_valid_openmetrics_v2_instance() -> None:
    validator = _instance_validator()
    (instance,) = _instances()
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert errors == []
    assert "prometheus_url" not in instance  # the V2 mode, selected by openmetrics_endpoint
    assert instance["openmetrics_endpoint"].endswith("/metrics") and instance["namespace"] == "duet"
    sent = list(_mapping(instance).values())
    assert len(set(sent)) == len(sent) and all(s.replace(".", "_").isidentifier() for s in sent)


def test_the_validator_refuses_unknown_options_and_wrong_types() -> None:
    validator = _instance_validator()
    (instance,) = _instances()
    for broken in (
        {**instance, "openmetrics_endpoit": "http://x/metrics"},  # misspelled option
        {**instance, "min_collection_interval": "15s"},  # a number
        {**instance, "metrics": [{"duet_requests": {"name": 3}}]},  # name must be a string
        {k: v for k, v in instance.items() if k != "namespace"},  # required by the openmetrics spec
    ):
        assert not validator.is_valid(broken), broken


def test_the_api_key_is_a_secret_handle_not_a_key() -> None:
    (instance,) = _instances()
    assert instance["headers"] == {"X-API-Key": "ENC[duet_api_key]"}  # resolved by the Agent's secrets backend


@pytest.mark.e2e
def test_every_metric_of_a_running_server_is_mapped_and_nothing_else(small_export: Path, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    (instance,) = _instances()
    key = "datadog-test-key-0123456789"
    with running_server(small_export, tmp_path, env={"DUET_API_KEY": key}) as server:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401  # hence `headers`
        r = httpx.get(f"{server.url}/metrics", headers={"X-API-Key": key}, timeout=10)
        assert r.status_code == 200, r.text
    # Family names as the check reads them (counters without `_total`); the `_created`
    # timestamps prometheus_client adds are not metrics of their own.
    families = {f.name: f.type for f in text_string_to_metric_families(r.text) if not f.name.endswith("_created")}
    assert any(n.startswith("duet_drift_") for n in families)  # the drift gauges are there to check
    assert set(_mapping(instance)) == set(families)
    assert {t for t in families.values()} <= {"counter", "gauge", "histogram"}
