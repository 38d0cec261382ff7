"""Children of a ModelDeployment: the server Deployment, its Service, HPA, PDB, ServiceMonitor.

Pure: (ModelDeployment, the model to serve, settings) -> manifests. Which model to serve is the
status planner's decision (status/deployment.py); these functions only render it.
"""

from __future__ import annotations

import math
from typing import Any

from modelyard_operator.api.deployment import ModelDeployment, ServedModel
from modelyard_operator.builders.common import (
    SERVER_MODEL_SIZE,
    SERVER_SCRATCH_SIZE,
    child,
    labels,
    pod_override_fields,
    resources,
    restricted_container_security,
    restricted_pod_security,
    scheduling_fields,
    spec_hash,
    user_env,
)
from modelyard_operator.names import (
    DEPLOYMENT_LABEL,
    INSTANCE_LABEL,
    MODEL_SHA256_ANNOTATION,
    MODEL_URI_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
)
from modelyard_operator.ownership import Manifest
from modelyard_operator.settings import Settings
from modelyard_server import contracts
from modelyard_server.config import env_name
from modelyard_storage.uri import PvcUri, parse_uri
from modelyard_trainer.contracts import METADATA_FILE

KIND = "ModelDeployment"
SERVER_CONTAINER = "server"
FETCH_CONTAINER = "fetch"
PVC_MOUNT_ROOT = "/mnt/pvc"
MODEL_DIR = "/models"
MODEL_FILE = "model.onnx"
HTTP_PORT = contracts.DEFAULT_PORT
GRPC_PORT = contracts.DEFAULT_GRPC_PORT
# The server exposes /metrics on its HTTP port; the Service names it separately so that a
# ServiceMonitor (and a NetworkPolicy) can address metrics alone.
METRICS_SERVICE_PORT = 9090
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
SERVICE_MONITOR_API_VERSION = "monitoring.coreos.com/v1"
REVISION_HISTORY_LIMIT = 5
# Seconds the kubelet allows beyond the server's own drain, so that it never SIGKILLs a drain.
GRACE_MARGIN_SECONDS = 5
STARTUP_PERIOD_SECONDS = 2


def deployment_labels(md: ModelDeployment, component: str) -> dict[str, str]:
    return labels(DEPLOYMENT_LABEL, md.metadata.name, component)


def selector_labels(md: ModelDeployment) -> dict[str, str]:
    """Immutable in a Deployment: only what never changes for this object."""
    return {
        INSTANCE_LABEL: md.metadata.name,
        DEPLOYMENT_LABEL: md.metadata.name,
    }


def model_name(md: ModelDeployment) -> str:
    return md.spec.model_name or md.metadata.name


def model_version(model: ServedModel) -> str:
    """The training generation that produced the model, else 1."""
    return f"g{model.training_generation}" if model.training_generation else "1"


def service_url(md: ModelDeployment, settings: Settings) -> str:
    meta = md.metadata
    return f"http://{meta.name}.{meta.namespace}.svc.{settings.cluster_domain}:{HTTP_PORT}"


def is_autoscaled(md: ModelDeployment) -> bool:
    return md.spec.autoscaling is not None


def _child(
    md: ModelDeployment, api_version: str, kind: str, component: str, body: Manifest
) -> Manifest:
    owner = (KIND, md.metadata)
    name = md.metadata.name
    return child(api_version, kind, name, owner, deployment_labels(md, component), body)


def _int_or_percent(value: str) -> int | str:
    """'25%' stays a string; '1' must be the integer 1 (a string needs a percent sign)."""
    return value if value.endswith("%") else int(value)


def _model_source_path(model: ServedModel) -> tuple[str | None, str]:
    """(claim to mount or None, what the fetch container reads: a path or an s3:// URI)."""
    source = parse_uri(model.uri, "model.uri")
    if not isinstance(source, PvcUri):
        return None, model.uri
    return source.claim, f"{PVC_MOUNT_ROOT}/{source.claim}/{source.path}"


def model_annotations(model: ServedModel) -> dict[str, str]:
    annotations = {MODEL_URI_ANNOTATION: model.uri}
    if model.sha256:
        annotations[MODEL_SHA256_ANNOTATION] = model.sha256
    return annotations


def _fetch_container(md: ModelDeployment, model: ServedModel, image: str, pull: str) -> Manifest:
    claim, source = _model_source_path(model)
    command = [
        "python",
        "-m",
        "modelyard_server.fetch",
        "--source",
        source,
        "--dest",
        f"{MODEL_DIR}/{MODEL_FILE}",
        # The run's reference statistics, for drift monitoring (optional beside the model).
        "--metadata-dest",
        f"{MODEL_DIR}/{METADATA_FILE}",
        "--termination-log",
        "/dev/termination-log",
    ]
    if model.sha256:
        command += ["--sha256", model.sha256]
    mounts: list[dict[str, Any]] = [{"name": "models", "mountPath": MODEL_DIR}]
    if claim is not None:
        mounts.append(
            {"name": "source", "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True}
        )
    container: Manifest = {
        "name": FETCH_CONTAINER,
        "image": image,
        "imagePullPolicy": pull,
        "command": command,
        # Init containers count against scheduling as max(init, sum of containers): the
        # server's own resources add nothing to what the pod asks for.
        "resources": resources(md.spec.resources),
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if claim is None and md.spec.s3 is not None:
        # Only the fetcher talks to object storage: the server container never sees the keys.
        container["env"] = md.spec.s3.pod_env()
    return container


def _http_probe(path: str, period: int, failures: int, timeout: int = 2) -> Manifest:
    return {
        "httpGet": {"path": path, "port": contracts.PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _server_env(md: ModelDeployment, model: ServedModel) -> list[dict[str, Any]]:
    settings_env = {
        **md.spec.server.to_env(),
        env_name("model_path"): f"{MODEL_DIR}/{MODEL_FILE}",
        env_name("model_name"): model_name(md),
        env_name("model_version"): model_version(model),
        env_name("port"): str(HTTP_PORT),
        env_name("grpc_port"): str(GRPC_PORT),
        **_drift_env(md),
    }
    env = [{"name": key, "value": value} for key, value in sorted(settings_env.items())]
    return env + user_env(md.spec.pod)


def _drift_env(md: ModelDeployment) -> dict[str, str]:
    drift = md.spec.monitoring.drift
    if not drift.enabled:
        return {env_name("drift_window_rows"): "0"}
    return {
        env_name("drift_window_rows"): str(drift.window_rows),
        env_name("drift_min_rows"): str(drift.min_rows),
    }


def termination_grace_seconds(md: ModelDeployment, settings: Settings) -> int:
    """preStop sleep, then the server's own drain, then a margin: never cut a drain short."""
    drain = math.ceil(md.spec.server.shutdown_grace_seconds)
    return settings.server_prestop_seconds + drain + GRACE_MARGIN_SECONDS


def _server_container(
    md: ModelDeployment, model: ServedModel, image: str, pull: str, settings: Settings
) -> Manifest:
    ready_route = contracts.model_route(model_name(md)) + "/ready"
    startup_failures = math.ceil(settings.server_startup_seconds / STARTUP_PERIOD_SECONDS)
    return {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": pull,
        "command": ["python", "-m", "modelyard_server"],
        "env": _server_env(md, model),
        "ports": [
            {"name": contracts.PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": contracts.GRPC_PORT_NAME, "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "resources": resources(md.spec.resources),
        # Liveness waits until the model is loaded and warm; a slow load is not a hang.
        "startupProbe": _http_probe(ready_route, STARTUP_PERIOD_SECONDS, startup_failures),
        "readinessProbe": _http_probe(ready_route, 5, 2),
        # Generous: a server busy with a big batch is slow, not dead.
        "livenessProbe": _http_probe(contracts.ROUTE_LIVE, 10, 3, timeout=5),
        # Endpoints, kube-proxy and ingresses drop a terminating pod asynchronously; SIGTERM
        # (and so the server's drain) starts only after they had time to.
        "lifecycle": {"preStop": {"sleep": {"seconds": settings.server_prestop_seconds}}},
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *md.spec.pod.volume_mounts,
        ],
        "securityContext": restricted_container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def server_deployment(md: ModelDeployment, model: ServedModel, settings: Settings) -> Manifest:
    """The server pods: fetch + verify the model into an emptyDir, then serve it."""
    spec, meta = md.spec, md.metadata
    image = spec.pod.image or settings.server_image
    pull = spec.pod.image_pull_policy or settings.image_pull_policy
    claim, _ = _model_source_path(model)
    pod_labels = {**spec.pod.labels, **deployment_labels(md, "server")}
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": contracts.ROUTE_METRICS,
        **spec.pod.annotations,
        **model_annotations(model),
    }
    pod_spec: dict[str, Any] = {
        "securityContext": restricted_pod_security(),
        "terminationGracePeriodSeconds": termination_grace_seconds(md, settings),
        # Servers need no API access; mount no token unless the user brings an account.
        "automountServiceAccountToken": spec.pod.service_account_name is not None,
        "initContainers": [_fetch_container(md, model, image, pull)],
        "containers": [_server_container(md, model, image, pull, settings)],
        "volumes": [
            {"name": "models", "emptyDir": {"sizeLimit": SERVER_MODEL_SIZE}},
            {"name": "tmp", "emptyDir": {"sizeLimit": SERVER_SCRATCH_SIZE}},
            *(
                [
                    {
                        "name": "source",
                        "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
                    }
                ]
                if claim is not None
                else []
            ),
            *spec.pod.volumes,
        ],
        **pod_override_fields(spec.pod, None),
        **scheduling_fields(spec.scheduling),
    }
    template: dict[str, Any] = {
        "metadata": {"labels": pod_labels, "annotations": pod_annotations},
        "spec": pod_spec,
    }
    pod_annotations[TEMPLATE_HASH_ANNOTATION] = spec_hash(template)
    rollout = spec.rollout
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(md)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": _int_or_percent(rollout.max_surge),
                "maxUnavailable": _int_or_percent(rollout.max_unavailable),
            },
        },
        "progressDeadlineSeconds": rollout.progress_deadline_seconds,
        "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
        "template": template,
    }
    if not is_autoscaled(md):
        # With an HPA, replicas belong to the HPA: applying them would fight it.
        deployment_spec["replicas"] = 1 if spec.replicas is None else spec.replicas
    return child(
        "apps/v1",
        "Deployment",
        meta.name,
        (KIND, meta),
        deployment_labels(md, "server"),
        {"spec": deployment_spec},
    )


def service(md: ModelDeployment) -> Manifest:
    body = {
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(md),
            "ports": [
                {
                    "name": contracts.PORT_NAME,
                    "port": HTTP_PORT,
                    "targetPort": contracts.PORT_NAME,
                    "protocol": "TCP",
                },
                {
                    "name": contracts.GRPC_PORT_NAME,
                    "port": GRPC_PORT,
                    "targetPort": contracts.GRPC_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": "metrics",
                    "port": METRICS_SERVICE_PORT,
                    "targetPort": contracts.PORT_NAME,
                    "protocol": "TCP",
                },
            ],
        }
    }
    return _child(md, "v1", "Service", "server", body)


def horizontal_pod_autoscaler(md: ModelDeployment) -> Manifest | None:
    scaling = md.spec.autoscaling
    if scaling is None:
        return None
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": scaling.target_cpu_utilization,
                },
            },
        }
    ]
    if scaling.custom_metric is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": scaling.custom_metric.name},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": scaling.custom_metric.target_average_value,
                    },
                },
            }
        )
    # Up fast (double, or +4 pods, per 15 s); down slowly (one pod a minute) after a window:
    # a load spike is served at once, and a short lull does not throw capacity away.
    behavior = {
        "scaleUp": {
            "stabilizationWindowSeconds": scaling.scale_up_stabilization_seconds,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15},
                {"type": "Pods", "value": 4, "periodSeconds": 15},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
    }
    body = {
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": md.metadata.name,
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": metrics,
            "behavior": behavior,
        }
    }
    return _child(md, "autoscaling/v2", "HorizontalPodAutoscaler", "autoscaler", body)


def max_replicas(md: ModelDeployment) -> int:
    if md.spec.autoscaling is not None:
        return md.spec.autoscaling.max_replicas
    return 1 if md.spec.replicas is None else md.spec.replicas


def pod_disruption_budget(md: ModelDeployment) -> Manifest | None:
    """maxUnavailable 1, when there may be more than one replica.

    Not minAvailable 1: while an HPA holds the Deployment at one replica, minAvailable 1
    would block every node drain; maxUnavailable 1 lets drains proceed one pod at a time.
    """
    if max_replicas(md) <= 1:
        return None
    body = {
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(md)},
            # Pods that never became ready (a bad rollout) may always be evicted.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        }
    }
    return _child(md, "policy/v1", "PodDisruptionBudget", "server", body)


def wants_service_monitor(md: ModelDeployment, crd_exists: bool) -> bool:
    return md.spec.monitoring.service_monitor != "off" and crd_exists


def service_monitor(md: ModelDeployment) -> Manifest:
    body = {
        "spec": {
            "selector": {"matchLabels": deployment_labels(md, "server")},
            "namespaceSelector": {"matchNames": [md.metadata.namespace]},
            "endpoints": [{"port": "metrics", "path": contracts.ROUTE_METRICS, "interval": "30s"}],
        }
    }
    return _child(md, SERVICE_MONITOR_API_VERSION, "ServiceMonitor", "metrics", body)


def children(
    md: ModelDeployment, model: ServedModel, settings: Settings, service_monitor_crd: bool
) -> list[Manifest]:
    """Every child this ModelDeployment wants now; kinds left out must not exist."""
    wanted = [server_deployment(md, model, settings), service(md)]
    wanted += [m for m in (horizontal_pod_autoscaler(md), pod_disruption_budget(md)) if m]
    if wants_service_monitor(md, service_monitor_crd):
        wanted.append(service_monitor(md))
    return wanted


OPTIONAL_KINDS: tuple[tuple[str, str], ...] = (
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    (SERVICE_MONITOR_API_VERSION, "ServiceMonitor"),
)
