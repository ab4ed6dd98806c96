"""The node agent running Wasm pods, end to end: a real `skiff up` (API server, scheduler,
controllers and agent), a real docker-registry on 127.0.0.1 that `skiff push` publishes
the wasi-hello example to, and the real kubectl."""

import ipaddress
import json
import os
import re
import subprocess
import time
import urllib.request

import pytest
import yaml

import oci_image
from conftest import Cluster, example_wasm, one_node_cluster, skiff_binary, wait_for


@pytest.fixture(scope="module")
def wasm_cluster(registry):
    with one_node_cluster("wasm-node") as c:
        yield c


def test_the_agent_serves_a_certificate_the_cluster_ca_signed(wasm_cluster):
    """The agent of `skiff up` asks for its serving certificate (signer kubelet-serving),
    the controllers approve it, and the API server verifies it when it calls the agent."""
    from test_node_identity import serving_certificate, subject_of
    import ssl
    def signed():
        try:
            return serving_certificate(wasm_cluster, "wasm-node")
        except ssl.SSLCertVerificationError:
            return None
    cert = wait_for(signed, 30, "the agent to serve the certificate the cluster CA signed")
    assert subject_of(cert)["commonName"] == "system:node:wasm-node"
    assert subject_of(cert, "issuer")["commonName"] == "skiff-ca"
    requests = [c for c in wasm_cluster.json("get", "csr")["items"] if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"]
    assert requests and all(c["spec"]["username"] == "system:node:wasm-node" for c in requests), requests
    assert all(c["status"]["conditions"][0]["type"] == "Approved" for c in requests), requests


@pytest.fixture(scope="module")
def images(registry):
    """The example pushed as a preview 1 module and as a preview 2 component."""
    refs = {"p1": f"{registry.host}/wasi-hello:p1", "p2": f"{registry.host}/wasi-hello:p2", "http": f"{registry.host}/http-hello:v1"}
    for kind, target, name in [("p1", "wasm32-wasip1", "wasi-hello"), ("p2", "wasm32-wasip2", "wasi-hello"), ("http", "wasm32-wasip2", "http-hello")]:
        subprocess.run([skiff_binary(), "push", example_wasm(target, name), refs[kind]], check=True, capture_output=True, timeout=60)
    return refs


def pod_manifest(name, image, args, restart="Never", limits=None, **spec):
    container = {"name": "main", "image": image, "args": args}
    if limits:
        container["resources"] = {"limits": limits}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"runtimeClassName": "wasmtime", "restartPolicy": restart, "containers": [container], **spec}}


def create(cluster, ns, *objects):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objects))


def pod(cluster, ns, name):
    return cluster.json("get", "pod", "-n", ns, name)


def container_status(cluster, ns, name):
    statuses = pod(cluster, ns, name).get("status", {}).get("containerStatuses") or [{}]
    return statuses[0]


def wait_phase(cluster, ns, name, phases, timeout=60):
    return wait_for(lambda: pod(cluster, ns, name).get("status", {}).get("phase") in phases and pod(cluster, ns, name), timeout, f"pod {name} to be {phases}")


def logs(cluster, ns, name, *args):
    return cluster.kubectl("logs", "-n", ns, name, *args).stdout


@pytest.fixture
def ns(wasm_cluster):
    name = f"w-{os.urandom(3).hex()}"
    wasm_cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    return name


def allow_host_paths(cluster, ns):
    """hostPath volumes are beyond the baseline Pod Security level every namespace is held
    to by default: the namespace says it is privileged."""
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged")


def test_node_registers_with_machine_capacity(wasm_cluster):
    node = wasm_cluster.json("get", "node", "wasm-node")
    labels = node["metadata"]["labels"]
    assert labels["skiff.dev/runtime-wasm"] == "true"
    assert labels["kubernetes.io/hostname"] == "wasm-node" and labels["kubernetes.io/os"] == "linux"
    capacity = node["status"]["capacity"]
    assert int(capacity["cpu"]) == os.cpu_count()
    assert int(capacity["pods"]) > 110
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True" and conditions["MemoryPressure"] == "False"
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    lease = wasm_cluster.json("get", "lease", "-n", "kube-node-lease", "wasm-node")
    assert lease["spec"]["holderIdentity"] == "wasm-node"


def test_job_runs_the_example_with_config_and_secret(wasm_cluster, ns):
    # As written: its image is one the cluster's embedded registry starts with.
    wasm_cluster.kubectl("apply", "-n", ns, "-f", os.path.join(os.path.dirname(__file__), "../../examples/wasi-hello/job.yaml"))
    wait_for(lambda: wasm_cluster.json("get", "job", "-n", ns, "wasi-hello").get("status", {}).get("succeeded") == 1, 60, "the job to complete")
    out = wasm_cluster.kubectl("logs", "-n", ns, "job/wasi-hello").stdout
    assert "Ahoy, Skiff!" in out, out
    assert "NODE=wasm-node" in out and re.search(r"POD=wasi-hello-\w+", out), out
    assert "/config/greeting: Ahoy" in out, out


def test_component_runs_and_logs_follow(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("p2", images["p2"], ["hello", "sleep", "2", "cat", "/nothing"], container={"env": [{"name": "NAME", "value": "component"}]}))
    wait_phase(wasm_cluster, ns, "p2", ["Running", "Succeeded"])
    # -f streams until the container ends.
    out = wasm_cluster.kubectl("logs", "-f", "-n", ns, "p2").stdout
    assert out.startswith("Hello, component!\n"), out
    assert "cannot read /nothing" in out, out
    done = wait_phase(wasm_cluster, ns, "p2", ["Succeeded"])
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    stamped = logs(wasm_cluster, ns, "p2", "--timestamps", "--tail=1")
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z cannot read /nothing", stamped), stamped


def test_failing_command_crash_loops_with_back_off(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("crash", images["p1"], ["hello", "exit", "3"], restart="OnFailure"))
    status = wait_for(lambda: (lambda s: s.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" and s)(container_status(wasm_cluster, ns, "crash")), 30, "CrashLoopBackOff")
    assert status["restartCount"] >= 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert "back-off 10s restarting failed container=main" in status["state"]["waiting"]["message"]
    assert "Hello, world!" in logs(wasm_cluster, ns, "crash", "--previous")
    events = wasm_cluster.kubectl("get", "events", "-n", ns).stdout
    assert "BackOff" in events, events


def test_memory_hog_is_oom_killed(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("hog", images["p1"], ["hog", "200"], limits={"memory": "32Mi"}))
    done = wait_phase(wasm_cluster, ns, "hog", ["Failed"])
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled" and terminated["exitCode"] == 137, terminated
    assert "memory limit" in terminated["message"]


def spin_rounds(cluster, ns, name, image, limits):
    create(cluster, ns, pod_manifest(name, image, ["spin", "3"], limits=limits))
    wait_phase(cluster, ns, name, ["Succeeded"], timeout=60)
    return int(re.search(r"spun (\d+) rounds", logs(cluster, ns, name)).group(1))


def test_busy_loop_is_held_to_its_cpu_limit(wasm_cluster, images, ns):
    # Same guest, same wall time, one after the other: the limited one gets about a fifth
    # of the work done. Loose bounds: CI machines are noisy.
    free = spin_rounds(wasm_cluster, ns, "free", images["p1"], None)
    limited = spin_rounds(wasm_cluster, ns, "limited", images["p1"], {"cpu": "200m"})
    share = limited / free
    assert 0.08 < share < 0.4, f"200m guest did {limited} rounds vs {free} unlimited ({share:.2f})"


def agent_get(cluster, path, token):
    """A request to the node agent's own HTTPS endpoint (self-signed, so not verified)."""
    import ssl
    port = cluster.json("get", "nodes")["items"][0]["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ssl._create_unverified_context(), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_stats_report_cpu_and_memory_per_container(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("busy", images["p1"], ["hog", "8", "spin", "30"], restart="Always"))
    wait_for(lambda: "held 8 MiB" in wasm_cluster.kubectl("logs", "-n", ns, "busy", check=False).stdout, 30, "the guest to allocate")

    def busy_container():
        _, summary = agent_get(wasm_cluster, "/stats/summary", wasm_cluster.token)
        pods = [p for p in summary["pods"] if p["podRef"] == {"name": "busy", "namespace": ns}]
        return pods and pods[0]["containers"][0]
    c = wait_for(lambda: (lambda c: c and c["cpu"]["usageCoreNanoSeconds"] > 100_000_000 and c)(busy_container()), 20, "CPU time to add up")
    assert c["name"] == "main" and c["memory"]["workingSetBytes"] >= 8 << 20, c
    status, body = agent_get(wasm_cluster, "/stats/summary", "wrong-token")
    assert status == 401 and body["reason"] == "Unauthorized"
    wasm_cluster.kubectl("delete", "pod", "-n", ns, "busy")


def test_deleting_a_running_pod_stops_it_within_grace(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("sleeper", images["p1"], ["hello", "sleep", "600"], restart="Always", terminationGracePeriodSeconds=30))
    wait_for(lambda: container_status(wasm_cluster, ns, "sleeper").get("ready"), 30, "the sleeper to run")
    started = time.time()
    wasm_cluster.kubectl("delete", "pod", "-n", ns, "sleeper", "--wait=true")
    assert time.time() - started < 30
    assert wasm_cluster.kubectl("get", "pod", "-n", ns, "sleeper", check=False).returncode != 0


def test_missing_image_backs_off_with_the_registry_message(wasm_cluster, registry, ns):
    create(wasm_cluster, ns, pod_manifest("ghost", f"{registry.host}/nothing-here:v1", []))
    status = wait_for(lambda: (lambda s: s.get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff" and s)(container_status(wasm_cluster, ns, "ghost")), 40, "ImagePullBackOff")
    message = status["state"]["waiting"]["message"]
    assert "nothing-here" in message and ("unknown" in message.lower() or "not found" in message.lower()), message
    assert pod(wasm_cluster, ns, "ghost")["status"]["phase"] == "Pending"


def test_guest_sees_only_its_mounts(wasm_cluster, images, ns, tmp_path):
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    (host_dir / "note.txt").write_text("from the host")
    allow_host_paths(wasm_cluster, ns)
    create(wasm_cluster, ns, pod_manifest(
        "jail", images["p1"], ["cat", "/etc/passwd", "ls", "/", "cat", "/data/note.txt", "write", "/data/new.txt", "x", "write", "/ro/x", "text", "ls", "/scratch"],
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "data", "mountPath": "/ro", "readOnly": True}, {"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "data", "hostPath": {"path": str(host_dir), "type": "Directory"}}, {"name": "scratch", "emptyDir": {"medium": "Memory"}}]))
    wait_phase(wasm_cluster, ns, "jail", ["Succeeded"])
    out = logs(wasm_cluster, ns, "jail")
    assert "cannot read /etc/passwd" in out, out
    assert "/data/note.txt: from the host" in out, out
    assert (host_dir / "new.txt").read_text() == "x"
    assert "cannot write /ro/x" in out, out
    assert not (host_dir / "x").exists()


def test_claim_bound_to_a_host_path_volume(wasm_cluster, images, ns, tmp_path):
    disk = tmp_path / "pv"
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"pv-{ns}"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": str(disk), "type": "DirectoryOrCreate"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "claim"},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "volumeName": f"pv-{ns}", "storageClassName": ""}}
    wasm_cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))
    create(wasm_cluster, ns, pvc, pod_manifest(
        "writer", images["p1"], ["write", "/var/data/out.txt", "kept"],
        container={"volumeMounts": [{"name": "data", "mountPath": "/var/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "claim"}}]))
    wait_phase(wasm_cluster, ns, "writer", ["Succeeded"])
    assert (disk / "out.txt").read_text() == "kept"
    # An unbound claim keeps the pod waiting, and says why.
    create(wasm_cluster, ns, {**pvc, "metadata": {"name": "unbound"}, "spec": {**pvc["spec"], "volumeName": None}},
           pod_manifest("waiter", images["p1"], [], volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "unbound"}}]))
    assert "not bound" in waiting(wasm_cluster, ns, "waiter", "ContainerCreating")["message"]


def test_config_map_volume_follows_updates(wasm_cluster, images, ns):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "live"}, "data": {"greeting": "first"}}
    create(wasm_cluster, ns, cm, pod_manifest(
        "reader", images["p1"], ["cat", "/config/greeting", "sleep", "6", "cat", "/config/greeting"],
        container={"volumeMounts": [{"name": "config", "mountPath": "/config"}]},
        volumes=[{"name": "config", "configMap": {"name": "live"}}]))
    wait_for(lambda: "first" in wasm_cluster.kubectl("logs", "-n", ns, "reader", check=False).stdout, 30, "the first read")
    wasm_cluster.kubectl("patch", "configmap", "-n", ns, "live", "-p", '{"data":{"greeting":"second"}}')
    wait_phase(wasm_cluster, ns, "reader", ["Succeeded"])
    out = logs(wasm_cluster, ns, "reader")
    assert out.splitlines() == ["/config/greeting: first", "/config/greeting: second"], out


def waiting(cluster, ns, name, reason, timeout=40):
    return wait_for(lambda: (lambda s: s.get("state", {}).get("waiting", {}).get("reason") == reason and s["state"]["waiting"])(container_status(cluster, ns, name)), timeout, f"{name} waiting with {reason}")


def test_bad_images_and_config_get_clear_statuses(wasm_cluster, images, registry, ns, tmp_path):
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(b"\0asm\x01\0\0\0" + os.urandom(64))
    subprocess.run([skiff_binary(), "push", str(corrupt), f"{registry.host}/corrupt:v1"], check=True, capture_output=True)
    # A module importing a function no host provides.
    unlinkable = tmp_path / "unlinkable.wasm"
    unlinkable.write_bytes(b"\0asm\x01\0\0\0" + bytes([1, 4, 1, 0x60, 0, 0]) + bytes([2, 15, 1, 3]) + b"env" + bytes([7]) + b"missing" + bytes([0, 0]))
    subprocess.run([skiff_binary(), "push", str(unlinkable), f"{registry.host}/unlinkable:v1"], check=True, capture_output=True)
    container_image = oci_image.push(registry.host, "not-wasm", "v1", b"{}", [(b"\x1f\x8b" + os.urandom(32), "application/vnd.oci.image.layer.v1.tar+gzip")])
    create(wasm_cluster, ns,
           pod_manifest("healthy", images["p1"], ["sleep", "600"], restart="Always"),
           pod_manifest("corrupt", f"{registry.host}/corrupt:v1", []),
           pod_manifest("unlinkable", f"{registry.host}/unlinkable:v1", []),
           pod_manifest("container", container_image, []),
           pod_manifest("nomap", images["p1"], [], container={"volumeMounts": [{"name": "c", "mountPath": "/c"}]}, volumes=[{"name": "c", "configMap": {"name": "absent"}}]),
           pod_manifest("nokey", images["p1"], [], container={"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}))
    assert "invalid Wasm" in waiting(wasm_cluster, ns, "corrupt", "CreateContainerError")["message"]
    assert "env::missing" in waiting(wasm_cluster, ns, "unlinkable", "CreateContainerError")["message"]
    assert "the image config is not valid" in waiting(wasm_cluster, ns, "container", "ImagePullBackOff")["message"]
    assert 'configmap "absent" not found' in waiting(wasm_cluster, ns, "nomap", "ContainerCreating")["message"]
    assert 'secret "absent" not found' in waiting(wasm_cluster, ns, "nokey", "CreateContainerConfigError")["message"]
    healthy = container_status(wasm_cluster, ns, "healthy")
    assert healthy["ready"] and healthy["restartCount"] == 0
    assert "FailedMount" in wasm_cluster.kubectl("get", "events", "-n", ns).stdout


def test_logs_of_unknown_containers_are_refused(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("one", images["p1"], ["hello"]))
    wait_phase(wasm_cluster, ns, "one", ["Succeeded"])
    p = wasm_cluster.kubectl("logs", "-n", ns, "one", "-c", "nope", check=False)
    assert p.returncode != 0 and "container nope is not valid for pod one" in p.stderr
    status, body = wasm_cluster.raw("GET", f"/api/v1/namespaces/{ns}/pods/one/log?tailLines=-3")
    assert status == 400 and "tailLines" in body["message"]


def test_active_deadline_fails_the_pod(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("late", images["p1"], ["sleep", "600"], activeDeadlineSeconds=2))
    done = wait_phase(wasm_cluster, ns, "late", ["Failed"], timeout=30)
    assert done["status"]["reason"] == "DeadlineExceeded"


def http(url, data=None, timeout=10):
    """(status, body) of a plain HTTP request."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_functions_answer_on_their_own_pod_ips(wasm_cluster, images, ns):
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fn"},
                  "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "fn"}},
                           "template": {"metadata": {"labels": {"app": "fn"}, "annotations": {"skiff.dev/request-timeout-seconds": "2"}},
                                        "spec": {"runtimeClassName": "wasmtime", "containers": [{
                                            "name": "fn", "image": images["http"], "ports": [{"containerPort": 8080}],
                                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                            "resources": {"limits": {"memory": "32Mi"}}}]}}}}
    create(wasm_cluster, ns, deployment)
    wait_for(lambda: wasm_cluster.json("get", "deploy", "-n", ns, "fn").get("status", {}).get("availableReplicas") == 3, 60, "3 function pods")
    pods = wasm_cluster.json("get", "pods", "-n", ns, "-l", "app=fn")["items"]
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 3, ips
    # From the node's share of the cluster's pod range, set up on the skiff0 bridge.
    node = wasm_cluster.json("get", "node", "wasm-node")
    assert node["spec"]["podCIDR"] == "10.42.0.0/22" and node["spec"]["podCIDRs"] == ["10.42.0.0/22"], node["spec"]
    network = next(c for c in node["status"]["conditions"] if c["type"] == "NetworkUnavailable")
    assert (network["status"], network["reason"]) == ("False", "SkiffBridgeReady"), network
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.42.0.0/22") for ip in ips), ips
    assert all(p["status"]["podIPs"] == [{"ip": p["status"]["podIP"]}] for p in pods)
    for p in pods:
        assert http(f"http://{p['status']['podIP']}:8080/") == (200, f"Hello from {p['metadata']['name']}!\n")
    ip = pods[0]["status"]["podIP"]
    assert http(f"http://{ip}:8080/echo", data=b"ping") == (200, "ping")
    # HTTP/2 cleartext too (prior knowledge, as gRPC clients speak it).
    h2 = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "HTTP/%{http_version}", f"http://{ip}:8080/"], capture_output=True, text=True, timeout=30)
    assert h2.stdout == f"Hello from {pods[0]['metadata']['name']}!\nHTTP/2", h2
    # A request that loops forever is cut off; one that overruns memory fails; neither harms the next.
    status, body = http(f"http://{ip}:8080/spin")
    assert status == 504 and "did not answer within 2000 ms" in body, body
    status, body = http(f"http://{ip}:8080/hog?mib=100")
    assert status == 500 and "memory limit" in body, body
    status, body = http(f"http://{ip}:8080/fetch?url=http://{wasm_cluster.url.split('//')[1]}/version")
    assert status == 502 and "cannot fetch" in body, body
    assert http(f"http://{ip}:8080/")[0] == 200
    assert all(container_status(wasm_cluster, ns, p["metadata"]["name"])["restartCount"] == 0 for p in pods)


def test_instance_reuse_serves_n_requests_per_instance(wasm_cluster, images, ns):
    """With `skiff.dev/instance-reuse: 3` an instance answers three requests; a trap, a
    memory overrun or a second of idleness ends it, and the next request gets a new one."""
    reused = pod_manifest("reused", images["http"], [], restart="Always", limits={"memory": "32Mi"},
                          container={"ports": [{"containerPort": 8080}]})
    # One request at a time, so every request goes to the one instance the pool holds.
    reused["metadata"]["annotations"] = {"skiff.dev/instance-reuse": "3", "skiff.dev/max-concurrency": "1",
                                         "skiff.dev/request-timeout-seconds": "2"}
    create(wasm_cluster, ns, reused)
    fresh = pod_manifest("fresh", images["http"], [], restart="Always", container={"ports": [{"containerPort": 8080}]})
    create(wasm_cluster, ns, fresh)
    for name in ("reused", "fresh"):
        wait_for(lambda name=name: container_status(wasm_cluster, ns, name).get("ready"), 30, f"{name} serving")
    ip = pod(wasm_cluster, ns, "reused")["status"]["podIP"]
    count = lambda: http(f"http://{ip}:8080/count")
    assert [count() for _ in range(7)] == [(200, f"{n}\n") for n in (1, 2, 3, 1, 2, 3, 1)]
    # A memory overrun ends its instance: the next request is an instance's first.
    assert count() == (200, "2\n")
    status, body = http(f"http://{ip}:8080/hog?mib=100")
    assert status == 500 and "memory limit" in body, body
    assert count() == (200, "1\n")
    # So does a request past its deadline.
    assert http(f"http://{ip}:8080/spin")[0] == 504
    assert count() == (200, "1\n")
    # An instance idle for a second is dropped.
    time.sleep(2.5)
    assert count() == (200, "1\n")
    fresh_ip = pod(wasm_cluster, ns, "fresh")["status"]["podIP"]
    assert [http(f"http://{fresh_ip}:8080/count") for _ in range(3)] == [(200, "1\n")] * 3
    assert container_status(wasm_cluster, ns, "reused")["restartCount"] == 0


def test_listener_survives_bad_clients(wasm_cluster, images, ns):
    """Slowloris connections, garbage and an oversized head cost the other clients nothing."""
    import socket
    create(wasm_cluster, ns, pod_manifest("sturdy", images["http"], [], restart="Always", container={"ports": [{"containerPort": 8080}]}))
    wait_for(lambda: container_status(wasm_cluster, ns, "sturdy").get("ready"), 30, "serving")
    ip = pod(wasm_cluster, ns, "sturdy")["status"]["podIP"]

    def answer(payload):
        with socket.create_connection((ip, 8080), timeout=10) as s:
            try:
                s.sendall(payload)
            except OSError:
                pass  # the server may close before taking it all
            try:
                return s.recv(200)
            except OSError:
                return b""

    slow = [socket.create_connection((ip, 8080), timeout=10) for _ in range(100)]
    try:
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\nHost: sturdy\r\nX-Slow: ")
        assert answer(b"\x16\x03\x01 not http at all\r\n\r\n").startswith(b"HTTP/1.1 400"), "garbage gets 400"
        assert answer(b"GET / HTTP/1.1\r\nHost: sturdy\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n").startswith(b"HTTP/1.1 431"), "a 1 MiB header gets 431"
        assert http(f"http://{ip}:8080/") == (200, "Hello from a Wasm pod!\n")
        # A head still unfinished after 10 s is cut off (hyper answers 408 or just closes).
        slow[0].settimeout(20)
        late = slow[0].recv(200)
        assert late == b"" or late.startswith(b"HTTP/1.1 408"), late
    finally:
        for s in slow:
            s.close()
    assert container_status(wasm_cluster, ns, "sturdy")["restartCount"] == 0


def test_http_function_without_a_port_is_a_clear_error(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("portless", images["http"], []))
    assert "declares none" in waiting(wasm_cluster, ns, "portless", "CreateContainerError")["message"]
    bad = pod_manifest("badconcurrency", images["http"], [], container={"ports": [{"containerPort": 8080}]})
    bad["metadata"]["annotations"] = {"skiff.dev/max-concurrency": "lots"}
    create(wasm_cluster, ns, bad)
    assert 'skiff.dev/max-concurrency "lots" is not a positive integer' in waiting(wasm_cluster, ns, "badconcurrency", "CreateContainerError")["message"]
    bad = pod_manifest("badreuse", images["http"], [], container={"ports": [{"containerPort": 8080}]})
    bad["metadata"]["annotations"] = {"skiff.dev/instance-reuse": "0"}
    create(wasm_cluster, ns, bad)
    assert 'skiff.dev/instance-reuse "0" is not a positive integer' in waiting(wasm_cluster, ns, "badreuse", "CreateContainerError")["message"]


def test_push_refuses_a_file_that_is_not_wasm(registry, tmp_path):
    text = tmp_path / "notes.wasm"
    text.write_text("not wasm at all")
    p = subprocess.run([skiff_binary(), "push", str(text), f"{registry.host}/notes:v1"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "is not a WebAssembly binary" in p.stderr, p.stderr


def probed_function(name, image, host_dir, probe_kind):
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2}
    return pod_manifest(name, image, [], restart="Always", container={
        "ports": [{"name": "http", "containerPort": 8080}], probe_kind: probe,
        "volumeMounts": [{"name": "config", "mountPath": "/config", "readOnly": True}]},
        volumes=[{"name": "config", "hostPath": {"path": str(host_dir), "type": "Directory"}}])


def test_readiness_probe_drives_ready(wasm_cluster, images, ns, tmp_path):
    allow_host_paths(wasm_cluster, ns)
    create(wasm_cluster, ns, probed_function("ready", images["http"], tmp_path, "readinessProbe"))
    wait_for(lambda: container_status(wasm_cluster, ns, "ready").get("ready"), 30, "ready")
    (tmp_path / "unhealthy").write_text("")
    wait_for(lambda: container_status(wasm_cluster, ns, "ready").get("ready") is False, 30, "not ready")
    row = wasm_cluster.kubectl("get", "pod", "-n", ns, "ready", "--no-headers").stdout.split()
    assert row[1] == "0/1" and row[2] == "Running", row
    assert "Readiness probe failed: HTTP probe failed with statuscode: 500" in wasm_cluster.kubectl("get", "events", "-n", ns).stdout
    (tmp_path / "unhealthy").unlink()
    wait_for(lambda: container_status(wasm_cluster, ns, "ready").get("ready"), 30, "ready again")
    assert container_status(wasm_cluster, ns, "ready")["restartCount"] == 0


def test_liveness_probe_restarts_the_container(wasm_cluster, images, ns, tmp_path):
    allow_host_paths(wasm_cluster, ns)
    create(wasm_cluster, ns, probed_function("alive", images["http"], tmp_path, "livenessProbe"))
    wait_for(lambda: container_status(wasm_cluster, ns, "alive").get("ready"), 30, "running")
    (tmp_path / "unhealthy").write_text("")
    status = wait_for(lambda: (lambda s: s.get("restartCount", 0) >= 1 and s)(container_status(wasm_cluster, ns, "alive")), 40, "a restart")
    assert "Liveness probe failed" in status["lastState"]["terminated"]["message"], status


def test_grpc_probe_asks_the_standard_health_service(wasm_cluster, images, ns):
    """The probe speaks the gRPC health checking protocol: here to a real grpcio health
    server standing in for the pod's, bound to the pod's IP (the node's pod range is local)."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    create(wasm_cluster, ns, pod_manifest("grpc-probed", images["p1"], ["sleep", "600"], restart="Always", container={
        "readinessProbe": {"grpc": {"port": 50051, "service": "shop"}, "periodSeconds": 1, "failureThreshold": 1}}))
    ip = wait_for(lambda: pod(wasm_cluster, ns, "grpc-probed").get("status", {}).get("podIP"), 30, "a pod IP")
    events = lambda: wasm_cluster.kubectl("get", "events", "-n", ns).stdout
    wait_for(lambda: "failed to connect service" in events(), 30, "a failed probe while nothing listens")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"{ip}:50051")
    servicer.set("shop", health_pb2.HealthCheckResponse.SERVING)
    server.start()
    try:
        wait_for(lambda: container_status(wasm_cluster, ns, "grpc-probed").get("ready"), 30, "ready once SERVING")
        servicer.set("shop", health_pb2.HealthCheckResponse.NOT_SERVING)
        wait_for(lambda: container_status(wasm_cluster, ns, "grpc-probed").get("ready") is False, 30, "unready once NOT_SERVING")
        assert 'service unhealthy (responded with \\"NOT_SERVING\\")' in events() or 'responded with "NOT_SERVING"' in events(), events()
    finally:
        server.stop(0)


def test_pre_stop_hook_runs_while_the_pod_still_serves(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("draining", images["http"], [], restart="Always", terminationGracePeriodSeconds=20, container={
        "ports": [{"containerPort": 8080}], "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}))
    wait_for(lambda: container_status(wasm_cluster, ns, "draining").get("ready"), 30, "serving")
    ip = pod(wasm_cluster, ns, "draining")["status"]["podIP"]
    started = time.time()
    wasm_cluster.kubectl("delete", "pod", "-n", ns, "draining", "--wait=false")
    time.sleep(1)
    assert http(f"http://{ip}:8080/")[0] == 200, "the pod stopped serving before its preStop hook finished"
    wait_for(lambda: wasm_cluster.kubectl("get", "pod", "-n", ns, "draining", check=False).returncode != 0, 30, "the pod to go")
    assert 3 <= time.time() - started < 20


def test_failed_post_start_hook_restarts_the_container(wasm_cluster, images, ns):
    create(wasm_cluster, ns, pod_manifest("hooked", images["http"], [], restart="Always", container={
        "ports": [{"containerPort": 8080}], "lifecycle": {"postStart": {"httpGet": {"path": "/missing", "port": 8080}}}}))
    status = wait_for(lambda: (lambda s: s.get("restartCount", 0) >= 1 and s)(container_status(wasm_cluster, ns, "hooked")), 40, "a restart")
    assert "PostStartHook failed" in status["lastState"]["terminated"]["message"], status
    assert "FailedPostStartHook" in wasm_cluster.kubectl("get", "events", "-n", ns).stdout


def test_agent_restart_leaves_statuses_true(wasm_cluster, images, ns):
    create(wasm_cluster, ns,
           pod_manifest("keeps", images["p1"], ["hello", "sleep", "600"], restart="Always"),
           pod_manifest("finished", images["p1"], ["hello"]))
    wait_for(lambda: container_status(wasm_cluster, ns, "keeps").get("ready"), 30, "keeps to run")
    wait_phase(wasm_cluster, ns, "finished", ["Succeeded"])
    wasm_cluster.stop()
    wasm_cluster.start()
    # The running guest ended with the agent: it is restarted, and says so.
    status = wait_for(lambda: (lambda s: s.get("restartCount") == 1 and s.get("ready") and s)(container_status(wasm_cluster, ns, "keeps")), 60, "keeps to be restarted")
    assert "agent restarted" in status["lastState"]["terminated"]["message"]
    assert pod(wasm_cluster, ns, "finished")["status"]["phase"] == "Succeeded"
    assert "Hello, world!" in logs(wasm_cluster, ns, "finished")


def test_standalone_agent_joins_a_control_plane(tmp_path):
    """`skiff server` plus a separate `skiff agent` process: the node registers, runs a pod,
    and the API server reaches the agent for its logs."""
    # Its own pod range: the module's cluster uses the default one on this same machine.
    server = Cluster(str(tmp_path), ["--cluster-cidr", "10.52.0.0/16"], command="server").start()
    log = open(tmp_path / "agent.log", "ab")
    agent = subprocess.Popen([skiff_binary(), "agent", "--kubeconfig", server.kubeconfig, "--data-dir", str(tmp_path / "agent"),
                              "--node-name", "solo", "--node-ip", "127.0.0.1", "--agent-port", "0"], stdout=log, stderr=log)
    try:
        wait_for(lambda: server.kubectl("get", "node", "solo", check=False).returncode == 0, 30, "the agent's node")
        # The image from the control plane's own registry, found through the agent's kubeconfig.
        create(server, "default", pod_manifest("solo-pod", "registry.skiff.internal/wasi-hello:v1", ["hello"]))
        wait_phase(server, "default", "solo-pod", ["Succeeded"])
        assert logs(server, "default", "solo-pod") == "Hello, world!\n"
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        server.stop()
