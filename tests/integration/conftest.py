"""Fixtures for tests against a real API server: the local control plane of hack/cluster.sh.

- every test under tests/integration is marked `cluster` (`pytest -m "not cluster"` skips them);
- `cluster` (session): reuses a control plane that is already up (.cluster/kubeconfig
  answers /readyz) or starts one and stops it at the end; installs every CRD in crds/;
- `api` (session): a kubernetes ApiClient for the admin kubeconfig;
- `namespace`: a fresh namespace per test (with its default ServiceAccount), deleted after;
- `audit`: reads the API server's audit log (writes by user, in a time window).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.integration.support import (
    AUDIT_LOG,
    CLUSTER_DIR,
    HACK,
    KUBECONFIG,
    AuditLog,
    Cluster,
    bin_dir,
    binaries_ready,
    fresh_namespace,
    install_crds,
    is_up,
    namespace_name,
)

START_TIMEOUT_S = 300


def _cluster_sh(*args: str) -> None:
    subprocess.run(
        [str(HACK / "cluster.sh"), *args],
        check=True,
        timeout=START_TIMEOUT_S,
        env={**os.environ, "MODELYARD_CLUSTER_DIR": str(CLUSTER_DIR)},
    )


# Test sessions that use the cluster, one file per pytest pid: the last one out stops a
# cluster that a test session started (never one that a person started with `make cluster-up`).
SESSIONS_DIR = CLUSTER_DIR / "test-sessions"
STARTED_BY_TESTS = CLUSTER_DIR / "started-by-tests"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _other_live_sessions() -> list[int]:
    pids = (int(f.name) for f in SESSIONS_DIR.glob("*") if f.name.isdigit())
    return [pid for pid in pids if pid != os.getpid() and _alive(pid)]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    kubectl = bin_dir() / "kubectl"
    SESSIONS_DIR.mkdir(parents=True, exist_ok=True)
    me = SESSIONS_DIR / str(os.getpid())
    me.touch()  # before `up`: a session that ends meanwhile must see that we need the cluster
    started_here = False
    try:
        if not is_up(kubectl):
            if not binaries_ready():
                pytest.fail(
                    "the Kubernetes binaries are not built: run `make k8s-binaries` "
                    "(hack/k8s-binaries.sh) or `make cluster-up` first",
                    pytrace=False,
                )
            requested = time.time()
            _cluster_sh("up")
            # cluster.sh serialises `up`: a concurrent session may have started it first,
            # and then ours found it running.
            pid_file = CLUSTER_DIR / "pids" / "kube-apiserver.pid"
            started_here = pid_file.stat().st_mtime >= requested
            if started_here:
                STARTED_BY_TESTS.touch()
        base = Cluster(
            kubeconfig=KUBECONFIG,
            bin_dir=kubectl.parent,
            audit_log=AUDIT_LOG,
            started_here=started_here,
        )
        yield Cluster(
            kubeconfig=base.kubeconfig,
            bin_dir=base.bin_dir,
            audit_log=base.audit_log,
            started_here=started_here,
            crds=install_crds(base),
        )
    finally:
        me.unlink(missing_ok=True)
        if (
            STARTED_BY_TESTS.exists()
            and not _other_live_sessions()
            and not os.environ.get("MODELYARD_KEEP_CLUSTER")
        ):
            _cluster_sh("down")
            STARTED_BY_TESTS.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    api_client = cluster.api_client()
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(api, namespace_name(request.node.name)) as name:
        yield name


@pytest.fixture(scope="session")
def audit(cluster: Cluster) -> AuditLog:
    return AuditLog(cluster.audit_log, cluster.kubeconfig, cluster.bin_dir / "kubectl")
