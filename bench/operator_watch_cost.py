"""What unrelated objects in a watched namespace cost the operator.

kopf filters labels on the client side: a kopf watch on Deployments or Jobs receives, parses
and drops every such object the operator may see. This bench creates N Deployments and N Jobs
that are not the operator's (no modelyard label; Deployments with 0 replicas and suspended
Jobs, so no pods) next to an idle operator, and reports what the operator spent on them: RSS and
CPU seconds (/proc/PID/stat), against an idle window without them. (Bytes received are not
reported: /proc/PID/io counts read(), not the recv() of sockets, and the API server's watch
metrics do not tell one client from the controller-manager, which watches the same kinds.)
Run it once per build to compare (--operator-source: the modelyard_operator package of another
commit, e.g. from `git archive`).

    .venv/bin/python bench/operator_watch_cost.py --objects 1000
    git archive <commit> operator | tar -x -C /tmp/old
    .venv/bin/python bench/operator_watch_cost.py --objects 1000 --operator-source /tmp/old/operator
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import operator_scale as scale
from kubernetes import client

from tests.integration.support import wait_until

OPERATOR_USER = "modelyard-operator-watch-cost"
CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK  # utime + stime


def snapshot(pid: int) -> tuple[float, float]:
    return scale.rss_kib(pid, "VmRSS") / 1024, cpu_seconds(pid)


def unrelated_deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }


def unrelated_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "job", "image": "example.invalid/job:1"}],
                }
            },
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000, help="Deployments and Jobs each")
    parser.add_argument("--settle-seconds", type=float, default=30.0)
    parser.add_argument("--operator-source", type=Path)
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()

    cluster = scale.fresh_cluster()
    api = cluster.api_client()
    operator_kubeconfig = Path(
        scale.cluster_sh("user", OPERATOR_USER, "system:masters").split()[-1]
    )
    namespace = f"unrelated-{time.strftime('%H%M%S')}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)

    build = str(args.operator_source or "installed")
    operator = scale.Operator(
        operator_kubeconfig,
        scale.CLUSTER_DIR / "logs" / f"operator-{namespace}.log",
        {},
        args.operator_source,
    )
    pid = operator.start()
    try:
        time.sleep(10)  # past the start-up lists
        idle_start = snapshot(pid)
        time.sleep(args.settle_seconds)
        idle_end = snapshot(pid)

        started = time.monotonic()
        names = [f"unrelated-{i:05d}" for i in range(args.objects)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: apps.create_namespaced_deployment(namespace, unrelated_deployment(n)),
                    names,
                )
            )
            list(
                pool.map(lambda n: batch.create_namespaced_job(namespace, unrelated_job(n)), names)
            )
        created_s = time.monotonic() - started

        def replica_sets_made() -> bool:
            listed = client.AppsV1Api(api).list_namespaced_replica_set(namespace, limit=1)
            return (listed.metadata.remaining_item_count or 0) + len(listed.items) >= args.objects

        wait_until(replica_sets_made, timeout=600, interval=2, what="the ReplicaSets")
        time.sleep(args.settle_seconds)
        loaded_end = snapshot(pid)
        hwm = scale.rss_kib(pid, "VmHWM") / 1024
    finally:
        operator.stop()

    print()
    print(f"operator build: {build}")
    print(
        f"{args.objects} unrelated Deployments (0 replicas) + {args.objects} suspended Jobs "
        f"in a watched namespace, created in {created_s:.0f}s"
    )
    print(f"{'':44s} {'idle':>12s} {'unrelated':>12s}")
    window = time.monotonic() - started
    print(f"{'window (s)':44s} {args.settle_seconds:>12.0f} {window:>12.0f}")
    print(f"{'RSS at the end (MiB)':44s} {idle_end[0]:>12.1f} {loaded_end[0]:>12.1f}")
    print(
        f"{'operator CPU in the window (s)':44s} {idle_end[1] - idle_start[1]:>12.1f} "
        f"{loaded_end[1] - idle_end[1]:>12.1f}"
    )
    print(f"{'peak RSS, VmHWM (MiB)':44s} {'':>12s} {hwm:>12.1f}")
    if not args.keep_cluster:
        scale.cluster_sh("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
