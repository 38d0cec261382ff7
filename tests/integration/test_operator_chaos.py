"""The operator under faults: kill -9 at random moments, and a restart of kube-apiserver.

ModelDeployments and ModelTrainings are created at once; while the operator works through them
it is killed (SIGKILL, no cleanup) and restarted five times. A poller records every status it
sees. In the end every object converges with exactly the children the builders want (no
duplicate, no orphan), and no status went backwards (observedGeneration, attempt).

Then kube-apiserver alone is restarted (hack/cluster.sh restart-apiserver): every watch and
connection of the operator drops. Objects created and edited afterwards reach the operator only
through new watches, so their convergence shows that it recovered by itself.

Run it against a control plane of its own, since it restarts that API server:
    MODELYARD_CLUSTER_DIR=$PWD/.cluster-chaos MODELYARD_APISERVER_PORT=30443 ... pytest <this>
(see hack/README.md for every port variable).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

from modelyard_operator.api.deployment import ModelDeployment
from modelyard_operator.api.meta import GROUP, VERSION
from modelyard_operator.api.training import ModelTraining
from modelyard_operator.builders import deployment as md_builders
from modelyard_operator.builders import training as mt_builders
from modelyard_operator.builders.common import MANAGED_BY
from modelyard_operator.kube import ApiError, Kube
from modelyard_operator.settings import Settings
from modelyard_operator.status.deployment import resolve_model
from tests.conftest import load_sample
from tests.integration.operator.conftest import OPERATOR_USER, OperatorProcess
from tests.integration.operator.kinds import MODELS_CLAIM, Objects
from tests.integration.support import (
    HACK,
    KWOK_NO_COMPLETE,
    KWOK_STAGE_LABEL,
    Cluster,
    wait_until,
)

pytestmark = pytest.mark.chaos

DEPLOYMENTS = 30
TRAININGS = 10
KILLS = 5
CONVERGE_TIMEOUT = 300.0
PLURALS = ("modeldeployments", "modeltrainings")
# What a request sees while kube-apiserver restarts.
API_DOWN = (ApiException, ApiError, OSError, httpx.HTTPError, urllib3.exceptions.HTTPError)


def model_deployment(name: str) -> dict[str, Any]:
    document = load_sample("pinned-model-deployment.yaml")
    document["metadata"] = {"name": name}
    document["spec"]["model"]["uri"] = f"pvc://{MODELS_CLAIM}/pinned/{name}/model.onnx"
    document["spec"]["replicas"] = 1
    return document


def model_training(name: str) -> dict[str, Any]:
    document = load_sample("digits.yaml")
    document["metadata"] = {"name": name}
    document["spec"]["workers"] = 1
    document["spec"]["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}}
    # Running and Ready in kwok, never completing: the run stays Running, attempt 1.
    document["spec"]["pod"] = {"labels": {KWOK_STAGE_LABEL: KWOK_NO_COMPLETE}}
    return document


def create(objects: Objects, names: list[str]) -> None:
    for name in names:
        if name.startswith("md-"):
            objects.create("modeldeployments", model_deployment(name))
        else:
            objects.create("modeltrainings", model_training(name))


class StatusHistory:
    """Polls every custom resource of the namespace and keeps what went backwards."""

    def __init__(self, objects: Objects) -> None:
        self.objects = objects
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}
        self.backwards: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusHistory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(*API_DOWN):  # the API server may be restarting
                self.poll()
            self._stop.wait(0.3)

    def poll(self) -> None:
        for plural in PLURALS:
            listed: Any = self.objects.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.objects.namespace, plural
            )
            for item in listed["items"]:
                status = item.get("status") or {}
                key = (plural, item["metadata"]["name"])
                now = (int(status.get("observedGeneration") or 0), int(status.get("attempt") or 0))
                before = self.seen.get(key, (0, 0))
                if now[0] < before[0] or now[1] < before[1]:
                    self.backwards.append(f"{key}: (generation, attempt) {before} -> {now}")
                self.seen[key] = (max(now[0], before[0]), max(now[1], before[1]))
        self.polls += 1


def wanted_children(body: dict[str, Any], settings: Settings) -> set[tuple[str, str, str]]:
    if body["kind"] == "ModelDeployment":
        md = ModelDeployment.model_validate(body)
        model = resolve_model(md, False, None).model
        assert model is not None
        manifests = md_builders.children(md, model, settings, service_monitor_crd=False)
    else:
        mt = ModelTraining.model_validate(body)
        status = body.get("status") or {}
        attempt = int(status.get("attempt") or 1)
        manifests = [
            *mt_builders.static_children(mt, settings),
            *mt_builders.jobs(mt, attempt, settings),
        ]
    return {(m["kind"], m["metadata"]["name"], body["metadata"]["uid"]) for m in manifests}


CHILD_KINDS = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("batch/v1", "Job"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
)


def managed_children(kube: Kube, namespace: str) -> set[tuple[str, str, str]]:
    """Every object the operator manages here, with the uid of its owner ('' when none)."""
    found = set()
    for api_version, kind in CHILD_KINDS:
        for item in kube.list(
            api_version, kind, namespace, {"app.kubernetes.io/managed-by": MANAGED_BY}
        ):
            owners = item["metadata"].get("ownerReferences") or [{}]
            for owner in owners:
                found.add((kind, item["metadata"]["name"], owner.get("uid", "")))
    return found


def converged(objects: Objects, kube: Kube, count: int) -> str | None:
    """None once every object has a current status and exactly its wanted children."""
    bodies = []
    for plural in PLURALS:
        listed: Any = objects.custom.list_namespaced_custom_object(
            GROUP, VERSION, objects.namespace, plural
        )
        bodies += listed["items"]
    if len(bodies) != count:
        return f"{len(bodies)} of {count} objects"
    stale = [
        b["metadata"]["name"]
        for b in bodies
        if (b.get("status") or {}).get("observedGeneration") != b["metadata"]["generation"]
    ]
    if stale:
        return f"status not current: {stale[:5]} ({len(stale)})"
    settings = Settings.from_env({})
    wanted: set[tuple[str, str, str]] = set()
    for body in bodies:
        wanted |= wanted_children(body, settings)
    actual = managed_children(kube, objects.namespace)
    if actual != wanted:
        return f"missing {sorted(wanted - actual)[:5]}, extra {sorted(actual - wanted)[:5]}"
    return None


def wait_converged(objects: Objects, kube: Kube, count: int) -> None:
    last: list[str | None] = [None]

    def probe() -> bool:
        try:
            last[0] = converged(objects, kube, count)
        except API_DOWN as error:
            last[0] = f"API error: {error}"
        return last[0] is None

    try:
        wait_until(probe, timeout=CONVERGE_TIMEOUT, interval=1.0, what="convergence")
    except TimeoutError:
        raise AssertionError(f"not converged after {CONVERGE_TIMEOUT:.0f}s: {last[0]}") from None


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[OperatorProcess]:
    """The operator with its production resync (30 s) and progress (10 s) periods: the tests'
    5 s resync would keep a loaded machine's work queue full of resyncs of converged objects."""
    kubeconfig = cluster.user_kubeconfig(OPERATOR_USER, "system:masters")
    logs = cluster.kubeconfig.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {"MODELYARD_RESYNC_SECONDS": "30", "MODELYARD_PROGRESS_SECONDS": "10"}
    process = OperatorProcess(kubeconfig, logs / "operator-chaos.log", env)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def objects(api: ApiClient, namespace: str, operator: OperatorProcess) -> Objects:
    objects = Objects(api, namespace)
    objects.restrict_pod_security()
    objects.models_claim()
    return objects


@pytest.fixture
def kube(cluster: Cluster) -> Iterator[Kube]:
    client = Kube.from_environment(str(cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def test_kill_the_operator_five_times_while_it_converges(
    objects: Objects, operator: OperatorProcess, kube: Kube
) -> None:
    rng = random.Random(os.environ.get("MODELYARD_CHAOS_SEED", "10"))
    names = [f"md-{i:02d}" for i in range(DEPLOYMENTS)] + [f"mt-{i:02d}" for i in range(TRAININGS)]
    with StatusHistory(objects) as history:
        create(objects, names)
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 4.0))
            operator.kill()
            time.sleep(rng.uniform(0.0, 1.0))
            operator.start()
        wait_converged(objects, kube, len(names))
        time.sleep(1)  # one more poll of the converged state
    assert history.polls > 10
    assert history.backwards == []
    assert all(generation >= 1 for generation, _ in history.seen.values())


def test_the_operator_recovers_from_an_api_server_restart(
    objects: Objects, operator: OperatorProcess, kube: Kube, cluster: Cluster
) -> None:
    before = [f"md-{i:02d}" for i in range(5)] + [f"mt-{i:02d}" for i in range(2)]
    create(objects, before)
    wait_converged(objects, kube, len(before))

    subprocess.run(
        [str(HACK / "cluster.sh"), "restart-apiserver"],
        check=True,
        timeout=180,
        env={**os.environ, "MODELYARD_CLUSTER_DIR": str(cluster.kubeconfig.parent)},
    )
    # New objects and a spec edit reach the operator only through watches opened after the
    # restart (the work queue's resync knows only the keys it has seen).
    after = [f"md-{i:02d}" for i in range(5, 10)] + [f"mt-{i:02d}" for i in range(2, 4)]
    create(objects, after)
    objects.patch_spec("modeldeployments", "md-00", {"server": {"maxBatchSize": 8}})
    with StatusHistory(objects) as history:
        wait_converged(objects, kube, len(before) + len(after))
    assert history.backwards == []
    assert operator.healthy()
    edited = objects.get("modeldeployments", "md-00")
    assert edited["status"]["observedGeneration"] == 2
