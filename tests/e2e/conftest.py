"""Fixtures for tests with real pods: the real node of hack/node.sh on the local control plane.

- every test under tests/e2e is marked `node` (`pytest -m "not node"` skips them);
- `real_node` (session): the node that `hack/node.sh up` added (read from
  .cluster/node/node.env); the tests are skipped, with the reason, when it is not up;
- `api` (session): a kubernetes ApiClient for the admin kubeconfig;
- `namespace`: a fresh namespace per test, deleted after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.e2e.node_support import NODE_ENV, RealNode, read_node_env
from tests.integration.support import KUBECONFIG, fresh_namespace, namespace_name


@pytest.fixture(scope="session")
def api() -> Iterator[client.ApiClient]:
    if not KUBECONFIG.exists():
        pytest.skip(
            f"no local cluster ({KUBECONFIG} is missing): run hack/cluster.sh up && "
            "hack/node.sh up (Linux, root)"
        )
    api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture(scope="session")
def real_node(api: client.ApiClient) -> RealNode:
    node = read_node_env()
    if node is None:
        pytest.skip(f"the real node is not up ({NODE_ENV} is missing): run hack/node.sh up")
    try:
        obj = client.CoreV1Api(api).read_node(node.name)
    except ApiException as exc:
        pytest.skip(f"node {node.name} is not registered ({exc.status}): run hack/node.sh up")
    except Exception as exc:  # the API server itself does not answer
        pytest.skip(f"the local control plane does not answer ({exc}): run hack/cluster.sh up")
    ready = [c for c in obj.status.conditions or [] if c.type == "Ready"]
    if not ready or ready[0].status != "True":
        pytest.skip(f"node {node.name} is not Ready: see .cluster/node/logs/kubelet.log")
    return node


@pytest.fixture
def namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(api, namespace_name(request.node.name)) as name:
        yield name
