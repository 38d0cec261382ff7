"""Helpers for tests against the local control plane started by hack/cluster.sh.

Nothing here fakes the API: every helper drives the real kube-apiserver, either
through the `kubernetes` client or the cached `kubectl` of the pinned version.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"
# MODELYARD_CRDS_DIR: install another set of CRDs (an empty directory: none).
CRDS_DIR = Path(os.environ.get("MODELYARD_CRDS_DIR", str(ROOT / "crds")))
CLUSTER_DIR = Path(os.environ.get("MODELYARD_CLUSTER_DIR", str(ROOT / ".cluster")))
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
AUDIT_LOG = CLUSTER_DIR / "audit.log"

# Pod label read by the kwok Stages in hack/cluster.sh: "manual" = kwok leaves the pod's
# status alone (the test drives it), "no-complete" = Running and Ready, never completed.
KWOK_STAGE_LABEL = "kwok.modelyard.dev/stage"
KWOK_MANUAL = "manual"
KWOK_NO_COMPLETE = "no-complete"

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
BARRIER_PREFIX = "audit-barrier-"

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


def bin_dir() -> Path:
    out = subprocess.run(
        [str(HACK / "k8s-binaries.sh"), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return Path(out.stdout.strip())


def binaries_ready() -> bool:
    return (
        subprocess.run(
            [str(HACK / "k8s-binaries.sh"), "--check"], capture_output=True, timeout=30
        ).returncode
        == 0
    )


@dataclass(frozen=True)
class Cluster:
    """A running local control plane."""

    kubeconfig: Path
    bin_dir: Path
    audit_log: Path
    started_here: bool
    crds: tuple[str, ...] = ()

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl (same minor as the API server) against this cluster."""
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig)]
        result = subprocess.run(
            [*cmd, *args], input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def user_kubeconfig(self, user: str, *groups: str) -> Path:
        """A kubeconfig whose client certificate names `user` (and `groups`).

        Its requests show up in the audit log under that user name, so a test can tell
        one client's writes from another's. Group system:masters grants everything;
        otherwise bind RBAC to the user yourself.
        """
        out = subprocess.run(
            [str(HACK / "cluster.sh"), "user", user, *groups],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MODELYARD_CLUSTER_DIR": str(self.kubeconfig.parent)},
        )
        return Path(out.stdout.strip().splitlines()[-1])

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))


def is_up(kubectl: Path, kubeconfig: Path = KUBECONFIG) -> bool:
    """True when a kubeconfig exists and its API server answers /readyz."""
    if not kubeconfig.exists() or not kubectl.exists():
        return False
    probe = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "ok"


# libyaml when PyYAML has it: the generated CRDs are large.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def crd_names_by_file(files: Iterable[Path]) -> dict[Path, list[str]]:
    """The CustomResourceDefinitions in each of `files`; files without one (a
    kustomization) are left out."""
    found: dict[Path, list[str]] = {}
    for path in files:
        names = [
            doc["metadata"]["name"]
            for doc in yaml.load_all(path.read_text(), Loader=_YAML_LOADER)
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
        ]
        if names:
            found[path] = names
    return found


def install_crds(cluster: Cluster, directory: Path = CRDS_DIR) -> tuple[str, ...]:
    """Apply every CRD in the YAML files of `directory`; wait until each is Established."""
    by_file = crd_names_by_file(sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]))
    if not by_file:
        return ()
    files = [arg for path in by_file for arg in ("-f", str(path))]
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=modelyard-tests", *files
    )
    names = tuple(name for names in by_file.values() for name in names)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{name}" for name in names),
        timeout=90,
    )
    return names


_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@contextlib.contextmanager
def fresh_namespace(
    api: client.ApiClient, name: str, labels: dict[str, str] | None = None
) -> Iterator[str]:
    """A namespace for one test (or module), ready for pods; deleted afterwards."""
    core = client.CoreV1Api(api)
    all_labels = {"modelyard.dev/test": "true", **(labels or {})}
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=all_labels))
    )

    def has_default_sa() -> bool:
        # The ServiceAccount admission plugin rejects pods until the controller-manager
        # has created the namespace's "default" ServiceAccount.
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_until(has_default_sa, timeout=30, what=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def namespace_name(test_name: str) -> str:
    """A fresh, valid namespace name that still says which test made it."""
    stem = _NOT_DNS.sub("-", test_name.lower()).strip("-")[:45].rstrip("-") or "test"
    return f"t-{stem}-{secrets.token_hex(3)}"


# ------------------------------------------------------------------ audit log


def _parse_time(value: str) -> datetime:
    # The API server writes RFC 3339 with microseconds and a Z suffix.
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class AuditEvent:
    """One audited request (Metadata level: who did what to which object, no bodies)."""

    user: str
    groups: tuple[str, ...]
    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    uri: str
    received: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, event: dict[str, Any]) -> AuditEvent:
        ref = event.get("objectRef") or {}
        user = event.get("user") or {}
        return cls(
            user=user.get("username", ""),
            groups=tuple(user.get("groups") or ()),
            verb=event.get("verb", ""),
            api_group=ref.get("apiGroup", ""),
            resource=ref.get("resource", ""),
            subresource=ref.get("subresource", ""),
            namespace=ref.get("namespace", ""),
            name=ref.get("name", ""),
            code=int((event.get("responseStatus") or {}).get("code", 0)),
            uri=event.get("requestURI", ""),
            received=_parse_time(event["requestReceivedTimestamp"]),
            raw=event,
        )


class AuditLog:
    """Reads the API server's audit log (policy in hack/cluster.sh: writes, by user).

    The API server audits a request after it has answered it, so a write that a client
    just saw succeed may reach the file a moment later: use `wait_for_writes`, or call
    `barrier()` before counting writes that must be complete (e.g. "no writes").
    """

    def __init__(self, path: Path, barrier_kubeconfig: Path, kubectl: Path) -> None:
        self.path = path
        self._barrier_kubeconfig = barrier_kubeconfig
        self._kubectl = kubectl
        self._events: list[AuditEvent] = []
        self._offset = 0
        self._inode: int | None = None

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def events(self) -> list[AuditEvent]:
        """Every event in the log so far (read incrementally: only new lines are parsed)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            # A new cluster (or a rotated log): start over.
            self._inode, self._offset, self._events = stat.st_ino, 0, []
        with self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        # Only whole lines: the last one may still be being written.
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            if line.strip():
                self._events.append(AuditEvent.from_json(json.loads(line)))
        return list(self._events)

    def writes(
        self,
        user: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        namespace: str | None = None,
        resource: str | None = None,
        verbs: Iterable[str] = WRITE_VERBS,
    ) -> list[AuditEvent]:
        """Write requests (successful or not) matching every filter given."""
        wanted = frozenset(verbs)
        found = []
        for event in self.events():
            if event.verb not in wanted or event.name.startswith(BARRIER_PREFIX):
                continue
            if user is not None and event.user != user:
                continue
            if since is not None and event.received < since:
                continue
            if until is not None and event.received > until:
                continue
            if namespace is not None and event.namespace != namespace:
                continue
            if resource is not None and event.resource != resource:
                continue
            found.append(event)
        return found

    def wait_for_writes(
        self, count: int, *, timeout: float = 10.0, **filters: Any
    ) -> list[AuditEvent]:
        """Wait until at least `count` writes match `filters` (see `writes`) and return them."""
        return wait_until(
            lambda: found if len(found := self.writes(**filters)) >= count else None,
            timeout=timeout,
            what=f"{count} audited writes matching {filters}",
        )

    def barrier(self, timeout: float = 10.0) -> None:
        """Return once every request answered before this call is in the log.

        Sends a dry-run create (persists nothing, but is audited) and waits for it.
        """
        name = f"{BARRIER_PREFIX}{secrets.token_hex(4)}"
        manifest = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default"},
            }
        )
        subprocess.run(
            [
                str(self._kubectl),
                "--kubeconfig",
                str(self._barrier_kubeconfig),
                "create",
                "--dry-run=server",
                "-f",
                "-",
            ],
            input=manifest,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        wait_until(
            lambda: any(e.name == name for e in self.events()),
            timeout=timeout,
            what=f"audit barrier {name}",
        )
