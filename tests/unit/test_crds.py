"""crds/ is generated from the API models, fresh, structural and small enough for kubectl apply."""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from modelyard_operator.api.crd import (
    CHART_CRDS,
    KINDS,
    KUSTOMIZATION,
    crd,
    file_name,
    render,
    render_kustomization,
)
from tests.conftest import ROOT
from tests.unit.test_api_models import CROSS_FIELD

CRDS = ROOT / "crds"
CHART = ROOT / CHART_CRDS
CLIENT_SIDE_APPLY_LIMIT = 256 * 1024
# Keys that the structural-schema rules forbid or that only JSON Schema knows.
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "discriminator"}


def _schemas(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schemas(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schemas(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_file_is_fresh(kind: Any) -> None:
    path = CRDS / file_name(kind)
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == render(kind), f"{path} is stale: run `make crds`"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_chart_copy_is_fresh(kind: Any) -> None:
    path = CHART / file_name(kind)
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == render(kind), f"{path} is stale: run `make crds`"


def test_kustomization_is_fresh() -> None:
    path = CRDS / KUSTOMIZATION
    assert path.exists(), f"{path} is missing: run `make crds`"
    assert path.read_text() == render_kustomization(), f"{path} is stale: run `make crds`"


def test_no_stray_files_in_crds() -> None:
    names = sorted(file_name(k) for k in KINDS)
    assert sorted(p.name for p in CRDS.iterdir()) == sorted([*names, KUSTOMIZATION])
    # Helm would try to install anything else in the chart's crds/ as an object.
    assert sorted(p.name for p in CHART.iterdir()) == names


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_fits_client_side_apply(kind: Any) -> None:
    size = len(render(kind).encode())
    # The last-applied annotation holds the whole object; report the margin we have.
    print(f"{kind.kind}: {size} bytes, {size / CLIENT_SIDE_APPLY_LIMIT:.0%} of 256 KiB")
    assert size < CLIENT_SIDE_APPLY_LIMIT


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural_and_described(kind: Any) -> None:
    root = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _schemas(root):
        assert not FORBIDDEN & node.keys(), f"{path} has {FORBIDDEN & node.keys()}"
        assert "type" in node, f"{path} has no type"
        is_field = path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}"))
        if is_field:
            assert node.get("description"), f"{path} has no description"
        if node.get("type") == "object" and "properties" not in node and path != ".metadata":
            assert "additionalProperties" in node or node.get(
                "x-kubernetes-preserve-unknown-fields"
            ), f"{path} is an object without a schema"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_lists_and_strings_read_by_rules_are_bounded(kind: Any) -> None:
    root = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _schemas(root):
        for rule in node.get("x-kubernetes-validations", []):
            for name, child in node.get("properties", {}).items():
                if name in rule["rule"] and child["type"] in ("string", "array"):
                    bounded = "maxLength" in child or "maxItems" in child or "enum" in child
                    assert bounded, f"{path}.{name} is read by a CEL rule but unbounded"


def test_crds_name_their_kinds() -> None:
    for kind in KINDS:
        document = yaml.safe_load((CRDS / file_name(kind)).read_text())
        names = document["spec"]["names"]
        assert names["kind"] == kind.kind
        assert names["shortNames"] == [kind.short_name]
        assert names["categories"] == ["modelyard"]
        version = document["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"


# ------------------------------------------------- every pydantic cross-field check has a CEL twin

# Every cross-field validator of the models in the CRDs, by qualified name: for each of its
# `raise` statements in source order, the message of the CEL rule (on that model's node of the
# generated CRD) that makes the API server refuse the same specs. One rule may twin several
# raises. A new validator, or a new raise in one, fails the tests below until it is listed here
# and its CEL rule exists; tests/unit/test_api_models.py::CROSS_FIELD holds a spec per rule that
# both pydantic and (tests/integration/test_crds_api.py) the API server refuse.
_ENTRYPOINT = "entrypoint is required when architecture is 'custom', and only allowed then"
_TARGET = "target is required when source.uri is set, and only allowed then"
TWINS: dict[str, tuple[str, ...]] = {
    "ModelConfig._check_architecture": (
        _ENTRYPOINT,
        _ENTRYPOINT,
        "entrypointArgs is only allowed when architecture is 'custom'",
        "kernelSize must be odd so that padding keeps the image size",
    ),
    "SyntheticData._check_shape": (
        "informative must not exceed features",
        "noise is a fraction of flipped labels for classification: <= 1",
        "classes must be at most half of samples",
        "classification needs 2**informative >= classes",
    ),
    "DataSource._check_exactly_one": ("set exactly one of builtin, synthetic or uri",),
    "Split._check_fractions": ("validation + test must be below 0.9 so that training keeps rows",),
    "DataConfig._check_columns": (
        _TARGET,
        _TARGET,
        "features is only allowed with source.uri",
        "features must not contain the target column",
    ),
    "Optimizer._check_momentum": (
        "nesterov needs name 'sgd' and momentum > 0",
        "momentum only applies to name 'sgd'",
    ),
    "TrainingConfig._check_schedule": (
        "schedule.warmupEpochs must be less than epochs",
        "earlyStopping.metric 'val_accuracy' needs loss 'cross_entropy'",
    ),
    "TrainerConfig._check_task": (
        "training.loss 'mse' is for regression, but data.source.builtin is a classification "
        "data set",
        "training.loss does not fit data.source.synthetic.task: 'mse' is for regression, "
        "'cross_entropy' for classification",
        "training.earlyStopping needs data.split.validation > 0",
    ),
    "ModelTrainingSpec._queue_owns_suspend": (
        "runPolicy.suspend cannot be combined with scheduling.queueName: "
        "Kueue owns suspension of queued runs",
    ),
    "ModelTrainingSpec._s3_needs_connection": (
        "s3: output.uri is an s3:// URI, so spec.s3 (endpoint and Secret) is required",
        "s3: data.source.uri is an s3:// URI, so spec.s3 (endpoint and Secret) is required",
    ),
    "ModelTrainingSpec._batch_divides_among_processes": (
        "training.batchSize must be divisible by workers x processesPerWorker (the world size), "
        "so that every process gets the same share of each batch",
    ),
    "ModelTrainingSpec._script_replaces_the_trainer": (
        "script replaces the built-in trainer: it cannot be combined with model, data, training, "
        "checkpoint or export",
    ),
    "ServerConfig._delay_inside_grace": (
        "shutdownDelaySeconds must be less than shutdownGraceSeconds",
    ),
    "Gate._bounds": ("gate needs minimum or maximum", "gate.minimum must not exceed gate.maximum"),
    "ModelSource._one_source": (
        "exactly one of model.uri and model.fromTraining must be set",
        "model.sha256 is only allowed with model.uri",
        "model.sha256 is required with model.uri: the server refuses a file that does not match it",
        "model.gate needs model.fromTraining",
    ),
    "Autoscaling._bounds": ("autoscaling.minReplicas must not exceed autoscaling.maxReplicas",),
    "ModelDeploymentSpec._replicas_or_autoscaling": ("set replicas or autoscaling, not both",),
    "DriftMonitoring._min_rows_fit_the_window": (
        "minRows must be at most 90% of windowRows (the window drops a tenth at a time)",
    ),
    "ModelDeploymentSpec._s3_needs_connection": (
        "s3: model.uri is an s3:// URI, so spec.s3 (endpoint and Secret) is required",
    ),
}


def _models_in(model: type[BaseModel]) -> set[type[BaseModel]]:
    """`model` and every model its fields hold (through Optional, list, dict, Annotated)."""
    found = {model}
    stack = [field.annotation for field in model.model_fields.values()]
    while stack:
        annotation = stack.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found |= _models_in(annotation)
        else:
            stack.extend(typing.get_args(annotation))
    return found


def _syntax(function: Callable[..., Any]) -> ast.FunctionDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)
    return definition


def _reads_other_fields(function: Callable[..., Any]) -> bool:
    """A field validator sees the other fields only as `info.data` (its ValidationInfo)."""
    definition = _syntax(function)
    names = [a.arg for a in definition.args.args[2:]]  # after cls and the value
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "data"
        and isinstance(node.value, ast.Name)
        and node.value.id in names
        for node in ast.walk(definition)
    )


def cross_field_validators(model: type[BaseModel]) -> dict[str, Callable[..., Any]]:
    """Its model validators (own and inherited) and field validators that read other fields."""
    decorators = model.__pydantic_decorators__
    found = [d.func for d in decorators.model_validators.values()]
    found += [d.func for d in decorators.field_validators.values() if _reads_other_fields(d.func)]
    return {function.__qualname__: function for function in found}


MODELS = sorted(
    set().union(*(_models_in(m) for kind in KINDS for m in (kind.spec, kind.status))),
    key=lambda m: m.__qualname__,
)


def _model_nodes(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The CRD schema nodes generated from `model`: those with exactly its fields."""
    fields = {info.alias or name for name, info in model.model_fields.items()}
    return [
        node
        for kind in KINDS
        for _, node in _schemas(crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        if set(node.get("properties", {})) == fields
    ]


def test_every_cross_field_validator_is_mapped_to_its_cel_twins() -> None:
    derived = {name for model in MODELS for name in cross_field_validators(model)}
    assert derived - TWINS.keys() == set(), "cross-field validators without a CEL twin in TWINS"
    assert TWINS.keys() - derived == set(), "TWINS names validators that no longer exist"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__qualname__)
def test_every_raise_of_a_validator_has_a_cel_rule_on_the_models_node(
    model: type[BaseModel],
) -> None:
    validators = cross_field_validators(model)
    if not validators:
        return
    nodes = _model_nodes(model)
    assert nodes, f"no node of the CRDs has exactly the fields of {model.__qualname__}"
    for name, function in validators.items():
        raises = sum(isinstance(node, ast.Raise) for node in ast.walk(_syntax(function)))
        assert len(TWINS[name]) == raises, f"{name} has {raises} raises: list a twin for each"
        for node in nodes:
            messages = {rule["message"] for rule in node.get("x-kubernetes-validations", [])}
            missing = set(TWINS[name]) - messages
            assert not missing, f"{name}: no CEL rule with message {missing} on its node"


def test_every_cel_twin_has_a_case_that_both_refuse() -> None:
    """Each case names one rule (its fragment is in exactly one twin), and each rule has one."""
    twins = {message for messages in TWINS.values() for message in messages}
    covered = set()
    for case in CROSS_FIELD:
        matches = [message for message in twins if case.fragment in message]
        assert len(matches) == 1, f"{case.fragment!r} matches {matches}"
        covered.add(matches[0])
    assert twins - covered == set(), "CEL twins without a case in test_api_models.CROSS_FIELD"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_spec_pod_has_no_privileged_settings(kind: Any) -> None:
    """The chart's admission policy judges only volumes (hostPath), because spec.pod can ask
    for nothing else that reaches the node: a field added here must be judged there too."""
    spec = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pod = spec["properties"]["pod"]
    assert "x-kubernetes-preserve-unknown-fields" not in pod
    node_level = {"securityContext", "hostNetwork", "hostPID", "hostIPC", "hostUsers"}
    node_level |= {"privileged", "capabilities", "allowPrivilegeEscalation", "initContainers"}
    assert not node_level & set(pod["properties"])
    assert set(pod["properties"]) == {
        "image", "imagePullPolicy", "imagePullSecrets", "env", "volumes", "volumeMounts",
        "serviceAccountName", "labels", "annotations",
    }  # fmt: skip
