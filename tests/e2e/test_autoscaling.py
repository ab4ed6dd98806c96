"""Autoscaling end to end: a real `skiff up` reading node usage every second
(`--metric-resolution 1s`, so a test waits seconds rather than the default's 15 s per
reading), real kubectl (`top`, `autoscale`, `get hpa`, `describe`), Wasm functions under
a bounded load loop."""

import concurrent.futures
import json
import re
import threading
import time
import urllib.error
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


def test_a_request_its_client_abandons_stops_its_guest(scaling_cluster):
    """A guest spinning for a client that went away must stop (it ran on, unseen, and
    starved every function on the node), as the usage the node reports shows."""
    c = scaling_cluster
    c.kubectl("apply", "-f", "-", input=BUSY.replace('"1"', '"30"'))
    wait_for(lambda: c.json("get", "deployment", "busy").get("status", {}).get("readyReplicas") == 1, 60, "the function to be ready")
    ip = c.json("get", "service", "busy")["spec"]["clusterIP"]
    for _ in range(3):
        try:
            urllib.request.urlopen(f"http://{ip}/spin", timeout=0.5).read()
        except OSError:
            pass
    pod = c.json("get", "pods", "-l", "app=busy")["items"][0]["metadata"]["name"]

    def idle():
        p = c.kubectl("top", "pod", pod, "--no-headers", check=False)
        return p.returncode == 0 and millicores(p.stdout.split()[1]) < 50
    wait_for(idle, 20, "the abandoned guests to stop using CPU")
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


def function(name, idle="5s", image="registry.skiff.internal/http-hello:v1", target="5", max_replicas=3):
    """An HTTP function behind a Service, with an HPA on requests per second that may take
    it to zero."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      runtimeClassName: wasmtime
      containers:
      - name: fn
        image: {image}
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {name}
  annotations: {{skiff.dev/hpa-sync-period: "1s", skiff.dev/scale-to-zero-after: "{idle}"}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
  minReplicas: 0
  maxReplicas: {max_replicas}
  behavior: {{scaleDown: {{stabilizationWindowSeconds: 0}}}}
  metrics:
  - type: Pods
    pods:
      metric: {{name: requests_per_second}}
      target: {{type: AverageValue, averageValue: "{target}"}}
"""


def ingress_for(name):
    """An Ingress that routes host NAME.example to Service NAME, port 80."""
    return f"""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}}}
spec:
  rules:
  - host: {name}.example
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}
"""


def replicas(c, name):
    return c.json("get", "deployment", name)["spec"].get("replicas", 1)


def at_zero(c, name):
    """No replica wanted and none left (a terminating pod still answers for a moment)."""
    return replicas(c, name) == 0 and not c.json("get", "pods", "-l", f"app={name}")["items"]


def get(url, timeout=35):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def test_a_function_at_zero_answers_its_first_requests(scaling_cluster):
    c = scaling_cluster
    c.kubectl("apply", "-f", "-", input=function("cold"))
    wait_for(lambda: at_zero(c, "cold"), 60, "the idle function to go to zero")
    hpa = c.json("get", "hpa", "cold")
    active = next(x for x in hpa["status"]["conditions"] if x["type"] == "ScalingActive")
    assert active["reason"] == "ScaledToZero", active
    ip = c.json("get", "service", "cold")["spec"]["clusterIP"]
    # 200 first requests at once, at zero: every one gets the function's real answer.
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda _: get(f"http://{ip}/"), range(200)))
    assert all(a == (200, "Hello from a Wasm pod!\n") for a in answers), {a for a in answers}
    wait_for(lambda: "Activated" in c.kubectl("get", "events", "--field-selector", "involvedObject.kind=Service,involvedObject.name=cold").stdout, 10, "the activator's event")
    # Idle again: back to zero.
    wait_for(lambda: replicas(c, "cold") == 0, 60, "the function to go back to zero")
    c.kubectl("delete", "-f", "-", input=function("cold"))


def test_the_ingress_holds_a_request_for_a_function_at_zero(scaling_cluster):
    """Through the ingress (`skiff up`'s default port 80), a request for a function at zero
    waits for it and tells how long in `Skiff-Cold-Start`; the Service's ColdStart event
    tells the same for the scale."""
    c = scaling_cluster
    ingress = ingress_for("edge")
    c.kubectl("apply", "-f", "-", input=function("edge") + "---" + ingress)
    wait_for(lambda: at_zero(c, "edge"), 60, "the idle function to go to zero")
    request = urllib.request.Request("http://127.0.0.1/", headers={"Host": "edge.example"})
    with urllib.request.urlopen(request, timeout=35) as r:
        assert (r.status, r.read().decode()) == (200, "Hello from a Wasm pod!\n")
        waited = r.headers["Skiff-Cold-Start"]
    assert waited and re.fullmatch(r"\d+\.\dms", waited), waited
    events = lambda: c.kubectl("get", "events", "--field-selector", "involvedObject.kind=Service,involvedObject.name=edge").stdout
    wait_for(lambda: "ColdStart" in events(), 10, "the ColdStart event")
    assert re.search(r"the first connection held while scaling from zero waited \d+ ms", events()), events()
    # A warm request is not held and says nothing of a cold start.
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200 and "Skiff-Cold-Start" not in r.headers
    c.kubectl("delete", "-f", "-", input=function("edge") + "---" + ingress)


@pytest.mark.parametrize("path", ["ingress", "cluster-ip"])
def test_the_proxy_counts_requests_to_container_pods_for_the_hpa(scaling_cluster, registry, path):
    """A container pod counts no requests itself; the node's ingress and its ClusterIP
    proxy count those they send it, and an HPA on requests per second scales the container
    Deployment on them."""
    import oci_image
    c = scaling_cluster
    name = f"web-{path}"
    image = oci_image.busybox_image(registry.host)
    web = function(name, target="2", max_replicas=2).replace("      runtimeClassName: wasmtime\n", "") \
        .replace("registry.skiff.internal/http-hello:v1", image).replace("minReplicas: 0", "minReplicas: 1")
    extra = ("---" + ingress_for(name)) if path == "ingress" else ""
    c.kubectl("apply", "-f", "-", input=web + extra)
    if path == "ingress":
        request = urllib.request.Request("http://127.0.0.1/", headers={"Host": f"{name}.example"})
    else:
        request = f"http://{c.json('get', 'service', name)['spec']['clusterIP']}/"
    wait_for(lambda: c.json("get", "deployment", name).get("status", {}).get("readyReplicas") == 1, 60, "the container pod")
    # The first pod (a new one may not have been read twice yet when it is asked about).
    pod = c.json("get", "pods", "-l", f"app={name}")["items"][0]["metadata"]["name"]
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(request, stop))
    loader.start()
    try:
        wait_for(lambda: replicas(c, name) == 2, 90, f"the HPA to scale the container Deployment on the {path} count")
        status, body = c.raw("GET", f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/{pod}/requests_per_second")
        assert status == 200 and body["items"][0]["describedObject"]["name"] == pod, body
        assert float(body["items"][0]["value"].rstrip("m")) > 0, body
    finally:
        stop.set()
        loader.join()
    c.kubectl("delete", "-f", "-", input=web + extra)


def test_the_readmes_scale_to_zero_example(scaling_cluster):
    """`examples/scale-to-zero.yaml` as the README uses it: zero after 10 s idle, then
    answered from zero by curl."""
    import os
    import subprocess
    from conftest import ROOT
    c = scaling_cluster
    example = os.path.join(ROOT, "examples", "scale-to-zero.yaml")
    c.kubectl("apply", "-f", example)
    wait_for(lambda: at_zero(c, "hello-fn"), 60, "the example to go to zero")
    ip = c.json("get", "service", "hello-fn")["spec"]["clusterIP"]
    p = subprocess.run(["curl", "-fsS", f"http://{ip}/"], capture_output=True, text=True, timeout=40)
    assert p.returncode == 0 and p.stdout == "Hello from a Wasm pod!\n", p
    assert "skiff.dev/hpa-last-decision" in c.kubectl("describe", "hpa", "hello-fn").stdout
    c.kubectl("delete", "-f", example)


def test_an_hpa_on_requests_per_second_takes_a_function_from_zero_to_n_and_back(scaling_cluster):
    c = scaling_cluster
    c.kubectl("apply", "-f", "-", input=function("rps", target="5"))
    wait_for(lambda: at_zero(c, "rps"), 60, "the idle function to go to zero")
    ip = c.json("get", "service", "rps")["spec"]["clusterIP"]
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(f"http://{ip}/", stop))
    loader.start()
    try:
        wait_for(lambda: replicas(c, "rps") == 3, 90, "the HPA to scale the function up on requests per second")
        status, body = c.raw("GET", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/services/rps/requests_per_second")
        assert status == 200 and body["items"][0]["describedObject"]["kind"] == "Service", body
        rps = c.json("get", "hpa", "rps")["status"]["currentMetrics"][0]["pods"]
        assert rps["metric"]["name"] == "requests_per_second", rps
    finally:
        stop.set()
        loader.join()
    wait_for(lambda: replicas(c, "rps") == 0, 90, "the function to go back to zero once no requests come")
    c.kubectl("delete", "-f", "-", input=function("rps"))


def test_the_activator_holds_a_bounded_number_of_requests(scaling_cluster):
    import resource
    import socket
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    c = scaling_cluster
    # A function whose image never arrives: its pods never get ready, so every connection waits.
    never = function("never", image="registry.skiff.internal/missing:v1")
    c.kubectl("apply", "-f", "-", input=never)
    wait_for(lambda: replicas(c, "never") == 0, 60, "the function to go to zero")
    ip = c.json("get", "service", "never")["spec"]["clusterIP"]
    held = []
    try:
        for _ in range(1000):
            s = socket.create_connection((ip, 80), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: never\r\n\r\n")
            held.append(s)
        # Let the proxy take every one of them into its hold.
        time.sleep(2)
        status, body = None, ""
        try:
            status, body = get(f"http://{ip}/", timeout=10)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read().decode()
        assert status == 503 and "already holds 1000 connections" in body, (status, body)
    finally:
        for s in held:
            s.close()
    c.kubectl("delete", "-f", "-", input=never)
