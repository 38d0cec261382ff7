"""CustomResourceDefinitions generated from the API models (pure: models in, dicts out).

`python -m modelyard_operator.api.crd crds/` writes them, with the kustomization that lets
deploy/default include that directory, and the Helm chart's copy (charts/modelyard/crds/, which
may hold CRDs only) when the target lies next to charts/modelyard. A test fails when any is stale.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from modelyard_operator.api.deployment import MAX_NAME_LENGTH as MAX_DEPLOYMENT_NAME_LENGTH
from modelyard_operator.api.deployment import ModelDeploymentSpec, ModelDeploymentStatus
from modelyard_operator.api.meta import GROUP, VERSION, cel
from modelyard_operator.api.training import MAX_NAME_LENGTH as MAX_TRAINING_NAME_LENGTH
from modelyard_operator.api.training import ModelTrainingSpec, ModelTrainingStatus

CATEGORY = "modelyard"
# Keys of JSON Schema that a structural OpenAPI v3 schema keeps as they are.
_KEPT_KEYS = {
    "type", "description", "required", "enum", "minimum", "maximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "minProperties", "maxProperties", "default", "format",
    "x-kubernetes-validations",
}  # fmt: skip


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and how kubectl shows it."""

    kind: str
    plural: str
    short_name: str
    spec: type[BaseModel]
    status: type[BaseModel]
    max_name_length: int
    description: str
    columns: list[dict[str, Any]] = field(default_factory=list)


def _column(name: str, json_path: str, type_: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": json_path, **extra}


_AGE = _column("Age", ".metadata.creationTimestamp", "date")

KINDS = (
    Kind(
        kind="ModelTraining",
        plural="modeltrainings",
        short_name="mt",
        spec=ModelTrainingSpec,
        status=ModelTrainingStatus,
        max_name_length=MAX_TRAINING_NAME_LENGTH,
        description=(
            "ModelTraining trains a PyTorch model with DDP on a gang of pods, evaluates it on "
            "held-out data and exports it to ONNX with a parity check. Each spec generation is "
            "one run."
        ),
        columns=[
            _column("Phase", ".status.phase"),
            _column("Progress", ".status.progress.summary"),
            _column("ETA", ".status.progress.eta"),
            _column("Accuracy", ".status.result.metrics.test_accuracy", "number"),
            _AGE,
        ],
    ),
    Kind(
        kind="ModelDeployment",
        plural="modeldeployments",
        short_name="md",
        spec=ModelDeploymentSpec,
        status=ModelDeploymentStatus,
        max_name_length=MAX_DEPLOYMENT_NAME_LENGTH,
        description=(
            "ModelDeployment serves an ONNX model with ONNX Runtime over the Open Inference "
            "Protocol from autoscaled Deployments, and rolls a failed rollout back."
        ),
        columns=[
            _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            _column("Model", ".status.model.uri"),
            _column("Replicas", ".status.readyReplicas", "integer"),
            _column("URL", ".status.url"),
            _AGE,
        ],
    ),
)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema rewritten as a Kubernetes structural OpenAPI v3 schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(schema, schema.get("$defs", {}))


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$defs"}}
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"unions are not structural: {variants}")
        return _structural({**variants[0], **node}, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT_KEYS}
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[flag] = node[bound]
            out[bound] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if not _useful_default(out.get("default")):
        out.pop("default", None)
    elif isinstance(out["default"], float) and out["default"].is_integer():
        out["default"] = int(out["default"])  # as the API server stores it: no apply diff
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
    elif out.get("type") == "object":
        extra = node.get("additionalProperties", True)
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
    return out


def _useful_default(value: Any) -> bool:
    """Scalar defaults and non-empty scalar lists go into the CRD; objects stay implicit."""
    if value is None or isinstance(value, dict):
        return False
    return not isinstance(value, list) or bool(value)


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural_schema(kind.spec)
    status_schema = structural_schema(kind.status)
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "API version: " + f"{GROUP}/{VERSION}.",
            },
            "kind": {"type": "string", "description": f"Kind: {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            cel(
                f"self.metadata.name.size() <= {kind.max_name_length}",
                f"metadata.name must be at most {kind.max_name_length} characters, "
                "so that the names of its children fit 63",
            ),
            cel(
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must be a DNS label (lower case letters, digits and '-', "
                "starting with a letter), because it names Services",
            ),
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": [kind.short_name],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def file_name(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"


class _NoAliases(yaml.SafeDumper):
    """A schema used twice (EnvVar) is written out twice: kubectl users read these files."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(kind: Kind) -> str:
    header = "# Generated by `make crds` from modelyard_operator.api; do not edit.\n"
    return header + yaml.dump(crd(kind), Dumper=_NoAliases, sort_keys=False, width=100)


# kustomize takes `Kustomization` as well as kustomization.yaml; `kubectl apply -f crds/` reads
# only *.yaml, *.yml and *.json files, so it skips this one instead of failing on a Kustomization
# (which is no Kubernetes object).
KUSTOMIZATION = "Kustomization"
CHART_CRDS = Path("charts") / "modelyard" / "crds"


def render_kustomization() -> str:
    """Lets `kubectl apply -k` (deploy/default) take the CRDs from this very directory."""
    header = (
        "# Generated by `make crds`; do not edit. No .yaml in the name, so that\n"
        "# `kubectl apply -f crds/` skips it; `kubectl apply -k` reads it.\n"
    )
    document = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [file_name(kind) for kind in KINDS],
    }
    return header + yaml.safe_dump(document, sort_keys=False)


def chart_crds_for(directory: Path) -> Path | None:
    """The chart's crds/ next to `directory`, when the chart is there (the repository layout)."""
    chart = directory.resolve().parent / CHART_CRDS
    return chart if (chart.parent / "Chart.yaml").exists() else None


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = directory / file_name(kind)
        path.write_text(render(kind))
        written.append(path)
    kustomization = directory / KUSTOMIZATION
    kustomization.write_text(render_kustomization())
    written.append(kustomization)
    chart = chart_crds_for(directory)
    if chart is not None:
        # Helm installs every file in a chart's crds/: CRDs only, no kustomization.yaml.
        chart.mkdir(exist_ok=True)
        for kind in KINDS:
            path = chart / file_name(kind)
            path.write_text(render(kind))
            written.append(path)
    return written


def main(argv: list[str]) -> None:
    target = Path(argv[0]) if argv else Path("crds")
    for path in write_all(target):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
