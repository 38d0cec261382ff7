"""spec.script against the real API server: the user's program runs as the gang's workers, and
what the SDK writes (progress, result, failure) drives status like the built-in trainer's.

As in test_training.py, kwok stands in for the kubelet and the test reports pod phases. The
result that rank 0 reports is the real SDK's: `publish` runs here, in the environment that
the operator gave the rank-0 container.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelyard_trainer import sdk
from modelyard_trainer.contracts import (
    DEFAULT_PVC_MOUNT_ROOT,
    ENV_OUTPUT_DIR,
    ENV_PROGRESS_CONFIGMAP,
    ENV_PVC_MOUNT_ROOT,
    ENV_TERMINATION_LOG,
    ProgressRecord,
    TrainingFailure,
)
from tests.conftest import load_sample
from tests.integration.operator.kinds import MANUAL_POD_LABELS, Objects
from tests.integration.operator.test_training import (
    PLURAL,
    attempt_pods,
    by_rank,
    condition,
    phase_is,
    run_all,
)

NAME = "script-example"


def script_training(workers: int = 2) -> dict[str, Any]:
    document = load_sample("script.yaml")
    document["metadata"] = {"name": NAME}
    document["spec"].update({"workers": workers, "pod": {"labels": MANUAL_POD_LABELS}})
    return document


def _env(pod: Any) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env if e.value is not None}


def publish_in(pod: Any, tmp_path: Path) -> str:
    """Rank 0's termination message: the SDK publishing a small model with the pod's own
    environment, its claims under a local directory instead of the kubelet's mounts."""
    environ = _env(pod)
    claims = tmp_path / "pvc"
    environ.update(
        {
            ENV_PVC_MOUNT_ROOT: str(claims),
            ENV_OUTPUT_DIR: environ[ENV_OUTPUT_DIR].replace(DEFAULT_PVC_MOUNT_ROOT, str(claims)),
            ENV_TERMINATION_LOG: str(tmp_path / "termination"),
            "WORLD_SIZE": "1",  # this process alone stands for the gang
        }
    )
    del environ[ENV_PROGRESS_CONFIGMAP]  # the test reports progress itself
    run = sdk.init(environ=environ)
    torch.manual_seed(0)
    run.publish(nn.Linear(4, 2), torch.randn(8, 4), {"test_accuracy": 0.93})
    run.close()
    return (tmp_path / "termination").read_text()


def test_a_script_runs_as_the_gang_and_its_published_result_reaches_status(
    objects: Objects, tmp_path: Path
) -> None:
    mt = objects.create(PLURAL, script_training(workers=2))
    pods = by_rank(attempt_pods(objects, NAME, 1, 2))
    for pod in pods:
        container = pod.spec.containers[0]
        program = ["python", "-m", "modelyard_trainer.sdk.example", "--epochs", "30"]
        assert container.command[-8:-3] == program
        env = _env(pod)
        assert env["PET_NNODES"] == env["WORLD_SIZE"] == "2"
        assert env[ENV_OUTPUT_DIR] == f"{DEFAULT_PVC_MOUNT_ROOT}/modelyard-models"
        assert env["OMP_NUM_THREADS"] == "1"
        assert all(volume.name != "config" for volume in pod.spec.volumes)
    assert (
        objects.core.list_namespaced_config_map(
            objects.namespace, field_selector=f"metadata.name={NAME}-config"
        ).items
        == []
    )
    run_all(objects, pods)
    record = ProgressRecord(
        stage="Training", epoch=3, epochs=30, percent=10.0, eta_seconds=65.0, world_size=2
    )
    objects.core.patch_namespaced_config_map(
        f"{NAME}-progress", objects.namespace, {"data": {"progress.json": record.to_json()}}
    )
    running = objects.wait_for(PLURAL, NAME, lambda o: o["status"]["progress"].get("epoch") == 3)
    assert running["status"]["progress"]["eta"] == "1m05s"

    message = publish_in(pods[0], tmp_path)
    objects.set_pod(pods[0], "Succeeded", exit_code=0, message=message)
    objects.set_pod(pods[1], "Succeeded", exit_code=0)
    done = objects.wait_for(PLURAL, NAME, phase_is("Succeeded"))
    uid = mt["metadata"]["uid"]
    run_uri = f"pvc://modelyard-models/{objects.namespace}/{NAME}/{uid}/g1"
    result = done["status"]["result"]
    assert result["modelUri"] == f"{run_uri}/model.onnx"
    assert result["metrics"] == {"test_accuracy": 0.93}
    local = tmp_path / "pvc" / "modelyard-models" / objects.namespace / NAME / uid / "g1"
    assert (local / "model.onnx").is_file()
    assert len(result["sha256"]) == 64


def test_a_script_that_never_publishes_fails_at_once_with_the_reason(objects: Objects) -> None:
    objects.create(PLURAL, script_training(workers=1))
    (pod,) = attempt_pods(objects, NAME, 1, 1)
    failure = TrainingFailure(
        exit_code=64,
        reason="NotPublished",
        message="the training script returned without calling run.publish(...)",
    )
    objects.set_pod(pod, "Failed", exit_code=64, message=failure.to_termination_message())
    mt = objects.wait_for(PLURAL, NAME, phase_is("Failed"))
    assert condition(mt, "Failed")["reason"] == "NotPublished"
    assert mt["status"]["lastFailure"]["permanent"] is True
    assert objects.jobs("modelyard.dev/attempt=2") == []
