"""Services end to end: a real `skiff up` whose node proxies ClusterIPs, NodePorts and
LoadBalancer addresses to Wasm function pods (from a real docker-registry), driven by
the real kubectl; plain HTTP, TCP and UDP clients from Python."""

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest
import yaml

from conftest import Cluster, example_wasm, free_port, skiff_binary, wait_for

# Ranges of their own, so this cluster's addresses never meet another test cluster's.
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_CIDR = "10.97.0.0/16"
NODE = "svc-node"


@pytest.fixture(scope="module")
def svc_cluster(registry):
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, ["--agent-port", "0", "--node-name", NODE, "--service-cidr", SERVICE_CIDR, "--cluster-cidr", CLUSTER_CIDR], command="up").start()
        wait_for(lambda: c.kubectl("get", "node", NODE, check=False).returncode == 0, 30, "the node to register")
        yield c
        c.stop()


@pytest.fixture(scope="module")
def hello(registry, svc_cluster):
    ref = f"{registry.host}/http-hello:svc"
    subprocess.run([skiff_binary(), "push", example_wasm("wasm32-wasip2", "http-hello"), ref], check=True, capture_output=True, timeout=60)
    return ref


@pytest.fixture
def ns(svc_cluster):
    name = f"s-{os.urandom(3).hex()}"
    svc_cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    return name


def apply(cluster, ns, *objects):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objects))


def deployment(name, image, replicas, version="v1"):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {"version": version}},
                                  "spec": {"runtimeClassName": "wasmtime", "containers": [{
                                      "name": "fn", "image": image, "ports": [{"name": "http", "containerPort": 8080}],
                                      "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                      "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}}]}}}}


def service(name, selector=None, **spec):
    body = {"ports": [{"name": "http", "port": 80, "targetPort": "http"}], **spec}
    if selector is not None:
        body["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": body}


def get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ready_addresses(cluster, ns, name):
    ep = cluster.json("get", "endpoints", "-n", ns, name)
    return sorted(a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or [])


def ready_pods(cluster, ns, app):
    pods = cluster.json("get", "pods", "-n", ns, "-l", f"app={app}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions") or [])]


def wait_endpoints(cluster, ns, name, count):
    return wait_for(lambda: len(ready_addresses(cluster, ns, name)) == count and ready_addresses(cluster, ns, name), 60, f"{count} ready endpoints of {name}")


def answers(url, tries=50):
    """The distinct answers of `tries` requests (each a new connection)."""
    return {get(url)[1] for _ in range(tries)}


def test_cluster_ip_follows_scaling(svc_cluster, hello, ns):
    apply(svc_cluster, ns, deployment("web", hello, 3), service("web", {"app": "web"}))
    ips = wait_endpoints(svc_cluster, ns, "web", 3)
    pods = ready_pods(svc_cluster, ns, "web")
    assert sorted(p["status"]["podIP"] for p in pods) == ips
    slices = svc_cluster.json("get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web")["items"]
    assert sum(len(s["endpoints"]) for s in slices) == 3 and slices[0]["ports"][0]["port"] == 8080
    vip = svc_cluster.json("get", "svc", "-n", ns, "web")["spec"]["clusterIP"]
    assert vip.startswith("10.96.")
    assert answers(f"http://{vip}/") == {f"Hello from {p['metadata']['name']}!\n" for p in pods}, "every pod answers at the ClusterIP"

    for replicas in (5, 1):
        svc_cluster.kubectl("scale", "-n", ns, "deploy/web", f"--replicas={replicas}")
        wait_endpoints(svc_cluster, ns, "web", replicas)
        names = {p["metadata"]["name"] for p in ready_pods(svc_cluster, ns, "web")}
        want = {f"Hello from {n}!\n" for n in names}
        wait_for(lambda: answers(f"http://{vip}/", 20) == want, 10, f"the ClusterIP to answer from the {replicas} pods only")


def test_node_port_load_balancer_and_session_affinity(svc_cluster, hello, ns):
    apply(svc_cluster, ns, deployment("lb", hello, 2),
          service("lb", {"app": "lb"}, type="LoadBalancer", sessionAffinity="ClientIP"))
    wait_endpoints(svc_cluster, ns, "lb", 2)
    svc = svc_cluster.json("get", "svc", "-n", ns, "lb")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    node_ip = [a["address"] for a in svc_cluster.json("get", "node", NODE)["status"]["addresses"] if a["type"] == "InternalIP"][0]
    # A LoadBalancer Service gets the nodes' addresses, as k3s's service load balancer gives.
    ingress = wait_for(lambda: svc_cluster.json("get", "svc", "-n", ns, "lb")["status"].get("loadBalancer", {}).get("ingress"), 20, "the load balancer status")
    assert ingress == [{"ip": node_ip, "ipMode": "VIP"}]
    # ClientIP affinity: one client keeps reaching one pod, on every address.
    for url in (f"http://127.0.0.1:{node_port}/", f"http://{node_ip}:{node_port}/", f"http://{node_ip}:80/", f"http://{svc['spec']['clusterIP']}/"):
        seen = answers(url, 10)
        assert len(seen) == 1 and next(iter(seen)).startswith("Hello from lb-"), (url, seen)


def test_traffic_policy_local_keeps_to_the_node(svc_cluster, hello, ns):
    # Endpoints written by hand: one on this node (a local echo server) and one on
    # another node; Local traffic policies keep to the first.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"local\n")
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    try:
        apply(svc_cluster, ns,
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pinned"},
               "spec": {"type": "NodePort", "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
                        "ports": [{"name": "tcp", "port": 7000}]}},
              {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "pinned"},
               "subsets": [{"addresses": [{"ip": "127.0.0.1", "nodeName": NODE}, {"ip": "192.0.2.1", "nodeName": "elsewhere"}],
                            "ports": [{"name": "tcp", "port": port}]}]})
        svc = wait_for(lambda: svc_cluster.json("get", "svc", "-n", ns, "pinned"), 10, "the service")
        slices = wait_for(lambda: svc_cluster.json("get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=pinned")["items"], 20, "the mirrored slice")
        assert sorted(e["addresses"][0] for e in slices[0]["endpoints"]) == ["127.0.0.1", "192.0.2.1"]

        def read(addr):
            with socket.create_connection(addr, timeout=5) as c:
                return c.recv(100)
        for addr in ((svc["spec"]["clusterIP"], 7000), ("127.0.0.1", svc["spec"]["ports"][0]["nodePort"])):
            wait_for(lambda: all(read(addr) == b"local\n" for _ in range(10)), 20, f"{addr} to reach the local endpoint only")
    finally:
        server.close()


def test_udp_service(svc_cluster, ns):
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    port = echo.getsockname()[1]

    def serve():
        while True:
            try:
                data, addr = echo.recvfrom(2048)
            except OSError:
                return
            echo.sendto(data.upper(), addr)
    threading.Thread(target=serve, daemon=True).start()
    try:
        apply(svc_cluster, ns,
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shout"}, "spec": {"ports": [{"name": "u", "port": 5353, "protocol": "UDP"}]}},
              {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "shout"},
               "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "u", "port": port, "protocol": "UDP"}]}]})
        vip = svc_cluster.json("get", "svc", "-n", ns, "shout")["spec"]["clusterIP"]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(1)

        def roundtrip():
            try:
                client.sendto(b"ahoy", (vip, 5353))
                return client.recvfrom(2048)[0] == b"AHOY"
            except OSError:
                return False
        wait_for(roundtrip, 20, "the UDP ClusterIP to answer")
    finally:
        echo.close()
