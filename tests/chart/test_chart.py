"""The Helm chart and the kustomize base, rendered offline by the pinned helm and kubectl:
lint, what each value does, least-privilege RBAC, restricted pod security, and that
deploy/default is the chart rendered (one source for both install paths).

Server-side validation, installs and permissions against an API server are in
tests/integration/test_delivery.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard_operator.api.crd import KINDS
from modelyard_operator.kube import PLURALS
from modelyard_operator.settings import ENV_PREFIX, Settings
from tests.conftest import ROOT
from tests.integration.support import bin_dir, binaries_ready

CHART = ROOT / "charts" / "modelyard"
DEPLOY = ROOT / "deploy" / "default"
RELEASE = "my"
NAMESPACE = "modelyard-system"
K8S_VERSION = next(
    line.split("=", 1)[1].strip()
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
    if line.startswith("K8S_VERSION=")
)
ADMISSION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
# Kinds in kube.PLURALS that the operator never calls (kept for completeness of the table).
UNUSED_PLURALS = {"replicasets"}

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def tools() -> Path:
    if not binaries_ready():
        pytest.fail(
            "helm and kubectl are not built: run `make k8s-binaries` (hack/k8s-binaries.sh)",
            pytrace=False,
        )
    return bin_dir()


def run(tools: Path, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tools / tool), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{tool} {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result


def documents(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def render(
    tools: Path, *sets: str, values: Manifest | None = None, tmp: Path | None = None
) -> list[Manifest]:
    args = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        K8S_VERSION,
    ]
    for item in sets:
        args += ["--set", item]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    return documents(run(tools, "helm", *args).stdout)


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def operator_container(manifests: list[Manifest]) -> Manifest:
    deployment = one(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def granted(rules: list[Manifest]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule or rule["resourceNames"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


# ------------------------------------------------------------------------------- lint


@pytest.mark.parametrize(
    "sets",
    [[], ["watchNamespaces={team-a,team-b}"], ["metrics.serviceMonitor.enabled=true"]],
    ids=["cluster-wide", "namespaced", "service-monitor"],
)
def test_helm_lint_strict(tools: Path, sets: list[str]) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION]
    for item in sets:
        args += ["--set", item]
    out = run(tools, "helm", *args)
    assert "0 chart(s) failed" in out.stdout


def test_helm_without_flags_renders_for_a_supported_kubernetes(tools: Path) -> None:
    # Chart.yaml requires Kubernetes >= 1.30; helm uses its link-time default when no
    # --kube-version is given, which hack/k8s-binaries.sh sets as upstream does (not 1.20).
    run(tools, "helm", "lint", "--strict", str(CHART))
    plain = documents(run(tools, "helm", "template", str(CHART)).stdout)
    assert one(plain, "Deployment")["metadata"]["name"]


def test_default_render_has_what_the_operator_needs(tools: Path) -> None:
    manifests = render(tools)
    kinds = sorted(m["kind"] for m in manifests)
    roles = ["ClusterRole"] * 4  # the operator's, and admin/edit/view for people
    cluster_scoped = ["ClusterRoleBinding", *ADMISSION_KINDS]
    assert kinds == sorted(
        [*roles, *cluster_scoped, "ServiceAccount", "Service", "Deployment", "Job"]
    )
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "modelyard"
        if manifest["kind"] not in ("ClusterRole", *cluster_scoped):
            assert manifest["metadata"]["namespace"] == NAMESPACE


# ------------------------------------------------------------------ operator Deployment


def test_operator_deployment(tools: Path) -> None:
    manifests = render(tools)
    deployment = one(manifests, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    container = operator_container(manifests)
    assert container["image"] == "modelyard/operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    assert_restricted(pod)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]["emptyDir"]


def assert_restricted(pod: Manifest) -> None:
    """What Pod Security 'restricted' asks of a pod, plus a read-only root filesystem."""
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True


def test_env_sets_every_operator_setting(tools: Path) -> None:
    """A setting added to settings.py must get a chart value (or this fails)."""
    env = env_of(operator_container(render(tools)))
    every = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    # Namespaces only when some are chosen: unset means the whole cluster.
    assert set(env) == every - {f"{ENV_PREFIX}NAMESPACES"}
    scoped = env_of(operator_container(render(tools, "watchNamespaces={a}")))
    assert set(scoped) == every
    settings = Settings.from_env(env)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert settings.namespaces == ()
    assert settings.resync_seconds == values["operator"]["resyncSeconds"]
    assert settings.trainer_image == "modelyard/trainer:0.1.0"
    assert settings.server_image == "modelyard/server:0.1.0"


def test_values_reach_the_operator_settings(tools: Path, tmp_path: Path) -> None:
    values = {
        # `--set` would pass 7.5 as a string, which the schema refuses: floats need a file.
        "operator": {
            "resyncSeconds": 7.5,
            "workers": 2,
            "watchTimeoutSeconds": 60,
            "trainerImage": {"repository": "registry.local/trainer", "tag": "v2"},
            "verbose": True,
        },
        "image": {"tag": "dev"},
    }
    manifests = render(tools, values=values, tmp=tmp_path)
    container = operator_container(manifests)
    settings = Settings.from_env(env_of(container))
    assert (settings.resync_seconds, settings.workers, settings.watch_timeout_seconds) == (
        7.5,
        2,
        60,
    )
    assert settings.trainer_image == "registry.local/trainer:v2"
    assert container["image"] == "modelyard/operator:dev"
    assert container["args"] == ["--verbose"]


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["image.pullPolicy=Sometimes"], "pullPolicy"),
        (["operator.workers=0"], "workers"),
        (["operator.resyncSeconds=0"], "resyncSeconds"),
        (["watchNamespaces={Not_A_Namespace}"], "watchNamespaces"),
        (["metrics.serviceMonitor.interval=often"], "interval"),
        (["unknownValue=1"], "unknownValue"),
        (["operator.typo=1"], "typo"),
    ],
)
def test_the_values_schema_rejects_bad_values(tools: Path, sets: list[str], words: str) -> None:
    args = ["template", RELEASE, str(CHART), "--kube-version", K8S_VERSION]
    for item in sets:
        args += ["--set", item]
    result = run(tools, "helm", *args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert words in result.stderr


# -------------------------------------------------------------------------------- RBAC


def operator_rules(manifests: list[Manifest], kind: str) -> list[Manifest]:
    roles = [r for r in find(manifests, kind) if r["metadata"]["name"].endswith("-operator")]
    assert roles, f"no operator {kind}"
    rules = roles[0]["rules"]
    assert all(r["rules"] == rules for r in roles)
    return list(rules)


def test_cluster_rbac_is_least_privilege(tools: Path) -> None:
    manifests = render(tools)
    rules = granted(operator_rules(manifests, "ClusterRole"))
    every_verb = {v for verbs in rules.values() for v in verbs}
    assert "*" not in every_verb and not {"escalate", "bind", "impersonate"} & every_verb
    assert all("*" not in key for key in rules), "no wildcard groups or resources"
    resources = {resource for _, resource in rules}
    assert "secrets" not in resources
    # The only cluster-scoped resource: CRDs, read-only.
    assert rules[("apiextensions.k8s.io", "customresourcedefinitions")] == {"get", "list", "watch"}
    # Everything the operator's API client can address is granted, and nothing else.
    main = {r for r in resources if "/" not in r}
    assert main == set(PLURALS.values()) - UNUSED_PLURALS
    # Escalation prevention: the Roles it makes for trainers grant no verb it lacks.
    assert {"get", "patch", "update"} <= rules[("", "configmaps")]
    assert rules[("", "events")] == {"create", "list"}  # list: a stuck pod's Events
    assert rules[("", "pods")] == {"list", "watch"}
    assert rules[("modelyard.dev", "modeltrainings/status")] == {"patch"}
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(manifests, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]


def test_namespaced_mode_uses_roles_only(tools: Path) -> None:
    manifests = render(
        tools, "watchNamespaces={team-a,team-b}", "rbac.aggregateToDefaultRoles=false"
    )
    assert not find(manifests, "ClusterRole") and not find(manifests, "ClusterRoleBinding")
    roles = find(manifests, "Role")
    bindings = find(manifests, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    rules = granted(operator_rules(manifests, "Role"))
    assert ("apiextensions.k8s.io", "customresourcedefinitions") not in rules
    cluster_rules = granted(operator_rules(render(tools), "ClusterRole"))
    del cluster_rules[("apiextensions.k8s.io", "customresourcedefinitions")]
    assert rules == cluster_rules
    env = env_of(operator_container(manifests))
    assert Settings.from_env(env).namespaces == ("team-a", "team-b")


def test_aggregated_roles_for_people(tools: Path) -> None:
    manifests = render(tools)
    roles = {r["metadata"]["name"].rsplit("-", 1)[1]: r for r in find(manifests, "ClusterRole")}
    plurals = {k.plural for k in KINDS}
    for level, writes in (("admin", True), ("edit", True), ("view", False)):
        role = roles[level]
        assert role["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{level}"] == (
            "true"
        )
        rules = granted(role["rules"])
        assert {r for g, r in rules if g == "modelyard.dev" and "/" not in r} == plurals
        verbs = set.union(*rules.values())
        assert ("create" in verbs) is writes and ("delete" in verbs) is writes
        assert all(g == "modelyard.dev" for g, _ in rules)
        assert not any(
            r.endswith("/status") and rules[(g, r)] - {"get", "list", "watch"} for g, r in rules
        )
    assert not find(
        render(tools, "rbac.aggregateToDefaultRoles=false"),
        "ClusterRole",
        f"{RELEASE}-modelyard-view",
    )


# ----------------------------------------------------------- Service, monitor, helm test


def test_metrics_service_and_optional_service_monitor(tools: Path) -> None:
    manifests = render(tools)
    assert not find(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "metrics": "metrics",
        "health": "health",
    }
    monitored = render(
        tools, "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"
    )
    monitor = one(monitored, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    failed = run(
        tools,
        "helm",
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        K8S_VERSION,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
        check=False,
    )
    assert failed.returncode != 0 and "needs metrics.service.enabled" in failed.stderr


def test_helm_test_hook_checks_the_operator_through_its_service(tools: Path) -> None:
    manifests = render(tools)
    job = one(manifests, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    pod = job["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["image"] == operator_container(manifests)["image"]
    script = container["command"][-1]
    service = one(manifests, "Service")["metadata"]["name"]
    assert f"http://{service}.{NAMESPACE}.svc:8081/healthz" in script
    assert f"http://{service}.{NAMESPACE}.svc:8080/metrics" in script
    compile(script, "helm-test", "exec")  # the embedded program is valid Python
    assert not find(render(tools, "tests.enabled=false"), "Job")


# ----------------------------------------------------------------- admission policy


def test_admission_policy_judges_spec_pod_of_both_kinds(tools: Path) -> None:
    manifests = render(tools)
    policy = one(manifests, "ValidatingAdmissionPolicy")
    binding = one(manifests, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]  # every namespace
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["modelyard.dev"]
    assert sorted(rule["resources"]) == sorted(k.plural for k in KINDS)
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    assert [v["expression"] for v in spec["validations"]] == [
        "variables.volumes.all(v, !has(v.hostPath))"
    ]
    scoped = one(
        render(tools, "watchNamespaces={team-a,team-b}"), "ValidatingAdmissionPolicyBinding"
    )
    [selector] = scoped["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["team-a", "team-b"],
    }
    off = render(tools, "admissionPolicy.enabled=false")
    assert not [m for m in off if m["kind"] in ADMISSION_KINDS]


# ------------------------------------------------------------------ deploy/ (kustomize)


def test_deploy_default_is_the_chart_rendered(tools: Path, tmp_path: Path) -> None:
    out = tmp_path / "modelyard.yaml"
    subprocess.run(
        [str(ROOT / "hack" / "render-deploy.sh"), str(out)],
        check=True,
        timeout=120,
        env={**os.environ, "HELM": str(tools / "helm")},
    )
    committed = DEPLOY / "modelyard.yaml"
    assert committed.read_text() == out.read_text(), (
        f"{committed} is stale: run hack/render-deploy.sh"
    )
    text = committed.read_text()
    assert "helm.sh/chart" not in text and "managed-by: Helm" not in text
    assert not [
        m for m in documents(text) if "helm.sh/hook" in m["metadata"].get("annotations", {})
    ]


def test_kustomize_installs_crds_namespace_and_operator(tools: Path) -> None:
    manifests = documents(run(tools, "kubectl", "kustomize", str(DEPLOY)).stdout)
    crds = {m["metadata"]["name"] for m in find(manifests, "CustomResourceDefinition")}
    assert crds == {f"{k.plural}.modelyard.dev" for k in KINDS}
    namespace = one(manifests, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "Service", "ServiceAccount"):
            assert manifest["metadata"]["namespace"] == NAMESPACE
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert_restricted(one(manifests, "Deployment")["spec"]["template"]["spec"])


def test_kubectl_apply_f_crds_reads_the_crds_only(tools: Path) -> None:
    # `kubectl apply -f crds/` needs a server; `label --local` reads the directory with the same
    # reader (every *.yaml, *.yml and *.json file) and names each object it found, offline.
    found = run(tools, "kubectl", "label", "--local", "-f", str(ROOT / "crds"), "-o", "name", "x=y")
    assert sorted(found.stdout.split()) == sorted(
        f"customresourcedefinition.apiextensions.k8s.io/{k.plural}.modelyard.dev" for k in KINDS
    )


def test_kustomize_argocd_config_carries_the_health_scripts(tools: Path) -> None:
    manifests = documents(
        run(tools, "kubectl", "kustomize", str(ROOT / "deploy" / "argocd")).stdout
    )
    config = one(manifests, "ConfigMap", "argocd-cm")
    assert config["metadata"]["namespace"] == "argocd"
    for kind in KINDS:
        key = f"resource.customizations.health.modelyard.dev_{kind.kind}"
        lua = (ROOT / "deploy" / "argocd" / "health" / f"{kind.kind}.lua").read_text()
        assert config["data"][key] == lua
    application = one(manifests, "Application")
    assert application["spec"]["source"]["path"] == "charts/modelyard"


def test_values_schema_is_json_and_strict() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert set(values) <= set(schema["properties"])
