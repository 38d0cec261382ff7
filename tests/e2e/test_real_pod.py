"""Real pods on the nodes of the cluster that KUBECONFIG names: kubelets, containerd and runc
really run them, and the pod network, Service proxy, DNS, storage and metrics join the nodes.

Every check reads what a kubelet reported through the API server (phase, exit code,
termination message, pod IP, logs), never a simulated status.
"""

from __future__ import annotations

import ipaddress
import secrets

from kubernetes import client

from tests.e2e.cluster_support import Cluster, busybox_pod, report, wait_for_phase, with_claim
from tests.integration.support import wait_until


def test_pod_runs_to_completion_and_its_log_is_read_through_the_api(
    cluster: Cluster, namespace: str
) -> None:
    core = cluster.core
    token = secrets.token_hex(8)
    # The output depends on the token (from the spec) and on the pod itself (its name
    # through the downward API, its own cgroup and network namespace), so only a container
    # that really ran can have written it.
    script = (
        f"echo token={token}; echo pod=$POD_NAME; "
        "echo pid1=$(cat /proc/1/comm); "
        "echo ip=$(ip -4 -o addr show eth0 | awk '{print $4}'); "
        "echo done"
    )
    node = cluster.workers[0]
    core.create_namespaced_pod(namespace, busybox_pod(cluster, "hello", script, node=node))

    pod = wait_for_phase(core, namespace, "hello", {"Succeeded", "Failed"})
    assert pod.status.phase == "Succeeded", pod.status
    assert pod.spec.node_name == node
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert terminated.reason == "Completed"
    assert pod.status.container_statuses[0].image_id, "containerd reports the image digest"

    pod_cidr = cluster.pod_cidr(node)
    assert ipaddress.ip_address(pod.status.pod_ip) in pod_cidr, pod.status.pod_ip

    log = core.read_namespaced_pod_log("hello", namespace)
    lines = log.splitlines()
    assert f"token={token}" in lines
    assert "pod=hello" in lines
    # The container's shell is PID 1 in the pod's own PID namespace.
    assert "pid1=sh" in lines
    assert f"ip={pod.status.pod_ip}/{pod_cidr.prefixlen}" in lines
    assert lines[-1] == "done"


def test_exit_code_and_termination_message_reach_the_pod_status(
    cluster: Cluster, namespace: str
) -> None:
    # The trainer reports its result in the termination message and says with its exit
    # code whether a retry helps: both must travel from the container to the API.
    core = cluster.core
    script = "printf '%s' '{\"reason\":\"BadConfig\"}' > /dev/termination-log; exit 3"
    core.create_namespaced_pod(namespace, busybox_pod(cluster, "fails", script))

    pod = wait_for_phase(core, namespace, "fails", {"Succeeded", "Failed"})
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.message == '{"reason":"BadConfig"}'


def test_pods_reach_each_other_through_a_service_by_its_dns_name(
    cluster: Cluster, namespace: str
) -> None:
    # Pod network between two nodes (when the cluster has two workers), Service virtual IP
    # (kube-proxy's iptables rules) and cluster DNS (CoreDNS) in one request from one real
    # pod to another.
    core = cluster.core
    body = secrets.token_hex(8)
    server = busybox_pod(
        cluster,
        "web",
        f"mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && "
        "exec httpd -f -p 8080 -h /tmp/www",
        node=cluster.workers[0],
        labels={"app": "web"},
        port=8080,
    )
    server.spec.containers[0].readiness_probe = client.V1Probe(
        tcp_socket=client.V1TCPSocketAction(port=8080), period_seconds=1
    )
    core.create_namespaced_pod(namespace, server)
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                selector={"app": "web"},
                ports=[client.V1ServicePort(port=80, target_port=8080)],
            ),
        ),
    )

    def web_ready() -> bool:
        pod = core.read_namespaced_pod("web", namespace)
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    wait_until(web_ready, timeout=90, interval=0.5, what="pod web Ready")

    # Debian's static busybox cannot use glibc's resolver and its wget crashes (SIGSEGV),
    # so the name is resolved with busybox's own nslookup, which asks the cluster DNS,
    # and the request is written with nc. Retries cover the moment between the pod
    # turning Ready and kube-proxy's next sync.
    fqdn = f"web.{namespace}.svc.cluster.local"
    script = (
        "for i in $(seq 30); do "
        f"ip=$(nslookup {fqdn} | awk '/^Name:/ {{n=1}} n && /^Address/ {{print $2}}'); "
        'if [ -n "$ip" ] && out=$(printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 "$ip" 80) '
        '&& [ -n "$out" ]; then '
        'echo "resolved=$ip"; echo "got=$(echo "$out" | tail -n 1)"; exit 0; fi; '
        f"sleep 1; done; nslookup {fqdn}; exit 1"
    )
    client_pod = busybox_pod(cluster, "client", script, node=cluster.workers[-1])
    core.create_namespaced_pod(namespace, client_pod)
    pod = wait_for_phase(core, namespace, "client", {"Succeeded", "Failed"}, timeout=120)
    log = core.read_namespaced_pod_log("client", namespace)
    assert pod.status.phase == "Succeeded", log
    lines = log.splitlines()
    assert f"got={body}" in lines
    service = core.read_namespaced_service("web", namespace)
    assert f"resolved={service.spec.cluster_ip}" in lines
    web = core.read_namespaced_pod("web", namespace)
    assert {web.spec.node_name, pod.spec.node_name} == {cluster.workers[0], cluster.workers[-1]}
    report(
        f"Service by DNS name: server pod on {web.spec.node_name}, client on {pod.spec.node_name}"
    )


def test_a_claim_of_the_default_storage_class_binds_and_keeps_data_across_pods(
    cluster: Cluster, namespace: str
) -> None:
    # Models live on PVCs: the default StorageClass must make a volume, and what one pod
    # writes there the next pod must read.
    core = cluster.core
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="data"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "16Mi"}),
            ),
        ),
    )
    token = secrets.token_hex(8)
    writer = busybox_pod(cluster, "writer", f"echo {token} > /data/model.txt && sync")
    core.create_namespaced_pod(namespace, with_claim(writer, "data"))
    pod = wait_for_phase(core, namespace, "writer", {"Succeeded", "Failed"}, timeout=120)
    assert pod.status.phase == "Succeeded", core.read_namespaced_pod_log("writer", namespace)

    claim = core.read_namespaced_persistent_volume_claim("data", namespace)
    assert claim.status.phase == "Bound"
    volume = core.read_persistent_volume(claim.spec.volume_name)
    default_classes = [
        sc.metadata.name
        for sc in client.StorageV1Api(cluster.api).list_storage_class().items
        if (sc.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    assert volume.spec.storage_class_name in default_classes, default_classes

    reader = busybox_pod(cluster, "reader", "cat /data/model.txt")
    core.create_namespaced_pod(namespace, with_claim(reader, "data"))
    pod = wait_for_phase(core, namespace, "reader", {"Succeeded", "Failed"})
    assert pod.status.phase == "Succeeded"
    assert core.read_namespaced_pod_log("reader", namespace).strip() == token


def test_a_pod_reaches_the_api_server_with_its_service_account(
    cluster: Cluster, namespace: str
) -> None:
    # The operator and the trainer's progress reports talk to the API from pods, through
    # the `kubernetes` Service and a token of their ServiceAccount.
    image = cluster.image_with("/modelyard/operator:")
    core = cluster.core
    script = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "print('version', client.VersionApi().get_code().git_version)\n"
        "try:\n"
        "    client.CoreV1Api().list_namespaced_secret('kube-system')\n"
        "except client.ApiException as exc:\n"
        "    print('secrets', exc.status)\n"
    )
    pod = busybox_pod(cluster, "api", "")
    pod.spec.containers[0].image = image
    pod.spec.containers[0].command = ["python", "-c", script]
    pod.spec.automount_service_account_token = True
    core.create_namespaced_pod(namespace, pod)

    pod = wait_for_phase(core, namespace, "api", {"Succeeded", "Failed"}, timeout=120)
    log = core.read_namespaced_pod_log("api", namespace)
    assert pod.status.phase == "Succeeded", log
    version = client.VersionApi(cluster.api).get_code().git_version
    lines = log.splitlines()
    assert f"version {version}" in lines
    # Authenticated as the namespace's default ServiceAccount, which may not read secrets.
    assert "secrets 403" in lines


def test_the_hpa_scales_out_on_cpu_metrics_from_the_kubelet(
    cluster: Cluster, namespace: str
) -> None:
    # metrics-server scrapes the kubelet, the API server serves metrics.k8s.io, and the
    # controller-manager's HPA acts on it: a pod that burns CPU far above its request
    # must get a second replica. The CPU limit keeps the burn to a tenth of a core.
    apps = client.AppsV1Api(cluster.api)
    autoscaling = client.AutoscalingV2Api(cluster.api)
    custom = client.CustomObjectsApi(cluster.api)
    pod = busybox_pod(cluster, "burn", "while :; do :; done", labels={"app": "burn"})
    pod.spec.containers[0].resources = client.V1ResourceRequirements(
        requests={"cpu": "20m"}, limits={"cpu": "100m"}
    )
    pod.spec.restart_policy = "Always"
    pod.spec.termination_grace_period_seconds = 0
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="burn"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels={"app": "burn"}),
                template=client.V1PodTemplateSpec(metadata=pod.metadata, spec=pod.spec),
            ),
        ),
    )
    autoscaling.create_namespaced_horizontal_pod_autoscaler(
        namespace,
        client.V2HorizontalPodAutoscaler(
            metadata=client.V1ObjectMeta(name="burn"),
            spec=client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=client.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name="burn"
                ),
                min_replicas=1,
                max_replicas=2,
                metrics=[
                    client.V2MetricSpec(
                        type="Resource",
                        resource=client.V2ResourceMetricSource(
                            name="cpu",
                            target=client.V2MetricTarget(
                                type="Utilization", average_utilization=50
                            ),
                        ),
                    )
                ],
            ),
        ),
    )

    def pod_metrics() -> list[dict[str, object]] | None:
        found = custom.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", namespace, "pods")
        return found.get("items") or None

    metrics = wait_until(pod_metrics, timeout=120, interval=2, what="pod metrics of burn")
    assert metrics[0]["containers"], metrics

    def scaled_out() -> bool:
        deployment = apps.read_namespaced_deployment("burn", namespace)
        return (deployment.spec.replicas or 0) >= 2

    try:
        wait_until(scaled_out, timeout=180, interval=2, what="the HPA to scale burn to 2")
    finally:
        # Stop burning CPU on a shared machine at once, whatever happened.
        apps.delete_namespaced_deployment("burn", namespace)
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("burn", namespace)
    assert hpa.status.current_metrics or [], hpa.status
