"""The ModelTraining builders are pure: golden files pin their output for 1, 2 and 4 workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard_operator.api import ModelTraining
from modelyard_operator.builders.training import (
    attempt_job_names,
    jobs,
    rendezvous_id,
    static_children,
)
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
        [*static_children(mt, SETTINGS), *jobs(mt, 2, SETTINGS)],
        Dumper=_PlainDumper,
        sort_keys=True,
    )
    path = GOLDEN / f"training-{workers}-workers.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.read_text() == rendered, "builders changed: review, then UPDATE_GOLDEN=1"


INDEX = {
    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
}


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_rank_zero_has_a_job_of_its_own_and_the_peers_share_one(workers: int) -> None:
    mt = training(**{"spec.workers": workers})
    manifests = jobs(mt, 5, SETTINGS)
    names = [m["metadata"]["name"] for m in manifests]
    assert names == attempt_job_names(mt, 5)
    assert names == ["digits-a5", "digits-a5-w"][: min(workers, 2)]
    assert sum(m["spec"]["completions"] for m in manifests) == workers
    rank0 = manifests[0]
    assert rank0["spec"]["completions"] == rank0["spec"]["parallelism"] == 1
    for manifest in manifests:
        spec = manifest["spec"]
        assert spec["completionMode"] == "Indexed"  # stable host names: <job>-<index>
        assert spec["completions"] == spec["parallelism"]
        assert spec["backoffLimit"] == 0
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        assert spec["template"]["spec"]["subdomain"] == "digits"
        labels = manifest["metadata"]["labels"]
        assert labels["modelyard.dev/attempt"] == "5"
        env = _env(manifest)
        assert env["PET_NNODES"] == env["WORLD_SIZE"] == str(workers)
        assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == "digits-a5-0.digits"
        assert env["PET_RDZV_ID"] == "0f3c2a9e-g3-a5"
    # Rank 0 is index 0 of its Job.
    assert _env(rank0)["PET_NODE_RANK"] == _env(rank0)["RANK"] == INDEX


PRINT_RANKS = (
    "import json, os; print(json.dumps({k: os.getenv(k) for k in ('RANK', 'PET_NODE_RANK')}))"
)


def _peer_ranks(command: list[str], index: int) -> dict[str, str | None]:
    """Run the peers' command as their pod would (JOB_COMPLETION_INDEX set by the Job
    controller), with a probe in place of the trainer: the rank variables that reach it."""
    wrapper = command[: command.index("-m") - 1]
    done = subprocess.run(
        [sys.executable, *wrapper[1:], sys.executable, "-c", PRINT_RANKS],
        env={"JOB_COMPLETION_INDEX": str(index), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    )
    ranks: dict[str, str | None] = json.loads(done.stdout)
    return ranks


@pytest.mark.parametrize("processes", [1, 4])
def test_the_peers_rank_is_their_index_plus_one(processes: int) -> None:
    mt = training(**{"spec.workers": 4, "spec.processesPerWorker": processes})
    peers = jobs(mt, 1, SETTINGS)[1]
    assert peers["spec"]["completions"] == 3
    env = _env(peers)
    assert "RANK" not in env and "PET_NODE_RANK" not in env  # set by the command
    command = peers["spec"]["template"]["spec"]["containers"][0]["command"]
    rank0 = jobs(mt, 1, SETTINGS)[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-len(rank0) :] == rank0  # the same trainer, behind the wrapper
    for index in range(3):
        ranks = _peer_ranks(command, index)
        assert ranks["PET_NODE_RANK"] == str(index + 1)
        # With several processes a worker is torchrun, which sets RANK per process.
        assert ranks["RANK"] == (str(index + 1) if processes == 1 else None)


def test_rendezvous_id_differs_per_attempt() -> None:
    mt = training()
    assert len({rendezvous_id(mt, attempt) for attempt in range(1, 20)}) == 19


def _pods(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["spec"]["template"]["spec"] for m in manifests]


def _claims(pod: dict[str, Any]) -> list[str]:
    return [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]


def test_several_processes_per_worker_run_under_the_torchrun_launcher() -> None:
    manifest = jobs(training(**{"spec.processesPerWorker": 4}), 1, SETTINGS)[0]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "modelyard_trainer.launch"]
    env = _env(manifest)
    assert env["PET_NPROC_PER_NODE"] == "4"
    assert "RANK" not in env and "WORLD_SIZE" not in env  # torchrun sets them per process


def test_permanent_exit_codes_fail_the_job_and_disruptions_are_ignored() -> None:
    for manifest in jobs(training(), 1, SETTINGS):
        rules = manifest["spec"]["podFailurePolicy"]["rules"]
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
    for pod in _pods(jobs(mt, 1, SETTINGS)):
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["priorityClassName"] == "high"
        assert pod["schedulerName"] == "volcano"


def test_kueue_queue_creates_one_job_suspended() -> None:
    """Kueue admits each Job on its own: a queued gang stays one Job, so that it is admitted
    whole (every worker mounts the output claim then: ReadWriteMany, or s3://)."""
    queued = jobs(training(**{"spec.scheduling.queueName": "team-a"}), 1, SETTINGS)
    assert [m["spec"]["completions"] for m in queued] == [2]
    assert queued[0]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert queued[0]["spec"]["suspend"] is True
    assert _claims(_pods(queued)[0]) == ["modelyard-models"]
    assert all("suspend" not in m["spec"] for m in jobs(training(), 1, SETTINGS))


def test_children_never_carry_the_resources_own_labels() -> None:
    mt = training(**{"metadata.labels": {"argocd.argoproj.io/instance": "x", "team": "a"}})
    for manifest in [*static_children(mt, SETTINGS), *jobs(mt, 1, SETTINGS)]:
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


def test_only_rank_zero_mounts_the_output_claim() -> None:
    rank0, peers = _pods(jobs(training(**{"spec.workers": 4}), 1, SETTINGS))
    assert _claims(rank0) == ["modelyard-models"]
    assert _claims(peers) == []
    for pod in (rank0, peers):  # the peers resolve the same path, and never open it
        command = pod["containers"][0]["command"]
        assert command[command.index("--output") + 1] == "/mnt/pvc/modelyard-models"


def test_a_data_claim_is_mounted_on_every_rank() -> None:
    mt = training(
        **{
            "spec.workers": 4,
            "spec.data": {"source": {"uri": "pvc://datasets/digits.csv"}, "target": "label"},
        }
    )
    rank0, peers = _pods(jobs(mt, 1, SETTINGS))
    assert _claims(rank0) == ["datasets", "modelyard-models"]
    assert _claims(peers) == ["datasets"]


@pytest.mark.parametrize(
    ("changes", "job_count"),
    [
        ({"spec.workers": 1}, 1),
        ({"spec.workers": 2}, 2),
        (
            {
                "spec.output.uri": "s3://models/out",
                "spec.s3": {"endpointUrl": "http://minio:9000", "secretName": "s3"},
            },
            1,
        ),
    ],
)
def test_rank_zero_gets_a_job_of_its_own_only_for_a_claim_that_others_must_not_mount(
    changes: dict[str, Any], job_count: int
) -> None:
    mt = training(**changes)
    assert len(jobs(mt, 1, SETTINGS)) == len(attempt_job_names(mt, 1)) == job_count


@pytest.mark.parametrize(
    ("mode", "when"), [("preferred", "ScheduleAnyway"), ("required", "DoNotSchedule")]
)
def test_workers_spread_over_nodes_counting_only_this_attempts_pods(mode: str, when: str) -> None:
    mt = training(**{"spec.scheduling.spreadWorkers": mode, "spec.workers": 4})
    for pod in _pods(jobs(mt, 7, SETTINGS)):
        assert pod["topologySpreadConstraints"] == [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": when,
                "labelSelector": {
                    "matchLabels": {
                        "modelyard.dev/training": "digits",
                        "modelyard.dev/attempt": "7",
                    }
                },
                "nodeTaintsPolicy": "Honor",
            }
        ]


def test_spreading_is_preferred_by_default_and_can_be_turned_off() -> None:
    assert training().spec.scheduling.spread_workers == "preferred"
    mt = training(**{"spec.scheduling.spreadWorkers": "none"})
    assert all("topologySpreadConstraints" not in pod for pod in _pods(jobs(mt, 1, SETTINGS)))


def test_every_empty_dir_has_a_size_limit() -> None:
    for pod in _pods(jobs(training(), 1, SETTINGS)):
        limits = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
        assert limits == {
            "shm": {"medium": "Memory", "sizeLimit": "1Gi"},
            "tmp": {"sizeLimit": "8Gi"},
        }


# --- spec.script: the user's program in place of the built-in trainer, in the same gang. ------


def script_training(**changes: Any) -> ModelTraining:
    document = with_changes(load_sample("script.yaml"), {**IDENTITY, **changes})
    return ModelTraining.model_validate(document)


def test_script_children_match_the_golden_file() -> None:
    mt = script_training()
    rendered = yaml.dump_all(
        [*static_children(mt, SETTINGS), *jobs(mt, 2, SETTINGS)],
        Dumper=_PlainDumper,
        sort_keys=True,
    )
    path = GOLDEN / "training-script.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.read_text() == rendered, "builders changed: review, then UPDATE_GOLDEN=1"


def test_a_script_runs_as_the_workers_own_command_in_the_same_gang() -> None:
    script, builtin = script_training(), training()
    assert [c["kind"] for c in static_children(script, SETTINGS)] == [
        c["kind"]
        for c in static_children(builtin, SETTINGS)
        if c["metadata"]["name"] != "digits-config"
    ]
    for made, reference in zip(jobs(script, 2, SETTINGS), jobs(builtin, 2, SETTINGS), strict=True):
        pod = made["spec"]["template"]["spec"]
        container = pod["containers"][0]
        program = ["python", "-m", "modelyard_trainer.sdk.example", "--epochs", "30"]
        assert container["command"][-len(program) - 3 : -3] == program
        assert container["image"] == SETTINGS.trainer_image
        # No trainer config: the script brings its own.
        assert all(v["name"] != "config" for v in pod["volumes"])
        env, expected = _env(made), _env(reference)
        assert env["MODELYARD_OUTPUT_DIR"] == "/mnt/pvc/modelyard-models"
        assert env["OMP_NUM_THREADS"] == "1"
        # The same gang contract as the built-in trainer's, key by key.
        for key in ("PET_NNODES", "PET_MASTER_ADDR", "PET_MASTER_PORT", "WORLD_SIZE"):
            assert env[key] == expected[key].replace("digits", "script-example")
        assert made["spec"]["podFailurePolicy"] == reference["spec"]["podFailurePolicy"]
        assert (made["spec"]["completions"], made["spec"]["backoffLimit"]) == (
            reference["spec"]["completions"],
            0,
        )
    # The peers' rank is set before the program starts, as for the trainer.
    peers = jobs(script, 2, SETTINGS)[1]["spec"]["template"]["spec"]["containers"][0]
    assert peers["command"][:2] == ["python", "-c"]


def test_a_script_with_several_processes_per_worker_runs_under_the_launcher() -> None:
    mt = script_training(**{"spec.processesPerWorker": 2, "spec.script.image": "me/train:1"})
    container = jobs(mt, 1, SETTINGS)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "me/train:1"
    assert container["command"][:5] == [
        "python",
        "-m",
        "modelyard_trainer.launch",
        "--command",
        "python",
    ]


def test_the_script_image_wins_over_the_pod_image() -> None:
    mt = script_training(**{"spec.pod.image": "pod/image:1"})
    container = jobs(mt, 1, SETTINGS)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "pod/image:1"
    mt = script_training(**{"spec.pod.image": "pod/image:1", "spec.script.image": "me/train:1"})
    container = jobs(mt, 1, SETTINGS)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "me/train:1"
