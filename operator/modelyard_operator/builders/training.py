"""Children of a ModelTraining: config, progress, identity, network, and one Job per attempt.

A spec.script run has the same children and Jobs, but its own image and command in place of
the built-in trainer, and no trainer config.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from modelyard_operator.api.training import ModelTraining
from modelyard_operator.builders.common import (
    TRAINER_SCRATCH_SIZE,
    child,
    labels,
    pod_override_fields,
    resources,
    restricted_container_security,
    restricted_pod_security,
    scheduling_fields,
    user_env,
)
from modelyard_operator.names import (
    ATTEMPT_LABEL,
    GENERATION_LABEL,
    HOSTNAME_LABEL,
    QUEUE_LABEL,
    TRAINING_LABEL,
)
from modelyard_operator.ownership import Manifest
from modelyard_operator.settings import Settings
from modelyard_storage.uri import PvcUri, parse_uri
from modelyard_trainer import contracts
from modelyard_trainer.config import TRAINER_SPEC_KEYS

KIND = "ModelTraining"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
CONTAINER = "trainer"
CONFIG_DIR = "/etc/modelyard"
CONFIG_FILE = "trainer.yaml"
# The pods of one Job of an attempt: every rank, rank 0 alone, or ranks 1..N-1.
JobRole = Literal["gang", "rank0", "peers"]
# With an s3:// output the run is built here (the pod's scratch emptyDir) and mirrored there.
S3_SCRATCH_OUTPUT = "/tmp/modelyard-output"


def config_map_name(name: str) -> str:
    return f"{name}-config"


def progress_config_map_name(name: str) -> str:
    return f"{name}-progress"


def service_account_name(name: str) -> str:
    return f"{name}-trainer"


def job_name(name: str, attempt: int) -> str:
    """The attempt's Job that runs rank 0 (alone, or with every rank: see `splits_rank_zero`)."""
    return f"{name}-a{attempt}"


def peers_job_name(name: str, attempt: int) -> str:
    """The attempt's Job of ranks 1..N-1 when rank 0 has a Job of its own."""
    return f"{job_name(name, attempt)}-w"


def splits_rank_zero(mt: ModelTraining) -> bool:
    """Whether rank 0 runs in a Job of its own: only it mounts a pvc:// output claim, which is
    ReadWriteOnce on most clouds (a second node could not attach it), and a pod template is
    the same for every index of a Job. A Job queued in Kueue stays one Job: Kueue admits each
    Job on its own, and half a gang would wait for its other half."""
    output = parse_uri(mt.spec.output.uri, "output.uri")
    return mt.spec.workers > 1 and isinstance(output, PvcUri) and not mt.spec.scheduling.queue_name


def attempt_job_names(mt: ModelTraining, attempt: int) -> list[str]:
    """The Jobs that together run one attempt's gang."""
    name = mt.metadata.name
    if splits_rank_zero(mt):
        return [job_name(name, attempt), peers_job_name(name, attempt)]
    return [job_name(name, attempt)]


def rendezvous_id(mt: ModelTraining, attempt: int) -> str:
    """Unique per attempt, so that no worker of an old attempt can join a new one."""
    return f"{mt.metadata.uid[:8]}-g{mt.metadata.generation}-a{attempt}"


def training_labels(mt: ModelTraining, component: str) -> dict[str, str]:
    return labels(TRAINING_LABEL, mt.metadata.name, component)


def _child(
    mt: ModelTraining, api_version: str, kind: str, name: str, component: str, body: dict[str, Any]
) -> Manifest:
    owner = (KIND, mt.metadata)
    return child(api_version, kind, name, owner, training_labels(mt, component), body)


def trainer_config_map(mt: ModelTraining) -> Manifest:
    """The trainer's own config (model, data, training, checkpoint, export) as YAML."""
    section = mt.spec.model_dump(by_alias=True, include=set(TRAINER_SPEC_KEYS))
    text = yaml.safe_dump(section, sort_keys=True)
    return _child(
        mt,
        "v1",
        "ConfigMap",
        config_map_name(mt.metadata.name),
        "config",
        {"data": {CONFIG_FILE: text}},
    )


def progress_config_map(mt: ModelTraining) -> Manifest:
    """Created empty: rank 0 owns its data, so the operator applies no data field."""
    return _child(mt, "v1", "ConfigMap", progress_config_map_name(mt.metadata.name), "progress", {})


def service_account(mt: ModelTraining) -> Manifest:
    return _child(mt, "v1", "ServiceAccount", service_account_name(mt.metadata.name), "worker", {})


def progress_role(mt: ModelTraining) -> Manifest:
    """The workers may read and patch their own progress ConfigMap, and nothing else."""
    rules = [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [progress_config_map_name(mt.metadata.name)],
            "verbs": ["get", "patch", "update"],
        }
    ]
    name = service_account_name(mt.metadata.name)
    return _child(mt, "rbac.authorization.k8s.io/v1", "Role", name, "worker", {"rules": rules})


def progress_role_binding(mt: ModelTraining) -> Manifest:
    name = service_account_name(mt.metadata.name)
    body = {
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": mt.metadata.namespace}],
    }
    return _child(mt, "rbac.authorization.k8s.io/v1", "RoleBinding", name, "worker", body)


def headless_service(mt: ModelTraining, settings: Settings) -> Manifest:
    """Stable DNS for ranks: `<job>-<index>.<name>`; ready or not, peers must resolve."""
    body = {
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {TRAINING_LABEL: mt.metadata.name},
            "ports": [{"name": "rendezvous", "port": settings.master_port, "protocol": "TCP"}],
        }
    }
    return _child(mt, "v1", "Service", mt.metadata.name, "rendezvous", body)


def network_policy(mt: ModelTraining) -> Manifest:
    """Only the gang reaches its workers: rendezvous and the collectives' (ephemeral) ports."""
    gang = {"matchLabels": {TRAINING_LABEL: mt.metadata.name}}
    body = {
        "spec": {
            "podSelector": gang,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": gang}]}],
        }
    }
    return _child(mt, "networking.k8s.io/v1", "NetworkPolicy", mt.metadata.name, "worker", body)


def static_children(mt: ModelTraining, settings: Settings) -> list[Manifest]:
    """Everything but the Jobs: applied on every reconcile while the run's children live."""
    children = [
        *([] if mt.spec.script else [trainer_config_map(mt)]),
        progress_config_map(mt),
        headless_service(mt, settings),
        network_policy(mt),
    ]
    if not mt.spec.pod.service_account_name:
        children += [service_account(mt), progress_role(mt), progress_role_binding(mt)]
    return children


def _completion_index() -> dict[str, Any]:
    """The node rank: a `$(JOB_COMPLETION_INDEX)` reference would not expand in env values."""
    return {"valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}


# The peers' node rank is their completion index + 1, which no fieldRef can compute: this
# sets it before the trainer starts (in Python, which every trainer image has; a shell may not).
_PEER_RANK_SCRIPT = """import os, sys
rank = str(int(os.environ["JOB_COMPLETION_INDEX"]) + 1)
for key in sys.argv[1].split(","):
    os.environ[key] = rank
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _rank_variables(mt: ModelTraining) -> list[str]:
    """The variables that hold the node rank: torchrun's, and plain `init_process_group`'s
    when a worker runs a single process (torchrun sets RANK per process otherwise)."""
    return ["PET_NODE_RANK", "RANK"] if mt.spec.processes_per_worker == 1 else ["PET_NODE_RANK"]


def _worker_env(
    mt: ModelTraining, attempt: int, settings: Settings, peers: bool, output_dir: str
) -> list[dict[str, Any]]:
    """`peers`: the node rank is left to _PEER_RANK_SCRIPT."""
    spec, meta = mt.spec, mt.metadata
    master = f"{job_name(meta.name, attempt)}-0.{meta.name}"
    rank = [] if peers else [{"name": key, **_completion_index()} for key in _rank_variables(mt)]
    env: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": str(spec.workers)},
        {"name": "PET_NPROC_PER_NODE", "value": str(spec.processes_per_worker)},
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": str(settings.master_port)},
        {"name": "PET_RDZV_ID", "value": rendezvous_id(mt, attempt)},
    ]
    if spec.processes_per_worker == 1:
        env += [
            {"name": "MASTER_ADDR", "value": master},
            {"name": "MASTER_PORT", "value": str(settings.master_port)},
            {"name": "WORLD_SIZE", "value": str(spec.workers)},
        ]
    env += rank
    env += [
        {"name": contracts.ENV_RUN_NAMESPACE, "value": meta.namespace},
        {"name": contracts.ENV_RUN_NAME, "value": meta.name},
        {"name": contracts.ENV_RUN_UID, "value": meta.uid},
        {"name": contracts.ENV_RUN_GENERATION, "value": str(meta.generation)},
        {"name": contracts.ENV_ATTEMPT, "value": str(attempt)},
        {"name": contracts.ENV_OUTPUT_URI, "value": spec.output.uri},
        {"name": contracts.ENV_PROGRESS_CONFIGMAP, "value": progress_config_map_name(meta.name)},
        {"name": contracts.ENV_PVC_MOUNT_ROOT, "value": contracts.DEFAULT_PVC_MOUNT_ROOT},
    ]
    if spec.script is not None:
        # The built-in trainer gets its output as --output; a script (its SDK) from here.
        env.append({"name": contracts.ENV_OUTPUT_DIR, "value": output_dir})
    if spec.s3 is not None:
        # Endpoint settings as values; the access keys only as references to the Secret.
        env += spec.s3.pod_env()
    env += user_env(spec.pod)
    if spec.script is not None:
        env += [e.model_dump(by_alias=True, exclude_none=True) for e in spec.script.env]
    return env


def _claims(mt: ModelTraining, with_output: bool) -> list[str]:
    """Claims to mount under the PVC root: the data's, and the output's when `with_output`."""
    uris = (mt.spec.output.uri if with_output else None, mt.spec.data.source.uri)
    return sorted(
        {parsed.claim for uri in uris if uri and isinstance(parsed := parse_uri(uri), PvcUri)}
    )


def _command(mt: ModelTraining, output_dir: str, peers: bool) -> list[str]:
    script = mt.spec.script
    several = mt.spec.processes_per_worker > 1
    # With several processes per worker: torchrun's launcher, reading PET_* from the
    # environment, but exiting with the workers' own code so that the podFailurePolicy still
    # sees the permanent ones.
    launch = ["python", "-m", "modelyard_trainer.launch"]
    if script is not None:
        program = [*script.command, *script.args]
        command = [*launch, "--command", *program] if several else program
    else:
        trainer_args = ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--output", output_dir]
        command = (
            [*launch, *trainer_args]
            if several
            else ["python", "-m", "modelyard_trainer", *trainer_args]
        )
    if peers:
        return ["python", "-c", _PEER_RANK_SCRIPT, ",".join(_rank_variables(mt)), *command]
    return command


def spread_constraints(mt: ModelTraining, attempt: int) -> list[dict[str, Any]]:
    """One worker per node as spec.scheduling.spreadWorkers asks, counting this attempt's pods
    only (those of an attempt that is still going away do not count)."""
    mode = mt.spec.scheduling.spread_workers
    if mode == "none":
        return []
    gang = {TRAINING_LABEL: mt.metadata.name, ATTEMPT_LABEL: str(attempt)}
    return [
        {
            "maxSkew": 1,
            "topologyKey": HOSTNAME_LABEL,
            "whenUnsatisfiable": "DoNotSchedule" if mode == "required" else "ScheduleAnyway",
            "labelSelector": {"matchLabels": gang},
            # Nodes that the workers cannot run on (tainted GPU nodes, say) are no domain that
            # a required spread would wait to fill; nodeAffinityPolicy is Honor by default.
            "nodeTaintsPolicy": "Honor",
        }
    ]


def jobs(mt: ModelTraining, attempt: int, settings: Settings) -> list[Manifest]:
    """One attempt: Indexed Jobs whose pods form one DDP gang, named by attempt_job_names."""
    if splits_rank_zero(mt):
        return [
            _job(mt, attempt, settings, "rank0"),
            _job(mt, attempt, settings, "peers"),
        ]
    return [_job(mt, attempt, settings, "gang")]


def _job(mt: ModelTraining, attempt: int, settings: Settings, role: JobRole) -> Manifest:
    """The Job of the whole gang, of rank 0 alone (one pod, the only one that mounts the
    output claim), or of the peers, ranks 1..N-1 (without that claim)."""
    spec, meta = mt.spec, mt.metadata
    peers = role == "peers"
    name = peers_job_name(meta.name, attempt) if peers else job_name(meta.name, attempt)
    pods = {"gang": spec.workers, "rank0": 1, "peers": spec.workers - 1}[role]
    output = parse_uri(spec.output.uri, "output.uri")
    if isinstance(output, PvcUri):
        # The peers get the same --output (the trainer only resolves it; rank 0 alone writes).
        parts = (contracts.DEFAULT_PVC_MOUNT_ROOT, output.claim, output.path)
        output_dir = "/".join(p for p in parts if p)
    else:
        output_dir = S3_SCRATCH_OUTPUT
    job_labels = {
        **training_labels(mt, "worker"),
        ATTEMPT_LABEL: str(attempt),
        GENERATION_LABEL: str(meta.generation),
    }
    volumes: list[dict[str, Any]] = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TRAINER_SCRATCH_SIZE}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.script is None:
        volumes.insert(0, {"name": "config", "configMap": {"name": config_map_name(meta.name)}})
        mounts.insert(0, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    for index, claim_name in enumerate(_claims(mt, with_output=not peers)):
        volumes.append({"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim_name}})
        mounts.append(
            {
                "name": f"pvc-{index}",
                "mountPath": f"{contracts.DEFAULT_PVC_MOUNT_ROOT}/{claim_name}",
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": (spec.script and spec.script.image) or spec.pod.image or settings.trainer_image,
        "imagePullPolicy": spec.pod.image_pull_policy or settings.image_pull_policy,
        "command": _command(mt, output_dir, peers),
        "env": _worker_env(mt, attempt, settings, peers, output_dir),
        "ports": [{"name": "rendezvous", "containerPort": settings.master_port}],
        "resources": resources(spec.resources),
        "volumeMounts": mounts + spec.pod.volume_mounts,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": contracts.DEFAULT_TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_labels = {**spec.pod.labels, **job_labels}
    pod_spec: dict[str, Any] = {
        "subdomain": meta.name,
        "restartPolicy": "Never",
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes + spec.pod.volumes,
        **pod_override_fields(spec.pod, service_account_name(meta.name)),
        **scheduling_fields(spec.scheduling),
    }
    spread = spread_constraints(mt, attempt)
    if spread:
        pod_spec["topologySpreadConstraints"] = spread
    template: dict[str, Any] = {"metadata": {"labels": pod_labels}, "spec": pod_spec}
    if spec.pod.annotations:
        template["metadata"]["annotations"] = dict(spec.pod.annotations)
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": pods,
        "parallelism": pods,
        "backoffLimit": 0,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": sorted(int(code) for code in contracts.PERMANENT_EXIT_CODES),
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": template,
    }
    if spec.scheduling.queue_name:
        job_labels[QUEUE_LABEL] = spec.scheduling.queue_name
        # Created suspended; from then on Kueue alone owns `suspend`.
        job_spec["suspend"] = True
    return child("batch/v1", "Job", name, (KIND, meta), job_labels, {"spec": job_spec})
