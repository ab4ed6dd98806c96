"""Services end to end: a real `skiff up` whose node proxies ClusterIPs, NodePorts and
LoadBalancer addresses to Wasm function pods (from a real docker-registry), driven by
the real kubectl; plain HTTP, TCP and UDP clients from Python."""

import json
import os
import random
import socket
import struct
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


CLUSTER_DNS = "10.96.0.10"
INGRESS_HTTP, INGRESS_HTTPS = free_port(), free_port()
# The "host's resolver" the cluster DNS forwards other names to: a stand-in that
# answers every A question with this address.
UPSTREAM_DNS = "127.0.0.153"
UPSTREAM_ANSWER = "192.0.2.99"


def udp_server(address, answer):
    """A UDP socket bound to `address` that replies to each datagram with `answer(datagram)`,
    served from a daemon thread until the socket is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address)

    def serve():
        while True:
            try:
                data, addr = sock.recvfrom(4096)
            except OSError:
                return
            sock.sendto(answer(data), addr)
    threading.Thread(target=serve, daemon=True).start()
    return sock


def fake_upstream_dns():
    """A minimal DNS server on UPSTREAM_DNS:53 (UDP): every A question gets UPSTREAM_ANSWER."""
    def answer(query):
        end = 12
        while query[end] != 0:
            end += query[end] + 1
        question = query[12:end + 5]
        qtype = struct.unpack("!H", query[end + 1:end + 3])[0]
        answers = 1 if qtype == 1 else 0
        header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, answers, 0, 0)
        record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(UPSTREAM_ANSWER)
        return header + question + (record if answers else b"")
    return udp_server((UPSTREAM_DNS, 53), answer)


@pytest.fixture(scope="module")
def svc_cluster(registry):
    with tempfile.TemporaryDirectory() as d:
        upstream = fake_upstream_dns()
        resolv = os.path.join(d, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {UPSTREAM_DNS}\n")
        c = Cluster(d, ["--agent-port", "0", "--node-name", NODE, "--service-cidr", SERVICE_CIDR, "--cluster-cidr", CLUSTER_CIDR,
                        "--resolv-conf", resolv, "--ingress-http-port", str(INGRESS_HTTP), "--ingress-https-port", str(INGRESS_HTTPS)], command="up").start()
        wait_for(lambda: c.kubectl("get", "node", NODE, check=False).returncode == 0, 30, "the node to register")
        yield c
        c.stop()
        upstream.close()


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


def get_host(url, host=None, timeout=5):
    """GET with an optional Host header; (status, body), or (0, why) when no answer came."""
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def ready_addresses(cluster, ns, name):
    """The Service's ready addresses; none while its Endpoints are not written yet (the
    controller writes them and the EndpointSlices together, a moment after the Service)."""
    p = cluster.kubectl("get", "endpoints", "-n", ns, name, "-o", "json", check=False)
    if p.returncode != 0 and "NotFound" in p.stderr:
        return []
    assert p.returncode == 0, p.stderr
    ep = json.loads(p.stdout)
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
    echo = udp_server(("127.0.0.1", 0), bytes.upper)
    port = echo.getsockname()[1]
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


def dig(*args):
    p = subprocess.run(["dig", f"@{CLUSTER_DNS}", "+time=2", "+tries=2", *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def short(*args):
    return sorted(dig("+short", *args).split("\n")[:-1])


def test_cluster_dns(svc_cluster, hello, ns):
    apply(svc_cluster, ns, deployment("web", hello, 2), service("web", {"app": "web"}),
          service("web-pods", {"app": "web"}, clusterIP="None"),
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.com"}})
    pod_ips = wait_endpoints(svc_cluster, ns, "web", 2)
    vip = svc_cluster.json("get", "svc", "-n", ns, "web")["spec"]["clusterIP"]
    name = f"web.{ns}.svc.cluster.local"
    wait_for(lambda: short(name) == [vip], 10, "the Service's A record")
    assert short("+tcp", name) == [vip], "DNS over TCP answers too"
    assert short("SRV", f"_http._tcp.{name}") == [f"0 100 80 {name}."]
    wait_for(lambda: short(f"web-pods.{ns}.svc.cluster.local") == pod_ips, 10, "the headless Service's pod addresses")
    dashed = pod_ips[0].replace(".", "-")
    assert short(f"{dashed}.web-pods.{ns}.svc.cluster.local") == [pod_ips[0]]
    assert short(f"{dashed}.{ns}.pod.cluster.local") == [pod_ips[0]]
    assert short(f"ext.{ns}.svc.cluster.local") == ["example.com."]
    assert "status: NXDOMAIN" in dig(f"nope.{ns}.svc.cluster.local")
    # Other names go to the host's resolver.
    assert short("upstream.example") == [UPSTREAM_ANSWER]
    # The kubernetes Service and kube-dns itself.
    assert short("kubernetes.default.svc.cluster.local") == ["10.96.0.1"]
    assert short("kube-dns.kube-system.svc.cluster.local") == [CLUSTER_DNS]


def test_function_calls_a_service_by_name(svc_cluster, hello, ns):
    apply(svc_cluster, ns, deployment("web", hello, 1), service("web", {"app": "web"}))
    caller = deployment("caller", hello, 1)
    caller["spec"]["template"]["metadata"]["annotations"]["skiff.dev/allowed-outbound-hosts"] = "web,*.svc,*.svc.cluster.local"
    apply(svc_cluster, ns, caller)
    wait_endpoints(svc_cluster, ns, "web", 1)
    ip = wait_for(lambda: [p["status"]["podIP"] for p in ready_pods(svc_cluster, ns, "caller")], 60, "the caller pod")[0]
    for target in (f"web.{ns}.svc", "web", f"web.{ns}.svc.cluster.local"):
        status, body = get(f"http://{ip}:8080/fetch?url=http://{target}/")
        assert (status, body) == (200, f"fetched http://{target}/: 200 OK\n"), (target, status, body)


def test_pods_get_service_variables(svc_cluster, registry, ns):
    ref = f"{registry.host}/wasi-hello:svc"
    subprocess.run([skiff_binary(), "push", example_wasm("wasm32-wasip1"), ref], check=True, capture_output=True, timeout=60)
    apply(svc_cluster, ns, service("my-api", {"app": "nothing"}))
    vip = svc_cluster.json("get", "svc", "-n", ns, "my-api")["spec"]["clusterIP"]
    show = "MY_API_SERVICE_HOST,MY_API_SERVICE_PORT,MY_API_SERVICE_PORT_HTTP,MY_API_PORT,KUBERNETES_SERVICE_HOST"
    apply(svc_cluster, ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "env"},
                            "spec": {"runtimeClassName": "wasmtime", "restartPolicy": "Never", "containers": [{
                                "name": "main", "image": ref, "env": [{"name": "SHOW", "value": show}]}]}})
    wait_for(lambda: svc_cluster.json("get", "pod", "-n", ns, "env")["status"].get("phase") == "Succeeded", 60, "the pod to finish")
    out = svc_cluster.kubectl("logs", "-n", ns, "env").stdout.splitlines()
    assert out[1:] == [f"MY_API_SERVICE_HOST={vip}", "MY_API_SERVICE_PORT=80", "MY_API_SERVICE_PORT_HTTP=80",
                       f"MY_API_PORT=tcp://{vip}:80", "KUBERNETES_SERVICE_HOST=10.96.0.1"], out


class HeaderEcho:
    """A plain HTTP server on 127.0.0.1 (the endpoint of a Service without a selector)
    that answers with the request's headers as JSON, and turns an `Upgrade` request into
    a raw echo of whatever the client sends next."""

    def __init__(self):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.headers.get("Upgrade"):
                    self.send_response(101)
                    self.send_header("Upgrade", self.headers["Upgrade"])
                    self.send_header("Connection", "Upgrade")
                    self.end_headers()
                    self.wfile.flush()
                    while data := self.connection.recv(1024):
                        self.connection.sendall(data.upper())
                    self.close_connection = True
                    return
                body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def self_signed(d, *hosts):
    crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt, "-days", "1",
                    "-subj", f"/CN={hosts[0]}", "-addext", "subjectAltName=" + ",".join(f"DNS:{h}" for h in hosts)],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def tls_secret(name, crt, key):
    import base64
    data = {"tls.crt": base64.b64encode(open(crt, "rb").read()).decode(), "tls.key": base64.b64encode(open(key, "rb").read()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/tls", "data": data}


def ingress_path(path, service, kind="Prefix", port=None):
    return {"path": path, "pathType": kind, "backend": {"service": {"name": service, "port": port or {"name": "http"}}}}


def curl(url, host, *args, port=INGRESS_HTTP):
    """curl through the ingress, resolving `host` to 127.0.0.1; returns (status, body, HTTP version)."""
    p = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"{host}:{port}:127.0.0.1", "-w", "\n%{http_code} %{http_version}", *args, url],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    body, _, tail = p.stdout.rpartition("\n")
    status, version = tail.split()
    return int(status), body.rstrip("\n"), version


def echo_service(name, port):
    """A Service without a selector whose one endpoint is a HeaderEcho on 127.0.0.1."""
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name},
             "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": port}]}]}]


def test_ingress_routes_hosts_and_paths_with_tls(svc_cluster, hello, ns):
    echo = HeaderEcho()
    with tempfile.TemporaryDirectory() as d:
        crt, key = self_signed(d, "shop.example", "*.blog.example")
        apply(svc_cluster, ns, deployment("blue", hello, 1), service("blue", {"app": "blue"}),
              deployment("green", hello, 1), service("green", {"app": "green"}), *echo_service("api", echo.port),
              tls_secret("shop-tls", crt, key),
              {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "shop"},
               "spec": {"tls": [{"hosts": ["shop.example", "*.blog.example"], "secretName": "shop-tls"}],
                        "rules": [{"host": "shop.example", "http": {"paths": [ingress_path("/", "blue"), ingress_path("/api", "api"),
                                                                              ingress_path("/api/health", "green", kind="Exact")]}},
                                  {"host": "*.blog.example", "http": {"paths": [ingress_path("/", "green", port={"number": 80})]}}]}})
        wait_endpoints(svc_cluster, ns, "blue", 1)
        wait_endpoints(svc_cluster, ns, "green", 1)
        blue = f"Hello from {ready_pods(svc_cluster, ns, 'blue')[0]['metadata']['name']}!"
        green = f"Hello from {ready_pods(svc_cluster, ns, 'green')[0]['metadata']['name']}!"
        base = f"http://shop.example:{INGRESS_HTTP}"
        wait_for(lambda: curl(f"{base}/", "shop.example")[:2] == (200, blue), 20, "the ingress to route shop.example")
        status, body, _ = curl(f"{base}/api/orders?id=7", "shop.example")
        assert status == 200 and json.loads(body)["path"] == "/api/orders?id=7", body
        assert curl(f"{base}/apiary", "shop.example")[:2] == (404, "not found"), "Prefix matches whole path elements: blue answers"
        assert curl(f"{base}/api/health", "shop.example")[:2] == (404, "not found"), "Exact /api/health goes to green, which has no such page"
        assert curl(f"http://my.blog.example:{INGRESS_HTTP}/", "my.blog.example")[:2] == (200, green)
        assert curl(f"http://other.example:{INGRESS_HTTP}/", "other.example")[0] == 404
        # HTTPS with SNI, HTTP/1.1 and HTTP/2.
        https = f"https://shop.example:{INGRESS_HTTPS}/"
        assert curl(https, "shop.example", "--cacert", crt, "--http1.1", port=INGRESS_HTTPS) == (200, blue, "1.1")
        assert curl(https, "shop.example", "--cacert", crt, "--http2", port=INGRESS_HTTPS) == (200, blue, "2")
        assert curl(f"https://x.blog.example:{INGRESS_HTTPS}/", "x.blog.example", "--cacert", crt, port=INGRESS_HTTPS)[:2] == (200, green)
        status, body, _ = curl(f"https://shop.example:{INGRESS_HTTPS}/api/x", "shop.example", "--cacert", crt, port=INGRESS_HTTPS)
        assert json.loads(body)["headers"]["x-forwarded-proto"] == "https"
        # HTTP/2 without TLS (prior knowledge).
        assert curl(f"{base}/", "shop.example", "--http2-prior-knowledge") == (200, blue, "2")
        node_ip = [a["address"] for a in svc_cluster.json("get", "node", NODE)["status"]["addresses"] if a["type"] == "InternalIP"][0]
        status = wait_for(lambda: svc_cluster.json("get", "ingress", "-n", ns, "shop").get("status", {}).get("loadBalancer", {}).get("ingress"), 20, "the ingress status")
        assert status == [{"ip": node_ip}]
    echo.close()


def test_ingress_forwards_headers_upgrades_and_retries(svc_cluster, ns):
    echo = HeaderEcho()
    dead = free_port()  # nothing listens here: the ingress must move on to the live endpoint
    try:
        apply(svc_cluster, ns,
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"}, "spec": {"ports": [{"name": "http", "port": 80}]}},
              {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "echo"},
               "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": echo.port}]},
                           {"addresses": [{"ip": "127.0.0.2"}], "ports": [{"name": "http", "port": dead}]}]},
              {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "echo"},
               "spec": {"rules": [{"host": "echo.example", "http": {"paths": [ingress_path("/", "echo")]}}]}})
        url = f"http://echo.example:{INGRESS_HTTP}/hi?x=1"
        wait_for(lambda: curl(url, "echo.example")[0] == 200, 20, "the ingress to reach the echo endpoint")
        for _ in range(6):
            status, body, _ = curl(url, "echo.example", "-H", "X-Forwarded-For: 203.0.113.7")
            assert status == 200, body
        seen = json.loads(body)
        assert seen["path"] == "/hi?x=1"
        h = seen["headers"]
        assert h["host"] == f"echo.example:{INGRESS_HTTP}" and h["x-forwarded-host"] == f"echo.example:{INGRESS_HTTP}"
        assert h["x-forwarded-for"] == "203.0.113.7, 127.0.0.1" and h["x-forwarded-proto"] == "http"
        assert h["x-forwarded-port"] == str(INGRESS_HTTP)
        # A WebSocket-style upgrade is relayed both ways.
        with socket.create_connection(("127.0.0.1", INGRESS_HTTP), timeout=5) as c:
            c.sendall(b"GET /ws HTTP/1.1\r\nHost: echo.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += c.recv(1024)
            assert head.startswith(b"HTTP/1.1 101"), head
            c.sendall(b"ahoy")
            assert c.recv(1024) == b"AHOY"
    finally:
        echo.close()


def test_ingress_bad_references_are_reported(svc_cluster, hello, ns):
    apply(svc_cluster, ns,
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "broken"},
           "spec": {"tls": [{"hosts": ["broken.example"], "secretName": "no-such-secret"}],
                    "rules": [{"host": "broken.example", "http": {"paths": [ingress_path("/", "no-such-service")]}}]}},
          deployment("fine", hello, 1), service("fine", {"app": "fine"}),
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "fine"},
           "spec": {"rules": [{"host": "fine.example", "http": {"paths": [ingress_path("/", "fine")]}}]}})

    def reasons():
        events = svc_cluster.json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=broken")["items"]
        return {e["reason"] for e in events}
    wait_for(lambda: {"ServiceNotFound", "SecretNotFound"} <= reasons(), 20, "warning events on the broken Ingress")
    assert curl(f"http://broken.example:{INGRESS_HTTP}/", "broken.example")[0] == 503
    wait_endpoints(svc_cluster, ns, "fine", 1)
    wait_for(lambda: curl(f"http://fine.example:{INGRESS_HTTP}/", "fine.example")[0] == 200, 20, "the other Ingress to keep working")


def test_rolling_update_under_load_loses_no_request(svc_cluster, hello, registry, ns):
    v2 = f"{registry.host}/http-hello:svc-v2"
    subprocess.run([skiff_binary(), "push", example_wasm("wasm32-wasip2", "http-hello"), v2], check=True, capture_output=True, timeout=60)
    apply(svc_cluster, ns, deployment("roll", hello, 3), service("roll", {"app": "roll"}),
          {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "roll"},
           "spec": {"rules": [{"host": "roll.example", "http": {"paths": [ingress_path("/", "roll")]}}]}})
    wait_endpoints(svc_cluster, ns, "roll", 3)
    vip = svc_cluster.json("get", "svc", "-n", ns, "roll")["spec"]["clusterIP"]
    targets = {"ClusterIP": (f"http://{vip}/", None), "Ingress": (f"http://127.0.0.1:{INGRESS_HTTP}/", "roll.example")}
    wait_for(lambda: all(get_host(url, host)[0] == 200 for url, host in targets.values()), 20, "both paths to answer")
    results = {name: {"ok": 0, "failed": []} for name in targets}
    stop = threading.Event()

    def hammer(name, url, host):
        # A bounded loop: a new connection per request, until told to stop.
        while not stop.is_set():
            status, body = get_host(url, host)
            if status == 200 and body.startswith("Hello from roll-"):
                results[name]["ok"] += 1
            else:
                results[name]["failed"].append((status, body))
            time.sleep(0.005)
    threads = [threading.Thread(target=hammer, args=(name, url, host)) for name, (url, host) in targets.items()]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        svc_cluster.kubectl("set", "image", "-n", ns, "deploy/roll", f"fn={v2}")
        svc_cluster.kubectl("rollout", "status", "-n", ns, "deploy/roll", "--timeout=60s")
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    for name, r in results.items():
        assert r["failed"] == [] and r["ok"] > 100, (name, r["ok"], r["failed"][:5])
    images = {p["spec"]["containers"][0]["image"] for p in ready_pods(svc_cluster, ns, "roll")}
    assert images == {v2}


def test_service_bad_input_is_reported(svc_cluster, hello, ns):
    # A port in the NodePort range that another process holds on this node.
    taken = socket.socket()
    for port in random.sample(range(31000, 32768), 100):
        try:
            taken.bind(("0.0.0.0", port))
            break
        except OSError:
            continue
    taken.listen()
    try:
        # A nodePort already allocated to another Service is refused with 422.
        apply(svc_cluster, ns, service("first", {"app": "x"}, type="NodePort"))
        first_port = svc_cluster.json("get", "svc", "-n", ns, "first")["spec"]["ports"][0]["nodePort"]
        dup = service("second", {"app": "x"}, type="NodePort")
        dup["spec"]["ports"][0]["nodePort"] = first_port
        p = svc_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(dup), check=False)
        assert p.returncode != 0 and "provided port is already allocated" in p.stderr, p.stderr
        # A named targetPort no selected pod declares: a warning event, no endpoints.
        apply(svc_cluster, ns, deployment("named", hello, 1), service("named", {"app": "named"}))
        svc = service("unknown-port", {"app": "named"})
        svc["spec"]["ports"][0]["targetPort"] = "nope"
        apply(svc_cluster, ns, svc)
        wait_endpoints(svc_cluster, ns, "named", 1)

        def reasons(name):
            return {e["reason"] for e in svc_cluster.json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]}
        wait_for(lambda: "TargetPortNotFound" in reasons("unknown-port"), 20, "the unresolved targetPort event")
        assert ready_addresses(svc_cluster, ns, "unknown-port") == []
        # A NodePort another process holds on this node.
        clash = service("clash", {"app": "named"}, type="NodePort")
        clash["spec"]["ports"][0]["nodePort"] = port
        apply(svc_cluster, ns, clash)
        wait_for(lambda: "PortUnavailable" in reasons("clash"), 20, "the port clash event")
        # Other Services keep working.
        vip = svc_cluster.json("get", "svc", "-n", ns, "named")["spec"]["clusterIP"]
        assert get(f"http://{vip}/")[0] == 200
    finally:
        taken.close()


def test_proxy_rebuilds_after_restart(svc_cluster, hello, ns):
    apply(svc_cluster, ns, deployment("again", hello, 2), service("again", {"app": "again"}))
    wait_endpoints(svc_cluster, ns, "again", 2)
    vip = svc_cluster.json("get", "svc", "-n", ns, "again")["spec"]["clusterIP"]
    wait_for(lambda: get_host(f"http://{vip}/")[0] == 200, 20, "the ClusterIP to answer")
    svc_cluster.stop()
    assert get_host(f"http://{vip}/", timeout=2)[0] == 0, "nothing serves the ClusterIP while the node is down"
    svc_cluster.start()
    # Nothing is kept on the node: listeners and DNS come back from the API's objects.
    wait_for(lambda: get_host(f"http://{vip}/")[0] == 200, 60, "the ClusterIP to answer after the restart")
    assert short(f"again.{ns}.svc.cluster.local") == [vip]
