"""The trainer's progress patcher, as the workers' own ServiceAccount, against the real API:
it may patch `<mt>-progress` and nothing else, and what it writes reaches the status."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from modelyard_trainer.contracts import ProgressRecord
from modelyard_trainer.report import ConfigMapSink
from tests.integration.operator.kinds import Objects
from tests.integration.operator.test_training import PLURAL, attempt_pods, run_all, training
from tests.integration.support import Cluster, wait_until


def worker_kubeconfig(cluster: Cluster, objects: Objects, tmp_path: Path) -> Path:
    """A kubeconfig holding a token of the ServiceAccount that the worker pods run as."""
    request = {"spec": {"expirationSeconds": 600}}
    token = wait_until(lambda: _token(objects, request), timeout=30, what="worker token")
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "worker", "user": {"token": token}}],
        "contexts": [
            {
                "name": "worker",
                "context": {"cluster": admin["clusters"][0]["name"], "user": "worker"},
            }
        ],
        "current-context": "worker",
    }
    path = tmp_path / "worker.kubeconfig"
    path.write_text(yaml.safe_dump(document))
    return path


def _token(objects: Objects, request: dict[str, object]) -> str | None:
    try:
        answer = objects.core.create_namespaced_service_account_token(
            "digits-trainer", objects.namespace, request
        )
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return str(answer.status.token)


def test_workers_may_patch_only_their_progress(
    cluster: Cluster, objects: Objects, tmp_path: Path
) -> None:
    objects.create(PLURAL, training(workers=1))
    run_all(objects, attempt_pods(objects, "digits", 1, 1))
    worker = config.new_client_from_config(
        config_file=str(worker_kubeconfig(cluster, objects, tmp_path))
    )
    as_worker = client.CoreV1Api(worker)
    record = ProgressRecord(
        generation=1,
        attempt=1,
        stage="Training",
        epoch=3,
        epochs=30,
        percent=10.0,
        loss=0.9,
        eta_seconds=42.0,
    )
    ConfigMapSink(objects.namespace, "digits-progress", api=as_worker).emit(record)
    mt = objects.wait_for(PLURAL, "digits", lambda o: o["status"]["progress"].get("epoch") == 3)
    assert mt["status"]["progress"]["eta"] == "42s"
    with pytest.raises(client.ApiException) as denied:
        as_worker.patch_namespaced_config_map(
            "digits-config", objects.namespace, {"data": {"x": "y"}}
        )
    assert denied.value.status == 403
    with pytest.raises(client.ApiException) as hidden:
        as_worker.list_namespaced_secret(objects.namespace)
    assert hidden.value.status == 403
