"""Delivery against the local control plane: the chart and the kustomize base validated by the
API server, `helm install/test/upgrade/uninstall` (kwok runs the pods), the operator's
ServiceAccount can do what it needs and no more (`kubectl auth can-i --as`, and the real operator
run under that ServiceAccount's token), and every pod template passes Pod Security 'restricted'.
"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelyard_operator.api.meta import GROUP, VERSION
from tests.conftest import ROOT, load_sample
from tests.integration.operator.conftest import OperatorProcess
from tests.integration.operator.kinds import Objects
from tests.integration.support import CLUSTER_DIR, Cluster, wait_until

CHART = ROOT / "charts" / "modelyard"
DEPLOY = ROOT / "deploy" / "default"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
POD_TEMPLATE_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet"}

Manifest = dict[str, Any]


# ---------------------------------------------------------------------------- helpers


def documents(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def helm(cluster: Cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def template_text(
    cluster: Cluster, release: str, namespace: str, *sets: str, show_only: str | None = None
) -> str:
    # The API server's own version (a helm built by `go install` defaults to v1.20).
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--kube-version", version["gitVersion"]]
    for item in sets:
        args += ["--set", item]
    if show_only:
        args += ["--show-only", show_only]
    return helm(cluster, *args).stdout


def template(cluster: Cluster, release: str, namespace: str, *sets: str) -> list[Manifest]:
    return documents(template_text(cluster, release, namespace, *sets))


def new_namespace(api: client.ApiClient, stem: str, labels: dict[str, str] | None = None) -> str:
    name = f"t-{stem}-{secrets.token_hex(3)}"
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name, labels={"modelyard.dev/test": "true", **(labels or {})}
            )
        )
    )
    return name


def delete_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def restrict(api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})


def pod_templates(manifests: list[Manifest]) -> list[tuple[str, Manifest]]:
    return [
        (f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"])
        for m in manifests
        if m["kind"] in POD_TEMPLATE_KINDS
    ]


def admit_pod(cluster: Cluster, namespace: str, name: str, template: Manifest) -> str:
    """Create (dry run, so admission runs and nothing is stored) a pod from `template`."""
    spec = dict(template["spec"])
    # Its ServiceAccount does not exist here; Pod Security does not look at it.
    spec.pop("serviceAccountName", None)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **template.get("metadata", {})},
        "spec": spec,
    }
    result = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False
    )
    return "" if result.returncode == 0 else result.stderr


def sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def can_i(cluster: Cluster, user: str, verb: str, resource: str, *where: str) -> bool:
    """`kubectl auth can-i VERB RESOURCE[.GROUP][/SUBRESOURCE] --as USER [-n NS | -A]`."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={user}", *where]
    if subresource:
        args.append(f"--subresource={subresource}")
    result = cluster.kubectl(*args, check=False)
    if "doesn't have a resource type" in result.stderr:
        # kubectl cannot map a kind whose CRD is not installed (ServiceMonitor): ask the
        # authorizer itself, as can-i does for a known kind.
        return _access_review(cluster, user, verb, resource, subresource, where)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def _access_review(
    cluster: Cluster, user: str, verb: str, resource: str, subresource: str, where: tuple[str, ...]
) -> bool:
    name, _, group = resource.partition(".")
    namespace = ""
    for index, arg in enumerate(where):
        if arg in ("-n", "--namespace"):
            namespace = where[index + 1]
        elif arg.startswith("--namespace="):
            namespace = arg.split("=", 1)[1]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:authenticated"],
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": name,
                "subresource": subresource,
                "namespace": namespace,
            },
        },
    }
    out = cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review)).stdout
    return bool(json.loads(out)["status"].get("allowed"))


# ------------------------------------------------------- server-side validation, PSS


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["watchNamespaces={NAMESPACE}"],
        ["operator.verbose=true", "operator.extraEnv[0].name=X", "operator.extraEnv[0].value=y"],
    ],
    ids=["cluster-wide", "namespaced", "extra-env"],
)
def test_rendered_chart_passes_server_side_validation(
    cluster: Cluster, namespace: str, sets: list[str]
) -> None:
    sets = [s.replace("NAMESPACE", namespace) for s in sets]
    # helm's own output, as `helm install` would send it (no YAML round trip in between).
    rendered = template_text(cluster, f"v{secrets.token_hex(2)}", namespace, *sets)
    result = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=rendered
    )
    assert "created (server dry run)" in result.stdout


def test_every_pod_template_is_admitted_as_restricted(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    restrict(api, namespace)
    chart = template(cluster, "pss", namespace)
    kustomized = documents(cluster.kubectl("kustomize", str(DEPLOY)).stdout)
    templates = pod_templates(chart) + pod_templates(kustomized)
    assert {name.split("/")[0] for name, _ in templates} == {"Deployment", "Job"}
    for index, (name, pod_template) in enumerate(templates):
        refused = admit_pod(cluster, namespace, f"pss-{index}", pod_template)
        assert not refused, f"{name} is not admitted as restricted:\n{refused}"
    # The namespace really enforces: the same pod without its security context is refused.
    loose = copy.deepcopy(templates[0][1])
    del loose["spec"]["securityContext"]
    for container in loose["spec"]["containers"]:
        del container["securityContext"]
    refused = admit_pod(cluster, namespace, "pss-loose", loose)
    assert "violates PodSecurity" in refused


# ------------------------------------------------------------------------- kustomize


def test_kubectl_apply_k_installs_the_operator(cluster: Cluster, api: client.ApiClient) -> None:
    """`kubectl apply -k deploy/default` (client-side: the CRDs fit the last-applied limit)."""
    operator_docs = DEPLOY / "modelyard.yaml"
    try:
        cluster.kubectl("apply", "-k", str(DEPLOY), timeout=120)
        cluster.kubectl(
            "-n",
            "modelyard-system",
            "rollout",
            "status",
            "deployment/modelyard",
            "--timeout=120s",
            timeout=150,
        )
        pods = client.CoreV1Api(api).list_namespaced_pod(
            "modelyard-system", label_selector="app.kubernetes.io/component=operator"
        )
        assert [p.status.phase for p in pods.items] == ["Running"]
        namespace = client.CoreV1Api(api).read_namespace("modelyard-system")
        assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
        # Applied again, nothing changes: no field the API server drops or rewrites.
        assert cluster.kubectl("diff", "-k", str(DEPLOY), check=False).returncode == 0
        again = cluster.kubectl("apply", "-k", str(DEPLOY), timeout=120).stdout.splitlines()
        ours = [line for line in again if not line.startswith("customresourcedefinition")]
        assert all(line.endswith(" unchanged") for line in ours), again
    finally:
        # Everything but the CRDs, which the other tests use.
        cluster.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", str(operator_docs), check=False
        )
        cluster.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", str(DEPLOY / "namespace.yaml")
        )


# --------------------------------------------------------------------------- helm


def test_helm_install_test_upgrade_uninstall(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    restrict(api, namespace)
    release = f"it-{secrets.token_hex(2)}"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    installed = helm(
        cluster, "install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "120s"
    )
    try:
        assert "STATUS: deployed" in installed.stdout
        assert "watches every namespace" in installed.stdout  # NOTES.txt
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        assert [p.status.phase for p in pods] == ["Running"]

        tested = helm(cluster, "test", release, "-n", namespace, "--timeout", "120s")
        assert "Phase:          Succeeded" in tested.stdout

        helm(
            cluster,
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--set",
            "operator.resyncSeconds=15",
            "--wait",
            "--timeout",
            "120s",
        )
        deployment = apps.read_namespaced_deployment(f"{release}-modelyard", namespace)
        env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
        assert env["MODELYARD_RESYNC_SECONDS"] == "15"
        assert deployment.spec.strategy.type == "Recreate"
        history = json.loads(
            helm(cluster, "history", release, "-n", namespace, "-o", "json").stdout
        )
        assert [h["status"] for h in history] == ["superseded", "deployed"]
        wait_until(
            lambda: (
                [
                    p.status.phase
                    for p in core.list_namespaced_pod(namespace, label_selector=selector).items
                    if p.metadata.deletion_timestamp is None
                ]
                == ["Running"]
            ),
            timeout=60,
            what="one operator pod after the upgrade",
        )
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout", "120s")
    rbac = client.RbacAuthorizationV1Api(api)
    left = [
        r.metadata.name
        for r in rbac.list_cluster_role(
            label_selector=f"app.kubernetes.io/instance={release}"
        ).items
    ]
    assert left == []
    assert apps.list_namespaced_deployment(namespace).items == []
    # The CRDs stay: uninstalling the operator must not delete users' models.
    assert cluster.kubectl("get", f"crd/modeltrainings.{GROUP}").returncode == 0


# ------------------------------------------------------------------- admission policy

HOST_PATH = {"name": "node", "hostPath": {"path": "/", "type": "Directory"}}
POLICY_REFUSAL = "spec.pod.volumes: hostPath volumes are not allowed (Modelyard admission policy)"


def _dry_run_create(api: client.ApiClient, namespace: str, body: Manifest) -> str:
    """'' when the API server would create `body`, else its refusal."""
    plural = {"ModelTraining": "modeltrainings", "ModelDeployment": "modeldeployments"}
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural[body["kind"]], body, dry_run="All"
        )
    except ApiException as error:
        return str(error.body)
    return ""


def test_admission_policy_refuses_host_path_volumes(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    """The chart's ValidatingAdmissionPolicy, as rendered, in the API server (CEL, no webhook)."""
    release = f"vap-{secrets.token_hex(2)}"
    rendered = template_text(
        cluster, release, namespace, show_only="templates/admission-policy.yaml"
    )
    assert {m["kind"] for m in documents(rendered)} == {
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    training, deployment = load_sample("iris.yaml"), load_sample("pinned-model-deployment.yaml")
    with_host_path = [copy.deepcopy(training), copy.deepcopy(deployment)]
    for body in with_host_path:
        body["spec"]["pod"] = {"volumes": [{"name": "cache", "emptyDir": {}}, HOST_PATH]}
    ours = f"ValidatingAdmissionPolicy '{release}-modelyard-pod-overrides'"
    cluster.kubectl("apply", "-f", "-", stdin=rendered)
    try:
        # The API server picks a new policy up from its informer, within a few seconds (and
        # may still enforce one that another test has just deleted: name ours).
        def refused_by_ours() -> str:
            refusal = _dry_run_create(api, namespace, with_host_path[0])
            return refusal if ours in refusal else ""

        refusal = wait_until(
            refused_by_ours, timeout=30, what="our policy to refuse a hostPath volume"
        )
        assert POLICY_REFUSAL in refusal and '"reason":"Forbidden"' in refusal
        assert POLICY_REFUSAL in _dry_run_create(api, namespace, with_host_path[1])
        for body in (training, deployment):
            with_volume = copy.deepcopy(body)
            with_volume["spec"]["pod"] = {"volumes": [{"name": "cache", "emptyDir": {}}]}
            assert _dry_run_create(api, namespace, body) == ""
            assert _dry_run_create(api, namespace, with_volume) == ""
        # A stored object is still judged when its spec changes, never for metadata alone.
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeltrainings", training
        )
        with pytest.raises(ApiException, match="hostPath volumes are not allowed"):
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "modeltrainings",
                "iris",
                {"spec": {"pod": {"volumes": [HOST_PATH]}}},
            )
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "modeltrainings",
            "iris",
            {"metadata": {"labels": {"team": "ml"}}},
        )
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", stdin=rendered)


# ------------------------------------------------------------ ServiceAccount permissions


@pytest.fixture(scope="module")
def cluster_release(cluster: Cluster, api: client.ApiClient) -> Iterator[tuple[str, str]]:
    """A cluster-wide install: (its namespace, the operator's user name)."""
    namespace = new_namespace(api, "cluster-release")
    release = f"cw-{secrets.token_hex(2)}"
    helm(cluster, "install", release, str(CHART), "-n", namespace, "--set", "tests.enabled=false")
    try:
        yield namespace, sa_user(namespace, f"{release}-modelyard")
    finally:
        helm(cluster, "uninstall", release, "-n", namespace)
        delete_namespace(api, namespace)


# What the operator does (kube.py, handlers/), in any namespace.
NEEDED = [
    ("list", "modeltrainings.modelyard.dev"),
    ("watch", "modeldeployments.modelyard.dev"),
    ("patch", "modeltrainings.modelyard.dev/status"),
    ("patch", "modeldeployments.modelyard.dev/status"),
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("list", "pods"),
    ("get", "configmaps"),
    ("patch", "configmaps"),
    ("update", "configmaps"),
    ("create", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "networkpolicies.networking.k8s.io"),
    ("patch", "services"),
    ("watch", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("create", "horizontalpodautoscalers.autoscaling"),
    ("delete", "poddisruptionbudgets.policy"),
    ("create", "servicemonitors.monitoring.coreos.com"),
    ("get", "persistentvolumeclaims"),
    ("create", "events"),
    ("list", "events"),
]
# What it must never do.
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "pods"),
    ("update", "modeltrainings.modelyard.dev"),
    ("delete", "modeldeployments.modelyard.dev"),
    ("delete", "persistentvolumeclaims"),
    ("create", "persistentvolumeclaims"),
    ("impersonate", "serviceaccounts"),
    ("escalate", "roles.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
]
CLUSTER_SCOPED_WRITES = [
    ("create", "namespaces"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "persistentvolumes"),
    ("create", "priorityclasses.scheduling.k8s.io"),
    ("patch", "nodes"),
]


def test_cluster_wide_operator_can_do_what_it_needs(
    cluster: Cluster, cluster_release: tuple[str, str]
) -> None:
    _, user = cluster_release
    missing = [
        f"{verb} {resource}"
        for verb, resource in NEEDED
        if not can_i(cluster, user, verb, resource, "-n", "some-team")
        or not can_i(cluster, user, verb, resource, "--all-namespaces")
    ]
    assert missing == []
    assert can_i(cluster, user, "watch", "customresourcedefinitions.apiextensions.k8s.io")


def test_cluster_wide_operator_reads_no_secrets_and_creates_nothing_cluster_wide(
    cluster: Cluster, cluster_release: tuple[str, str]
) -> None:
    namespace, user = cluster_release
    allowed = [
        f"{verb} {resource} {where}"
        for verb, resource in FORBIDDEN
        for where in ("--all-namespaces", f"--namespace={namespace}", "--namespace=some-team")
        if can_i(cluster, user, verb, resource, where)
    ]
    allowed += [
        f"{verb} {resource}"
        for verb, resource in CLUSTER_SCOPED_WRITES
        if can_i(cluster, user, verb, resource)
    ]
    assert allowed == []


def _operator_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with a fresh token of the ServiceAccount, as a pod would mount it."""
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": admin["clusters"][0]["name"], "user": account},
            }
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_namespaced_operator_runs_with_roles_only(
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Install with watchNamespaces, then run the real operator with its ServiceAccount's token:
    it reconciles a ModelTraining and a ModelDeployment without a single refused request other
    than the two cluster-wide reads it is designed to do without."""
    restrict(api, namespace)
    home = new_namespace(api, "operator-home")
    release = f"ns-{secrets.token_hex(2)}"
    account = f"{release}-modelyard"
    user = sa_user(home, account)
    objects = Objects(api, namespace)
    log_path = CLUSTER_DIR / "logs" / f"operator-{release}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "-n",
        home,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        "rbac.aggregateToDefaultRoles=false",
        "--set",
        "tests.enabled=false",
    )
    operator = None
    try:
        rbac = client.RbacAuthorizationV1Api(api)
        assert (
            rbac.list_cluster_role(label_selector=f"app.kubernetes.io/instance={release}").items
            == []
        )
        assert can_i(cluster, user, "list", "modeltrainings.modelyard.dev", "-n", namespace)
        assert not can_i(cluster, user, "list", "modeltrainings.modelyard.dev", "-n", home)
        assert not can_i(cluster, user, "list", "modeltrainings.modelyard.dev", "--all-namespaces")
        assert not can_i(cluster, user, "get", "secrets", "-n", namespace)
        assert not can_i(cluster, user, "get", "customresourcedefinitions.apiextensions.k8s.io")

        objects.models_claim()
        kubeconfig = _operator_kubeconfig(cluster, home, account, tmp_path / "kubeconfig")
        monkeypatch.setenv("MODELYARD_NAMESPACES", namespace)
        operator = OperatorProcess(kubeconfig, log_path)
        operator.start()

        training = load_sample("iris.yaml")
        objects.create("modeltrainings", training)
        deployment = load_sample("pinned-model-deployment.yaml")
        deployment["metadata"] = {"name": "pinned"}
        objects.create("modeldeployments", deployment)

        objects.wait_for(
            "modeltrainings",
            "iris",
            lambda o: (o.get("status") or {}).get("observedGeneration") == 1,
            what="the ModelTraining's status",
        )
        objects.wait_for(
            "modeldeployments",
            "pinned",
            lambda o: (o.get("status") or {}).get("observedGeneration") == 1,
            what="the ModelDeployment's status",
        )
        batch, apps = client.BatchV1Api(api), client.AppsV1Api(api)
        wait_until(
            lambda: batch.list_namespaced_job(namespace).items,
            timeout=60,
            what="the training's Job",
        )
        wait_until(
            lambda: apps.list_namespaced_deployment(namespace).items,
            timeout=60,
            what="the server Deployment",
        )
        names = {
            kind: {o.metadata.name for o in items}
            for kind, items in {
                "Role": rbac.list_namespaced_role(namespace).items,
                "RoleBinding": rbac.list_namespaced_role_binding(namespace).items,
                "PodDisruptionBudget": client.PolicyV1Api(api)
                .list_namespaced_pod_disruption_budget(namespace)
                .items,
            }.items()
        }
        assert any(name.startswith("iris") for name in names["Role"])
        assert any(name.startswith("iris") for name in names["RoleBinding"])
        assert names["PodDisruptionBudget"] == {"pinned"}
    finally:
        if operator is not None:
            operator.stop()
        helm(cluster, "uninstall", release, "-n", home)
        delete_namespace(api, home)
        client.CoreV1Api(api).delete_persistent_volume(f"{namespace}-models")

    refused = [
        line
        for line in log_path.read_text().splitlines()
        # Every refusal reads "403 Forbidden" (a bare "403" also matches log timestamps).
        if "forbidden" in line.lower()
    ]
    # The one refusal by design: the ServiceMonitor CRD may not be read, so the operator makes
    # no ServiceMonitors. (kopf does not scan namespaces or CRDs in this mode.)
    unexpected = [line for line in refused if "servicemonitors.monitoring.coreos.com" not in line]
    assert unexpected == [], "\n".join(unexpected)
