"""The ModelDeployment builders are pure: golden files pin a fixed-replica and an autoscaled
deployment; the tests below say which properties matter and why."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard_operator.api import ModelDeployment
from modelyard_operator.api.deployment import ServedModel
from modelyard_operator.builders.deployment import (
    children,
    horizontal_pod_autoscaler,
    pod_disruption_budget,
    server_deployment,
    service,
    service_url,
    termination_grace_seconds,
)
from modelyard_operator.names import MODEL_URI_ANNOTATION, TEMPLATE_HASH_ANNOTATION
from modelyard_operator.settings import Settings
from modelyard_server.config import ServerSettings
from tests.conftest import load_sample, with_changes

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(server_image="registry.example/modelyard/server:test")
IDENTITY = {
    "metadata.namespace": "ml",
    "metadata.uid": "7d1e0c4b-aaaa-bbbb-cccc-ddddeeeeffff",
    "metadata.generation": 2,
}
PINNED = ServedModel(
    uri="pvc://modelyard-models/default/iris/models/model.onnx",
    sha256="4f0c5e3ae1c3b6a5c8e2f2d7a9b1c0d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9",
)
TRAINED = ServedModel(
    uri="pvc://modelyard-models/ml/digits/0f3c2a9e/g3/model.onnx",
    sha256="9" * 64,
    training="digits",
    training_generation=3,
)


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def pinned(**changes: Any) -> ModelDeployment:
    document = with_changes(
        load_sample("pinned-model-deployment.yaml"), {**IDENTITY, "spec.replicas": 1, **changes}
    )
    return ModelDeployment.model_validate(document)


def autoscaled(**changes: Any) -> ModelDeployment:
    custom = {"name": "modelyard_server_inflight_requests", "targetAverageValue": "4"}
    document = with_changes(
        load_sample("digits-deployment.yaml"),
        # Named as the pinned sample, so that both share the expectations below.
        {**IDENTITY, "metadata.name": "digits", "spec.autoscaling.customMetric": custom, **changes},
    )
    return ModelDeployment.model_validate(document)


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def _server(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in _pod(manifest)["containers"] if c["name"] == "server")


@pytest.mark.parametrize(
    ("golden", "md", "model"),
    [
        ("deployment-1-replica.yaml", pinned(), PINNED),
        ("deployment-autoscaling.yaml", autoscaled(), TRAINED),
    ],
)
def test_children_match_golden_files(golden: str, md: ModelDeployment, model: ServedModel) -> None:
    rendered = yaml.dump_all(
        children(md, model, SETTINGS, service_monitor_crd=True), Dumper=_PlainDumper, sort_keys=True
    )
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.read_text() == rendered, "builders changed: review, then UPDATE_GOLDEN=1"


def test_an_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    assert "replicas" not in server_deployment(autoscaled(), TRAINED, SETTINGS)["spec"]
    assert server_deployment(pinned(), PINNED, SETTINGS)["spec"]["replicas"] == 1
    assert (
        server_deployment(pinned(**{"spec.replicas": ...}), PINNED, SETTINGS)["spec"]["replicas"]
        == 1
    )
    assert (
        server_deployment(pinned(**{"spec.replicas": 0}), PINNED, SETTINGS)["spec"]["replicas"] == 0
    )


def test_hpa_bounds_metrics_and_behavior() -> None:
    hpa = horizontal_pod_autoscaler(autoscaled(**{"spec.autoscaling.minReplicas": 2}))
    assert hpa is not None
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "digits",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 4)
    cpu, pods = spec["metrics"]
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    assert pods["pods"] == {
        "metric": {"name": "modelyard_server_inflight_requests"},
        "target": {"type": "AverageValue", "averageValue": "4"},
    }
    # Scale-down waits out a window, so that replicas do not flap after a short lull.
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert horizontal_pod_autoscaler(pinned()) is None


def test_no_custom_metric_scales_on_cpu_alone() -> None:
    hpa = horizontal_pod_autoscaler(autoscaled(**{"spec.autoscaling.customMetric": ...}))
    assert hpa is not None
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]


@pytest.mark.parametrize(
    ("changes", "wanted"),
    [
        ({"spec.replicas": 1}, False),
        ({"spec.replicas": 2}, True),
        ({"spec.replicas": ..., "spec.autoscaling": {"minReplicas": 1, "maxReplicas": 1}}, False),
        ({"spec.replicas": ..., "spec.autoscaling": {"minReplicas": 1, "maxReplicas": 3}}, True),
    ],
)
def test_a_pdb_exists_only_when_there_may_be_more_than_one_replica(
    changes: dict[str, Any], wanted: bool
) -> None:
    pdb = pod_disruption_budget(pinned(**changes))
    assert (pdb is not None) == wanted
    if pdb is not None:
        assert pdb["spec"]["maxUnavailable"] == 1
        assert "minAvailable" not in pdb["spec"]


def test_service_monitor_needs_its_crd_and_monitoring() -> None:
    def kinds(md: ModelDeployment, crd: bool) -> list[str]:
        return [m["kind"] for m in children(md, TRAINED, SETTINGS, crd)]

    md = autoscaled()
    assert kinds(md, True)[-1] == "ServiceMonitor"
    assert "ServiceMonitor" not in kinds(md, False)
    off = autoscaled(**{"spec.monitoring.serviceMonitor": "off"})
    assert "ServiceMonitor" not in kinds(off, True)


def test_the_server_env_is_what_the_server_accepts() -> None:
    md = autoscaled()
    env = {e["name"]: e["value"] for e in _server(server_deployment(md, TRAINED, SETTINGS))["env"]}
    settings = ServerSettings.from_env(env)
    assert settings.model_path == "/models/model.onnx"
    assert settings.model_name == "digits"
    assert settings.model_version == "g3"
    assert settings.max_batch_size == 64
    assert settings.intra_op_threads == 1


def test_init_container_fetches_from_the_claim_and_verifies_the_checksum() -> None:
    pod = _pod(server_deployment(pinned(), PINNED, SETTINGS))
    fetch = pod["initContainers"][0]
    command = fetch["command"]
    assert command[:3] == ["python", "-m", "modelyard_server.fetch"]
    assert command[command.index("--source") + 1] == (
        "/mnt/pvc/modelyard-models/default/iris/models/model.onnx"
    )
    assert command[command.index("--sha256") + 1] == PINNED.sha256
    source = next(v for v in pod["volumes"] if v["name"] == "source")
    assert source["persistentVolumeClaim"] == {"claimName": "modelyard-models", "readOnly": True}
    unverified = ServedModel(uri=PINNED.uri)
    assert (
        "--sha256"
        not in _pod(server_deployment(pinned(), unverified, SETTINGS))["initContainers"][0][
            "command"
        ]
    )


def test_probes_and_graceful_shutdown() -> None:
    md = pinned(**{"spec.server.shutdownGraceSeconds": 30.5})
    manifest = server_deployment(md, PINNED, SETTINGS)
    server = _server(manifest)
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/models/iris-pinned/ready"
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/models/iris-pinned/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= SETTINGS.server_startup_seconds
    assert server["lifecycle"]["preStop"] == {"sleep": {"seconds": SETTINGS.server_prestop_seconds}}
    grace = _pod(manifest)["terminationGracePeriodSeconds"]
    # The kubelet must not SIGKILL while the preStop sleep and the server's drain still run.
    assert grace == termination_grace_seconds(md, SETTINGS)
    assert grace > SETTINGS.server_prestop_seconds + 30.5


def test_rollout_strategy_keeps_old_replicas_serving() -> None:
    spec = server_deployment(pinned(), PINNED, SETTINGS)["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert spec["progressDeadlineSeconds"] == 600
    counted = pinned(**{"spec.rollout": {"maxSurge": "1", "maxUnavailable": "10%"}})
    rolling = server_deployment(counted, PINNED, SETTINGS)["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 1, "maxUnavailable": "10%"}


def test_restricted_pod_security() -> None:
    pod = _pod(server_deployment(pinned(), PINNED, SETTINGS))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod["initContainers"], *pod["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def test_template_names_its_model_and_changes_only_with_it() -> None:
    md = pinned()
    first = server_deployment(md, PINNED, SETTINGS)["spec"]["template"]
    again = server_deployment(md, PINNED, SETTINGS)["spec"]["template"]
    other = server_deployment(md, TRAINED, SETTINGS)["spec"]["template"]
    # A rollback renders the old template byte for byte, so the old ReplicaSet is reused.
    assert first == again
    assert first["metadata"]["annotations"][MODEL_URI_ANNOTATION] == PINNED.uri
    hashes = {t["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] for t in (first, other)}
    assert len(hashes) == 2


def test_selectors_match_the_pods_and_never_the_resources_own_labels() -> None:
    md = autoscaled(
        **{
            "metadata.labels": {"argocd.argoproj.io/instance": "x", "team": "a"},
            "spec.pod.labels": {"team": "serving"},
        }
    )
    wanted = children(md, TRAINED, SETTINGS, True)
    deployment = wanted[0]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["team"] == "serving"  # from spec.pod.labels, not from metadata.labels
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        service(md)["spec"]["selector"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
    for manifest in wanted:
        assert "team" not in manifest["metadata"]["labels"]
        assert "argocd.argoproj.io/instance" not in manifest["metadata"]["labels"]
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == IDENTITY["metadata.uid"]
        assert manifest["metadata"]["name"] == "digits"


def test_service_ports_and_url() -> None:
    ports = {p["name"]: p for p in service(pinned())["spec"]["ports"]}
    assert ports["http"]["port"] == 8080
    assert ports["metrics"]["targetPort"] == "http"  # /metrics is served on the HTTP port
    assert service_url(pinned(), SETTINGS) == "http://iris-pinned.ml.svc.cluster.local:8080"


def test_every_empty_dir_has_a_size_limit() -> None:
    volumes = _pod(server_deployment(pinned(), PINNED, SETTINGS))["volumes"]
    limits = {v["name"]: v["emptyDir"] for v in volumes if "emptyDir" in v}
    assert limits == {"models": {"sizeLimit": "8Gi"}, "tmp": {"sizeLimit": "1Gi"}}
