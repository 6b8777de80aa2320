"""Write the trimmed openAPIV3 schemas of this folder from the upstream CRD files.

    python tests/data/crds/trim.py KSERVE_REPO PROMETHEUS_OPERATOR_REPO

(each a checkout at the commit README.md names). Descriptions and status are dropped
everywhere; from the InferenceService, everything but spec.predictor's pod fields (the
framework predictors, workerSpec, transformer, explainer): a manifest that uses a dropped
field fails validation, so re-trim with that field kept if one is ever needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
SOURCES = {
    "inferenceservice.v1beta1.json": ("kserve", "config/crd/full/serving.kserve.io_inferenceservices.yaml", "v1beta1"),
    "podmonitor.v1.json": (
        "prometheus",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "v1",
    ),
    "prometheusrule.v1.json": (
        "prometheus",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
        "v1",
    ),
}
PREDICTOR_DROPPED = [
    "huggingface",
    "lightgbm",
    "model",
    "onnx",
    "paddle",
    "pmml",
    "pytorch",
    "sklearn",
    "tensorflow",
    "triton",
    "xgboost",
    "workerSpec",
]


def strip(schema: Any) -> Any:
    """The schema without 'description' keywords (a property named description is kept)."""
    if isinstance(schema, list):
        return [strip(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: strip(sub) for name, sub in value.items()}
        else:
            out[key] = strip(value)
    return out


def openapi_schema(crd_file: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_file.read_text())
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = found["schema"]["openAPIV3Schema"]
    schema["properties"].pop("status", None)
    return schema


def main(kserve: Path, prometheus: Path) -> None:
    repos = {"kserve": kserve, "prometheus": prometheus}
    for name, (repo, path, version) in SOURCES.items():
        schema = openapi_schema(repos[repo] / path, version)
        if name.startswith("inferenceservice"):
            spec = schema["properties"]["spec"]
            spec["properties"] = {"predictor": spec["properties"]["predictor"]}
            for field in PREDICTOR_DROPPED:
                spec["properties"]["predictor"]["properties"].pop(field)
        (HERE / name).write_text(json.dumps(strip(schema), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
