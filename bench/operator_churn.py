"""The operator's memory under churn: custom resources created, edited and deleted for 10 min.

Against its own local control plane (like operator_scale.py, whose helpers it uses: by default
.cluster-scale on ports 31xxx; MODELYARD_BENCH_CLUSTER_DIR and the port variables move it). A
base population is created and converged first; then, every second, one new object is created
(one in six a ModelTraining), one existing ModelDeployment's spec is edited and, once the
population is above its base, the oldest object is deleted. The operator's RSS is sampled every
10 s with its cache sizes and work-queue length. Prints the series and compares the RSS of the
first and last thirds of the churn: flat means the last third is within 10% of the first.

    .venv/bin/python bench/operator_churn.py                        # 10 minutes, base 200 + 40
    .venv/bin/python bench/operator_churn.py --minutes 2 --base-deployments 50
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import operator_scale as scale
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelyard_operator.api.meta import GROUP, VERSION
from modelyard_operator.kube import Kube
from tests.integration.operator.kinds import Objects
from tests.integration.support import wait_until

OPERATOR_USER = "modelyard-operator-churn"


def cached(samples: dict[Any, float]) -> int:
    return int(scale.total(samples, "modelyard_cached_objects"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--base-deployments", type=int, default=200)
    parser.add_argument("--base-trainings", type=int, default=40)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    cluster = scale.fresh_cluster()
    api = cluster.api_client()
    admin = Kube.from_environment(str(cluster.kubeconfig))
    operator_kubeconfig = Path(
        scale.cluster_sh("user", OPERATOR_USER, "system:masters").split()[-1]
    )
    namespace = f"churn-{time.strftime('%H%M%S')}"
    core = client.CoreV1Api(api)
    base = args.base_deployments + args.base_trainings
    scale.add_nodes(core, 3 * base)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_until(
        lambda: bool(core.list_namespaced_service_account(namespace).items),
        timeout=60,
        what="default ServiceAccount",
    )
    objects = Objects(api, namespace)
    objects.models_claim()
    custom = client.CustomObjectsApi(api)

    operator = scale.Operator(
        operator_kubeconfig, scale.CLUSTER_DIR / "logs" / f"operator-{namespace}.log", {}
    )
    pid = operator.start()
    live: collections.deque[tuple[str, str]] = collections.deque()
    serial = 0

    def create_one(kind: str) -> None:
        nonlocal serial
        serial += 1
        if kind == "modeldeployments":
            objects.create(kind, scale.model_deployment(f"md-{serial:05d}"))
        else:
            objects.create(kind, scale.model_training(f"mt-{serial:05d}"))
        live.append((kind, f"{'md' if kind == 'modeldeployments' else 'mt'}-{serial:05d}"))

    samples: list[tuple[float, float, int, str]] = []
    ops = collections.Counter[str]()
    try:
        for index in range(base):
            create_one("modeldeployments" if index < args.base_deployments else "modeltrainings")

        def converged() -> bool:
            current, _, count = scale.statuses_written(admin, namespace)
            return count == base and current == base

        started = time.monotonic()
        wait_until(converged, timeout=1800, interval=2.0, what="the base population")
        print(f"base of {base} converged after {time.monotonic() - started:.0f}s", flush=True)

        churn_start = time.monotonic()
        next_sample = churn_start
        end = churn_start + args.minutes * 60
        while time.monotonic() < end:
            tick = time.monotonic()
            create_one("modeltrainings" if rng.random() < 1 / 6 else "modeldeployments")
            ops["create"] += 1
            deployments = [name for kind, name in live if kind == "modeldeployments"]
            edited = rng.choice(deployments)
            try:
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    "modeldeployments",
                    edited,
                    {"spec": {"server": {"maxBatchSize": rng.choice([4, 8, 16, 32])}}},
                )
                ops["update"] += 1
            except ApiException as error:
                if error.status != 404:
                    raise
            if len(live) > base:
                kind, name = live.popleft()
                try:
                    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, kind, name)
                    ops["delete"] += 1
                except ApiException as error:
                    if error.status != 404:
                        raise
            if tick >= next_sample:
                metrics = scale.scrape(operator.metrics_port)
                rss = scale.rss_kib(pid, "VmRSS") / 1024
                samples.append((tick - churn_start, rss, cached(metrics), ""))
                print(
                    f"  t={tick - churn_start:6.0f}s RSS {rss:7.1f} MiB, "
                    f"cached children {cached(metrics):6d}, ops {dict(ops)}",
                    flush=True,
                )
                next_sample += args.sample_seconds
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        hwm = scale.rss_kib(pid, "VmHWM") / 1024
    finally:
        operator.stop()
        admin.close()

    third = max(len(samples) // 3, 1)
    first = statistics.mean(s[1] for s in samples[:third])
    last = statistics.mean(s[1] for s in samples[-third:])
    growth = (last - first) / first
    print()
    print(
        f"churn: {args.minutes:.0f} min, base {args.base_deployments} ModelDeployments + "
        f"{args.base_trainings} ModelTrainings, operations {dict(ops)}"
    )
    print(f"{'RSS first third, mean (MiB)':40s} {first:>10.1f}")
    print(f"{'RSS last third, mean (MiB)':40s} {last:>10.1f}")
    print(f"{'change (goal: within 10%)':40s} {growth * 100:>9.1f}%")
    print(
        f"{'RSS min / max while churning (MiB)':40s} {min(s[1] for s in samples):>10.1f} "
        f"{max(s[1] for s in samples):>8.1f}"
    )
    print(f"{'peak RSS, VmHWM (MiB)':40s} {hwm:>10.1f}")
    print(f"{'cached children first / last sample':40s} {samples[0][2]:>10d} {samples[-1][2]:>8d}")
    if not args.keep_cluster:
        scale.cluster_sh("down")
    return 0 if abs(growth) <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
