"""Autoscaling end to end: a real `skiff up` reading node usage every second
(`--metric-resolution 1s`, so a test waits seconds rather than the default's 15 s per
reading), real kubectl (`top`, `autoscale`, `get hpa`, `describe`), Wasm functions under
a bounded load loop."""

import concurrent.futures
import json
import re
import threading
import time
import urllib.request

import pytest

from conftest import one_node_cluster, wait_for

BUSY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: busy}
spec:
  replicas: 1
  selector: {matchLabels: {app: busy}}
  template:
    metadata:
      labels: {app: busy}
      annotations: {skiff.dev/request-timeout-seconds: "1"}
    spec:
      runtimeClassName: wasmtime
      containers:
      - name: fn
        image: registry.skiff.internal/http-hello:v1
        ports: [{containerPort: 8080}]
        resources:
          requests: {cpu: 100m}
          limits: {cpu: 500m}
---
apiVersion: v1
kind: Service
metadata: {name: busy}
spec:
  selector: {app: busy}
  ports: [{port: 80, targetPort: 8080}]
"""


@pytest.fixture(scope="module")
def scaling_cluster():
    with one_node_cluster("scaling-node", ["--metric-resolution", "1s"]) as c:
        yield c


def millicores(text):
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def test_kubectl_top_shows_a_busy_wasm_pods_cpu(scaling_cluster):
    c = scaling_cluster
    c.kubectl("run", "spinner", "--image=registry.skiff.internal/wasi-hello:v1", "--restart=Never", "--", "spin", "600")
    c.kubectl("run", "idler", "--image=registry.skiff.internal/wasi-hello:v1", "--restart=Never", "--", "sleep", "600")

    def top(*args):
        p = c.kubectl("top", *args, "--no-headers", check=False)
        return p.stdout.split() if p.returncode == 0 else None

    spinning = wait_for(lambda: (lambda t: t if t and millicores(t[1]) >= 500 else None)(top("pod", "spinner")), 60, "kubectl top to show the spinner busy")
    assert spinning[0] == "spinner"
    idle = wait_for(lambda: top("pod", "idler"), 30, "kubectl top to show the idle pod")
    assert millicores(idle[1]) < 100, idle
    # By label, and the node's own use (the machine, at least the spinner's core).
    assert top("pods", "-l", "run=spinner")[0] == "spinner"
    node = top("node", "scaling-node")
    assert node[0] == "scaling-node" and millicores(node[1]) >= 500, node
    # The API behind it, as metrics-server serves it.
    status, body = c.raw("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/spinner")
    assert status == 200 and body["kind"] == "PodMetrics" and body["containers"][0]["name"] == "spinner", body
    status, body = c.raw("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope")
    assert status == 404 and body["message"] == 'podmetrics.metrics.k8s.io "nope" not found', body
    assert "pods" in c.kubectl("api-resources", "--api-group=metrics.k8s.io").stdout
    c.kubectl("delete", "pod", "spinner", "idler", "--wait=false")


def load(url, stop):
    """Keeps four requests to the function in flight until `stop` is set."""
    def one():
        while not stop.is_set():
            try:
                urllib.request.urlopen(url, timeout=3).read()
            except OSError:
                pass
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(one)


def test_an_hpa_on_cpu_scales_up_under_load_and_back_down(scaling_cluster):
    c = scaling_cluster
    c.kubectl("apply", "-f", "-", input=BUSY)
    c.kubectl("autoscale", "deployment", "busy", "--cpu-percent=50", "--min=1", "--max=3")
    c.kubectl("annotate", "hpa", "busy", "skiff.dev/hpa-sync-period=1s")
    c.kubectl("patch", "hpa", "busy", "--type=merge", "-p", json.dumps({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}}))
    wait_for(lambda: c.json("get", "deployment", "busy").get("status", {}).get("readyReplicas") == 1, 60, "the function to be ready")
    ip = c.json("get", "service", "busy")["spec"]["clusterIP"]
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(f"http://{ip}/spin", stop))
    loader.start()
    try:
        wait_for(lambda: c.json("get", "deployment", "busy")["spec"]["replicas"] == 3, 90, "the HPA to scale the function up to its maximum")
    finally:
        stop.set()
        loader.join()
    hpa = c.json("get", "hpa", "busy")
    conditions = {x["type"]: x for x in hpa["status"]["conditions"]}
    assert conditions["ScalingActive"]["status"] == "True" and conditions["ScalingActive"]["reason"] == "ValidMetricFound", conditions
    assert "cpu resource utilization" in hpa["metadata"]["annotations"]["skiff.dev/hpa-last-decision"], hpa["metadata"]
    current = hpa["status"]["currentMetrics"][0]["resource"]
    assert current["name"] == "cpu" and current["current"]["averageUtilization"] >= 0, current
    row = c.kubectl("get", "hpa", "busy", "--no-headers").stdout
    assert re.match(r"busy\s+Deployment/busy\s+cpu: \d+%/50%\s+1\s+3\s+\d\s", row), row
    events = c.kubectl("get", "events", "--field-selector", "involvedObject.name=busy,reason=SuccessfulRescale", "-o", "json").stdout
    assert "New size: " in events and "above target" in events, events
    # No load: back to the minimum once the 5 s window has passed.
    wait_for(lambda: c.json("get", "deployment", "busy")["spec"]["replicas"] == 1, 90, "the HPA to scale back down")
    assert "All metrics below target" in c.kubectl("get", "events", "--field-selector", "involvedObject.name=busy,reason=SuccessfulRescale", "-o", "json").stdout
    c.kubectl("delete", "hpa", "busy")
    c.kubectl("delete", "-f", "-", input=BUSY)


def test_bad_autoscalers_say_why_and_scale_nothing(scaling_cluster):
    c = scaling_cluster

    def hpa(name, target, metrics, min_replicas=1):
        return json.dumps({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "annotations": {"skiff.dev/hpa-sync-period": "1s"}},
                           "spec": {"scaleTargetRef": target, "minReplicas": min_replicas, "maxReplicas": 3, "metrics": metrics}})
    cpu = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]
    # Bounds that leave no count are refused by the server (kubectl autoscale refuses
    # them itself), as Kubernetes refuses them; so is scaling to zero on CPU alone.
    steady = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "steady"}
    p = c.kubectl("apply", "-f", "-", input=hpa("inverted", steady, cpu, min_replicas=5), check=False)
    assert p.returncode != 0 and "spec.minReplicas: Invalid value: 5: must be less than or equal to maxReplicas" in p.stderr, p.stderr
    p = c.kubectl("apply", "-f", "-", input=hpa("to-zero", steady, cpu, min_replicas=0), check=False)
    assert p.returncode != 0 and "spec.minReplicas: Invalid value: 0" in p.stderr, p.stderr
    c.kubectl("apply", "-f", "-", input=hpa("missing", {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nowhere"}, cpu))
    c.kubectl("apply", "-f", "-", input=hpa("unscalable", {"apiVersion": "v1", "kind": "ConfigMap", "name": "kube-root-ca.crt"}, cpu))
    c.kubectl("create", "deployment", "steady", "--image=registry.skiff.internal/http-hello:v1")
    c.kubectl("apply", "-f", "-", input=hpa("unknown-metric", {"apiVersion": "apps/v1", "kind": "Deployment", "name": "steady"},
                                            [{"type": "Resource", "resource": {"name": "gpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]))

    def condition(name, type_):
        conds = c.json("get", "hpa", name).get("status", {}).get("conditions", [])
        return next((x for x in conds if x["type"] == type_), None)

    missing = wait_for(lambda: condition("missing", "AbleToScale"), 30, "the missing target's condition")
    assert missing["status"] == "False" and missing["reason"] == "FailedGetScale" and "not found" in missing["message"], missing
    unscalable = wait_for(lambda: condition("unscalable", "AbleToScale"), 30, "the unscalable target's condition")
    assert unscalable["status"] == "False" and "no scale subresource" in unscalable["message"], unscalable
    unknown = wait_for(lambda: condition("unknown-metric", "ScalingActive"), 60, "the unknown metric's condition")
    assert unknown["status"] == "False" and unknown["reason"] == "FailedGetResourceMetric", unknown
    events = c.kubectl("get", "events", "-o", "json").stdout
    assert "FailedGetScale" in events and "FailedGetResourceMetric" in events
    time.sleep(3)
    assert c.json("get", "deployment", "steady")["spec"]["replicas"] == 1
    c.kubectl("delete", "hpa", "missing", "unscalable", "unknown-metric")
    c.kubectl("delete", "deployment", "steady")
