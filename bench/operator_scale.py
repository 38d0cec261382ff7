"""The operator at scale: N ModelDeployments and M ModelTrainings applied at once.

Against its own local control plane (hack/cluster.sh in .cluster-scale on ports 31xxx, kwok
nodes added until every pod fits), with the operator as users run it (`python -m
modelyard_operator`, default settings, its own client-cert user). Prints:

- time to convergence: every child the builders want exists and every status was written
  (observedGeneration == generation); also the time until every ModelDeployment is Ready;
- reconcile duration p50/p99 (the operator's own histogram, interpolated in its buckets);
- API writes per reconcile (the API server's audit log, by the operator's user);
- operator peak RSS (VmHWM);
- writes during a quiet window without spec changes (must be 0);
- side by side, the floor: one plain client (one thread, server-side apply) creating the same
  child objects in a second namespace, without the operator.

Server pods run as kwok makes them (Running and Ready); training pods carry the kwok stage
label "no-complete", so they run and never finish (a training stays Running, its progress is
polled: the quiet window covers that steady state too).

    .venv/bin/python bench/operator_scale.py --deployments 100 --trainings 20 --quiet-seconds 60
    .venv/bin/python bench/operator_scale.py          # the issue's 1000 + 200, quiet 300 s
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Own directory and ports: never disturb the test clusters (.cluster, other ports) here. A
# second bench (operator_churn.py beside this one) may pick another directory and ports with
# MODELYARD_BENCH_CLUSTER_DIR and the port variables; MODELYARD_CLUSTER_DIR is not read, so
# that a shell set up for the test cluster cannot send a bench (which wipes its cluster) there.
CLUSTER_DIR = Path(os.environ.get("MODELYARD_BENCH_CLUSTER_DIR", str(ROOT / ".cluster-scale")))
CLUSTER_ENV = {
    "MODELYARD_CLUSTER_DIR": str(CLUSTER_DIR),
    "MODELYARD_ETCD_PORT": "31379",
    "MODELYARD_ETCD_PEER_PORT": "31380",
    "MODELYARD_APISERVER_PORT": "31443",
    "MODELYARD_KCM_PORT": "31257",
    "MODELYARD_SCHEDULER_PORT": "31259",
    "MODELYARD_KWOK_PORT": "31247",
}
os.environ.update({k: os.environ.get(k, v) for k, v in CLUSTER_ENV.items()})
os.environ["MODELYARD_CLUSTER_DIR"] = str(CLUSTER_DIR)
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client  # noqa: E402

from modelyard_operator.api.deployment import ModelDeployment  # noqa: E402
from modelyard_operator.api.meta import GROUP, VERSION  # noqa: E402
from modelyard_operator.api.training import ModelTraining  # noqa: E402
from modelyard_operator.builders import deployment as md_builders  # noqa: E402
from modelyard_operator.builders import training as mt_builders  # noqa: E402
from modelyard_operator.kube import Kube  # noqa: E402
from modelyard_operator.settings import Settings  # noqa: E402
from modelyard_operator.status.deployment import resolve_model  # noqa: E402
from tests.integration.operator.kinds import MODELS_CLAIM, Objects  # noqa: E402
from tests.integration.support import (  # noqa: E402
    HACK,
    KWOK_NO_COMPLETE,
    KWOK_STAGE_LABEL,
    AuditLog,
    Cluster,
    bin_dir,
    install_crds,
    wait_until,
)

OPERATOR_USER = "modelyard-operator-bench"
SAMPLES = ROOT / "deploy" / "samples"
PODS_PER_NODE = 100  # kwok nodes declare 110 pods


def cluster_sh(*args: str, timeout: float = 300) -> str:
    return subprocess.run(
        [str(HACK / "cluster.sh"), *args],
        check=True,
        timeout=timeout,
        capture_output=True,
        text=True,
        env=os.environ,
    ).stdout


def fresh_cluster() -> Cluster:
    """A new, empty control plane with the CRDs: `up` alone keeps a running one, with the
    objects of an earlier (perhaps crashed) run, which the operator would then reconcile and
    cache too."""
    print(f"starting the control plane in {CLUSTER_DIR} ...", flush=True)
    cluster_sh("down")
    cluster_sh("up")
    kubectl = bin_dir() / "kubectl"
    cluster = Cluster(CLUSTER_DIR / "kubeconfig", kubectl.parent, CLUSTER_DIR / "audit.log", True)
    install_crds(cluster)
    return cluster


# --------------------------------------------------------------------------- the objects


def model_deployment(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((SAMPLES / "pinned-model-deployment.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"]["model"]["uri"] = f"pvc://{MODELS_CLAIM}/pinned/{name}/model.onnx"
    doc["spec"]["replicas"] = 1
    return dict(doc)


def model_training(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((SAMPLES / "digits.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"]["workers"] = 1
    doc["spec"]["resources"] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    doc["spec"]["pod"] = {"labels": {KWOK_STAGE_LABEL: KWOK_NO_COMPLETE}}
    return dict(doc)


def wanted_children(body: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """What the operator's own builders want for one created custom resource."""
    if body["kind"] == "ModelDeployment":
        md = ModelDeployment.model_validate(body)
        model = resolve_model(md, False, None).model
        assert model is not None
        return md_builders.children(md, model, settings, service_monitor_crd=False)
    mt = ModelTraining.model_validate(body)
    return [*mt_builders.static_children(mt, settings), mt_builders.job(mt, 1, settings)]


def add_nodes(core: client.CoreV1Api, pods: int) -> int:
    count = math.ceil(pods / PODS_PER_NODE) + 1
    for index in range(count):
        name = f"kwok-scale-{index}"
        resources = {"cpu": "1000", "memory": "4Ti", "pods": "110", "ephemeral-storage": "1Ti"}
        body: Any = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name},
            },
            "status": {"capacity": resources, "allocatable": resources},
        }
        try:
            core.create_node(body)
        except client.ApiException as error:
            if error.status != 409:
                raise
    return count


def create_all(objects: Objects, bodies: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Create every custom resource at once (8 client threads, as a GitOps sync would)."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda pb: objects.create(*pb), bodies))


# --------------------------------------------------------------------------- observing


def existing(kube: Kube, namespace: str, kinds: set[tuple[str, str]]) -> set[tuple[str, str]]:
    found = set()
    for api_version, kind in kinds:
        for item in kube.list(api_version, kind, namespace, {}, from_cache=True):
            found.add((kind, item["metadata"]["name"]))
    return found


def statuses_written(kube: Kube, namespace: str) -> tuple[int, int, int]:
    """(objects whose status is current, of those the ModelDeployments Ready, total)."""
    current = ready = total = 0
    for plural in ("modeldeployments", "modeltrainings"):
        items = kube.request(
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}",
            params={"resourceVersion": "0"},  # from the API server's cache, not etcd
        )
        for item in items["items"]:
            total += 1
            status = item.get("status") or {}
            if status.get("observedGeneration") == item["metadata"]["generation"]:
                current += 1
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            ):
                ready += 1
    return current, ready, total


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


RECONCILE = "modelyard_reconcile_duration_seconds"
API_LATENCY = "modelyard_api_request_duration_seconds"
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.e+-]+|NaN|\+Inf)$")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = frozenset(
                tuple(part.split("=", 1)) for part in re.findall(r'\w+="[^"]*"', match[2])
            )
            labels = frozenset((k, v.strip('"')) for k, v in labels)
            samples[(match[1], labels)] = float(match[3])
    return samples


def histogram_quantile(samples: dict[Any, float], name: str, q: float) -> float:
    """Prometheus' histogram_quantile over every label set: linear inside the bucket."""
    buckets: dict[float, float] = {}
    for (metric, labels), value in samples.items():
        if metric == name + "_bucket":
            bound = float(dict(labels)["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    if math.inf not in buckets:
        return math.nan  # an operator without this metric (an older build)
    bounds = sorted(buckets)
    total = buckets[math.inf]
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == math.inf:
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-9)
        lower, below = bound, buckets[bound]
    return lower


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (metric, found), v in samples.items()
        if metric == name and all(dict(found).get(k) == want for k, want in labels.items())
    )


def delta(after: dict[Any, float], before: dict[Any, float], name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def quantile(
    samples: dict[Any, float],
    name: str,
    q: float,
    since: dict[Any, float] | None = None,
    **labels: str,
) -> float:
    """A quantile of histogram `name` over the series with these labels, of the samples taken
    since `since` (None: since the start)."""
    picked = {
        key: value - (since or {}).get(key, 0.0)
        for key, value in samples.items()
        if key[0] == name + "_bucket"
        and all(dict(key[1]).get(k) == want for k, want in labels.items())
    }
    return histogram_quantile(picked, name, q)


# --------------------------------------------------------------------------- the operator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    def __init__(
        self, kubeconfig: Path, log_path: Path, env: dict[str, str], source: Path | None = None
    ) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MODELYARD_METRICS_PORT": str(self.metrics_port),
            "MODELYARD_HEALTH_PORT": str(self.health_port),
            **env,
        }
        if source is not None:  # another build of the operator, e.g. the commit before a change
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(source), self.env.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep)
        self.log = log_path.open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelyard_operator"],
            env=self.env,
            stdout=self.log,
            stderr=self.log,
        )

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, "operator exited"
            try:
                url = f"http://127.0.0.1:{self.health_port}/healthz"
                return httpx.get(url, timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=120, what="operator /healthz")
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


# --------------------------------------------------------------------------- the run


def floor(kube: Kube, objects: Objects, wanted: list[dict[str, Any]]) -> float:
    """One plain client, one thread: server-side apply of every child, one after the other."""
    manifests = []
    for manifest in wanted:
        manifest = copy.deepcopy(manifest)
        manifest["metadata"]["namespace"] = objects.namespace
        # No owner in this namespace: the garbage collector would delete orphans at once.
        manifest["metadata"].pop("ownerReferences", None)
        manifests.append(manifest)
    started = time.monotonic()
    for manifest in manifests:
        kube.apply(manifest)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--trainings", type=int, default=200)
    parser.add_argument("--quiet-seconds", type=float, default=300)
    parser.add_argument("--timeout", type=float, default=1800, help="convergence deadline (s)")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster up")
    parser.add_argument(
        "--operator-source",
        type=Path,
        help="run the modelyard_operator package from this directory (e.g. an older commit's "
        "operator/, from `git archive`) instead of the installed one",
    )
    args = parser.parse_args()

    cluster = fresh_cluster()
    kubectl = cluster.bin_dir / "kubectl"
    api = cluster.api_client()
    admin = Kube.from_environment(str(cluster.kubeconfig))
    audit = AuditLog(cluster.audit_log, cluster.kubeconfig, kubectl)
    operator_kubeconfig = Path(cluster_sh("user", OPERATOR_USER, "system:masters").split()[-1])

    stamp = time.strftime("%H%M%S")
    namespace, floor_namespace = f"scale-{stamp}", f"scale-floor-{stamp}"
    core = client.CoreV1Api(api)
    nodes = add_nodes(core, 2 * (args.deployments + args.trainings))
    for ns in (namespace, floor_namespace):
        namespace_body: Any = {"metadata": {"name": ns}}
        core.create_namespace(namespace_body)

        def has_service_account(ns: str = ns) -> bool:
            return bool(core.list_namespaced_service_account(ns).items)

        wait_until(
            has_service_account,
            timeout=60,
            what=f"ServiceAccount {ns}/default",
        )
        Objects(api, ns).models_claim()
    objects = Objects(api, namespace)

    operator = Operator(
        operator_kubeconfig,
        CLUSTER_DIR / "logs" / f"operator-{stamp}.log",
        {},
        args.operator_source,
    )
    pid = operator.start()
    settings = Settings.from_env({})
    bodies = [
        ("modeldeployments", model_deployment(f"md-{i:04d}")) for i in range(args.deployments)
    ]
    bodies += [("modeltrainings", model_training(f"mt-{i:04d}")) for i in range(args.trainings)]
    count = len(bodies)
    try:
        audit.barrier()
        before = scrape(operator.metrics_port)
        since = audit.now()
        print(f"creating {args.deployments} ModelDeployments + {args.trainings} ModelTrainings")
        started = time.monotonic()
        created = create_all(objects, bodies)
        created_s = time.monotonic() - started
        wanted = [m for body in created for m in wanted_children(body, settings)]
        wanted_names = {(m["kind"], m["metadata"]["name"]) for m in wanted}
        kinds = {(m["apiVersion"], m["kind"]) for m in wanted}

        converged_s = ready_s = None
        # Observing costs the API server too (the 3,600 children listed every second were a
        # good part of its load): statuses every 2 s, children only once every status is current
        # (a reconcile writes its status after its children).
        while time.monotonic() - started < args.timeout:
            current, ready, _ = statuses_written(admin, namespace)
            if converged_s is None and current == count:
                missing = wanted_names - existing(admin, namespace, kinds)
                if not missing:
                    converged_s = time.monotonic() - started
                    print(f"converged after {converged_s:.1f}s", flush=True)
            if ready == args.deployments and converged_s is not None:
                ready_s = time.monotonic() - started
                break
            time.sleep(2.0)
        if converged_s is None:
            print(f"NOT converged within {args.timeout:.0f}s", flush=True)
        # Let the in-flight reconciles of the last events end before measuring the quiet.
        time.sleep(10)
        audit.barrier(timeout=60)
        busy_until = audit.now()
        after = scrape(operator.metrics_port)
        busy_writes = audit.writes(OPERATOR_USER, since=since, until=busy_until)
        reconciles = total(after, "modelyard_reconciles_total") - total(
            before, "modelyard_reconciles_total"
        )
        p50 = quantile(after, RECONCILE, 0.5, before)
        p99 = quantile(after, RECONCILE, 0.99, before)
        latency = {
            (kind, q): quantile(after, RECONCILE, q, before, kind=kind)
            for kind in ("ModelDeployment", "ModelTraining")
            for q in (0.5, 0.99)
        }
        waits = {
            (lane, q): quantile(after, "modelyard_queue_wait_seconds", q, before, lane=lane)
            for lane in ("event", "timer")
            for q in (0.5, 0.99)
        }
        api_latency = {
            (method, q): quantile(after, API_LATENCY, q, before, method=method)
            for method in ("GET", "PATCH", "POST")
            for q in (0.5, 0.99)
        }
        requests = {
            method: delta(after, before, "modelyard_api_requests_total", method=method)
            for method in ("GET", "PATCH", "POST", "DELETE", "WATCH")
        }
        busy_hwm = rss_kib(pid, "VmHWM")

        print(f"quiet window: {args.quiet_seconds:.0f}s without spec changes ...", flush=True)
        quiet_since = audit.now()
        quiet_before = scrape(operator.metrics_port)
        time.sleep(args.quiet_seconds)
        audit.barrier(timeout=60)
        quiet_writes = audit.writes(OPERATOR_USER, since=quiet_since)
        quiet_after = scrape(operator.metrics_port)
        quiet_reconciles = delta(quiet_after, quiet_before, "modelyard_reconciles_total")
        quiet_gets = delta(quiet_after, quiet_before, "modelyard_api_requests_total", method="GET")
        quiet_p50 = quantile(quiet_after, RECONCILE, 0.5, quiet_before)
        quiet_p99 = quantile(quiet_after, RECONCILE, 0.99, quiet_before)
        hwm = rss_kib(pid, "VmHWM")
    finally:
        operator.stop()

    floor_kube = Kube.from_environment(str(cluster.kubeconfig))
    floor_s = floor(floor_kube, Objects(api, floor_namespace), wanted)
    floor_kube.close()

    by_kind: dict[str, int] = {}
    for write in busy_writes:
        key = f"{write.verb} {write.resource}{'/' + write.subresource if write.subresource else ''}"
        by_kind[key] = by_kind.get(key, 0) + 1
    print()
    print(
        f"objects: {args.deployments} ModelDeployments + {args.trainings} ModelTrainings "
        f"({len(wanted)} children), {nodes} extra kwok nodes, {os.cpu_count()} CPUs"
    )
    print(f"{'':40s} {'operator':>12s} {'floor':>12s}")
    conv = f"{converged_s:.1f}" if converged_s is not None else "n/a"
    print(f"{'children + statuses (s)':40s} {conv:>12s} {floor_s:>12.1f}")
    if converged_s is not None:
        print(f"{'  ratio to the floor (goal <= 2x)':40s} {converged_s / floor_s:>12.2f}")
    print(
        f"{'every ModelDeployment Ready (s)':40s} "
        f"{(f'{ready_s:.1f}' if ready_s is not None else 'n/a'):>12s}"
    )
    print(f"{'creating the CRs, 8 threads (s)':40s} {created_s:>12.1f}")
    print(f"{'reconciles':40s} {reconciles:>12.0f}")
    print(f"{'reconcile duration p50 / p99 (s)':40s} {p50:>12.3f} {p99:>9.3f} (goal p99 < 1)")
    for kind in ("ModelDeployment", "ModelTraining"):
        print(
            f"{'  ' + kind + ' p50 / p99 (s)':40s} {latency[kind, 0.5]:>12.3f} "
            f"{latency[kind, 0.99]:>9.3f}"
        )
    print(
        f"{'queue wait, events p50 / p99 (s)':40s} {waits['event', 0.5]:>12.3f} "
        f"{waits['event', 0.99]:>9.3f}"
    )
    print(
        f"{'queue wait, timers p50 / p99 (s)':40s} {waits['timer', 0.5]:>12.3f} "
        f"{waits['timer', 0.99]:>9.3f}"
    )
    for method, n in requests.items():
        print(f"{'API requests ' + method + ' (operator)':40s} {n:>12.0f}")
    for method in ("GET", "PATCH", "POST"):
        print(
            f"{'  ' + method + ' latency p50 / p99 (s)':40s} {api_latency[method, 0.5]:>12.3f} "
            f"{api_latency[method, 0.99]:>9.3f}"
        )
    print(f"{'API reads (GET) per reconcile':40s} {requests['GET'] / max(reconciles, 1):>12.2f}")
    print(f"{'API writes (audit log)':40s} {len(busy_writes):>12d}")
    print(f"{'API writes per reconcile':40s} {len(busy_writes) / max(reconciles, 1):>12.2f}")
    for key, n in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{'    ' + key:40s} {n:>12d}")
    print(f"{'peak RSS after convergence (MiB)':40s} {busy_hwm / 1024:>12.1f}")
    print(f"{'peak RSS overall (MiB, goal < 250)':40s} {hwm / 1024:>12.1f}")
    print(
        f"{'quiet window (s) / reconciles in it':40s} {args.quiet_seconds:>12.0f} "
        f"{quiet_reconciles:>9.0f}"
    )
    print(f"{'GETs in the quiet window':40s} {quiet_gets:>12.0f}")
    print(f"{'reconcile p50 / p99 in the quiet window':40s} {quiet_p50:>12.3f} {quiet_p99:>9.3f}")
    print(f"{'writes in the quiet window (goal 0)':40s} {len(quiet_writes):>12d}")
    for write in quiet_writes[:10]:
        print(f"    {write.verb} {write.resource}/{write.subresource} {write.name}")

    if not args.keep_cluster:
        cluster_sh("down")
    return 0 if converged_s is not None and not quiet_writes else 1


if __name__ == "__main__":
    sys.exit(main())
