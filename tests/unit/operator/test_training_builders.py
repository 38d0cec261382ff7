"""The ModelTraining builders are pure: golden files pin their output for 1, 2 and 4 workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard_operator.api import ModelTraining
from modelyard_operator.builders.training import job, rendezvous_id, static_children
from modelyard_operator.settings import Settings
from tests.conftest import load_sample, with_changes

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(trainer_image="registry.example/modelyard/trainer:test")
IDENTITY = {
    "metadata.namespace": "ml",
    "metadata.uid": "0f3c2a9e-1111-2222-3333-444455556666",
    "metadata.generation": 3,
}


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def training(**changes: Any) -> ModelTraining:
    document = with_changes(load_sample("digits.yaml"), {**IDENTITY, **changes})
    return ModelTraining.model_validate(document)


def _env(manifest: dict[str, Any]) -> dict[str, Any]:
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_children_match_golden_files(workers: int) -> None:
    mt = training(**{"spec.workers": workers})
    rendered = yaml.dump_all(
        [*static_children(mt, SETTINGS), job(mt, 2, SETTINGS)], Dumper=_PlainDumper, sort_keys=True
    )
    path = GOLDEN / f"training-{workers}-workers.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.read_text() == rendered, "builders changed: review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_job_is_one_gang_per_attempt(workers: int) -> None:
    manifest = job(training(**{"spec.workers": workers}), 5, SETTINGS)
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == "digits-a5"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == workers
    assert spec["backoffLimit"] == 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["template"]["spec"]["subdomain"] == "digits"
    env = _env(manifest)
    assert env["PET_NNODES"] == str(workers)
    assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == "digits-a5-0.digits"
    index = {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    assert env["PET_NODE_RANK"] == env["RANK"] == index
    assert env["WORLD_SIZE"] == str(workers)
    assert env["PET_RDZV_ID"] == "0f3c2a9e-g3-a5"


def test_rendezvous_id_differs_per_attempt() -> None:
    mt = training()
    assert len({rendezvous_id(mt, attempt) for attempt in range(1, 20)}) == 19


def test_several_processes_per_worker_run_under_the_torchrun_launcher() -> None:
    manifest = job(training(**{"spec.processesPerWorker": 4}), 1, SETTINGS)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "modelyard_trainer.launch"]
    env = _env(manifest)
    assert env["PET_NPROC_PER_NODE"] == "4"
    assert "RANK" not in env and "WORLD_SIZE" not in env  # torchrun sets them per process


def test_permanent_exit_codes_fail_the_job_and_disruptions_are_ignored() -> None:
    rules = job(training(), 1, SETTINGS)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [64, 65, 66]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def test_scheduling_and_gpus_pass_through() -> None:
    mt = ModelTraining.model_validate(
        with_changes(
            load_sample("digits-gpu.yaml"),
            {
                **IDENTITY,
                "spec.scheduling.priorityClassName": "high",
                "spec.scheduling.schedulerName": "volcano",
            },
        )
    )
    pod = job(mt, 1, SETTINGS)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["priorityClassName"] == "high"
    assert pod["schedulerName"] == "volcano"


def test_kueue_queue_creates_the_job_suspended() -> None:
    manifest = job(training(**{"spec.scheduling.queueName": "team-a"}), 1, SETTINGS)
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert manifest["spec"]["suspend"] is True
    assert "suspend" not in job(training(), 1, SETTINGS)["spec"]


def test_children_never_carry_the_resources_own_labels() -> None:
    mt = training(**{"metadata.labels": {"argocd.argoproj.io/instance": "x", "team": "a"}})
    for manifest in [*static_children(mt, SETTINGS), job(mt, 1, SETTINGS)]:
        assert "team" not in manifest["metadata"]["labels"]
        assert "argocd.argoproj.io/instance" not in manifest["metadata"]["labels"]
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == IDENTITY["metadata.uid"]


def test_progress_role_may_touch_only_the_progress_config_map() -> None:
    role = next(m for m in static_children(training(), SETTINGS) if m["kind"] == "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["digits-progress"],
            "verbs": ["get", "patch", "update"],
        }
    ]


def test_only_rank_zero_needs_the_output_but_every_worker_mounts_the_claim() -> None:
    pod = job(training(), 1, SETTINGS)["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["modelyard-models"]
    command = pod["containers"][0]["command"]
    assert command[command.index("--output") + 1] == "/mnt/pvc/modelyard-models"


def test_every_empty_dir_has_a_size_limit() -> None:
    volumes = job(training(), 1, SETTINGS)["spec"]["template"]["spec"]["volumes"]
    limits = {v["name"]: v["emptyDir"] for v in volumes if "emptyDir" in v}
    assert limits == {"shm": {"medium": "Memory", "sizeLimit": "1Gi"}, "tmp": {"sizeLimit": "8Gi"}}
