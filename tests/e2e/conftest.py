"""Fixtures for tests with real pods on the cluster that `KUBECONFIG` names.

- every test under tests/e2e is marked `node` (`pytest -m "not node"` skips them);
- `cluster` (session): the cluster's API client, its worker nodes and DNS address; the tests
  are skipped, with the reason, when `KUBECONFIG` is unset or the cluster does not answer
  (`make test-e2e` starts the kind cluster of hack/kind/up.sh and sets it);
- `api` (session): that cluster's ApiClient;
- `namespace`: a fresh namespace per test, deleted after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client, config

from tests.e2e.cluster_support import REPORT, Cluster, e2e_kubeconfig, read_cluster
from tests.integration.support import fresh_namespace, namespace_name


@pytest.fixture(scope="session")
def api() -> Iterator[client.ApiClient]:
    kubeconfig = e2e_kubeconfig()
    if kubeconfig is None or not kubeconfig.exists():
        pytest.skip(
            f"no cluster for the e2e tests (KUBECONFIG={kubeconfig or ''}): run `make test-e2e`, "
            "or set KUBECONFIG to a cluster prepared as tests/e2e/cluster_support.py says"
        )
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture(scope="session")
def cluster(api: client.ApiClient) -> Cluster:
    try:
        found = read_cluster(api)
    except Exception as exc:  # the API server does not answer, or no cluster DNS
        pytest.skip(f"the cluster of KUBECONFIG does not answer as expected: {exc}")
    if not found.workers:
        pytest.skip("the cluster has no Ready node that takes ordinary pods")
    return found


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(api, namespace_name(request.node.name)) as name:
        yield name


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("e2e figures")
        for line in REPORT:
            terminalreporter.write_line(line)
