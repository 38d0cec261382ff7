"""A model's whole life with real pods: the operator installed by Helm trains digits with DDP
on two worker pods, survives a killed worker, serves the ONNX artifact behind a Service,
rolls back a corrupted model without a failed request, and scales out under load.

The tests run in file order and share one namespace, one training and one deployment, as a
user's cluster would; each checks one promise of the issue. The images must be on the workers
(hack/kind/load-images.sh, which `make test-e2e` runs); the test is skipped with that hint when
they are not. The model's claim is ReadWriteOnce, as cloud default classes are: only rank 0
mounts it, so the ranks run on two nodes when the cluster has two workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import onnxruntime
import pytest
import tritonclient.http as oip
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from sklearn.datasets import load_digits

from tests.e2e.cluster_support import (
    Cluster,
    e2e_kubeconfig,
    read_from_claim,
    report,
    write_to_claim,
)
from tests.integration.support import ROOT, bin_dir, fresh_namespace, wait_until

GROUP, VERSION = "modelyard.dev", "v1alpha1"
NAMESPACE = "e2e-lifecycle"
OPERATOR_NAMESPACE = "modelyard-system"
TRAINING = "digits"
SERVING = "digits-server"
CLAIM = "modelyard-models"
CORRUPT_URI = f"pvc://{CLAIM}/corrupt/model.onnx"
CORRUPT_BYTES = b"not an ONNX model" * 64  # its sha256 matches: the load itself must fail


def _images_present(cluster: Cluster) -> None:
    # A kubelet reports an image in its node's status some seconds after its import.
    names = ("modelyard/operator", "modelyard/trainer", "modelyard/server")

    def reported() -> bool:
        for node in cluster.workers:
            images = cluster.core.read_node(node).status.images or []
            listed = " ".join(name for image in images for name in image.names or [])
            if not all(name in listed for name in names):
                return False
        return True

    with contextlib.suppress(TimeoutError):
        wait_until(reported, timeout=120, interval=2, what="the images in the nodes' status")
    for image in names:
        cluster.image_with(image)  # skips the module with the hint when missing


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[None]:
    """The chart installed as a user would; uninstalled after the module."""
    _images_present(cluster)
    kubectl = [str(bin_dir() / "kubectl"), "--kubeconfig", str(e2e_kubeconfig())]
    # Helm installs CRDs on a release's first install only: apply them as an upgrade must.
    subprocess.run(
        [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
        check=True,
        timeout=120,
    )
    helm = [str(bin_dir() / "helm"), "--kubeconfig", str(e2e_kubeconfig())]
    subprocess.run(
        [
            *helm,
            "upgrade",
            "--install",
            "modelyard",
            str(ROOT / "charts/modelyard"),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ],
        check=True,
        timeout=330,
    )
    # The images keep their tag across builds: restart the operator, or a release left by an
    # earlier run would go on running the operator image of that time.
    deployment = ["-n", OPERATOR_NAMESPACE, "deployment/modelyard"]
    subprocess.run([*kubectl, "rollout", "restart", *deployment], check=True, timeout=60)
    subprocess.run(
        [*kubectl, "rollout", "status", "--timeout=5m", *deployment], check=True, timeout=330
    )
    yield
    subprocess.run(
        [*helm, "uninstall", "modelyard", "--namespace", OPERATOR_NAMESPACE], timeout=120
    )


@dataclass
class Lifecycle:
    cluster: Cluster
    namespace: str
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> client.ApiClient:
        return self.cluster.api

    @property
    def core(self) -> client.CoreV1Api:
        return self.cluster.core

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def get(self, plural: str) -> dict[str, Any]:
        name = TRAINING if plural == "modeltrainings" else SERVING
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )
        return obj

    def create(self, plural: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)

    def patch_deployment(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "modeldeployments", SERVING, {"spec": spec}
        )

    def pods(self, selector: str) -> list[client.V1Pod]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def read_claim(self, path: str) -> bytes:
        return read_from_claim(self.cluster, self.namespace, CLAIM, path)

    def service_address(self) -> str:
        # This machine routes Service IPs to a node, where kube-proxy's rules apply.
        service = self.core.read_namespaced_service(SERVING, self.namespace)
        port = next(p.port for p in service.spec.ports if p.name == "http")
        return f"{service.spec.cluster_ip}:{port}"


@pytest.fixture(scope="module")
def life(cluster: Cluster, operator: None) -> Iterator[Lifecycle]:
    api, core = cluster.api, cluster.core
    try:  # left by an interrupted run
        core.delete_namespace(NAMESPACE)
        wait_until(lambda: _gone(core, NAMESPACE), timeout=120, what=f"old {NAMESPACE} gone")
    except ApiException as exc:
        if exc.status != 404:
            raise
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    with fresh_namespace(api, NAMESPACE, restricted):
        core.create_namespaced_persistent_volume_claim(
            NAMESPACE,
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name=CLAIM),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
                ),
            ),
        )
        yield Lifecycle(cluster, NAMESPACE)


def _gone(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except ApiException as exc:
        return exc.status == 404
    return False


def _training() -> dict[str, Any]:
    """The digits sample, sized for a 2-core node, with a checkpoint every 2 epochs and no
    early stop: on an idle machine an epoch takes about a second, and the worker must still be
    training when the test kills it."""
    training: dict[str, Any] = yaml.safe_load((ROOT / "deploy/samples/digits.yaml").read_text())
    spec = training["spec"]
    spec["resources"]["requests"]["cpu"] = "500m"
    spec["checkpoint"]["everyEpochs"] = 2
    spec["training"]["epochs"] = 80
    spec["training"]["earlyStopping"]["enabled"] = False
    return training


def _phase(life: Lifecycle) -> str | None:
    status = life.get("modeltrainings").get("status", {})
    if status.get("phase") == "Failed":
        pytest.fail(f"the training failed: {status}")
    return str(status.get("phase")) if status.get("phase") == "Succeeded" else None


def _running_window(pod: client.V1Pod) -> tuple[datetime, datetime]:
    state = pod.status.container_statuses[0].state.terminated
    return state.started_at, state.finished_at


def _rank(pod: client.V1Pod) -> int:
    # Rank 0 runs in the attempt's Job `<mt>-a<N>`, ranks 1..N-1 in `<mt>-a<N>-w` (index + 1).
    index = int(pod.metadata.annotations["batch.kubernetes.io/job-completion-index"])
    return index + 1 if pod.metadata.labels["job-name"].endswith("-w") else index


def _ranks(life: Lifecycle, attempt: int) -> list[client.V1Pod]:
    """The pods of one attempt of the training, rank 0 first."""
    selector = f"modelyard.dev/training={TRAINING},modelyard.dev/attempt={attempt}"
    return sorted(life.pods(selector), key=_rank)


def _attempt_status(life: Lifecycle) -> tuple[int, str | None, int]:
    status = life.get("modeltrainings").get("status", {})
    progress = status.get("progress", {})
    return status.get("attempt", 0), progress.get("stage"), progress.get("epoch", 0)


def test_ddp_on_two_nodes_survives_a_killed_worker_and_resumes_from_its_checkpoint(
    life: Lifecycle,
) -> None:
    created = time.monotonic()
    life.create("modeltrainings", _training())

    def all_running() -> bool:
        pods = _ranks(life, 1)
        return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)

    wait_until(all_running, timeout=300, interval=0.25, what="both ranks of attempt 1 Running")
    report(
        f"startup: ModelTraining created -> 2 worker pods Running in "
        f"{time.monotonic() - created:.1f} s"
    )

    def past_first_checkpoint() -> bool:
        attempt, stage, epoch = _attempt_status(life)
        return attempt == 1 and stage == "Training" and 3 <= epoch <= 60

    wait_until(past_first_checkpoint, timeout=900, interval=0.5, what="epoch 3 of attempt 1")
    victim = _ranks(life, 1)[1]
    assert victim.status.phase == "Running", victim.status
    killed = time.monotonic()
    life.core.delete_namespaced_pod(victim.metadata.name, life.namespace, grace_period_seconds=0)

    def resumed() -> bool:
        # Rank 0 of attempt 2 says so once it has loaded the checkpoint; the rest of the
        # run can take only seconds, too short to be sure to see its progress in the status.
        pods = _ranks(life, 2)
        if not pods or pods[0].status.phase not in ("Running", "Succeeded"):
            return False
        log = life.core.read_namespaced_pod_log(pods[0].metadata.name, life.namespace)
        return "resuming from" in log

    wait_until(resumed, timeout=600, interval=0.5, what="attempt 2 resuming from its checkpoint")
    report(
        f"recovery: rank 1 killed -> attempt 2 resumed from its checkpoint in "
        f"{time.monotonic() - killed:.1f} s"
    )

    wait_until(lambda: _phase(life), timeout=1200, interval=2, what="the training to succeed")
    status = life.get("modeltrainings")["status"]
    assert status["attempt"] == 2, status
    assert status["failedAttempts"] == 1, status
    result = status["result"]
    assert result["metrics"]["test_accuracy"] >= 0.95, result
    life.result = result

    # Attempt 2: both ranks really ran at once, each on its own node, over the pod network.
    workers = _ranks(life, 2)
    assert [p.status.phase for p in workers] == ["Succeeded", "Succeeded"], workers
    nodes = [p.spec.node_name for p in workers]
    report(f"ranks of attempt 2 ran on {nodes}")
    if len(life.cluster.workers) >= 2:
        assert nodes[0] != nodes[1], nodes
    for pod in workers:
        cidr = life.cluster.pod_cidr(pod.spec.node_name)
        assert ipaddress.ip_address(pod.status.pod_ip) in cidr, (pod.status.pod_ip, cidr)
    (start0, end0), (start1, end1) = (_running_window(p) for p in workers)
    assert start1 < end0 and start0 < end1, "the two ranks did not run at the same time"
    rank0_log = life.core.read_namespaced_pod_log(workers[0].metadata.name, life.namespace)
    assert "resuming from" in rank0_log, rank0_log[-2000:]
    assert "2 process(es)" in rank0_log, rank0_log[-2000:]


def test_a_worker_that_cannot_start_is_a_condition_within_a_minute(life: Lifecycle) -> None:
    # An image no node has and no registry serves: the kubelet reports ErrImagePull, then
    # ImagePullBackOff, and retries for ever; the training must say so, not sit Pending.
    training = _training()
    training["metadata"]["name"] = "blocked"
    training["spec"]["pod"] = {"image": "modelyard.local/no-such-image:0"}
    created = time.monotonic()
    life.custom.create_namespaced_custom_object(
        GROUP, VERSION, life.namespace, "modeltrainings", training
    )

    def blocked() -> dict[str, Any] | None:
        mt = life.custom.get_namespaced_custom_object(
            GROUP, VERSION, life.namespace, "modeltrainings", "blocked"
        )
        conditions = {c["type"]: c for c in mt.get("status", {}).get("conditions", [])}
        condition: dict[str, Any] | None = conditions.get("WorkersBlocked")
        pulling = {"ErrImagePull", "ImagePullBackOff"}
        return condition if condition and condition["reason"] in pulling else None

    try:
        condition = wait_until(blocked, timeout=60, interval=0.5, what="WorkersBlocked, image")
        report(
            f"blocked worker: condition after {time.monotonic() - created:.1f} s: "
            f"{condition['reason']}: {condition['message']}"
        )
        assert condition["status"] == "True", condition
        assert "blocked-a1" in condition["message"], condition
    finally:
        life.custom.delete_namespaced_custom_object(
            GROUP, VERSION, life.namespace, "modeltrainings", "blocked"
        )


def test_your_own_script_trains_as_a_gang_and_publishes_a_served_artifact(
    life: Lifecycle,
) -> None:
    # deploy/samples/script.yaml: the SDK's example script (its own data, loop and loss) as
    # the gang's workers; what it publishes is the same result as the built-in trainer's.
    training: dict[str, Any] = yaml.safe_load((ROOT / "deploy/samples/script.yaml").read_text())
    training["spec"]["resources"]["requests"]["cpu"] = "500m"
    name = training["metadata"]["name"]
    life.custom.create_namespaced_custom_object(
        GROUP, VERSION, life.namespace, "modeltrainings", training
    )

    def finished() -> dict[str, Any] | None:
        mt = life.custom.get_namespaced_custom_object(
            GROUP, VERSION, life.namespace, "modeltrainings", name
        )
        status: dict[str, Any] = mt.get("status", {})
        if status.get("phase") == "Failed":
            pytest.fail(f"the script's training failed: {status}")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_until(finished, timeout=900, interval=2, what=f"{name} to succeed")
    result = status["result"]
    artifact = life.read_claim(result["modelUri"].removeprefix(f"pvc://{CLAIM}/"))
    assert hashlib.sha256(artifact).hexdigest() == result["sha256"], result
    onnxruntime.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    selector = f"modelyard.dev/training={name},modelyard.dev/attempt={status['attempt']}"
    nodes = sorted(p.spec.node_name for p in life.pods(selector))
    report(f"script training: ranks on {nodes}, metrics {result['metrics']}")
    assert len(nodes) == 2, nodes


def _deployment() -> dict[str, Any]:
    deployment: dict[str, Any] = yaml.safe_load(
        (ROOT / "deploy/samples/digits-deployment.yaml").read_text()
    )
    spec = deployment["spec"]
    spec["resources"]["requests"]["cpu"] = "250m"
    spec["autoscaling"].update(maxReplicas=2, targetCpuUtilization=50)
    spec["rollout"] = {"progressDeadlineSeconds": 120}
    return deployment


def _ready(life: Lifecycle) -> dict[str, Any] | None:
    md = life.get("modeldeployments")
    conditions = {c["type"]: c for c in md.get("status", {}).get("conditions", [])}
    return md if conditions.get("Ready", {}).get("status") == "True" else None


def _infer(address: str, rows: np.ndarray) -> np.ndarray:
    """Requests of at most the server's maxBatchSize rows (it refuses more), answers joined."""
    oip_client = oip.InferenceServerClient(address, connection_timeout=10, network_timeout=30)
    metadata = oip_client.get_model_metadata(SERVING)
    max_rows = _deployment()["spec"]["server"]["maxBatchSize"]
    answers = []
    for batch in np.array_split(rows, -(-len(rows) // max_rows)):
        request = oip.InferInput(metadata["inputs"][0]["name"], list(batch.shape), "FP32")
        request.set_data_from_numpy(batch, binary_data=True)
        answer = oip_client.infer(SERVING, [request]).as_numpy(metadata["outputs"][0]["name"])
        assert answer is not None
        answers.append(answer)
    return np.concatenate(answers)


def test_predictions_through_the_service_equal_onnx_runtime_on_the_artifact(
    life: Lifecycle,
) -> None:
    assert life.result, "needs the training of the test before"
    life.create("modeldeployments", _deployment())
    wait_until(lambda: _ready(life), timeout=600, interval=2, what="the ModelDeployment Ready")

    artifact = life.read_claim(life.result["modelUri"].removeprefix(f"pvc://{CLAIM}/"))
    assert hashlib.sha256(artifact).hexdigest() == life.result["sha256"], life.result
    rows = load_digits().data.astype(np.float32)
    session = onnxruntime.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    # In the batches _infer sends (the sums of a matrix product depend on the batch's size).
    max_rows = _deployment()["spec"]["server"]["maxBatchSize"]
    expected = np.concatenate(
        [
            session.run(None, {session.get_inputs()[0].name: batch})[0]
            for batch in np.array_split(rows, -(-len(rows) // max_rows))
        ]
    )

    served = _infer(life.service_address(), rows)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
    servers = life.pods(f"modelyard.dev/deployment={SERVING}")
    report(f"server pods on {sorted(p.spec.node_name for p in servers)}")


def _condition(life: Lifecycle, kind: str, type_: str) -> dict[str, Any]:
    obj = life.get(kind)
    conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
    return conditions.get(type_, {})


def test_shifted_inputs_turn_drifting_true_naming_the_column_and_back(life: Lifecycle) -> None:
    assert _ready(life), "needs the deployment of the test before"
    # A small window read often, so that a few thousand rows decide (minRows: 500 rows score
    # about 9/500 from sampling noise, far below the 0.25 threshold).
    drift = {"windowRows": 2000, "minRows": 500, "intervalSeconds": 10}
    life.patch_deployment({"monitoring": {"drift": drift}})
    generation = life.get("modeldeployments")["metadata"]["generation"]

    def rolled_out() -> bool:
        md = _ready(life)
        return md is not None and md["status"].get("observedGeneration") == generation

    wait_until(rolled_out, timeout=300, interval=2, what="Ready with the drift window rolled out")
    address = life.service_address()
    rows = load_digits().data.astype(np.float32)
    shifted = rows.copy()
    shifted[:, 36] = 24.0  # pixel_4_4, beyond every value the training split had (0-16)

    def drifting(status: str, reasons: set[str]) -> dict[str, Any] | None:
        condition = _condition(life, "modeldeployments", "Drifting")
        wanted = condition.get("status") == status and condition.get("reason") in reasons
        return condition if wanted else None

    def no_drift() -> dict[str, Any] | None:
        return drifting("False", {"NoDrift"})

    _infer(address, np.concatenate([rows, rows]))
    wait_until(no_drift, timeout=90, interval=2, what="Drifting=False NoDrift")

    started = time.monotonic()
    _infer(address, np.concatenate([shifted, shifted]))
    alarm = wait_until(
        lambda: drifting("True", {"InputDrift", "PredictionDrift"}),
        timeout=90,
        interval=2,
        what="Drifting=True",
    )
    report(
        f"drift: Drifting=True {time.monotonic() - started:.1f} s after the shifted rows: "
        f"{alarm['message']}"
    )
    assert "pixel_4_4" in alarm["message"], alarm

    _infer(address, np.concatenate([rows, rows]))
    wait_until(no_drift, timeout=90, interval=2, what="Drifting=False again")


@dataclass
class ClientLoop:
    """Requests through the Service, one after another, counting every failure."""

    address: str
    rows: np.ndarray
    pause: float = 0.05
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                _infer(self.address, self.rows)
            except Exception as exc:  # every kind of failure counts
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.sent += 1
            time.sleep(self.pause)


def test_a_corrupted_model_is_rolled_back_while_the_old_pods_serve_every_request(
    life: Lifecycle,
) -> None:
    assert _ready(life), "needs the deployment of the test before"
    write_to_claim(life.cluster, life.namespace, CLAIM, "corrupt/model.onnx", CORRUPT_BYTES)

    loop = ClientLoop(life.service_address(), load_digits().data.astype(np.float32)[:16])
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        life.patch_deployment(
            {
                "model": {
                    "fromTraining": None,
                    "gate": None,
                    "uri": CORRUPT_URI,
                    "sha256": hashlib.sha256(CORRUPT_BYTES).hexdigest(),
                }
            }
        )

        def rolled_back() -> dict[str, Any] | None:
            md = life.get("modeldeployments")
            conditions = {c["type"]: c for c in md.get("status", {}).get("conditions", [])}
            return md if conditions.get("RolledBack", {}).get("status") == "True" else None

        md = wait_until(rolled_back, timeout=400, interval=2, what="RolledBack")
        wait_until(lambda: _ready(life), timeout=300, interval=2, what="Ready again")
        time.sleep(3)  # the loop keeps going after the rollback too
    finally:
        loop.stop.set()
        thread.join(timeout=60)
    assert md["status"]["rejectedModel"]["uri"] == CORRUPT_URI
    assert md["status"]["model"]["uri"] == life.result["modelUri"]
    assert loop.sent > 20, loop.sent
    assert loop.failures == [], f"{len(loop.failures)} of {loop.sent} failed: {loop.failures[:5]}"


def test_the_hpa_scales_the_server_out_under_load(life: Lifecycle) -> None:
    assert _ready(life), "needs the deployment of the tests before"
    apps = client.AppsV1Api(life.api)
    loops = [
        ClientLoop(life.service_address(), load_digits().data.astype(np.float32)[:64], pause=0)
        for _ in range(3)
    ]
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    try:

        def scaled_out() -> bool:
            return (
                apps.read_namespaced_deployment(SERVING, life.namespace).spec.replicas or 0
            ) >= 2

        wait_until(scaled_out, timeout=300, interval=3, what="the HPA to add a server pod")
    finally:
        for loop in loops:
            loop.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    hpa = client.AutoscalingV2Api(life.api).read_namespaced_horizontal_pod_autoscaler(
        SERVING, life.namespace
    )
    assert hpa.status.desired_replicas >= 2, hpa.status
