"""The official Python `kubernetes` client against `skiff up`: CRUD, watch, pagination,
conflicts."""

import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


def cm(name, labels=None, data=None):
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels or {}), data=data or {"k": "v"})


def test_crud_and_generate_name(api, namespace):
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map(namespace, cm("a", {"app": "x"}))
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    gen = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="gen-")))
    assert gen.metadata.name.startswith("gen-") and len(gen.metadata.name) == 9
    got = core.read_namespaced_config_map("a", namespace)
    assert got.data == {"k": "v"}
    got.data["k"] = "w"
    updated = core.replace_namespaced_config_map("a", namespace, got)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    patched = core.patch_namespaced_config_map("a", namespace, {"metadata": {"labels": {"extra": "1"}}})
    assert patched.metadata.labels == {"app": "x", "extra": "1"}
    core.delete_namespaced_config_map("a", namespace)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("a", namespace)
    assert e.value.status == 404


def test_many_kinds_round_trip(api, namespace):
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    batch, auto = client.BatchV1Api(api), client.AutoscalingV1Api(api)
    template = client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "s"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="img:1")]))
    apps.create_namespaced_stateful_set(namespace, client.V1StatefulSet(metadata=client.V1ObjectMeta(name="s"),
        spec=client.V1StatefulSetSpec(service_name="s", selector=client.V1LabelSelector(match_labels={"app": "s"}), template=template)))
    apps.create_namespaced_daemon_set(namespace, client.V1DaemonSet(metadata=client.V1ObjectMeta(name="ds"),
        spec=client.V1DaemonSetSpec(selector=client.V1LabelSelector(match_labels={"app": "s"}), template=template)))
    job_template = client.V1PodTemplateSpec(spec=client.V1PodSpec(restart_policy="Never", containers=[client.V1Container(name="c", image="img:1")]))
    job = batch.create_namespaced_job(namespace, client.V1Job(metadata=client.V1ObjectMeta(name="j"), spec=client.V1JobSpec(template=job_template)))
    assert job.spec.completions == 1 and job.spec.backoff_limit == 6
    batch.create_namespaced_cron_job(namespace, client.V1CronJob(metadata=client.V1ObjectMeta(name="cj"),
        spec=client.V1CronJobSpec(schedule="*/5 * * * *", job_template=client.V1JobTemplateSpec(spec=client.V1JobSpec(template=job_template)))))
    svc = core.create_namespaced_service(namespace, client.V1Service(metadata=client.V1ObjectMeta(name="np"),
        spec=client.V1ServiceSpec(type="NodePort", selector={"app": "s"}, ports=[client.V1ServicePort(port=80)])))
    assert svc.spec.cluster_ip.startswith("10.43.") and 30000 <= svc.spec.ports[0].node_port <= 32767
    assert svc.spec.ports[0].target_port == 80
    hpa = auto.create_namespaced_horizontal_pod_autoscaler(namespace, client.V1HorizontalPodAutoscaler(metadata=client.V1ObjectMeta(name="h"),
        spec=client.V1HorizontalPodAutoscalerSpec(max_replicas=5, target_cpu_utilization_percentage=70,
            scale_target_ref=client.V1CrossVersionObjectReference(kind="StatefulSet", name="s", api_version="apps/v1"))))
    assert hpa.spec.target_cpu_utilization_percentage == 70
    v2 = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler("h", namespace)
    assert v2.spec.metrics[0].resource.target.average_utilization == 70
    scale = apps.patch_namespaced_stateful_set_scale("s", namespace, {"spec": {"replicas": 4}})
    assert scale.spec.replicas == 4
    assert apps.read_namespaced_stateful_set("s", namespace).spec.replicas == 4
    client.CoordinationV1Api(api).create_namespaced_lease(namespace, client.V1Lease(metadata=client.V1ObjectMeta(name="l"),
        spec=client.V1LeaseSpec(holder_identity="me")))
    client.RbacAuthorizationV1Api(api).create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=f"{namespace}:reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get"])]))
    node = core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=f"{namespace}-node")))
    core.patch_node_status(node.metadata.name, {"status": {"capacity": {"cpu": "2"}}})
    assert core.read_node(node.metadata.name).status.capacity == {"cpu": "2"}


def test_status_subresource_separates_spec_and_status(api, namespace):
    # A PersistentVolumeClaim: it has a status subresource and no controller writing it.
    core = client.CoreV1Api(api)
    claim = {"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
             "status": {"phase": "Bound"}}
    c = core.create_namespaced_persistent_volume_claim(namespace, claim)
    assert c.status is None or c.status.phase != "Bound"
    core.patch_namespaced_persistent_volume_claim_status("c", namespace, {"status": {"phase": "Lost"}})
    core.patch_namespaced_persistent_volume_claim("c", namespace, {"spec": {"resources": {"requests": {"storage": "2Gi"}}}, "status": {"phase": "Pending"}})
    got = core.read_namespaced_persistent_volume_claim("c", namespace)
    assert got.status.phase == "Lost" and got.spec.resources.requests == {"storage": "2Gi"}


def test_stale_update_conflicts(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(namespace, cm("c"))
    first = core.read_namespaced_config_map("c", namespace)
    second = core.read_namespaced_config_map("c", namespace)
    first.data = {"k": "1"}
    core.replace_namespaced_config_map("c", namespace, first)
    second.data = {"k": "2"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("c", namespace, second)
    assert e.value.status == 409
    assert core.read_namespaced_config_map("c", namespace).data == {"k": "1"}
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(namespace, cm("c"))
    assert e.value.status == 409


def test_pagination(api, namespace):
    core = client.CoreV1Api(api)
    for i in range(25):
        core.create_namespaced_config_map(namespace, cm(f"p{i:02d}", {"page": "yes" if i % 5 else "no"}))
    seen, token = [], None
    while True:
        page = core.list_namespaced_config_map(namespace, limit=7, _continue=token, label_selector="page=yes")
        assert len(page.items) <= 7
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"p{i:02d}" for i in range(25) if i % 5]


def collect(api, namespace, rv, count, out):
    core = client.CoreV1Api(api)
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, namespace, resource_version=rv, timeout_seconds=20):
        out.append((event["type"], event["object"].metadata.name, int(event["object"].metadata.resource_version)))
        if len(out) >= count:
            w.stop()


def test_watch_order_resume_and_concurrent_watchers(api, namespace):
    core = client.CoreV1Api(api)
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    results = [[], []]
    watchers = [threading.Thread(target=collect, args=(api, namespace, start, 6, results[i])) for i in range(2)]
    for t in watchers:
        t.start()
    core.create_namespaced_config_map(namespace, cm("w1"))
    core.create_namespaced_config_map(namespace, cm("w2"))
    core.patch_namespaced_config_map("w1", namespace, {"data": {"k": "2"}})
    core.patch_namespaced_config_map("w2", namespace, {"data": {"k": "2"}})
    core.delete_namespaced_config_map("w1", namespace)
    core.delete_namespaced_config_map("w2", namespace)
    for t in watchers:
        t.join(30)
    kinds = [(t, n) for t, n, _ in results[0]]
    assert kinds == [("ADDED", "w1"), ("ADDED", "w2"), ("MODIFIED", "w1"), ("MODIFIED", "w2"), ("DELETED", "w1"), ("DELETED", "w2")]
    revisions = [rv for _, _, rv in results[0]]
    assert revisions == sorted(revisions)
    assert results[0] == results[1]
    # Resuming from the revision of the second event replays exactly what came after it.
    resumed = []
    collect(api, namespace, str(revisions[1]), 4, resumed)
    assert resumed == results[0][2:]


def test_watch_of_compacted_revision_is_gone(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(namespace, cm("churn"))
    old = core.read_namespaced_config_map("churn", namespace).metadata.resource_version
    for i in range(1100):  # the test cluster keeps 1000 events
        core.patch_namespaced_config_map("churn", namespace, {"data": {"k": str(i)}})
    w = watch.Watch()
    with pytest.raises(ApiException) as e:
        for _ in w.stream(core.list_namespaced_config_map, namespace, resource_version=old, timeout_seconds=5):
            pass
    assert e.value.status == 410


def test_watch_over_websocket(cluster, namespace):
    """`?watch=1` upgraded to a WebSocket, as browsers and Headlamp watch: one message per
    event, base64-encoded JSON under `base64.binary.k8s.io`, plain text with no protocol."""
    import base64
    import json
    import ssl

    import websocket

    # (Of `ws` alone: the namespace also has kube-root-ca.crt.)
    url = cluster.url.replace("https://", "wss://") + f"/api/v1/namespaces/{namespace}/configmaps?watch=1&fieldSelector=metadata.name%3Dws"
    opts = {"ca_certs": cluster.data_dir + "/ca.crt", "cert_reqs": ssl.CERT_REQUIRED}
    header = [f"Authorization: Bearer {cluster.token}"]
    b64 = websocket.create_connection(url, header=header, sslopt=opts, subprotocols=["base64.binary.k8s.io"], timeout=10)
    plain = websocket.create_connection(url, header=header, sslopt=opts, timeout=10)
    assert b64.getsubprotocol() == "base64.binary.k8s.io"
    client.CoreV1Api(cluster.api()).create_namespaced_config_map(namespace, cm("ws", data={"a": "1"}))
    event = json.loads(base64.b64decode(b64.recv()))
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "ws" and event["object"]["data"] == {"a": "1"}
    event = json.loads(plain.recv())
    assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "ws"
    b64.close()
    plain.close()
    # Without the token: refused before any upgrade.
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(url, sslopt=opts, timeout=10)
    assert e.value.status_code == 401
