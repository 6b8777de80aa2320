"""deploy/k8s and deploy/kserve, validated offline as the API server would (strict: an
unknown field is an error): built-in kinds against the Kubernetes schemas that
`kubernetes-validate` ships, custom resources (PodMonitor, PrometheusRule,
InferenceService) against their CRDs' openAPIV3 schemas (tests/data/crds/). Then what
the schemas cannot see: the manifests agree with each other and with the image, the
PrometheusRule holds exactly deploy/prometheus's rule groups, and every file under
deploy/ is validated by some test."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from test_deploy_docker import DOCKER, IMAGE_PORT, SERVING, stages

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
CRDS = Path(__file__).parent / "data" / "crds"
# Kubernetes releases whose schemas the manifests must pass: the oldest minor still
# supported by the big managed offerings when this was written, and the newest shipped
# by kubernetes-validate 1.37.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.v1beta1.json",
}


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under deploy/ (kustomization.yaml is kustomize's, checked below)."""
    files = [*K8S.glob("*.yaml"), *KSERVE.glob("*.yaml")]
    return sorted(f for f in files if f.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no manifest"
    return docs


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in documents(path)]


def one(kind: str) -> dict[str, Any]:
    (found,) = [d for d in all_documents() if d["kind"] == kind]
    return found


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever the CRD lists the fields (what
    kubectl's default --validate=strict does), except where it preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (_strict(v) if k != "properties" else {n: _strict(s) for n, s in v.items()}) for k, v in schema.items()}
    if isinstance(out.get("pattern"), str) and "(?i)" in out["pattern"]:
        # Go's RE2 takes an inline flag anywhere ("^(?i)(abort|warn)?$"); Python only at the start.
        out["pattern"] = "(?i)" + out["pattern"].replace("(?i)", "")
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(name: str) -> jsonschema.Draft202012Validator:
    schema = _strict(json.loads((CRDS / name).read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate(doc: dict[str, Any], version: str) -> None:
    """Raise jsonschema.ValidationError (or a schema-not-found error) unless ``doc`` is valid."""
    assert doc.get("metadata", {}).get("name"), f"{doc.get('kind')}: metadata.name is required"
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        crd_validator(crd).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid(path: Path, version: str) -> None:
    for doc in documents(path):
        validate(doc, version)


@pytest.mark.parametrize(
    ("kind", "where", "bad"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0], {"readinesProbe": {}}),  # typo
        ("Deployment", ["spec"], {"replicas": "two"}),
        ("PodMonitor", ["spec", "podMetricsEndpoints", 0], {"bearerTokenSecrett": {}}),
        ("PrometheusRule", ["spec", "groups", 0, "rules", 0], {"for": 5}),
        ("InferenceService", ["spec", "predictor", "containers", 0], {"imagee": "x"}),
        ("InferenceService", ["spec", "predictor"], {"minReplicas": "one"}),
    ],
)
def test_validation_refuses_a_broken_manifest(kind: str, where: list[str | int], bad: dict[str, Any]) -> None:
    """The checks above would fail on a typo or a wrong type (they are not vacuous)."""
    doc = copy.deepcopy(one(kind))
    node: Any = doc
    for step in where:
        node = node[step]
    node.update(bad)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, KUBERNETES_VERSIONS[-1])


def _container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _mounted_secret_file(pod_spec: dict[str, Any], container: dict[str, Any]) -> tuple[str, str]:
    """(secret name, key) of the file DUET_API_KEY_FILE names, from the container's volume mounts."""
    path = Path(_env(container)["DUET_API_KEY_FILE"])
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container["volumeMounts"]:
        if Path(mount["mountPath"]) == path.parent and "secret" in volumes[mount["name"]]:
            assert mount.get("readOnly") is True
            return volumes[mount["name"]]["secret"]["secretName"], path.name
    raise AssertionError(f"DUET_API_KEY_FILE={path} is not in a mounted Secret")


def _check_serving_container(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    """What both the Deployment and the InferenceService must get right about duet's image."""
    image_cmd = stages(SERVING)[-1].exec_form("CMD")
    args = container["args"]
    assert args[1:][: len(image_cmd) - 1] == image_cmd[1:], (args, image_cmd)  # same flags as the image
    assert "--insecure" not in args
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {int(IMAGE_PORT)}
    for probe, route in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"]["path"] == route
    sc = {**pod_spec.get("securityContext", {}), **container["securityContext"]}
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    image_user = stages(SERVING)[-1].last("USER").split(":")[0]
    assert str(sc["runAsUser"]) == image_user
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp, "a read-only root filesystem needs a writable /tmp (emptyDir)"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    # thread pools sized by the CPU limit, not by the node's cores
    cpus = container["resources"]["limits"]["cpu"]
    for flag in ("--threads", "--decode-workers"):
        assert args[args.index(flag) + 1] == cpus, (flag, cpus)
    assert _env(container)["OMP_NUM_THREADS"] == cpus


def test_deployment_serves_the_mounted_export_with_the_secret_key() -> None:
    deployment, service, monitor = one("Deployment"), one("Service"), one("PodMonitor")
    pod = deployment["spec"]["template"]
    container = _container(pod["spec"], "duet")
    _check_serving_container(pod["spec"], container)
    model_mount = [m for m in container["volumeMounts"] if m["mountPath"] == container["args"][0]]
    assert model_mount and model_mount[0]["readOnly"] is True
    secret = _mounted_secret_file(pod["spec"], container)
    # the Service and the PodMonitor find these pods, on a port the container has
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    # /metrics needs the key: Prometheus reads the pods' own Secret; the job label the alert rules use is "duet"
    assert (endpoint["authorization"]["credentials"]["name"], endpoint["authorization"]["credentials"]["key"]) == secret
    assert labels[monitor["spec"]["jobLabel"]] == "duet"
    assert 'job="duet"' in (DEPLOY / "prometheus" / "alerts.yml").read_text()
    # SIGTERM drains for 30 s (duet serve --drain-seconds default) before the kubelet's SIGKILL
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30
    pvc = one("PersistentVolumeClaim")
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == model_mount[0]["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_inferenceservice_is_a_v2_custom_predictor_running_the_image() -> None:
    isvc = one("InferenceService")
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # the name KServe routes to and injects storage into
    env = _env(container)
    assert env["PROTOCOL"] == "v2"  # how KServe reads a custom container's protocol
    assert env["STORAGE_URI"] and container["args"][0] == "/mnt/models"  # where KServe's storage initializer puts it
    assert container["args"][container["args"].index("--model-name") + 1] == isvc["metadata"]["name"]
    _check_serving_container(predictor, container)
    _mounted_secret_file(predictor, container)
    deployment = _container(one("Deployment")["spec"]["template"]["spec"], "duet")
    assert container["image"] == deployment["image"] and container["resources"] == deployment["resources"]


def test_prometheusrule_holds_exactly_the_alert_rule_files_groups() -> None:
    files = ("alerts.yml", "drift_rules.yml")
    expected = [g for name in files for g in yaml.safe_load((DEPLOY / "prometheus" / name).read_text())["groups"]]
    assert one("PrometheusRule")["spec"]["groups"] == expected, (
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/{alerts,drift_rules}.yml: copy their groups"
    )


def test_kustomization_applies_every_manifest_of_the_folder() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files() if p.parent == K8S)
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"].split(":")[0] for c in one("Deployment")["spec"]["template"]["spec"]["containers"]}
    assert used <= images


def test_memory_request_is_documented_with_the_measured_idle_rss() -> None:
    """The number behind the request is stated in docs/deploy.md (measured by the e2e test
    of test_deploy_docker.py, which asserts the idle RSS stays under the request)."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    request = _container(one("Deployment")["spec"]["template"]["spec"], "duet")["resources"]["requests"]["memory"]
    stated = re.search(r"measured\s+idle RSS \((\d+) MiB", doc)
    assert stated and request in doc, "docs/deploy.md#sizing states the measured idle RSS and the request"
    assert int(stated.group(1)) < int(request.removesuffix("Mi"))


def _named_by_a_test(path: Path) -> bool:
    """Some tests/test_*.py names the file and its folder (the other deploy/ folders' own tests)."""
    for test in Path(__file__).parent.glob("test_*.py"):
        text = test.read_text()
        if path.name in text and path.parent.name in text:
            return True
    return False


def test_every_file_under_deploy_is_validated_by_a_test() -> None:
    checked_here = {*manifest_files(), K8S / "kustomization.yaml", *DOCKER.glob("Dockerfile*")}
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    unchecked = [str(p.relative_to(ROOT)) for p in files if p not in checked_here and not _named_by_a_test(p)]
    assert not unchecked, f"files under deploy/ that no test validates: {unchecked}"
    for folder in (K8S, KSERVE, DOCKER):  # the folders checked here hold nothing the checks skip
        others = [p for p in folder.iterdir() if p not in checked_here]
        assert not others, f"{others}: extend tests/test_deploy_*.py to validate them"
