"""The whole life of a model on a real cluster: what `make demo` (and `make kind-demo`) run.

1. installs the operator with Helm (chart and CRDs from charts/modelyard);
2. applies the `digits` ModelTraining (DDP on two worker pods) and prints its progress;
3. promotes the result into the `digits` ModelDeployment and waits until it is Ready;
4. sends the digits images through the Service with a standard Open Inference Protocol
   client (tritonclient, binary tensors) and prints predictions and accuracy;
5. loads the Service until the HPA scales the server out, then lets it scale back in.

The cluster needs a default StorageClass, metrics-server and the three images
(`make images`). The samples in deploy/samples are the manifests; only their sizes are
trimmed to fit a small machine (see `fit_small_machine`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tritonclient.http as oip
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "deploy/samples"
GROUP, VERSION = "modelyard.dev", "v1alpha1"
TRAINING = "digits"
SERVING = "digits-server"  # a name of its own: the training owns a Service `digits`
MODELS_CLAIM = "modelyard-models"
T = TypeVar("T")


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def progress_line(status: dict[str, Any]) -> str:
    """One line of a ModelTraining's status: phase, attempt, stage, epochs done of planned and
    percent (from status.progress's fields; fewer epochs than planned at 100% means that early
    stopping ended the training), the latest loss and validation accuracy, and the ETA."""
    progress = status.get("progress") or {}
    validation = progress.get("validation") or {}
    loss, accuracy = progress.get("loss"), validation.get("val_accuracy")
    epoch, epochs = progress.get("epoch", 0), progress.get("epochs", 0)
    percent = float(progress.get("percent") or 0.0)
    early = " stopped early" if percent >= 100 and 0 < epoch < epochs else ""
    epochs_text = f"epoch {epoch}/{epochs} ({percent:.0f}%){early}" if epochs else "-"
    return (
        f"{status.get('phase', 'Pending'):<9} attempt {status.get('attempt', 0)}  "
        f"{progress.get('stage') or '-':<13} {epochs_text:<18} "
        f"loss {'-' if loss is None else f'{loss:.4f}':<7} "
        f"val_accuracy {'-' if accuracy is None else f'{accuracy:.3f}':<6} "
        f"ETA {progress.get('eta') or '-'}"
    )


def run(*command: str) -> None:
    subprocess.run(command, check=True)


def fit_small_machine(training: dict[str, Any], deployment: dict[str, Any]) -> None:
    """Two worker pods of 1 CPU each do not fit a 2-core machine beside the operator; the
    server's HPA gets a short scale-down window so that the demo shows the scale-in."""
    training["spec"]["resources"]["requests"]["cpu"] = "500m"
    deployment["spec"]["resources"]["requests"]["cpu"] = "250m"
    autoscaling = deployment["spec"]["autoscaling"]
    autoscaling["maxReplicas"] = 3
    autoscaling["scaleDownStabilizationSeconds"] = 30


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ns = args.namespace
        self.kubectl = [args.kubectl, "--kubeconfig", args.kubeconfig]
        api = config.new_client_from_config(config_file=args.kubeconfig)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.apps = client.AppsV1Api(api)

    def apply(self, manifest: dict[str, Any]) -> None:
        subprocess.run(
            [*self.kubectl, "-n", self.ns, "apply", "--server-side", "-f", "-"],
            input=yaml.safe_dump(manifest).encode(),
            check=True,
        )

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, plural, name
        )
        return obj

    def install_operator(self) -> None:
        step("installing the operator with Helm")
        kubectl = [self.args.kubectl, "--kubeconfig", self.args.kubeconfig]
        # Helm installs CRDs on a release's first install only: apply them as an upgrade must.
        run(*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        run(
            self.args.helm,
            "--kubeconfig",
            self.args.kubeconfig,
            "upgrade",
            "--install",
            "modelyard",
            str(ROOT / "charts/modelyard"),
            "--namespace",
            self.args.operator_namespace,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        )
        # The images keep their tag across builds: restart the operator, or a release that was
        # installed before would go on running the operator image of that time.
        deployment = ["-n", self.args.operator_namespace, "deployment/modelyard"]
        run(*kubectl, "rollout", "restart", *deployment)
        run(*kubectl, "rollout", "status", "--timeout=5m", *deployment)

    def prepare_namespace(self) -> None:
        step(f"namespace {self.ns} with a claim {MODELS_CLAIM} for the models")
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": self.ns,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
        )
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": MODELS_CLAIM},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )

    def train(self, training: dict[str, Any]) -> dict[str, Any]:
        step("ModelTraining digits: 2 worker pods, PyTorch DDP over the pod network")
        self.apply(training)
        started = time.monotonic()
        last = ""

        def finished() -> dict[str, Any] | None:
            nonlocal last
            status = self.get("modeltrainings", TRAINING).get("status", {})
            line = progress_line(status)
            if line != last:
                print(f"[{time.monotonic() - started:6.0f}s] {line}", flush=True)
                last = line
            if status.get("phase") == "Failed":
                sys.exit(f"training failed: {status.get('lastFailure') or status}")
            return status if status.get("phase") == "Succeeded" else None

        status = wait_for(finished, self.args.training_timeout, "the training to succeed")
        result = status["result"]
        print(f"artifact: {result['modelUri']} (sha256 {result['sha256'][:12]}...)")
        print(f"test metrics: {result.get('metrics')}")
        return dict(result)

    def promote(self, deployment: dict[str, Any]) -> None:
        step(f"ModelDeployment {SERVING}: serves what the training {TRAINING} produced")
        self.apply(deployment)

        def ready() -> dict[str, Any] | None:
            status = self.get("modeldeployments", SERVING).get("status", {})
            conditions = {c["type"]: c for c in status.get("conditions", [])}
            is_ready = conditions.get("Ready", {}).get("status") == "True"
            return status if is_ready else None

        status = wait_for(ready, self.args.serving_timeout, "the ModelDeployment to be Ready")
        print(f"Ready: {status.get('readyReplicas')} replica(s), model {status['model']['uri']}")

    @contextlib.contextmanager
    def service_address(self) -> Iterator[str]:
        service = self.core.read_namespaced_service(SERVING, self.ns)
        port = next(p.port for p in service.spec.ports if p.name == "http")
        if self.args.service_access == "clusterip":
            yield f"{service.spec.cluster_ip}:{port}"
            return
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            local_port = sock.getsockname()[1]
        forward = subprocess.Popen(
            [
                *self.kubectl,
                "-n",
                self.ns,
                "port-forward",
                f"svc/{SERVING}",
                f"{local_port}:{port}",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"127.0.0.1:{local_port}"
        finally:
            forward.terminate()
            forward.wait(timeout=10)

    def infer(self, address: str, training_metrics: dict[str, float], max_rows: int) -> None:
        step(f"inference through the Service ({address}) with an OIP client (tritonclient)")
        oip_client = oip.InferenceServerClient(address)
        wait_for(
            lambda: oip_client.is_model_ready(SERVING) or None, 60, "the model over the Service"
        )
        metadata = oip_client.get_model_metadata(SERVING)
        input_name, datatype = metadata["inputs"][0]["name"], metadata["inputs"][0]["datatype"]
        output_name = metadata["outputs"][0]["name"]
        digits = load_digits()
        rows = digits.data.astype(np.float32)
        predictions = []
        # The server refuses a request of more rows than its maxBatchSize.
        for batch in np.array_split(rows, -(-len(rows) // max_rows)):
            request = oip.InferInput(input_name, list(batch.shape), datatype)
            request.set_data_from_numpy(batch, binary_data=True)
            answer = oip_client.infer(SERVING, [request]).as_numpy(output_name)
            predictions.append(answer.argmax(axis=1))
        served = np.concatenate(predictions)
        print(f"first predictions: {served[:16].tolist()}")
        print(f"true labels:       {digits.target[:16].tolist()}")
        accuracy = float((served == digits.target).mean())
        print(f"accuracy on all {len(rows)} images through the Service: {accuracy:.4f}")
        test_accuracy = training_metrics.get("test_accuracy", float("nan"))
        print(f"held-out test accuracy reported by the training:  {test_accuracy:.4f}")

    def hpa_line(self) -> str:
        hpa = self.autoscaling.read_namespaced_horizontal_pod_autoscaler(SERVING, self.ns)
        cpu = "-"
        for metric in hpa.status.current_metrics or []:
            if metric.resource is not None and metric.resource.name == "cpu":
                cpu = f"{metric.resource.current.average_utilization}%"
        target = hpa.spec.metrics[0].resource.target.average_utilization
        # Until its first metrics arrive, the HPA reports no replicas and desires 0.
        current = hpa.status.current_replicas or "-"
        desired = hpa.status.desired_replicas or "-"
        return (
            f"HPA: cpu {cpu} (target {target}%), replicas {current} -> desired {desired} "
            f"(min {hpa.spec.min_replicas}, max {hpa.spec.max_replicas})"
        )

    def autoscale(self, address: str) -> None:
        step("load through the Service until the HPA scales out")
        stop = threading.Event()
        rows = load_digits().data.astype(np.float32)[:64]

        def load() -> None:
            load_client = oip.InferenceServerClient(address, connection_timeout=10)
            metadata = load_client.get_model_metadata(SERVING)
            request = oip.InferInput(metadata["inputs"][0]["name"], list(rows.shape), "FP32")
            request.set_data_from_numpy(rows, binary_data=True)
            while not stop.is_set():
                with contextlib.suppress(Exception):  # 503s under overload are expected
                    load_client.infer(SERVING, [request])

        threads = [
            threading.Thread(target=load, daemon=True) for _ in range(self.args.load_threads)
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()

        def scaled_out() -> int | None:
            print(f"[{time.monotonic() - started:5.0f}s] {self.hpa_line()}", flush=True)
            ready = self.apps.read_namespaced_deployment(SERVING, self.ns).status.ready_replicas
            return ready if (ready or 0) > 1 else None

        try:
            ready = wait_for(scaled_out, self.args.scale_timeout, "the HPA to scale out", 10)
            print(f"scaled out: {ready} server pods ready")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

        step("load stopped: the HPA scales back in")
        started = time.monotonic()

        def scaled_in() -> bool | None:
            print(f"[{time.monotonic() - started:5.0f}s] {self.hpa_line()}", flush=True)
            replicas = self.apps.read_namespaced_deployment(SERVING, self.ns).spec.replicas
            hpa = self.autoscaling.read_namespaced_horizontal_pod_autoscaler(SERVING, self.ns)
            return True if replicas == hpa.spec.min_replicas else None

        wait_for(scaled_in, self.args.scale_timeout, "the HPA to scale back in", 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), required=False)
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--helm", default="helm")
    parser.add_argument("--namespace", default="modelyard-demo")
    parser.add_argument("--operator-namespace", default="modelyard-system")
    parser.add_argument(
        "--service-access",
        choices=["clusterip", "port-forward"],
        default="clusterip",
        help="clusterip: this machine routes Service IPs (the local real node); "
        "port-forward: through kubectl (kind)",
    )
    parser.add_argument("--load-threads", type=int, default=4)
    parser.add_argument("--training-timeout", type=float, default=1800)
    parser.add_argument("--serving-timeout", type=float, default=600)
    parser.add_argument("--scale-timeout", type=float, default=300)
    args = parser.parse_args()
    if not args.kubeconfig:
        parser.error("--kubeconfig (or KUBECONFIG) is required")

    training = yaml.safe_load((SAMPLES / "digits.yaml").read_text())
    deployment = yaml.safe_load((SAMPLES / "digits-deployment.yaml").read_text())
    fit_small_machine(training, deployment)

    started = time.monotonic()
    demo = Demo(args)
    demo.install_operator()
    demo.prepare_namespace()
    result = demo.train(training)
    demo.promote(deployment)
    with demo.service_address() as address:
        demo.infer(
            address, dict(result.get("metrics") or {}), deployment["spec"]["server"]["maxBatchSize"]
        )
        demo.autoscale(address)
    step(f"done in {time.monotonic() - started:.0f} s")
    print(f"kubectl -n {args.namespace} get modeltrainings,modeldeployments,pods,hpa")


if __name__ == "__main__":
    try:
        main()
    except ApiException as exc:
        sys.exit(f"Kubernetes API error {exc.status}: {exc.reason}: {exc.body}")
