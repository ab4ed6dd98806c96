"""Prometheus metrics, read as Prometheus reads them: the text parsed by Prometheus' own
Python parser (prometheus_client's OpenMetrics parser), Kubernetes' names, values that
move when work happens, and RBAC on the paths. The API server's /metrics carries its own,
the store's, the scheduler's and the controllers'; a node's (through the API's node
proxy) the agent's and its service proxy's."""

import os
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import ROOT, one_node_cluster, wait_for


def scrape(cluster, token=None):
    """(status, {family name: family}) of /metrics."""
    status, text = cluster.raw("GET", "/metrics", token=token)
    if status != 200:
        return status, {}
    return status, {f.name: f for f in text_string_to_metric_families(text)}


def value(families, family, sample, **labels):
    """The sum of `family`'s `sample`s with `labels` (0 when none yet: a family with no
    series has no samples to parse)."""
    found = families.get(family)
    return sum(s.value for s in (found.samples if found else []) if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_api_requests_are_counted_under_kubernetes_names(cluster, namespace):
    status, before = scrape(cluster)
    assert status == 200
    for name, kind in [("apiserver_request", "counter"), ("apiserver_request_duration_seconds", "histogram"), ("apiserver_longrunning_requests", "gauge")]:
        assert before[name].type == kind, before[name]
    created = dict(verb="CREATE", group="", version="v1", resource="configmaps", scope="namespace", code="201")
    count = value(before, "apiserver_request", "apiserver_request_total", **created)
    cluster.kubectl("create", "configmap", "counted", "--from-literal=k=v", "-n", namespace)
    cluster.kubectl("get", "configmap", "nothing-here", "-n", namespace, check=False)
    _, after = scrape(cluster)
    assert value(after, "apiserver_request", "apiserver_request_total", **created) >= count + 1
    assert value(after, "apiserver_request", "apiserver_request_total", verb="GET", resource="configmaps", scope="resource", code="404") >= 1
    observed = value(after, "apiserver_request_duration_seconds", "apiserver_request_duration_seconds_count", verb="CREATE", resource="configmaps")
    assert observed >= count + 1
    # The cluster's own parts hold watches open all the time.
    assert value(after, "apiserver_longrunning_requests", "apiserver_longrunning_requests", verb="WATCH") >= 1


def test_metrics_need_the_right_to_read_them(cluster, namespace):
    assert scrape(cluster, token="not-a-token")[0] == 401
    cluster.kubectl("create", "serviceaccount", "scraper", "-n", namespace)
    token = cluster.kubectl("create", "token", "scraper", "-n", namespace).stdout.strip()
    assert scrape(cluster, token=token)[0] == 403
    cluster.kubectl("create", "clusterrolebinding", f"scraper-{namespace}", "--clusterrole=system:monitoring", f"--serviceaccount={namespace}:scraper")
    try:
        wait_for(lambda: scrape(cluster, token=token)[0] == 200, 30, "the scraper's binding to take effect")
        _, families = scrape(cluster, token=token)
        # Refusals are counted too.
        assert value(families, "apiserver_request", "apiserver_request_total", verb="GET", code="403") >= 1
    finally:
        cluster.kubectl("delete", "clusterrolebinding", f"scraper-{namespace}")


def test_the_store_scheduler_and_controllers_are_counted_beside_the_api(cluster, nodes, namespace):
    _, before = scrape(cluster)
    commits = value(before, "skiff_store_commit_duration_seconds", "skiff_store_commit_duration_seconds_count")
    scheduled = value(before, "scheduler_schedule_attempts", "scheduler_schedule_attempts_total", result="scheduled")
    unschedulable = value(before, "scheduler_schedule_attempts", "scheduler_schedule_attempts_total", result="unschedulable")
    deployments = value(before, "controller_runtime_reconcile", "controller_runtime_reconcile_total", controller="deployment")
    cluster.kubectl("create", "deployment", "counted", "--image=registry.skiff.internal/wasi-hello:v1", "--replicas=2", "-n", namespace)
    cluster.kubectl("run", "nowhere", "--image=none:v1", "-n", namespace, "--overrides", '{"spec":{"nodeSelector":{"no":"such-node"}}}')
    cluster.kubectl("rollout", "status", "deployment/counted", "-n", namespace, "--timeout=60s")

    def moved():
        _, after = scrape(cluster)
        return (value(after, "scheduler_schedule_attempts", "scheduler_schedule_attempts_total", result="scheduled") >= scheduled + 2
                and value(after, "scheduler_schedule_attempts", "scheduler_schedule_attempts_total", result="unschedulable") >= unschedulable + 1
                # The queues are counted as the scheduler looks at them, each second at most.
                and value(after, "scheduler_pending_pods", "scheduler_pending_pods", queue="unschedulable") >= 1
                and after)
    after = wait_for(moved, 20, "the scheduler's attempts counted")
    kinds = {"skiff_store_commit_duration_seconds": "histogram", "skiff_store_commit_batch_size": "histogram",
             "apiserver_registered_watchers": "gauge", "scheduler_schedule_attempts": "counter",
             "scheduler_scheduling_attempt_duration_seconds": "histogram", "scheduler_pending_pods": "gauge",
             "controller_runtime_reconcile": "counter", "controller_runtime_reconcile_time_seconds": "histogram",
             "controller_runtime_active_workers": "gauge"}
    for name, kind in kinds.items():
        assert after[name].type == kind, (name, after.get(name))
    assert value(after, "skiff_store_commit_duration_seconds", "skiff_store_commit_duration_seconds_count") > commits
    # Every write of a commit counted once: the batch sizes sum to at least the commits.
    assert value(after, "skiff_store_commit_batch_size", "skiff_store_commit_batch_size_sum") >= value(after, "skiff_store_commit_batch_size", "skiff_store_commit_batch_size_count")
    assert value(after, "controller_runtime_reconcile", "controller_runtime_reconcile_total", controller="deployment") > deployments
    assert value(after, "controller_runtime_reconcile_time_seconds", "controller_runtime_reconcile_time_seconds_count", controller="replicaset") >= 1
    # The scheduler and controllers watch pods all the time.
    assert value(after, "apiserver_registered_watchers", "apiserver_registered_watchers", group="", version="v1", kind="Pod") >= 2
    # The node monitor's passes are counted as reconciles; the garbage collector's
    # deletions too, and what waits for its workers is its queue's depth.
    assert value(after, "controller_runtime_reconcile", "controller_runtime_reconcile_total", controller="nodelifecycle") >= 1
    collected = value(after, "controller_runtime_reconcile", "controller_runtime_reconcile_total", controller="garbagecollector")
    cluster.kubectl("delete", "deployment", "counted", "-n", namespace)

    def collecting():
        _, now = scrape(cluster)
        return value(now, "controller_runtime_reconcile", "controller_runtime_reconcile_total", controller="garbagecollector") > collected and now
    now = wait_for(collecting, 30, "the garbage collector's work counted")
    assert now["workqueue_depth"].type == "gauge"
    assert any(s.labels.get("name") == "garbagecollector" for s in now["workqueue_depth"].samples)


@pytest.fixture(scope="module")
def node_cluster():
    with one_node_cluster("metered") as c:
        yield c


def node_scrape(c, node="metered", token=None):
    status, text = c.raw("GET", f"/api/v1/nodes/{node}/proxy/metrics", token=token)
    return status, ({f.name: f for f in text_string_to_metric_families(text)} if status == 200 else text)


def test_a_nodes_metrics_are_read_through_the_api(node_cluster):
    """The agent's /metrics, read as `kubectl get --raw /api/v1/nodes/NODE/proxy/metrics`
    reads it: pod starts by runtime, Wasm compiles and instances, each function pod's
    requests, and the service proxy's connections and bytes."""
    c = node_cluster
    c.kubectl("apply", "-f", os.path.join(ROOT, "examples/hello.yaml"))
    c.kubectl("rollout", "status", "deployment/hello", "--timeout=60s")
    vip = c.kubectl("get", "svc", "hello", "-o", "jsonpath={.spec.clusterIP}").stdout
    for _ in range(3):
        wait_for(lambda: urlopen_text(f"http://{vip}/"), 20, "the hello Service to answer")
    c.kubectl("apply", "-f", os.path.join(ROOT, "examples/wasi-hello/job.yaml"))
    c.kubectl("wait", "--for=condition=complete", "job/wasi-hello", "--timeout=60s")
    status, families = node_scrape(c)
    assert status == 200, families
    kinds = {"kubelet_pod_start_duration_seconds": "histogram", "skiff_wasm_compile_duration_seconds": "histogram",
             "skiff_wasm_instantiate_duration_seconds": "histogram", "skiff_function_requests": "counter",
             "skiff_function_request_duration_seconds": "histogram", "skiff_proxy_connections": "counter",
             "skiff_proxy_open_connections": "gauge", "skiff_proxy_bytes": "counter"}
    for name, kind in kinds.items():
        assert families[name].type == kind, (name, families.get(name))
    assert value(families, "kubelet_pod_start_duration_seconds", "kubelet_pod_start_duration_seconds_count", runtime="wasmtime") >= 3
    assert value(families, "skiff_wasm_compile_duration_seconds", "skiff_wasm_compile_duration_seconds_count", kind="component") >= 1
    assert value(families, "skiff_wasm_instantiate_duration_seconds", "skiff_wasm_instantiate_duration_seconds_count", kind="http") >= 1
    assert value(families, "skiff_wasm_instantiate_duration_seconds", "skiff_wasm_instantiate_duration_seconds_count", kind="command") >= 1
    pods = {p["metadata"]["name"] for p in c.json("get", "pods", "-l", "app=hello")["items"]}
    served = {s.labels["pod"] for s in families["skiff_function_requests"].samples if s.labels.get("code") == "200"}
    assert served and served <= pods, (served, pods)
    assert value(families, "skiff_function_requests", "skiff_function_requests_total", namespace="default", code="200") >= 3
    assert value(families, "skiff_proxy_connections", "skiff_proxy_connections_total", service="default/hello:80") >= 3
    assert value(families, "skiff_proxy_bytes", "skiff_proxy_bytes_total", service="default/hello:80", direction="to_client") > 0
    # A function pod's series go with it.
    c.kubectl("delete", "-f", os.path.join(ROOT, "examples/hello.yaml"), "--wait=true")
    def forgotten():
        _, now = node_scrape(c)
        left = now.get("skiff_function_requests")
        return not any(s.labels.get("pod") in pods for s in (left.samples if left else []))
    wait_for(forgotten, 30, "the deleted pods' request series gone")


def test_a_nodes_metrics_need_the_right_to_proxy_to_it(node_cluster):
    c = node_cluster
    c.kubectl("create", "serviceaccount", "node-scraper")
    token = c.kubectl("create", "token", "node-scraper").stdout.strip()
    assert node_scrape(c, token=token)[0] == 403
    assert node_scrape(c, node="no-such-node")[0] == 404


def urlopen_text(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None
